"""End-to-end fixtures: a trained registry and the real four services as processes.

Real parts only: Feast (SQLite and Redis online stores), an MLflow registry on SQLite,
torch and scikit-learn. Training runs once per test session into a temporary
MESHSERVE_HOME; each online store gets its own stack of four processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshserve_local.stack import HEALTH_NAMES, Stack, StackConfig, free_ports

from tests.fixtures.trained import REDIS_TEST_URL, TrainedHome, redis_available



@pytest.fixture(scope="session")
def trained_home(trained: TrainedHome) -> Path:
    """The MESHSERVE_HOME the stacks run on (see tests/conftest.py)."""
    return trained.home


def make_stack_config(home: Path, online_store: str) -> StackConfig:
    ports = free_ports(8)
    names = list(HEALTH_NAMES)
    return StackConfig(
        home=home,
        online_store=online_store,
        redis_url=REDIS_TEST_URL,
        ports=dict(zip(names, ports[:4])),
        metrics_ports=dict(zip(names, ports[4:])),
    )


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request: pytest.FixtureRequest, trained_home: Path) -> Iterator[Stack]:
    """The four services, on SQLite and then on Redis as Feast's online store."""
    if request.param == "redis" and not redis_available():
        pytest.skip("Redis is not answering PING at 127.0.0.1:6379; start it to run the Redis end-to-end tests")
    with Stack(make_stack_config(trained_home, request.param)) as s:
        yield s


@pytest.fixture(scope="module")
def gateway_channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.config.target("gateway")) as ch:
        yield ch


@pytest.fixture(scope="module")
def model_channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.config.target("model")) as ch:
        yield ch
