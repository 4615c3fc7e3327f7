"""Open Inference Protocol tensors <-> numpy, with the checks a V2 request needs."""

from __future__ import annotations

import numpy as np
import torch
from meshserve.inference.v2 import open_inference_pb2 as v2

from meshserve_runtime.errors import InvalidArgument

from meshserve_model.model import INPUT_NAME, OUTPUT_NAME

_LE_FP32 = np.dtype("<f4")  # the wire's FP32: little-endian, row-major
_ROWS_NAMED = 10  # rows an error message lists (the rest are counted)

_TYPED_FIELDS = (
    "bool_contents", "int_contents", "int64_contents", "uint_contents",
    "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents",
)

# Tensor parameters of protocol extensions this server does not implement (ServerMetadata lists
# none). Each changes where the data is or what an output means, so ignoring one would answer
# something else than asked: Triton's client sends them for set_shared_memory() and class_count.
_SHARED_MEMORY_REGION = "shared_memory_region"
_CLASSIFICATION = "classification"


def decode_input(request: v2.ModelInferRequest, num_features: int, max_rows: int) -> tuple[np.ndarray, bool]:
    """Return the FP32 [n, num_features] input and whether it came as raw bytes."""
    if len(request.inputs) != 1:
        raise InvalidArgument(f"expected exactly one input tensor {INPUT_NAME!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidArgument(f"unknown input {tensor.name!r}: this model takes one input named {INPUT_NAME!r}")
    if _SHARED_MEMORY_REGION in tensor.parameters:
        # Without this check the empty contents would be refused as "0 values", which hides why.
        raise InvalidArgument(
            f"input {INPUT_NAME!r} refers to shared memory region "
            f"{tensor.parameters[_SHARED_MEMORY_REGION].string_param!r}, but this server does not implement the "
            "shared-memory extension; send the data in the request (raw_input_contents or contents)"
        )
    if tensor.datatype != "FP32":
        raise InvalidArgument(f"input {INPUT_NAME!r} must have datatype FP32, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[1] != num_features:
        raise InvalidArgument(f"input {INPUT_NAME!r} must have shape [n, {num_features}], got {shape}")
    n = shape[0]
    if n < 1:
        raise InvalidArgument(f"input {INPUT_NAME!r} has {n} rows; send at least one")
    if n > max_rows:
        raise InvalidArgument(f"input {INPUT_NAME!r} has {n} rows; at most {max_rows} are accepted per call")
    count = n * num_features
    raw = len(request.raw_input_contents) > 0
    if raw:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input")
        if any(len(getattr(tensor.contents, f)) for f in _TYPED_FIELDS):
            raise InvalidArgument("send the input either as raw_input_contents or as typed contents, not both")
        data = request.raw_input_contents[0]
        if len(data) != count * 4:
            raise InvalidArgument(f"raw input has {len(data)} bytes; shape {shape} of FP32 needs {count * 4}")
        x = np.frombuffer(data, dtype="<f4").reshape(n, num_features)
    else:
        others = [f for f in _TYPED_FIELDS if f != "fp32_contents" and len(getattr(tensor.contents, f))]
        if others:
            raise InvalidArgument(f"FP32 input must use contents.fp32_contents, not {others[0]}")
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise InvalidArgument(f"contents.fp32_contents has {len(values)} values; shape {shape} needs {count}")
        x = np.array(values, dtype=np.float32).reshape(n, num_features)
    if not np.isfinite(x).all():
        raise InvalidArgument(f"input {INPUT_NAME!r} contains NaN or infinity")
    return x, raw


def check_output(probabilities: np.ndarray, dtype: torch.dtype) -> None:
    """Refuse an output with NaN or infinity, naming the input rows that produced it.

    Finite inputs of extreme magnitude (near FP32's ±3.4e38, or past 65504 when the model
    computes in float16) overflow inside the model, where inf - inf gives NaN.
    """
    # One vectorized check on the success path; the rows are only worked out on failure.
    if np.isfinite(probabilities).all():
        return
    bad = np.flatnonzero(~np.isfinite(probabilities.reshape(len(probabilities), -1)).all(axis=1))
    rows = ", ".join(str(int(r)) for r in bad[:_ROWS_NAMED])
    if len(bad) > _ROWS_NAMED:
        rows += f" and {len(bad) - _ROWS_NAMED} more"
    precision = str(dtype).removeprefix("torch.")
    raise InvalidArgument(
        f"output {OUTPUT_NAME!r} is NaN or infinity for row(s) {rows} of input {INPUT_NAME!r}: their values overflow "
        f"the model's {precision} arithmetic (largest value {torch.finfo(dtype).max:g}); "
        "send feature values of a realistic magnitude"
    )


def check_requested_outputs(request: v2.ModelInferRequest) -> None:
    for out in request.outputs:
        if out.name != OUTPUT_NAME:
            raise InvalidArgument(f"unknown output {out.name!r}: this model produces {OUTPUT_NAME!r}")
        if not out.parameters:
            continue  # the common case: no per-output parameters to look at
        if _SHARED_MEMORY_REGION in out.parameters:
            # Answering inline would leave the caller reading its (unwritten) region.
            raise InvalidArgument(
                f"output {out.name!r} asks to be written to shared memory region "
                f"{out.parameters[_SHARED_MEMORY_REGION].string_param!r}, but this server does not implement the "
                "shared-memory extension; request the output without a region to get it in the response"
            )
        if _CLASSIFICATION in out.parameters:
            # Answering with the FP32 probabilities would hand a BYTES-expecting caller other data.
            raise InvalidArgument(
                f"output {out.name!r} asks for classification (class count "
                f"{out.parameters[_CLASSIFICATION].int64_param}), but this server does not implement the "
                "classification extension; request the output without a class count to get the probabilities"
            )


def encode_output(response: v2.ModelInferResponse, probabilities: np.ndarray, raw: bool) -> None:
    """Add the probability output; raw bytes when the request came raw, typed otherwise."""
    out = response.outputs.add(name=OUTPUT_NAME, datatype="FP32", shape=list(probabilities.shape))
    if raw:
        if probabilities.dtype != _LE_FP32 or not probabilities.flags.c_contiguous:
            probabilities = np.ascontiguousarray(probabilities, dtype=_LE_FP32)
        response.raw_output_contents.append(probabilities.tobytes())
    else:
        out.contents.fp32_contents.extend(probabilities.ravel().tolist())
