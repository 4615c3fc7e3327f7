"""Session fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshserve_runtime import heap
from tests.fixtures.trained import TrainedHome, shared_trained_home


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedHome:
    """The demo pair trained and registered as @production; SQLite (and Redis db 15) materialized."""
    return shared_trained_home(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def redis_url(trained: TrainedHome) -> str:
    if trained.redis_url is None:
        pytest.skip("Redis is not answering PING at 127.0.0.1:6379; start redis-server to run the Redis tests")
    return trained.redis_url


@pytest.fixture(autouse=True)
def _thaw_heap() -> Iterator[None]:
    """A ServiceRunner run in the pytest process freezes its heap once loaded (gc_freeze):
    undo that after each test, so later tests' garbage cycles are collected as usual."""
    yield
    heap.thaw()
