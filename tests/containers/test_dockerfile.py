"""Static checks of docker/Dockerfile against the Helm chart (no Docker needed, milliseconds).

The chart runs `python -m meshserve_<svc>` as uid 10001 on the ports in values.yaml; the
image's stage for each service must agree, or pods fail in ways no render test can see.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "features", "preprocess", "model")


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions (KEYWORD, rest) of each named stage, continuation lines joined."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
            result.setdefault(current or "", [])
            continue
        if current:
            result[current].append((keyword, rest.strip()))
    return result


def chain(name: str) -> list[tuple[str, str]]:
    """Instructions of a service stage including the runtime stage it builds on."""
    return stages()["runtime"] + stages()[name]


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((REPO / "deploy/helm/meshserve/values.yaml").read_text())


@pytest.mark.parametrize("svc", SERVICES)
def test_stage_matches_the_chart(svc: str, values: dict) -> None:
    instructions = chain(svc)
    expose = [rest for kw, rest in instructions if kw == "EXPOSE"]
    assert expose == [f"{values[svc]['port']} {values[svc]['metricsPort']}"]
    entrypoint = [json.loads(rest) for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entrypoint == [["python", "-m", f"meshserve_{svc}"]], "exec form, the chart's default command"
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users == ["10001:10001"], "numeric non-root user, as the chart's runAsUser/runAsGroup"
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert f"MESHSERVE_{svc.upper()}_HOST=0.0.0.0" in env
    for name in ("HOME", "TMPDIR", "MESHSERVE_HOME"):
        assert re.search(rf"(^|\s){name}=/var/cache/meshserve(\s|$)", env), name


def test_final_stages_copy_only_the_venv() -> None:
    copies = [rest for kw, rest in stages()["runtime"] if kw in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/meshserve /opt/meshserve"]
    for svc in SERVICES:
        assert not [kw for kw, _ in stages()[svc] if kw in ("RUN", "COPY", "ADD")]


def test_image_names_match_the_kind_load_target() -> None:
    deploy = (REPO / "mk/deploy.mk").read_text()
    wanted = re.search(r"^MESHSERVE_IMAGES\s*\?=\s*(.+)$", deploy, re.M).group(1).split()
    assert wanted == [f"meshserve-{svc}" for svc in SERVICES]
    build = (REPO / "docker/build-images.sh").read_text()
    assert '"meshserve-$svc:$tag"' in build
