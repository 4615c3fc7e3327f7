"""Model harness: ModelInfer requests (KServe V2) -> model name/version, skew-guard
parameter, input tensor decoding (typed contents and raw_input_contents), requested
outputs, through the real InferenceServicer.

The model is a real LoadedModel with its Batcher (service defaults) around a tiny torch
MLP of the demo model's input width, so accepted input really runs a forward pass.
"""

from __future__ import annotations

import grpc
import numpy as np
import torch
from meshserve.inference.v2 import open_inference_pb2 as v2

from meshserve_feature_repo.definitions import MODEL_FEATURES
from meshserve_model.batching import Batcher
from meshserve_model.model import INPUT_NAME, OUTPUT_NAME, LoadedModel
from meshserve_model.servicer import InferenceServicer
from meshserve_model.settings import ModelSettings
from meshserve_runtime.protocol import MODEL_HEALTH_NAME, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER
from meshserve_runtime.registry import ResolvedArtifact

from fuzz.harness import Harness, Method, Rpc, require, wire_input
from fuzz.values import hostile_count, hostile_double, hostile_int, hostile_text, pick

_DEFAULTS = {name: f.default for name, f in ModelSettings.model_fields.items()}
MAX_BATCH_ROWS: int = _DEFAULTS["max_batch_rows"]
MODEL_NAME: str = _DEFAULTS["model_name"]
NUM_FEATURES = len(MODEL_FEATURES)
ARTIFACT = ResolvedArtifact(name=MODEL_NAME, version="1", run_id="fuzz-run", alias="production", source="")
_TYPED_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents")


def _loaded() -> LoadedModel:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    module = torch.nn.Sequential(torch.nn.Linear(NUM_FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid()).eval()
    model = LoadedModel(ARTIFACT, module, torch.device("cpu"), NUM_FEATURES, "pytorch_torch")
    model.batcher = Batcher(model.predict, _DEFAULTS["max_batch_size"], _DEFAULTS["max_queue_delay_us"], _DEFAULTS["max_queue_size"])
    return model


def _servicer() -> InferenceServicer:
    servicer = InferenceServicer(MODEL_NAME, MAX_BATCH_ROWS)
    servicer.install(_loaded())
    return servicer


def _check_response(request: v2.ModelInferRequest, response: v2.ModelInferResponse) -> None:
    shape = list(request.inputs[0].shape)
    n = shape[0]
    require(len(request.inputs) == 1 and shape[1:] == [NUM_FEATURES] and 1 <= n <= MAX_BATCH_ROWS, f"accepted input shape {shape}")
    require(len(response.outputs) == 1 and list(response.outputs[0].shape) == [n, 1], f"{n} rows in, outputs {response.outputs}")
    raw = len(request.raw_input_contents) > 0
    if raw:
        require(len(response.raw_output_contents) == 1, "raw in, but no raw out")
        y = np.frombuffer(response.raw_output_contents[0], "<f4")
    else:
        y = np.asarray(response.outputs[0].contents.fp32_contents, np.float32)
    require(y.shape == (n,) and bool(((y >= 0) & (y <= 1)).all()), f"probabilities {y[:8]} for {n} rows")
    require(response.parameters[MODEL_RUN_ID_PARAMETER].string_param == ARTIFACT.run_id, "the response does not name the run")
    require(response.id == request.id, "the request id is not echoed")


def _build(fdp) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(
        model_name=MODEL_NAME if fdp.ConsumeIntInRange(0, 7) else hostile_text(fdp, ("", "nope")),
        model_version="" if fdp.ConsumeIntInRange(0, 3) else pick(fdp, ("1", "2", "-1", "\x00")),
        id=fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)),
    )
    run = fdp.ConsumeIntInRange(0, 5)
    if run == 1:
        request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = ARTIFACT.run_id
    elif run == 2:
        request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = hostile_text(fdp, ("other-run", ""))
    elif run == 3:
        request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].int64_param = hostile_int(fdp)
    n_inputs = 1 if fdp.ConsumeIntInRange(0, 5) else fdp.ConsumeIntInRange(0, 3)
    for _ in range(n_inputs):
        rows = hostile_count(fdp, MAX_BATCH_ROWS)
        width = NUM_FEATURES if fdp.ConsumeIntInRange(0, 5) else fdp.ConsumeIntInRange(0, 8)
        shape = [rows, width]
        if not fdp.ConsumeIntInRange(0, 5):  # a lying shape: odd rank, negative or huge dims
            shape = [hostile_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        tensor = request.inputs.add(
            name=INPUT_NAME if fdp.ConsumeIntInRange(0, 7) else hostile_text(fdp, ("", "INPUT", "x")),
            datatype="FP32" if fdp.ConsumeIntInRange(0, 5) else pick(fdp, ("FP64", "FP16", "INT64", "BYTES", "BOOL", "", "fp32")),
            shape=shape,
        )
        count = rows * width if fdp.ConsumeIntInRange(0, 5) else max(0, rows * width + fdp.ConsumeIntInRange(-7, 7))
        how = fdp.ConsumeIntInRange(0, 5)
        if how <= 2:  # raw bytes, the length matching the declared shape or not
            with np.errstate(over="ignore"):  # a double past float32's range becomes infinity, as a client's cast would
                values = np.full(count, hostile_double(fdp), dtype="<f4")
                if count and fdp.ConsumeBool():
                    values[fdp.ConsumeIntInRange(0, count - 1)] = hostile_double(fdp)
            data = values.tobytes()
            if not fdp.ConsumeIntInRange(0, 3):
                data = data[: max(0, len(data) + fdp.ConsumeIntInRange(-5, 5))] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 5))
            request.raw_input_contents.append(data)
        elif how <= 4:
            tensor.contents.fp32_contents.extend([hostile_double(fdp)] * count)
        else:
            field = pick(fdp, _TYPED_FIELDS)
            value = hostile_int(fdp)
            repeated = getattr(tensor.contents, field)
            if field == "bytes_contents":
                repeated.extend([fdp.ConsumeBytes(4)] * count)
            elif field == "bool_contents":
                repeated.extend([bool(value)] * count)
            elif field in ("fp32_contents", "fp64_contents"):
                repeated.extend([hostile_double(fdp)] * count)
            else:
                bits = {"int_contents": 31, "uint_contents": 32, "int64_contents": 63, "uint64_contents": 64}[field]
                low = 0 if field.startswith("uint") else -(1 << bits)
                high = (1 << bits) - 1
                repeated.extend([min(max(value, low), high)] * count)
    for _ in range(fdp.ConsumeIntInRange(0, 2) if not fdp.ConsumeIntInRange(0, 7) else 0):
        request.raw_input_contents.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48)))
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        request.outputs.add(name=OUTPUT_NAME if fdp.ConsumeBool() else hostile_text(fdp, ("", "prob")))
    return request


