"""The `helm test` hook pod's script, exactly as the chart renders it, run against a local
fake gateway: it must pass on a healthy gateway and fail on the ways a release breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent import futures
from typing import Iterator

import pytest
from chart_helpers import HEALTH_NAMES, by_kind, render

grpc = pytest.importorskip("grpc")
health = pytest.importorskip("grpc_health.v1.health")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
prediction_pb2 = pytest.importorskip("meshserve.v1.prediction_pb2")
prediction_pb2_grpc = pytest.importorskip("meshserve.v1.prediction_pb2_grpc")


class FakeGateway(prediction_pb2_grpc.PredictionServiceServicer):
    def __init__(self) -> None:
        self.mode = "ok"
        self.seen: list[tuple[int, int]] = []

    def PredictEntities(self, request, context):  # noqa: N802 (gRPC method name)
        for row in request.entities:
            self.seen.append((row.values["driver_id"].int64_value, row.values["customer_id"].int64_value))
        reply = prediction_pb2.PredictResponse()
        prediction = reply.predictions.add()
        if self.mode == "row-error":
            prediction.error.code = 5
            prediction.error.status = "NOT_FOUND"
            prediction.error.message = "no features for driver 1001"
        else:
            prediction.probability = 0.73
        return reply


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, FakeGateway, object]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = FakeGateway()
    health_servicer = health.HealthServicer()
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(fake, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", fake, health_servicer
    finally:
        server.stop(None)


def hook_pod() -> dict:
    (pod,) = by_kind(render({}), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return pod


def run_hook(target: str, timeout_s: str = "20") -> subprocess.CompletedProcess:
    pod = hook_pod()
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MESHSERVE_TEST_HEALTH_SERVICE"] == HEALTH_NAMES["gateway"]
    assert env["MESHSERVE_TEST_TARGET"].endswith(":50051")
    env.update(MESHSERVE_TEST_TARGET=target, MESHSERVE_TEST_TIMEOUT_S=timeout_s, HOME=os.environ.get("HOME", "/tmp"))
    run_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", c["command"][2]], env=run_env, capture_output=True, text=True, timeout=60)


def test_passes_on_a_healthy_gateway(gateway) -> None:
    target, fake, health_servicer = gateway
    fake.mode = "ok"
    health_servicer.set(HEALTH_NAMES["gateway"], health_pb2.HealthCheckResponse.SERVING)
    result = run_hook(target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prediction OK" in result.stdout
    assert (1001, 2001) in fake.seen


def test_fails_on_a_row_error(gateway) -> None:
    target, fake, health_servicer = gateway
    fake.mode = "row-error"
    health_servicer.set(HEALTH_NAMES["gateway"], health_pb2.HealthCheckResponse.SERVING)
    result = run_hook(target)
    assert result.returncode != 0
    assert "NOT_FOUND" in result.stdout + result.stderr


def test_fails_when_the_gateway_never_warms_up(gateway) -> None:
    target, fake, health_servicer = gateway
    fake.mode = "ok"
    health_servicer.set(HEALTH_NAMES["gateway"], health_pb2.HealthCheckResponse.NOT_SERVING)
    result = run_hook(target, timeout_s="1")
    assert result.returncode != 0
    assert "not SERVING" in result.stderr
