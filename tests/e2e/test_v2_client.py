"""A standard KServe V2 client (Triton's tritonclient[grpc]) against the real model service.

The client runs in its own venv (.venv-v2client, from `make install`: tritonclient needs
protobuf<7, meshserve pins 7) through tests/v2client/check_v2_client.py, which reports what
the client saw as JSON. Its answers are checked against the same service's answers to the
same input over meshserve's own generated stub, never against stored numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_local.stack import Stack
from meshserve_model.model import INPUT_NAME, OUTPUT_NAME
from tests.e2e.conftest import make_stack_config
from tests.fixtures.trained import TrainedHome

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = ROOT / os.environ.get("V2CLIENT_VENV", ".venv-v2client") / "bin" / "python"
CLIENT_SCRIPT = ROOT / "tests" / "v2client" / "check_v2_client.py"
MODEL = "driver_ranking"
ROWS = 5  # the "several" batch
# Calls can be merged into one forward pass with others, which may move the last float32 digits.
ATOL = 1e-6
INVALID_ARGUMENT = str(grpc.StatusCode.INVALID_ARGUMENT)  # how tritonclient spells a status
NOT_FOUND = str(grpc.StatusCode.NOT_FOUND)


@pytest.fixture(scope="module")
def client_python() -> Path:
    # A missing venv is a broken checkout, not an optional extra: fail, never skip.
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"{CLIENT_PYTHON} is missing: run `make install` "
                    "(it builds the tritonclient venv from requirements/v2-client.txt)")
    return CLIENT_PYTHON


@pytest.fixture(scope="module")
def model_stack(client_python: Path, trained: TrainedHome) -> Iterator[Stack]:
    """Only the model service of a stack: the V2 server is all the client talks to."""
    stack = Stack(make_stack_config(trained.home, "sqlite"))
    stack.check_ports_free()
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    stack.start_service("model")
    try:
        stack.wait_service_ready("model")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def own_stub(model_stack: Stack) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with model_stack.config.channel("model") as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def own_metadata(own_stub: v2_grpc.GRPCInferenceServiceStub) -> v2.ModelMetadataResponse:
    return own_stub.ModelMetadata(v2.ModelMetadataRequest(name=MODEL), timeout=10)


@pytest.fixture(scope="module")
def batches(own_metadata: v2.ModelMetadataResponse) -> dict[str, np.ndarray]:
    features = int(own_metadata.inputs[0].shape[1])
    rows = np.random.default_rng(11).normal(size=(ROWS, features)).astype(np.float32)
    return {"one": rows[:1], "several": rows}


def own_answer(stub: v2_grpc.GRPCInferenceServiceStub, rows: np.ndarray) -> np.ndarray:
    """The service's probabilities for `rows`, asked through meshserve's generated stub."""
    req = v2.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name=INPUT_NAME, datatype="FP32", shape=list(rows.shape))
    req.raw_input_contents.append(rows.astype("<f4").tobytes())
    reply = stub.ModelInfer(req, timeout=10)
    return np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(list(reply.outputs[0].shape))


@pytest.fixture(scope="module")
def report(model_stack: Stack, client_python: Path, batches: dict[str, np.ndarray]) -> dict[str, Any]:
    """Run the client script once; every test below reads its report."""
    spec = {
        "url": model_stack.config.target("model"),
        "model": MODEL,
        "batches": {label: rows.tolist() for label, rows in batches.items()},  # float32 -> float: exact
        "aio_batch": "several",
    }
    # A caller's own environment: nothing of meshserve's venv or its gRPC switches leaks in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GRPC_EXPERIMENTS")}
    proc = subprocess.run(
        [str(client_python), str(CLIENT_SCRIPT)], input=json.dumps(spec), capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, f"the tritonclient script failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def test_health_and_server_metadata(report: dict[str, Any]) -> None:
    assert report["server_live"] is True
    assert report["server_ready"] is True
    assert report["model_ready"] is True
    assert report["model_ready_other_version"] is False
    assert report["server_metadata"]["name"] == "meshserve-model"
    assert report["server_metadata"]["version"]


def test_model_metadata_matches_the_documented_tensors(report: dict[str, Any], own_metadata: v2.ModelMetadataResponse) -> None:
    features = int(own_metadata.inputs[0].shape[1])
    # What README and the servicer document: FP32 input [n, features] in, FP32 [n, 1] out.
    assert report["model_metadata_tensors"] == {
        "inputs": [[INPUT_NAME, "FP32", [-1, features]]],
        "outputs": [[OUTPUT_NAME, "FP32", [-1, 1]]],
    }
    meta = report["model_metadata"]
    assert meta["name"] == MODEL
    assert meta["versions"] == list(own_metadata.versions)
    assert meta["platform"] == own_metadata.platform and meta["platform"]


def test_infer_matches_the_services_own_answer(
    report: dict[str, Any], own_stub: v2_grpc.GRPCInferenceServiceStub, own_metadata: v2.ModelMetadataResponse,
    batches: dict[str, np.ndarray],
) -> None:
    version = own_metadata.versions[0]
    for label, rows in batches.items():
        seen = report["infer"][label]
        assert seen["shape"] == [len(rows), 1] and seen["dtype"] == "float32", seen
        assert seen["output"] == [OUTPUT_NAME, "FP32", [len(rows), 1]]
        assert (seen["model_name"], seen["model_version"], seen["id"]) == (MODEL, version, f"v2client-{label}")
        assert seen["response_json"]["raw_output_contents"], "raw in, raw out: what tritonclient's as_numpy reads"
        np.testing.assert_allclose(np.array(seen["probabilities"]), own_answer(own_stub, rows), rtol=0, atol=ATOL)
    one = own_answer(own_stub, batches["one"])
    for key in ("infer_all_outputs", "infer_pinned_gzip"):  # no `outputs` asked; a pinned version over gzip
        np.testing.assert_allclose(np.array(report[key]["probabilities"]), one, rtol=0, atol=ATOL)
        assert report[key]["model_version"] == version


def test_async_client_infer(
    report: dict[str, Any], own_stub: v2_grpc.GRPCInferenceServiceStub, batches: dict[str, np.ndarray],
) -> None:
    seen = report["aio_infer"]
    assert seen["server_live"] is True and seen["id"] == "v2client-aio"
    np.testing.assert_allclose(np.array(seen["probabilities"]), own_answer(own_stub, batches["several"]), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("wrong_datatype", INVALID_ARGUMENT, "must have datatype FP32, got 'FP64'"),
        ("wrong_shape", INVALID_ARGUMENT, r"must have shape \[n, \d+\], got \[2, \d+\]"),
        ("unknown_output", INVALID_ARGUMENT, "unknown output 'logits'"),
        ("classification", INVALID_ARGUMENT, "does not implement the classification extension"),
        ("shared_memory_input", INVALID_ARGUMENT, "region 'in0'.*does not implement the shared-memory extension"),
        ("shared_memory_output", INVALID_ARGUMENT, "region 'out0'.*does not implement the shared-memory extension"),
        ("unknown_model_infer", NOT_FOUND, "unknown model 'no_such_model'"),
        ("unknown_model_metadata", NOT_FOUND, "unknown model 'no_such_model'"),
        ("unknown_model_ready", NOT_FOUND, "unknown model 'no_such_model'"),
        ("unknown_version_infer", NOT_FOUND, "is not served"),
        # ModelConfig is Triton's own RPC, outside the Open Inference Protocol.
        ("model_config", str(grpc.StatusCode.UNIMPLEMENTED), ""),
    ],
)
def test_errors_reach_the_client_with_status_and_reason(report: dict[str, Any], case: str, status: str, message: str) -> None:
    seen = report["errors"][case]
    assert seen["raised"], f"{case}: the call succeeded ({seen.get('value')})"
    assert seen["status"] == status, seen
    assert re.search(message, seen["message"]), seen
