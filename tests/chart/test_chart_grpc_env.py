"""gRPC's process-wide switches reach every service the same way wherever it runs: the chart,
the container image and the local stack all carry meshserve_runtime.grpc_env's value, and an
operator's choice (even "") wins over it."""

from __future__ import annotations

import re

import pytest
from chart_helpers import REPO, SERVICES, by_kind, component, config_env, render

from meshserve_local.stack import Stack, StackConfig
from meshserve_runtime.grpc_env import GRPC_EXPERIMENTS, with_grpc_defaults


def _env_by_service(values: dict | None = None) -> dict[str, dict[str, str]]:
    docs = render(values)
    return {component(dep): config_env(docs, dep) for dep in by_kind(docs, "Deployment")}


def test_chart_sets_the_runtime_default_on_every_service() -> None:
    envs = _env_by_service()
    assert set(envs) == set(SERVICES)
    for svc, env in envs.items():
        assert env.get("GRPC_EXPERIMENTS") == GRPC_EXPERIMENTS, svc


def test_chart_empty_value_overrides_the_image_default() -> None:
    """"" must reach the pod as an empty variable: absent, the image's ENV would apply."""
    for svc, env in _env_by_service({"grpc": {"experiments": ""}}).items():
        assert env.get("GRPC_EXPERIMENTS") == "", svc


def test_image_default_matches_the_runtime() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.findall(r"GRPC_EXPERIMENTS=(\S+)", dockerfile) == [GRPC_EXPERIMENTS]


@pytest.mark.parametrize(("given", "expected"), [(None, GRPC_EXPERIMENTS), ("", ""), ("-event_engine_client", "-event_engine_client")])
def test_local_stack_passes_the_default_unless_the_operator_set_one(
    given: str | None, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    if given is None:
        monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    else:
        monkeypatch.setenv("GRPC_EXPERIMENTS", given)
    stack = Stack(StackConfig(home=tmp_path))  # type: ignore[arg-type]
    for svc in SERVICES:
        assert stack.env_for(svc)["GRPC_EXPERIMENTS"] == expected
    assert with_grpc_defaults({} if given is None else {"GRPC_EXPERIMENTS": given})["GRPC_EXPERIMENTS"] == expected