_SERVICER = _servicer()

METHODS = (
    Method(
        Rpc(MODEL_HEALTH_NAME, f"/{MODEL_HEALTH_NAME}/ModelInfer", _SERVICER.ModelInfer, v2.ModelInferRequest, v2.ModelInferResponse),
        _build,
        _check_response,
        frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}),
    ),
)


def infer_request(x: np.ndarray, *, raw: bool = True, run_id: str | None = None) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=MODEL_NAME, id="seed")
    tensor = request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=list(x.shape))
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    if run_id is not None:
        request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = run_id
    return request


_X = np.linspace(-1, 1, 2 * NUM_FEATURES, dtype=np.float32).reshape(2, NUM_FEATURES)
_short = infer_request(_X)
_short.raw_input_contents[0] = _short.raw_input_contents[0][: 4 * NUM_FEATURES]  # one row of bytes for shape [2, 6]
_huge_shape = infer_request(_X[:1])
_huge_shape.inputs[0].shape[0] = 2**40
_wrong_dtype = infer_request(_X)
_wrong_dtype.inputs[0].datatype = "FP64"
_unknown_model = infer_request(_X)
_unknown_model.model_name = "nope"
_requested_output = infer_request(_X, raw=False)
_requested_output.outputs.add(name=OUTPUT_NAME)

SEEDS = (
    ("raw-two-rows", wire_input(0, infer_request(_X, run_id=ARTIFACT.run_id))),
    ("typed-one-row", wire_input(0, infer_request(_X[:1], raw=False))),
    ("requested-output", wire_input(0, _requested_output)),
)

KNOWN_BAD = (
    ("raw-bytes-disagree-with-shape", wire_input(0, _short), grpc.StatusCode.INVALID_ARGUMENT, "needs 48"),
    ("huge-declared-shape", wire_input(0, _huge_shape), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH_ROWS}"),
    ("over-the-batch-limit", wire_input(0, infer_request(np.zeros((MAX_BATCH_ROWS + 1, NUM_FEATURES), np.float32))), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH_ROWS}"),
    ("nan", wire_input(0, infer_request(np.full((1, NUM_FEATURES), np.nan, np.float32), raw=False)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("wrong-dtype", wire_input(0, _wrong_dtype), grpc.StatusCode.INVALID_ARGUMENT, "FP32"),
    ("skew-guard", wire_input(0, infer_request(_X, run_id="other-run")), grpc.StatusCode.FAILED_PRECONDITION, "other-run"),
    ("unknown-model", wire_input(0, _unknown_model), grpc.StatusCode.NOT_FOUND, "nope"),
    ("truncated", wire_input(0, infer_request(_X))[:-9], grpc.StatusCode.INVALID_ARGUMENT, "not a valid inference.ModelInferRequest"),
)

HARNESS = Harness(METHODS, SEEDS)
