"""Call a KServe V2 gRPC server with Triton's own Python client and print what it saw as JSON.

Run by tests/e2e/test_v2_client.py with the python of .venv-v2client (tritonclient needs
protobuf<7, meshserve pins 7), so it imports only tritonclient, numpy and the standard
library: nothing of meshserve, exactly as a caller outside the project would.

stdin:  {"url": "127.0.0.1:PORT", "model": NAME, "batches": {label: [[float, ...], ...]}, "aio_batch": label}
        (the first batch also goes into the single calls: no `outputs`, pinned version, errors)
stdout: one JSON object; the test decides what is right, this script only reports.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

INPUT = "input"
OUTPUT = "probability"
TIMEOUT_S = 10.0  # client_timeout of every call: a hang fails the check, not the whole test run


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    """Run a call that should fail; its status and message as the client surfaced them."""
    try:
        value = call()
    except InferenceServerException as err:
        return {"raised": True, "status": err.status(), "message": err.message()}
    return {"raised": False, "value": repr(value)}


def fp32_input(rows: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(INPUT, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)  # non-BYTES data goes out as raw_input_contents
    return tensor


def infer_result(result: grpcclient.InferResult) -> dict[str, Any]:
    probs = result.as_numpy(OUTPUT)
    response = result.get_response()
    return {
        "probabilities": None if probs is None else probs.astype(np.float64).tolist(),
        "shape": None if probs is None else list(probs.shape),
        "dtype": None if probs is None else str(probs.dtype),
        # get_output(as_json=True) returns None in tritonclient 2.73 (it drops its value): use the message.
        "output": None if (t := result.get_output(OUTPUT)) is None else [t.name, t.datatype, list(t.shape)],
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        # The whole response through protobuf's JSON printer: parameters and all must parse.
        "response_json": result.get_response(as_json=True),
    }


def sync_checks(url: str, model: str, batches: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    client = grpcclient.InferenceServerClient(url=url)
    try:
        out["server_live"] = client.is_server_live(client_timeout=TIMEOUT_S)
        out["server_ready"] = client.is_server_ready(client_timeout=TIMEOUT_S)
        out["model_ready"] = client.is_model_ready(model, client_timeout=TIMEOUT_S)
        out["server_metadata"] = client.get_server_metadata(as_json=True, client_timeout=TIMEOUT_S)
        out["model_metadata"] = client.get_model_metadata(model, as_json=True, client_timeout=TIMEOUT_S)
        # The protobuf form too: datatypes and shapes as the client's own types hold them.
        meta = client.get_model_metadata(model, client_timeout=TIMEOUT_S)
        out["model_metadata_tensors"] = {
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in meta.outputs],
        }
        out["infer"] = {}
        for label, rows in batches.items():
            result = client.infer(
                model, [fp32_input(rows)], outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
                request_id=f"v2client-{label}", client_timeout=TIMEOUT_S,
            )
            out["infer"][label] = infer_result(result)
        # No `outputs`: the V2 protocol then returns every output of the model.
        first = next(iter(batches.values()))
        out["infer_all_outputs"] = infer_result(client.infer(model, [fp32_input(first)], client_timeout=TIMEOUT_S))
        version = meta.versions[0]
        out["infer_pinned_gzip"] = infer_result(client.infer(
            model, [fp32_input(first)], model_version=version, compression_algorithm="gzip", client_timeout=TIMEOUT_S))
        out["model_ready_other_version"] = client.is_model_ready(model, version + "0", client_timeout=TIMEOUT_S)
        shm_input = grpcclient.InferInput(INPUT, list(first.shape), "FP32")
        shm_input.set_shared_memory("in0", first.nbytes)  # only names a region: no data in the request
        shm_output = grpcclient.InferRequestedOutput(OUTPUT)
        shm_output.set_shared_memory("out0", 4 * len(first))
        wrong_dtype = first.astype(np.float64)
        wrong_shape = np.zeros((2, first.shape[1] + 1), dtype=np.float32)
        out["errors"] = {
            "wrong_datatype": error_of(lambda: client.infer(model, [fp32_input(wrong_dtype, "FP64")], client_timeout=TIMEOUT_S)),
            "wrong_shape": error_of(lambda: client.infer(model, [fp32_input(wrong_shape)], client_timeout=TIMEOUT_S)),
            "unknown_output": error_of(lambda: client.infer(
                model, [fp32_input(first)], outputs=[grpcclient.InferRequestedOutput("logits")], client_timeout=TIMEOUT_S)),
            "unknown_version_infer": error_of(lambda: client.infer(
                model, [fp32_input(first)], model_version=version + "0", client_timeout=TIMEOUT_S)),
            # Extensions the server does not list in ServerMetadata must be refused, not ignored.
            "classification": error_of(lambda: client.infer(
                model, [fp32_input(first)], outputs=[grpcclient.InferRequestedOutput(OUTPUT, class_count=1)],
                client_timeout=TIMEOUT_S)),
            "shared_memory_input": error_of(lambda: client.infer(model, [shm_input], client_timeout=TIMEOUT_S)),
            "shared_memory_output": error_of(lambda: client.infer(
                model, [fp32_input(first)], outputs=[shm_output], client_timeout=TIMEOUT_S)),
            "unknown_model_infer": error_of(lambda: client.infer("no_such_model", [fp32_input(first)], client_timeout=TIMEOUT_S)),
            "unknown_model_metadata": error_of(lambda: client.get_model_metadata("no_such_model", client_timeout=TIMEOUT_S)),
            "unknown_model_ready": error_of(lambda: client.is_model_ready("no_such_model", client_timeout=TIMEOUT_S)),
            # Triton-only RPC, not part of the Open Inference Protocol.
            "model_config": error_of(lambda: client.get_model_config(model, client_timeout=TIMEOUT_S)),
        }
    finally:
        client.close()
    return out


async def async_infer(url: str, model: str, rows: np.ndarray) -> dict[str, Any]:
    """One infer through tritonclient.grpc.aio, the client asyncio callers use."""
    client = aioclient.InferenceServerClient(url=url)
    try:
        tensor = aioclient.InferInput(INPUT, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        live = await client.is_server_live()
        result = await client.infer(
            model, [tensor], outputs=[aioclient.InferRequestedOutput(OUTPUT)], request_id="v2client-aio",
            client_timeout=TIMEOUT_S,
        )
        return {"server_live": live, **infer_result(result)}
    finally:
        await client.close()


def main() -> int:
    spec = json.load(sys.stdin)
    batches = {label: np.asarray(rows, dtype=np.float32) for label, rows in spec["batches"].items()}
    report = sync_checks(spec["url"], spec["model"], batches)
    report["aio_infer"] = asyncio.run(async_infer(spec["url"], spec["model"], batches[spec["aio_batch"]]))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
