"""Hostile bytes on the wire, against the real four service processes (issue #6).

test_pipeline.py already covers bad values through the gateway, a 7-byte raw tensor and
undecodable PredictEntities bytes. Here: the gRPC message-size limit (set to 1 MiB through
each service's MESHSERVE_<SERVICE>_MAX_MESSAGE_BYTES), raw tensors whose byte length or
declared shape lie, undecodable bytes on every service, and huge repeated fields that fit
the size limit but not the batch limit. After each refusal the service must still be
SERVING and answer a valid request. Also the regressions of what fuzz/ found: a huge
name echoed in an error message, rows or frames far too wide, finite values that
overflow float32 once preprocessed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf.message import Message
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.v1 import features_pb2, prediction_pb2, preprocess_pb2, types_pb2

from meshserve_local.stack import HEALTH_NAMES, Stack

from tests.e2e.conftest import make_stack_config

pytestmark = pytest.mark.e2e

LIMIT = 1 << 20
"""max_message_bytes of every service in this module."""
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips", "current_balance", "avg_passenger_count", "lifetime_trip_count"]
GATEWAY_BATCH, FEATURES_BATCH, PREPROCESS_BATCH, MODEL_BATCH = 1000, 1000, 4096, 4096  # the settings' defaults

METHODS = {
    "gateway": ("/meshserve.v1.PredictionService/Predict", prediction_pb2.PredictRequest),
    "features": ("/meshserve.v1.FeatureService/GetOnlineFeatures", features_pb2.GetOnlineFeaturesRequest),
    "preprocess": ("/meshserve.v1.PreprocessService/Transform", preprocess_pb2.TransformRequest),
    "model": ("/inference.GRPCInferenceService/ModelInfer", v2.ModelInferRequest),
}


def raw_rows(n: int) -> prediction_pb2.PredictRequest:
    row = types_pb2.Row(values={name: types_pb2.Value(double_value=0.5) for name in FEATURES})
    return prediction_pb2.PredictRequest(rows=[row] * n)


def entities(n: int) -> features_pb2.GetOnlineFeaturesRequest:
    frame = types_pb2.Frame(num_rows=n)
    frame.columns.add(name="driver_id").int64_values.values.extend([1001] * n)
    frame.columns.add(name="customer_id").int64_values.values.extend([2001] * n)
    return features_pb2.GetOnlineFeaturesRequest(entities=frame)


def feature_rows(n: int) -> preprocess_pb2.TransformRequest:
    frame = types_pb2.Frame(num_rows=n)
    for name in FEATURES:
        frame.columns.add(name=name).double_values.values.extend([0.5] * n)
    return preprocess_pb2.TransformRequest(frame=frame)


def tensor(n: int, *, shape: list[int] | None = None, data: bytes | None = None, typed: bool = False) -> v2.ModelInferRequest:
    x = np.full((n, len(FEATURES)), 0.5, "<f4")
    request = v2.ModelInferRequest(model_name="driver_ranking")
    t = request.inputs.add(name="input", datatype="FP32", shape=shape or list(x.shape))
    if typed:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        request.raw_input_contents.append(x.tobytes() if data is None else data)
    return request


VALID = {"gateway": raw_rows(1), "features": entities(1), "preprocess": feature_rows(1), "model": tensor(1)}


@pytest.fixture(scope="module")
def hostile_stack(trained_home: Path) -> Iterator[Stack]:
    config = make_stack_config(trained_home, "sqlite")
    config.extra_env = {service: {f"MESHSERVE_{service.upper()}_MAX_MESSAGE_BYTES": str(LIMIT)} for service in HEALTH_NAMES}
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def channels(hostile_stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {service: grpc.insecure_channel(hostile_stack.config.target(service)) for service in HEALTH_NAMES}
    yield opened
    for channel in opened.values():
        channel.close()


def call_bytes(channels: dict[str, grpc.Channel], service: str, payload: bytes) -> bytes:
    """Send bytes as they are (no client-side serialization) and return the reply's bytes."""
    path, _ = METHODS[service]
    return channels[service].unary_unary(path, request_serializer=None, response_deserializer=None)(payload, timeout=30)


def refusal(channels: dict[str, grpc.Channel], service: str, payload: bytes | Message) -> grpc.RpcError:
    data = payload if isinstance(payload, bytes) else payload.SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        call_bytes(channels, service, data)
    return info.value


def assert_serving_and_answering(channels: dict[str, grpc.Channel], service: str) -> None:
    reply = health_pb2_grpc.HealthStub(channels[service]).Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert call_bytes(channels, service, VALID[service].SerializeToString()), service


OVERSIZED = {
    "gateway": prediction_pb2.PredictRequest(rows=[types_pb2.Row(values={"conv_rate": types_pb2.Value(string_value="x" * LIMIT)})]),
    "features": features_pb2.GetOnlineFeaturesRequest(feature_service="x" * LIMIT),
    "preprocess": preprocess_pb2.TransformRequest(frame=types_pb2.Frame(columns=[types_pb2.Column(name="x" * LIMIT)])),
    "model": tensor(1, data=b"\0" * LIMIT),
}


@pytest.mark.parametrize("service", list(METHODS))
def test_message_over_the_size_limit_is_resource_exhausted_and_the_service_stays_up(channels, service: str) -> None:
    payload = OVERSIZED[service].SerializeToString()
    assert len(payload) > LIMIT
    err = refusal(channels, service, payload)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert str(LIMIT) in err.details(), err.details()  # gRPC names the configured limit
    assert_serving_and_answering(channels, service)


