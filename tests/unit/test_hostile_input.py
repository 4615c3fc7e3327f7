"""Property tests: whatever arrives on the wire, request parsing ends in a result or a
clean ServiceError (a gRPC status with a message), never another exception.

Covers every service's parsing: runtime codecs (Frame, Tensor), the gateway's rows,
the features servicer (with a fake store), the preprocess column checks and the model's
V2 input decoding; plus random and truncated protobuf bytes.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.v1 import features_pb2, types_pb2

from meshserve_runtime.codecs import decode_frame, decode_tensor
from meshserve_runtime.errors import ServiceError
from meshserve_runtime.registry import ResolvedArtifact

from meshserve_features.servicer import FeatureServicer
from meshserve_gateway.rows import rows_to_frame
from meshserve_model.codecs import decode_input
from meshserve_preprocess.transformer import LoadedPreprocessor
from tests.unit.test_features_validation import FakeStore

CLEAN_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["driver_id", "customer_id", "conv_rate", "acc_rate", "x", "", "ü" * 3])
doubles = st.floats(allow_nan=True, allow_infinity=True)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def columns(draw) -> types_pb2.Column:
    col = types_pb2.Column(name=draw(names))
    n = draw(st.integers(0, 6))
    kind = draw(st.sampled_from(["double", "int64", "string", "bool", None]))
    if kind == "double":
        col.double_values.values.extend(draw(st.lists(doubles, min_size=n, max_size=n)))
    elif kind == "int64":
        col.int64_values.values.extend(draw(st.lists(int64s, min_size=n, max_size=n)))
    elif kind == "string":
        col.string_values.values.extend(draw(st.lists(st.text(max_size=20), min_size=n, max_size=n)))
    elif kind == "bool":
        col.bool_values.values.extend(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    col.null_mask.extend(draw(st.lists(st.booleans(), max_size=7)))
    return col


@st.composite
def frames(draw) -> types_pb2.Frame:
    return types_pb2.Frame(
        columns=draw(st.lists(columns(), max_size=8)),
        num_rows=draw(st.one_of(st.integers(0, 7), st.integers(-(2**63), 2**63 - 1))),
    )


@st.composite
def values(draw) -> types_pb2.Value:
    kind = draw(st.sampled_from(["int64_value", "double_value", "string_value", "bool_value", "null_value", None]))
    v = types_pb2.Value()
    if kind == "int64_value":
        v.int64_value = draw(int64s)
    elif kind == "double_value":
        v.double_value = draw(doubles)
    elif kind == "string_value":
        v.string_value = draw(st.text(max_size=10))
    elif kind == "bool_value":
        v.bool_value = draw(st.booleans())
    elif kind == "null_value":
        v.null_value = 0
    return v


rows = st.builds(lambda d: types_pb2.Row(values=d), st.dictionaries(names, values(), max_size=4))


def clean(call, *args, **kwargs):
    """Run call; only a ServiceError with a clean code and a message may escape."""
    try:
        return call(*args, **kwargs)
    except ServiceError as err:
        assert err.code in CLEAN_CODES, err.code
        assert err.message
        return None


@PROPS
@given(frames())
def test_any_frame_decodes_or_is_refused(frame: types_pb2.Frame) -> None:
    out = clean(decode_frame, frame, max_rows=1000)
    if out is not None:
        assert all(len(c.values) == frame.num_rows for c in out.values())


@PROPS
@given(
    st.lists(st.one_of(st.integers(-3, 5), st.integers(2**31, 2**62)), max_size=4),
    st.integers(-1, 7),
    st.binary(max_size=64),
)
def test_any_tensor_decodes_or_is_refused(shape: list[int], dtype: int, data: bytes) -> None:
    out = clean(decode_tensor, types_pb2.Tensor(shape=shape, dtype=dtype, data=data))
    if out is not None:
        assert out.nbytes == len(data)


@PROPS
@given(st.lists(rows, min_size=1, max_size=6), st.booleans())
def test_any_rows_become_a_frame_or_are_refused(rs: list[types_pb2.Row], allow_null: bool) -> None:
    frame = clean(rows_to_frame, rs, "rows", allow_null=allow_null)
    if frame is not None:
        decode_frame(frame)  # what the gateway builds is always well formed


class _Identity:
    def transform(self, x: np.ndarray) -> np.ndarray:
        return x


PRE = LoadedPreprocessor(
    ResolvedArtifact("p", "1", "r", "production", ""), _Identity(), ("conv_rate", "acc_rate", "x"), 3
)


@PROPS
@given(frames())
def test_preprocess_columns_are_checked(frame: types_pb2.Frame) -> None:
    cols = clean(decode_frame, frame, max_rows=1000)
    if cols is not None:
        x = clean(PRE.to_matrix, cols, frame.num_rows)
        if x is not None:
            assert x.shape == (frame.num_rows, 3) and not np.isinf(x).any()


@st.composite
def infer_requests(draw) -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name="m")
    for _ in range(draw(st.integers(0, 2))):
        t = req.inputs.add(
            name=draw(st.sampled_from(["input", "other"])),
            datatype=draw(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", ""])),
            shape=draw(st.lists(st.one_of(st.integers(-2, 5), st.integers(2**40, 2**62)), max_size=3)),
        )
        t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=12)))
        if draw(st.booleans()):
            t.contents.int64_contents.extend(draw(st.lists(int64s, max_size=3)))
    req.raw_input_contents.extend(draw(st.lists(st.binary(max_size=48), max_size=2)))
    return req


@PROPS
@given(infer_requests())
def test_model_input_decodes_or_is_refused(req: v2.ModelInferRequest) -> None:
    out = clean(decode_input, req, 3, 8)
    if out is not None:
        x, _ = out
        assert x.shape[1] == 3 and 1 <= x.shape[0] <= 8 and np.isfinite(x).all()


@PROPS
@given(frames(), st.sampled_from(["", "driver_ranking_v1", "nope"]))
def test_features_requests_validate(frame: types_pb2.Frame, service: str) -> None:
    servicer = FeatureServicer("driver_ranking_v1", max_entities=5)
    servicer.store = FakeStore()
    request = features_pb2.GetOnlineFeaturesRequest(entities=frame, feature_service=service)
    try:
        reply = asyncio.run(servicer.GetOnlineFeatures(request, None))
    except ServiceError as err:
        assert err.code in CLEAN_CODES and err.message
        return
    assert reply.features.num_rows == frame.num_rows


MESSAGES = [types_pb2.Frame, types_pb2.Tensor, v2.ModelInferRequest, features_pb2.GetOnlineFeaturesRequest]


@PROPS
@given(st.sampled_from(MESSAGES), st.binary(max_size=256))
def test_random_bytes_parse_or_fail_cleanly(message_type, data: bytes) -> None:
    """Random bytes never crash the protobuf runtime: a message or a DecodeError."""
    try:
        message_type.FromString(data)
    except DecodeError:
        pass


@pytest.mark.parametrize("cut", [1, 5, 17, 40])
def test_truncated_messages_fail_cleanly(cut: int) -> None:
    req = v2.ModelInferRequest(model_name="driver_ranking")
    req.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    req.raw_input_contents.append(b"\0" * 24)
    data = req.SerializeToString()[:-cut]
    try:
        parsed = v2.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    clean(decode_input, parsed, 3, 8)
