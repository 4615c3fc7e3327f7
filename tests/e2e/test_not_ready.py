"""A model service whose registry has no model: alive, not ready, and says so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_local.stack import free_ports

pytestmark = pytest.mark.e2e


def test_model_without_artifact_is_unavailable_not_crashed(tmp_path: Path) -> None:
    port, metrics = free_ports(2)
    env = {
        **os.environ,
        "MESHSERVE_HOME": str(tmp_path),
        "MESHSERVE_MODEL_PORT": str(port),
        "MESHSERVE_MODEL_METRICS_PORT": str(metrics),
        "MESHSERVE_MODEL_LOAD_RETRY_S": "0.5",
    }
    log_path = tmp_path / "model.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "meshserve_model"], env=env, stdout=log, stderr=subprocess.STDOUT)
    expected = b"no version of registered model 'driver_ranking' has alias 'production'"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while True:  # wait until the process accepts calls (liveness)
                try:
                    if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "model service never accepted calls"
                time.sleep(0.2)
            while expected not in log_path.read_bytes():  # it tried to load, and said why it can't
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"no load failure logged:\n{log_path.read_text()}"
                time.sleep(0.2)
            own = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5)
            assert own.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = v2_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ServerLive(v2.ServerLiveRequest(), timeout=5).live
            assert not stub.ServerReady(v2.ServerReadyRequest(), timeout=5).ready
            req = v2.ModelInferRequest(model_name="driver_ranking")
            req.inputs.add(name="input", datatype="FP32", shape=[1, 6])
            req.raw_input_contents.append(np.zeros((1, 6), "<f4").tobytes())
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(req, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not ready" in info.value.details()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, log_path.read_text()[-2000:]
