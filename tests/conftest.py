"""Session fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

import pytest

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
