"""Pre-serialized request bodies for every cell (built once: the client must not be the bottleneck)."""

from __future__ import annotations

import itertools

from meshserve.v1 import features_pb2, prediction_pb2, types_pb2

from meshserve_feature_repo.data import CUSTOMERS, DRIVERS
from meshserve_feature_repo.definitions import FEATURE_SERVICE
from meshserve_gateway.rows import rows_to_frame

PAIRS: list[tuple[int, int]] = list(itertools.product(DRIVERS, CUSTOMERS))
"""Every (driver, customer) the demo data has: 100 distinct entity rows."""

METHODS = {
    "predict_entities": "/meshserve.v1.PredictionService/PredictEntities",
    "predict_rows": "/meshserve.v1.PredictionService/Predict",
    "features": "/meshserve.v1.FeatureService/GetOnlineFeatures",
    "feast_listen": "/GrpcFeatureServer/GetOnlineFeatures",
    "echo": "/grpc.health.v1.Health/Check",
    "relay": "/bench.Relay/Call",
}

RAW_ROW = {"conv_rate": 0.5, "acc_rate": 0.9, "avg_daily_trips": 12.0, "current_balance": 0.4,
           "avg_passenger_count": 1.5, "lifetime_trip_count": 200.0}


def _entity_row(d: int, c: int) -> types_pb2.Row:
    return types_pb2.Row(values={"driver_id": types_pb2.Value(int64_value=d), "customer_id": types_pb2.Value(int64_value=c)})


def _batches(rows: int) -> list[list[tuple[int, int]]]:
    """Request i carries `rows` pairs; single-entity requests rotate over all 100 pairs."""
    if rows == 1:
        return [[p] for p in PAIRS]
    return [[PAIRS[(i + k) % len(PAIRS)] for k in range(rows)] for i in range(0, len(PAIRS), 10)]


def bodies(kind: str, rows: int) -> list[bytes]:
    if kind == "predict_entities":
        return [prediction_pb2.PredictEntitiesRequest(entities=[_entity_row(d, c) for d, c in b]).SerializeToString()
                for b in _batches(rows)]
    if kind == "predict_rows":
        row = types_pb2.Row(values={k: types_pb2.Value(double_value=v) for k, v in RAW_ROW.items()})
        return [prediction_pb2.PredictRequest(rows=[row] * rows).SerializeToString()]
    if kind == "features":
        out = []
        for b in _batches(rows):
            frame = rows_to_frame([_entity_row(d, c) for d, c in b], "entities", allow_null=False)
            out.append(features_pb2.GetOnlineFeaturesRequest(entities=frame).SerializeToString())
        return out
    if kind == "feast_listen":
        from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesRequest
        from feast.protos.feast.types.Value_pb2 import RepeatedValue, Value

        out = []
        for b in _batches(rows):
            req = GetOnlineFeaturesRequest(feature_service=FEATURE_SERVICE)
            req.entities["driver_id"].CopyFrom(RepeatedValue(val=[Value(int64_val=d) for d, _ in b]))
            req.entities["customer_id"].CopyFrom(RepeatedValue(val=[Value(int64_val=c) for _, c in b]))
            out.append(req.SerializeToString())
        return out
    if kind in ("echo", "relay"):
        return [b""]  # HealthCheckRequest(service="") serializes to nothing
    raise ValueError(f"unknown cell kind {kind!r}")


def check_reply(kind: str, reply: bytes, rows: int) -> str:
    """'' when a reply is a full answer; else what is wrong (a per-row error is an error)."""
    if kind in ("predict_entities", "predict_rows"):
        resp = prediction_pb2.PredictResponse.FromString(reply)
        if len(resp.predictions) != rows:
            return f"{len(resp.predictions)} predictions for {rows} rows"
        bad = [p.error.message for p in resp.predictions if p.WhichOneof("result") != "probability"]
        return bad[0] if bad else ""
    if kind == "features":
        resp = features_pb2.GetOnlineFeaturesResponse.FromString(reply)
        missing = [s.name for s in resp.statuses if any(v != features_pb2.FEATURE_STATUS_PRESENT for v in s.statuses)]
        return f"features not present: {missing}" if missing else ""
    if kind == "feast_listen":
        from feast.protos.feast.serving.ServingService_pb2 import GetOnlineFeaturesResponse

        resp = GetOnlineFeaturesResponse.FromString(reply)
        return "" if resp.results and len(resp.results[0].values) == rows else "empty feast answer"
    return ""