TENSOR_LIES = [
    ("one row of bytes for shape [2, 6]", tensor(2, data=b"\0" * 24), "needs 48"),
    ("2**40 rows declared, one row of bytes", tensor(1, shape=[2**40, 6]), f"at most {MODEL_BATCH}"),
    ("the full batch declared, one row of bytes", tensor(1, shape=[MODEL_BATCH, 6]), f"needs {MODEL_BATCH * 6 * 4}"),
    ("bytes not a multiple of the dtype", tensor(1, data=b"\0" * 25), "needs 24"),
    ("two raw entries for one input", v2.ModelInferRequest(model_name="driver_ranking", inputs=tensor(1).inputs, raw_input_contents=[b"\0" * 24] * 2), "2 entries"),
]


@pytest.mark.parametrize("case, request_, needle", TENSOR_LIES, ids=[c[0] for c in TENSOR_LIES])
def test_raw_tensor_whose_length_disagrees_with_its_shape_is_invalid(channels, case: str, request_: v2.ModelInferRequest, needle: str) -> None:
    err = refusal(channels, "model", request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err)
    assert needle in err.details(), (case, err.details())
    assert_serving_and_answering(channels, "model")


UNDECODABLE = {
    "random": bytes(range(256)) * 3,
    "truncated": None,  # each service's valid request minus its last bytes
    "bad-varint": b"\x08" + b"\xff" * 11,
}


@pytest.mark.parametrize("kind", list(UNDECODABLE))
@pytest.mark.parametrize("service", list(METHODS))
def test_undecodable_bytes_are_invalid_argument_on_every_service(channels, service: str, kind: str) -> None:
    payload = UNDECODABLE[kind]
    if payload is None:
        payload = VALID[service].SerializeToString()[:-3]
    _, request_type = METHODS[service]
    err = refusal(channels, service, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert f"not a valid {request_type.DESCRIPTOR.full_name}" in err.details(), err.details()
    assert_serving_and_answering(channels, service)


OVER_THE_BATCH_LIMIT = [
    ("gateway raw rows", "gateway", raw_rows(GATEWAY_BATCH + 1), f"at most {GATEWAY_BATCH}"),
    ("features entities", "features", entities(FEATURES_BATCH + 1), f"at most {FEATURES_BATCH}"),
    ("preprocess rows", "preprocess", feature_rows(PREPROCESS_BATCH + 1), f"at most {PREPROCESS_BATCH}"),
    ("model raw tensor", "model", tensor(MODEL_BATCH + 1), f"at most {MODEL_BATCH}"),
    ("model typed contents", "model", tensor(MODEL_BATCH + 1, typed=True), f"at most {MODEL_BATCH}"),
]


@pytest.mark.parametrize("case, service, request_, needle", OVER_THE_BATCH_LIMIT, ids=[c[0] for c in OVER_THE_BATCH_LIMIT])
def test_huge_repeated_field_within_the_size_limit_but_over_the_batch_limit(channels, case: str, service: str, request_: Message, needle: str) -> None:
    assert request_.ByteSize() < LIMIT, "must fit the size limit, so the service itself has to refuse it"
    err = refusal(channels, service, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err)
    assert needle in err.details(), (case, err.details())
    assert_serving_and_answering(channels, service)


def _wide_row(keys: int) -> prediction_pb2.PredictRequest:
    row = types_pb2.Row(values={f"feature_{i}": types_pb2.Value(double_value=0.5) for i in range(keys)})
    return prediction_pb2.PredictRequest(rows=[row])


def _wide_frame(columns: int) -> features_pb2.GetOnlineFeaturesRequest:
    frame = types_pb2.Frame(num_rows=1)
    for i in range(columns):
        frame.columns.add(name=f"c{i}").int64_values.values.append(1)
    return features_pb2.GetOnlineFeaturesRequest(entities=frame)


def _huge_key(n: int) -> prediction_pb2.PredictRequest:
    request = raw_rows(1)
    request.rows[0].values["x" * n].double_value = 0.5
    return request


def _beyond_float32() -> prediction_pb2.PredictRequest:
    request = raw_rows(2)
    request.rows[1].values["current_balance"].double_value = 1e308
    return request


FOUND_BY_FUZZING = [
    # The status message quoted the whole name: past the caller's metadata limit it became RESOURCE_EXHAUSTED.
    ("huge model name echoed", "model", v2.ModelInferRequest(model_name="m" * 200_000, inputs=tensor(1).inputs, raw_input_contents=tensor(1).raw_input_contents),
     grpc.StatusCode.NOT_FOUND, "this server serves 'driver_ranking'"),
    ("huge column name echoed through the gateway", "gateway", _huge_key(200_000), grpc.StatusCode.INVALID_ARGUMENT, "bytes cut"),
    # Seconds of CPU before the refusal.
    ("row of 30,000 keys", "gateway", _wide_row(30_000), grpc.StatusCode.INVALID_ARGUMENT, "per row"),
    ("frame of 30,000 columns", "features", _wide_frame(30_000), grpc.StatusCode.INVALID_ARGUMENT, "columns; at most"),
    # Became infinity in the tensor, and the model's refusal blamed a NaN the caller never sent.
    ("finite value beyond float32", "gateway", _beyond_float32(), grpc.StatusCode.INVALID_ARGUMENT, "overflows float32"),
]


@pytest.mark.parametrize("case, service, request_, code, needle", FOUND_BY_FUZZING, ids=[c[0] for c in FOUND_BY_FUZZING])
def test_what_fuzzing_found_gets_its_real_status(channels, case: str, service: str, request_: Message, code: grpc.StatusCode, needle: str) -> None:
    assert request_.ByteSize() < LIMIT
    err = refusal(channels, service, request_)
    assert err.code() == code, (case, err.code(), err.details()[:300])
    assert needle in err.details(), (case, err.details()[:300])
    assert len(err.details().encode()) < 4096, case
    assert_serving_and_answering(channels, service)
