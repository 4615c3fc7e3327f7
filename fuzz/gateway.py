"""Gateway harness: PredictEntities and Predict requests -> batch checks, rows -> frame,
finiteness, chunking, through the real PredictionServicer and Pipeline.

The three downstream services are in-process stand-ins that check what the gateway sends
them (a well-formed frame of the caller's row count, a tensor whose bytes match its
shape) and answer like the real ones; their own parsing has its own harness.
"""

from __future__ import annotations

import grpc
import numpy as np
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.v1 import features_pb2, prediction_pb2, preprocess_pb2, types_pb2

from meshserve_feature_repo.definitions import ENTITY_KEYS, FEATURE_SERVICE, MODEL_FEATURES
from meshserve_gateway.pipeline import Pipeline
from meshserve_gateway.servicer import PredictionServicer
from meshserve_gateway.settings import GatewaySettings
from meshserve_runtime.codecs import decode_frame, encode_tensor
from meshserve_runtime.errors import InvalidArgument
from meshserve_runtime.protocol import GATEWAY_HEALTH_NAME, MODEL_ALIAS_PARAMETER, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER

from fuzz.harness import Harness, Method, Rpc, require, wire_input
from fuzz.values import hostile_rows

_DEFAULTS = {name: f.default for name, f in GatewaySettings.model_fields.items()}
MAX_BATCH_ROWS: int = _DEFAULTS["max_batch_rows"]
MAX_ROW_VALUES: int = _DEFAULTS["max_row_values"]
MODEL_NAME: str = _DEFAULTS["model_name"]
RUN_ID = "fuzz-run"
PREPROCESSOR = types_pb2.ArtifactIdentity(name="driver_ranking_preprocessor", version="1", run_id=RUN_ID, alias="production")


class Downstream:
    """Features, preprocess and model as the gateway's stubs see them."""

    async def GetOnlineFeatures(self, request: features_pb2.GetOnlineFeaturesRequest, timeout: float | None = None) -> features_pb2.GetOnlineFeaturesResponse:
        n = request.entities.num_rows
        columns = decode_frame(request.entities)  # a malformed frame from the gateway is a finding
        require(all(c.null is None for c in columns.values()), "gateway sent a null entity key")
        if sorted(columns) != sorted(ENTITY_KEYS) or any(c.kind != "int64_values" for c in columns.values()):
            # The gateway leaves the key schema to the features service, which refuses it so.
            raise InvalidArgument(f"features: entity columns {sorted(columns)} do not match {list(ENTITY_KEYS)}")
        reply = features_pb2.GetOnlineFeaturesResponse(feature_service=FEATURE_SERVICE)
        reply.features.num_rows = n
        for name in MODEL_FEATURES:
            reply.features.columns.add(name=name).double_values.values.extend([0.5] * n)
            reply.statuses.add(name=name, statuses=[features_pb2.FEATURE_STATUS_PRESENT] * n)
        return reply

    async def Transform(self, request: preprocess_pb2.TransformRequest, timeout: float | None = None) -> preprocess_pb2.TransformResponse:
        n = request.frame.num_rows
        columns = decode_frame(request.frame)
        if sorted(columns) != sorted(MODEL_FEATURES) or any(c.kind not in ("double_values", "int64_values") for c in columns.values()):
            raise InvalidArgument(f"preprocess: wrong column set {sorted(columns)}")  # as the preprocess service answers
        for name, col in columns.items():
            if col.kind == "double_values":
                finite = np.isfinite(col.values) | col.null_mask()
                require(bool(finite.all()), f"gateway let a non-finite value through in column {name!r}")
        tensor = encode_tensor(np.zeros((n, len(MODEL_FEATURES)), np.float32))
        return preprocess_pb2.TransformResponse(tensor=tensor, preprocessor=PREPROCESSOR)

    async def ModelInfer(self, request: v2.ModelInferRequest, timeout: float | None = None) -> v2.ModelInferResponse:
        shape = list(request.inputs[0].shape)
        require(len(request.raw_input_contents[0]) == shape[0] * shape[1] * 4, f"gateway sent raw bytes that disagree with shape {shape}")
        reply = v2.ModelInferResponse(model_name=request.model_name, model_version="1")
        reply.parameters[MODEL_RUN_ID_PARAMETER].string_param = request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param
        reply.parameters[MODEL_ALIAS_PARAMETER].string_param = "production"
        reply.raw_output_contents.append(np.full(shape[0], 0.25, "<f4").tobytes())
        return reply


def _servicer() -> PredictionServicer:
    downstream = Downstream()
    pipeline = Pipeline(
        downstream,  # type: ignore[arg-type]  # duck-typed stubs
        downstream,  # type: ignore[arg-type]
        downstream,  # type: ignore[arg-type]
        MODEL_NAME,
        MAX_BATCH_ROWS,
        chunk_rows=_DEFAULTS["chunk_rows"],
        coalesce_max_delay_us=_DEFAULTS["coalesce_max_delay_us"],
        coalesce_max_rows=_DEFAULTS["coalesce_max_rows"],
        coalesce_max_in_flight=_DEFAULTS["coalesce_max_in_flight"],
        max_row_values=MAX_ROW_VALUES,
    )
    return PredictionServicer(pipeline, _DEFAULTS["default_timeout_s"])


