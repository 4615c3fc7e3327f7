"""Redis (Feast's online store) stops mid-load and comes back: UNAVAILABLE while it is
down and the features service reports itself not-ready (NOT_SERVING), nothing hangs, and
full service returns without restarting anything.

Uses a private redis-server on a free port (a copy of the test data), never the shared one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from grpc_health.v1 import health_pb2

from meshserve_local.stack import Stack, free_ports
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME, GATEWAY_HEALTH_NAME
from tests.chaos.load import Load, entity_request
from tests.chaos.replicas import health_status, wait_until
from tests.e2e.conftest import make_stack_config
from tests.fixtures.trained import TrainedHome

pytestmark = pytest.mark.chaos

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PrivateRedis:
    """A redis-server of the test's own; its data survives a restart through an RDB file,
    as a production Redis's does through persistence."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> redis.Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return client
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def seed_from(self, source: redis.Redis, client: redis.Redis) -> None:
        for key in source.scan_iter(count=1000):  # copy the materialized features
            client.restore(key, 0, source.dump(key), replace=True)
        client.save()  # the RDB file the restart loads

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def private_redis(trained: TrainedHome, tmp_path: Path) -> Iterator[tuple[PrivateRedis, redis.Redis]]:
    if trained.redis_url is None:
        pytest.skip("Redis is not answering PING at 127.0.0.1:6379; the outage test copies its data from there")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH; the outage test starts a private one")
    source = redis.Redis(host="127.0.0.1", port=6379, db=15)
    r = PrivateRedis(free_ports(1)[0], tmp_path)
    r.seed_from(source, r.start())
    yield r, source
    if r.proc and r.proc.poll() is None:
        r.kill()


def test_redis_outage_and_return(trained: TrainedHome, private_redis, record) -> None:
    server, source = private_redis
    config = make_stack_config(trained.home, "redis")
    config.redis_url = f"127.0.0.1:{server.port}"
    with Stack(config) as stack:
        target = stack.config.target("gateway")
        features = stack.config.target("features")
        with Load(target, concurrency=4, timeout=5) as load:
            assert load.wait_for(lambda r: r.statuses["OK"] >= 20, 60)
            server.kill()
            assert load.wait_for(lambda r: r.statuses["UNAVAILABLE"] >= 10, 60), load.result.statuses
            # The features service says it can't serve (readiness), while staying alive;
            # the gateway's readiness is about its own process, so it stays SERVING.
            features_down = wait_until(lambda: health_status(features, FEATURES_HEALTH_NAME) == NOT_SERVING, 30)
            live_while_down = health_status(features, "")
            gateway_while_down = health_status(target, GATEWAY_HEALTH_NAME)
            with grpc.insecure_channel(target) as ch:
                from meshserve.v1 import prediction_pb2_grpc

                with pytest.raises(grpc.RpcError) as info:
                    prediction_pb2_grpc.PredictionServiceStub(ch).PredictEntities(entity_request(), timeout=5)
            server.start()  # loads its RDB file, as a persistent Redis would
            features_back = wait_until(lambda: health_status(features, FEATURES_HEALTH_NAME) == SERVING, 60)
            mark = load.result.statuses["OK"]
            assert load.wait_for(lambda r: r.statuses["OK"] >= mark + 20, 60), "no recovery after Redis returned"
    r = load.result
    record(
        "Redis killed mid-load, then restarted",
        r,
        f"while down: {info.value.code().name} \"{info.value.details()[:300]}\"; features health "
        f"{'NOT_SERVING' if features_down else 'still SERVING'} while down (gateway "
        f"{health_pb2.HealthCheckResponse.ServingStatus.Name(gateway_while_down or 0)}), "
        f"{'SERVING again' if features_back else 'not SERVING again'} after Redis returned, no restart",
    )
    assert features_down, "features did not report NOT_SERVING while its online store was down"
    assert live_while_down == SERVING  # alive, only not ready
    assert gateway_while_down == SERVING
    assert features_back, "features did not report SERVING again after its online store returned"
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "features" in info.value.details()
    assert r.lost == 0
    assert set(r.statuses) <= {"OK", "UNAVAILABLE"}, r.statuses
