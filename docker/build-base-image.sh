#!/usr/bin/env bash
# Build a minimal Debian bookworm base image locally, without pulling from any registry:
#   debootstrap --variant=minbase (python3, python3-venv, ca-certificates) + `docker import`.
# Bookworm's python3 is 3.11, the version meshserve is tested with.
#
# Usage: docker/build-base-image.sh [IMAGE]      (default meshserve-base:bookworm)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild.
# Needs: debootstrap and root (runs through sudo when not root), a running Docker engine.
set -euo pipefail

IMAGE="${1:-meshserve-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"

if [[ "${FORCE:-0}" != 1 ]] && $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE already exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
SUDO=""
if [[ $EUID -ne 0 ]]; then SUDO=sudo; fi

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/meshserve-rootfs.XXXXXX")"
trap '$SUDO rm -rf "$rootfs"' EXIT

start=$SECONDS
echo "debootstrap $SUITE ($MIRROR) into $rootfs ..."
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# Nothing the images need at run time: package lists and caches, manuals, translations.
$SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.cache

echo "docker import -> $IMAGE"
$SUDO tar --numeric-owner -C "$rootfs" -c . | $DOCKER import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap, docker import)"' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE" >/dev/null
echo "built $IMAGE in $((SECONDS - start))s"
