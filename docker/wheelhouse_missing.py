"""List what a wheelhouse lacks for the image's exact Python (used by build-images.sh).

    python wheelhouse_missing.py WHEEL_DIR PYTHON_FULL_VERSION

`pip download --python-version` picks wheels for the target Python but evaluates
dependency markers such as `python_full_version < "3.11.3"` against the Python running
pip. Debian bookworm's python3 is 3.11.2, so e.g. redis's `async-timeout; python_full_version
< "3.11.3"` is skipped when the host runs 3.11.7, and the image's install then fails.
This prints, one per line, each requirement (without its marker) of a wheel in WHEEL_DIR
that applies on PYTHON_FULL_VERSION and that no wheel in WHEEL_DIR provides.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(zf.read(metadata).decode("utf-8"))
    return message.get_all("Requires-Dist") or []


def main(wheel_dir: str, full_version: str) -> int:
    env = dict(default_environment())
    env.update(
        python_full_version=full_version,
        python_version=".".join(full_version.split(".")[:2]),
        implementation_version=full_version,
    )
    have = {}
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        have[name] = (version, wheel)
    missing: set[str] = set()
    for name, (_, wheel) in have.items():
        for line in requires_dist(wheel):
            req = Requirement(line)
            # Only base requirements: extras that were asked for are resolved by pip itself.
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in have:
                continue
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            missing.add(f"{dep}{extras}{req.specifier}")
    for req in sorted(missing):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
