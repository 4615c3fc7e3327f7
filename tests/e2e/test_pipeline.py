"""The whole pipeline through the gateway, on the real four processes.

Runs once with Feast's SQLite online store and once with Redis (see conftest.stack), one
stack each for the whole module: starting one costs more than most of its tests.

Concurrent callers get the answers sequential callers get: the gateway coalesces
concurrent requests into shared internal calls and cuts big batches into chunks; neither
may change a single probability or move a row error.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_local.stack import HEALTH_NAMES, Stack
from meshserve_runtime.protocol import PREPROCESSOR_RUN_ID_PARAMETER

pytestmark = pytest.mark.e2e

ENTITIES = [(1001, 2001), (1002, 2002), (1003, 2005), (1005, 2007), (1010, 2010)]
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips", "current_balance", "avg_passenger_count", "lifetime_trip_count"]


def entity_row(driver: object, customer: object) -> types_pb2.Row:
    row = types_pb2.Row()
    for name, v in (("driver_id", driver), ("customer_id", customer)):
        if isinstance(v, int):
            row.values[name].int64_value = v
        elif isinstance(v, str):
            row.values[name].string_value = v
        elif isinstance(v, float):
            row.values[name].double_value = v
    return row


def predict_entities(channel: grpc.Channel, pairs: list[tuple]) -> prediction_pb2.PredictResponse:
    req = prediction_pb2.PredictEntitiesRequest(entities=[entity_row(d, c) for d, c in pairs])
    return prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(req, timeout=30)


def raw_row(**values: float | None) -> types_pb2.Row:
    row = types_pb2.Row()
    for k, v in values.items():
        if v is None:
            row.values[k].null_value = 0
        else:
            row.values[k].double_value = v
    return row


def assert_all_serving(stack: Stack) -> None:
    for service, name in HEALTH_NAMES.items():
        with grpc.insecure_channel(stack.config.target(service)) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for health_name in ("", name):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, health_name)


def test_every_service_is_serving_and_reflects(stack: Stack) -> None:
    assert_all_serving(stack)
    for service, name in HEALTH_NAMES.items():
        with grpc.insecure_channel(stack.config.target(service)) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            listed = {s.name for r in replies for s in r.list_services_response.service}
        assert {name, "grpc.health.v1.Health"} <= listed, service


def test_prediction_equals_offline_computation(stack: Stack, gateway_channel: grpc.Channel, trained_home) -> None:
    """Zero skew: online path == historical features + registered preprocessor + model."""
    from tests.fixtures.trained import offline_reference

    reply = predict_entities(gateway_channel, ENTITIES)
    online = np.array([p.probability for p in reply.predictions])
    assert all(p.WhichOneof("result") == "probability" for p in reply.predictions)
    expected, model_version = offline_reference(trained_home, ENTITIES)
    np.testing.assert_allclose(online, expected, rtol=0, atol=1e-6)
    assert ((online > 0) & (online < 1)).all()
    assert reply.model.name == "driver_ranking" and reply.model.version == model_version
    assert reply.model.alias == "production"
    assert reply.preprocessor.run_id == reply.model.run_id != ""


def test_batch_equals_singles(gateway_channel: grpc.Channel) -> None:
    batch = predict_entities(gateway_channel, ENTITIES)
    singles = [predict_entities(gateway_channel, [pair]).predictions[0].probability for pair in ENTITIES]
    np.testing.assert_allclose([p.probability for p in batch.predictions], singles, rtol=0, atol=1e-6)


def test_raw_rows_skip_the_feature_store(gateway_channel: grpc.Channel, trained_home) -> None:
    from tests.fixtures.trained import online_feature_rows

    rows = online_feature_rows(trained_home, ENTITIES[:2])
    stub = prediction_pb2_grpc.PredictionServiceStub(gateway_channel)
    reply = stub.Predict(prediction_pb2.PredictRequest(rows=[raw_row(**r) for r in rows]), timeout=30)
    by_entity = predict_entities(gateway_channel, ENTITIES[:2])
    np.testing.assert_allclose(
        [p.probability for p in reply.predictions], [p.probability for p in by_entity.predictions], rtol=0, atol=1e-6
    )
    # A missing value is imputed, not refused.
    rows[0]["conv_rate"] = None
    reply = stub.Predict(prediction_pb2.PredictRequest(rows=[raw_row(**rows[0])]), timeout=30)
    assert 0 < reply.predictions[0].probability < 1


def test_unknown_entity_in_a_batch_is_a_row_error(gateway_channel: grpc.Channel) -> None:
    reply = predict_entities(gateway_channel, [(1001, 2001), (999999, 2001), (1002, 2002)])
    kinds = [p.WhichOneof("result") for p in reply.predictions]
    assert kinds == ["probability", "error", "probability"]
    err = reply.predictions[1].error
    assert err.status == "NOT_FOUND" and err.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "driver_id=999999" in err.message and "conv_rate" in err.message


def _gateway_error(channel: grpc.Channel, method: str, request) -> grpc.RpcError:
    stub = prediction_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    return info.value


def _valid_raw() -> dict[str, float]:
    return {name: 0.5 for name in FEATURES}


BAD_GATEWAY_INPUTS = [
    ("empty batch", "PredictEntities", prediction_pb2.PredictEntitiesRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (
        "batch over the limit",
        "PredictEntities",
        prediction_pb2.PredictEntitiesRequest(entities=[entity_row(1001, 2001)] * 1001),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 1000",
    ),
    (
        "missing entity key",
        "PredictEntities",
        prediction_pb2.PredictEntitiesRequest(entities=[types_pb2.Row(values={"driver_id": types_pb2.Value(int64_value=1001)})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "customer_id",
    ),
    (
        "wrong key type",
        "PredictEntities",
        prediction_pb2.PredictEntitiesRequest(entities=[entity_row("1001", 2001)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "driver_id",
    ),
    (
        "unknown single entity",
        "PredictEntities",
        prediction_pb2.PredictEntitiesRequest(entities=[entity_row(999999, 2001)]),
        grpc.StatusCode.NOT_FOUND,
        "driver_id=999999",
    ),
    ("empty raw batch", "Predict", prediction_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (
        "wrong column set",
        "Predict",
        prediction_pb2.PredictRequest(rows=[raw_row(**{**_valid_raw(), "bogus": 1.0})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bogus",
    ),
    (
        "missing column",
        "Predict",
        prediction_pb2.PredictRequest(rows=[raw_row(**{k: v for k, v in _valid_raw().items() if k != "acc_rate"})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "acc_rate",
    ),
    (
        "NaN in a raw row",
        "Predict",
        prediction_pb2.PredictRequest(rows=[raw_row(**{**_valid_raw(), "conv_rate": math.nan})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    (
        "infinity in a raw row",
        "Predict",
        prediction_pb2.PredictRequest(rows=[raw_row(**{**_valid_raw(), "acc_rate": math.inf})]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "infinity",
    ),
]


@pytest.mark.parametrize("case, method, request_, code, needle", BAD_GATEWAY_INPUTS, ids=[c[0] for c in BAD_GATEWAY_INPUTS])
def test_bad_gateway_input_gets_its_status(stack: Stack, gateway_channel: grpc.Channel, case, method, request_, code, needle) -> None:
    err = _gateway_error(gateway_channel, method, request_)
    assert err.code() == code, (case, err.details())
    assert needle in err.details(), (case, err.details())
    assert_all_serving(stack)


def _infer_request(x: np.ndarray, **kw) -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name="driver_ranking", **kw)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return req


def test_plain_v2_client(model_channel: grpc.Channel) -> None:
    """A standard Open Inference Protocol client, typed contents, no meshserve parameters."""
    stub = v2_grpc.GRPCInferenceServiceStub(model_channel)
    assert stub.ServerLive(v2.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(v2.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(v2.ModelReadyRequest(name="driver_ranking"), timeout=5).ready
    meta = stub.ModelMetadata(v2.ModelMetadataRequest(name="driver_ranking"), timeout=5)
    assert list(meta.inputs[0].shape) == [-1, len(FEATURES)] and meta.outputs[0].datatype == "FP32"
    req = v2.ModelInferRequest(model_name="driver_ranking", id="abc")
    t = req.inputs.add(name="input", datatype="FP32", shape=[2, len(FEATURES)])
    t.contents.fp32_contents.extend([0.1] * 2 * len(FEATURES))
    reply = stub.ModelInfer(req, timeout=10)
    assert reply.id == "abc" and list(reply.outputs[0].shape) == [2, 1]
    assert len(reply.outputs[0].contents.fp32_contents) == 2 and not reply.raw_output_contents
    raw = stub.ModelInfer(_infer_request(np.full((2, len(FEATURES)), 0.1, np.float32)), timeout=10)
    np.testing.assert_allclose(np.frombuffer(raw.raw_output_contents[0], "<f4"), reply.outputs[0].contents.fp32_contents)


BAD_MODEL_INPUTS = [
    ("wrong shape", lambda: _infer_request(np.zeros((2, 5), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    (
        "wrong dtype",
        lambda: (lambda r: (r.inputs[0].__setattr__("datatype", "INT64"), r)[1])(_infer_request(np.zeros((1, 6), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FP32",
    ),
    (
        "raw bytes disagree with shape",
        lambda: (lambda r: (r.raw_input_contents.__setitem__(0, b"\0" * 7), r)[1])(_infer_request(np.zeros((1, 6), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes",
    ),
    (
        "unknown model name",
        lambda: (lambda r: (r.__setattr__("model_name", "nope"), r)[1])(_infer_request(np.zeros((1, 6), np.float32))),
        grpc.StatusCode.NOT_FOUND,
        "nope",
    ),
    (
        "skew guard",
        lambda: (
            lambda r: (r.parameters[PREPROCESSOR_RUN_ID_PARAMETER].__setattr__("string_param", "some-other-run"), r)[1]
        )(_infer_request(np.zeros((1, 6), np.float32))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "some-other-run",
    ),
]


@pytest.mark.parametrize("case, make, code, needle", BAD_MODEL_INPUTS, ids=[c[0] for c in BAD_MODEL_INPUTS])
def test_bad_model_input_gets_its_status(stack: Stack, model_channel: grpc.Channel, case, make, code, needle) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(model_channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(make(), timeout=10)
    assert info.value.code() == code, (case, info.value.details())
    assert needle in info.value.details(), (case, info.value.details())
    assert_all_serving(stack)


@pytest.mark.parametrize("payload", [b"\xff" * 7, b"\x0a\x05\x0a\x03", b"\x0a" + b"\xff" * 9 + b"\x01"], ids=["junk", "truncated", "bad-varint"])
def test_undecodable_bytes_get_a_status_and_nothing_breaks(stack: Stack, gateway_channel: grpc.Channel, payload: bytes) -> None:
    """Bytes that are not a PredictEntitiesRequest: INVALID_ARGUMENT with a reason; every service stays up."""
    call = gateway_channel.unary_unary(
        "/meshserve.v1.PredictionService/PredictEntities", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "not a valid meshserve.v1.PredictEntitiesRequest" in info.value.details()
    assert_all_serving(stack)


DRIVERS = range(1001, 1011)
CUSTOMERS = range(2001, 2011)


def _outcomes(reply: prediction_pb2.PredictResponse) -> list[float | str]:
    return [p.probability if p.WhichOneof("result") == "probability" else p.error.status for p in reply.predictions]


def _call_outcomes(stub: prediction_pb2_grpc.PredictionServiceStub, pairs: list[tuple[int, int]]) -> list[float | str] | str:
    req = prediction_pb2.PredictEntitiesRequest(entities=[entity_row(d, c) for d, c in pairs])
    try:
        return _outcomes(stub.PredictEntities(req, timeout=30))
    except grpc.RpcError as err:
        return err.code().name


def test_concurrent_callers_get_the_sequential_answers(gateway_channel: grpc.Channel) -> None:
    stub = prediction_pb2_grpc.PredictionServiceStub(gateway_channel)
    # Singles, small batches, a batch with an unknown entity (per-row NOT_FOUND), an
    # unknown single entity (NOT_FOUND status) and a batch big enough to be chunked.
    requests: list[list[tuple[int, int]]] = [[(d, c)] for d in DRIVERS for c in CUSTOMERS[:3]]
    requests += [[(d, 2001), (d, 2002), (d, 2003)] for d in DRIVERS]
    requests += [[(1001, 2001), (999999, 2001)], [(999999, 2002)]]
    requests += [[(DRIVERS[i % 10], CUSTOMERS[i % 7]) for i in range(600)]]
    requests = requests * 3

    sequential = [_call_outcomes(stub, r) for r in requests]
    with ThreadPoolExecutor(max_workers=32) as pool:
        concurrent = list(pool.map(lambda r: _call_outcomes(stub, r), requests))

    for req, seq, conc in zip(requests, sequential, concurrent, strict=True):
        if isinstance(seq, str):
            assert conc == seq, (req[:3], seq, conc)
            continue
        assert not isinstance(conc, str) and len(conc) == len(seq), (req[:3], conc)
        # Row errors stay on the same rows; probabilities agree to 1e-6 (float32 sums
        # may differ in the last bit with the batch a row was scored in).
        assert [x for x in conc if isinstance(x, str)] == [x for x in seq if isinstance(x, str)], (req[:3], seq, conc)
        for a, b in zip(conc, seq, strict=True):
            assert a == b if isinstance(b, str) else abs(a - b) <= 1e-6, (req[:3], seq, conc)
    assert "NOT_FOUND" in sequential[len(requests) // 3 - 3] and sequential[len(requests) // 3 - 2] == "NOT_FOUND"


def test_concurrent_callers_that_each_fit_the_message_limit_are_never_refused_together(gateway_channel: grpc.Channel) -> None:
    """A 9 MB caller fits the internal hop's 16 MB limit alone; two of them coalesced would not.
    Each must get its own answer (here: its string key refused by the features service), never
    a RESOURCE_EXHAUSTED for a group it did not choose (it did, before groups had a byte bound)."""
    stub = prediction_pb2_grpc.PredictionServiceStub(gateway_channel)

    def call(i: int) -> tuple[str, str]:
        req = prediction_pb2.PredictEntitiesRequest()
        row = req.entities.add()
        row.values["driver_id"].string_value = str(i) * 9_000_000
        row.values["customer_id"].int64_value = 2001
        try:
            stub.PredictEntities(req, timeout=60)
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
        return "OK", ""

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(call, range(1, 7)))
    for code, details in answers:
        assert code == "INVALID_ARGUMENT" and "driver_id" in details, answers


def test_sigterm_drains_and_every_process_exits_cleanly(stack: Stack) -> None:
    """Last in the module: stop the stack and check a graceful exit (code 0) everywhere."""
    codes = stack.stop()
    assert codes == {"gateway": 0, "features": 0, "preprocess": 0, "model": 0}

