#!/usr/bin/env bash
# Put promtool (Prometheus's rule checker, for the chart's alert-rule tests) in DEST, taken from
# Debian's `prometheus` package without root: apt-get download, then dpkg-deb -x. Best effort:
# on a machine without apt, or when the download fails, it says so and exits 0, and those tests
# skip saying why (PROMTOOL=/path/to/promtool points them at another one).
set -u
dest=${1:?usage: tools/fetch_promtool.sh DEST_BIN_DIR}
if command -v promtool >/dev/null || [ -x "$dest/promtool" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "promtool: no apt-get/dpkg-deb on this machine; the alert-rule tests will skip" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1) \
    && dpkg-deb -x "$work"/prometheus_*.deb "$work/x" && [ -x "$work/x/usr/bin/promtool" ]; then
  install -m 0755 "$work/x/usr/bin/promtool" "$dest/promtool"
  echo "promtool: $("$dest/promtool" --version 2>&1 | head -n 1)"
else
  echo "promtool: could not fetch Debian's prometheus package; the alert-rule tests will skip" >&2
fi