def _check_response(request: prediction_pb2.PredictEntitiesRequest | prediction_pb2.PredictRequest, response: prediction_pb2.PredictResponse) -> None:
    rows = request.entities if isinstance(request, prediction_pb2.PredictEntitiesRequest) else request.rows
    require(len(response.predictions) == len(rows), f"{len(rows)} rows in, {len(response.predictions)} predictions out")
    for p in response.predictions:
        require(p.WhichOneof("result") == "probability" and p.probability == 0.25, f"unexpected prediction {p}")
    require(response.preprocessor.run_id == RUN_ID and response.model.run_id == RUN_ID, "the response does not name the release")


_SERVICER = _servicer()
_ALLOWED = frozenset({grpc.StatusCode.INVALID_ARGUMENT})

METHODS = (
    Method(
        Rpc(GATEWAY_HEALTH_NAME, f"/{GATEWAY_HEALTH_NAME}/PredictEntities", _SERVICER.PredictEntities,
            prediction_pb2.PredictEntitiesRequest, prediction_pb2.PredictResponse),
        lambda fdp: prediction_pb2.PredictEntitiesRequest(entities=hostile_rows(fdp, ENTITY_KEYS, "int64_value", MAX_BATCH_ROWS, MAX_ROW_VALUES)),
        _check_response,
        _ALLOWED,
    ),
    Method(
        Rpc(GATEWAY_HEALTH_NAME, f"/{GATEWAY_HEALTH_NAME}/Predict", _SERVICER.Predict,
            prediction_pb2.PredictRequest, prediction_pb2.PredictResponse),
        lambda fdp: prediction_pb2.PredictRequest(rows=hostile_rows(fdp, MODEL_FEATURES, "double_value", MAX_BATCH_ROWS, MAX_ROW_VALUES)),
        _check_response,
        _ALLOWED,
    ),
)


def _entity(driver: int, customer: int) -> types_pb2.Row:
    return types_pb2.Row(values={"driver_id": types_pb2.Value(int64_value=driver), "customer_id": types_pb2.Value(int64_value=customer)})


def _raw(values: dict[str, float | None]) -> types_pb2.Row:
    return types_pb2.Row(
        values={k: types_pb2.Value(null_value=0) if v is None else types_pb2.Value(double_value=v) for k, v in values.items()}
    )


_ROW = dict(zip(MODEL_FEATURES, (0.5, 0.9, 12.0, 0.4, 1.5, 200.0), strict=True))

SEEDS = (
    ("one-entity", wire_input(0, prediction_pb2.PredictEntitiesRequest(entities=[_entity(1001, 2001)]))),
    ("three-entities", wire_input(0, prediction_pb2.PredictEntitiesRequest(entities=[_entity(1001 + i, 2001 + i) for i in range(3)]))),
    ("one-raw-row", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw(_ROW)]))),
    ("raw-rows-with-nulls", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw(_ROW), _raw({**_ROW, "acc_rate": None})]))),
    ("int-and-double-raw", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw(_ROW), types_pb2.Row(values={**{k: types_pb2.Value(double_value=v) for k, v in _ROW.items()}, "avg_daily_trips": types_pb2.Value(int64_value=3)})]))),
)

#: (label, input, code, a word the message must contain): refusals the harness must see.
KNOWN_BAD = (
    ("empty-batch", wire_input(0, prediction_pb2.PredictEntitiesRequest()), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("over-the-batch-limit", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw(_ROW)] * (MAX_BATCH_ROWS + 1))), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_BATCH_ROWS}"),
    ("nan-in-a-raw-row", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw({**_ROW, "conv_rate": float("nan")})])), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ("mixed-key-types", wire_input(0, prediction_pb2.PredictEntitiesRequest(entities=[_entity(1001, 2001), types_pb2.Row(values={"driver_id": types_pb2.Value(string_value="x"), "customer_id": types_pb2.Value(int64_value=1)})])), grpc.StatusCode.INVALID_ARGUMENT, "mixes types"),
    # Found by a timing probe of this harness's parsing: one 3 MB row of 100,000 keys kept
    # the gateway busy for seconds before anything refused it.
    ("too-wide-row", wire_input(1, prediction_pb2.PredictRequest(rows=[_raw({f"f{i}": 0.5 for i in range(MAX_ROW_VALUES + 1)})])), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ROW_VALUES} per row"),
    ("truncated", wire_input(0, prediction_pb2.PredictEntitiesRequest(entities=[_entity(1001, 2001)]))[:-3], grpc.StatusCode.INVALID_ARGUMENT, "not a valid meshserve.v1.PredictEntitiesRequest"),
)

HARNESS = Harness(METHODS, SEEDS)
