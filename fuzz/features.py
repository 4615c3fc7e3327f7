"""Features harness: GetOnlineFeatures requests -> entity frame validation, through the
real FeatureServicer. The Feast store is an in-process stand-in with the demo feature
service's real spec (join keys, feature order); it checks the keys it is handed."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
import numpy as np
from meshserve.v1 import features_pb2, types_pb2

from meshserve_feature_repo.definitions import ENTITY_KEYS, FEATURE_SERVICE, MODEL_FEATURES
from meshserve_features.servicer import FeatureServicer
from meshserve_features.settings import FeaturesSettings
from meshserve_features.store import KEY_KIND_INT64, FeatureBatch, ServiceSpec, Status
from meshserve_runtime.codecs import decode_frame
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME

from fuzz.harness import Harness, Method, Rpc, require, wire_input
from fuzz.values import hostile_frame, hostile_text

MAX_ENTITIES: int = FeaturesSettings.model_fields["max_entities"].default
SPEC = ServiceSpec(
    name=FEATURE_SERVICE,
    features=MODEL_FEATURES,
    join_keys={key: KEY_KIND_INT64 for key in ENTITY_KEYS},
    ttl_s=(None,) * len(MODEL_FEATURES),
    feast_service=None,
)


class Store:
    """One feature service; driver ids above 5000 are unknown (NOT_FOUND), so both
    statuses reach the encoder."""

    def service(self, name: str) -> ServiceSpec:
        if name != SPEC.name:
            raise KeyError(name)
        return SPEC

    @property
    def service_names(self) -> list[str]:
        return [SPEC.name]

    def read(self, spec: ServiceSpec, keys: Mapping[str, list]) -> FeatureBatch:
        lengths = {len(v) for v in keys.values()}
        require(sorted(keys) == sorted(ENTITY_KEYS) and len(lengths) == 1, f"store handed keys {dict(keys)}")
        require(all(type(k) is int for v in keys.values() for k in v), "store handed non-int keys")
        found = [d <= 5000 for d in keys["driver_id"]]
        status = [[int(Status.PRESENT) if f else int(Status.NOT_FOUND) for f in found] for _ in spec.features]
        values = [[0.5 if f else float("nan") for f in found] for _ in spec.features]
        return FeatureBatch(spec.features, values, status)


async def _inline(fn: Callable[..., FeatureBatch], *args: object) -> FeatureBatch:
    return fn(*args)  # no thread per input: the fuzzer runs one call at a time


def _servicer() -> FeatureServicer:
    servicer = FeatureServicer(FEATURE_SERVICE, MAX_ENTITIES, run_blocking=_inline)
    servicer.store = Store()
    return servicer


def _check_response(request: features_pb2.GetOnlineFeaturesRequest, response: features_pb2.GetOnlineFeaturesResponse) -> None:
    n = request.entities.num_rows
    require(1 <= n <= MAX_ENTITIES, f"accepted {n} entity rows")
    columns = decode_frame(response.features)
    require(list(columns) == list(MODEL_FEATURES), f"answered columns {list(columns)}")
    require(response.features.num_rows == n, f"{n} rows in, {response.features.num_rows} out")
    require([s.name for s in response.statuses] == list(MODEL_FEATURES), "statuses do not follow the features")
    require(all(len(s.statuses) == n for s in response.statuses), "a status list has the wrong length")
    for col in columns.values():
        require(bool(np.isfinite(col.values).all()), "a feature column carries NaN or infinity (absent values must be null)")


def _build(fdp) -> features_pb2.GetOnlineFeaturesRequest:
    return features_pb2.GetOnlineFeaturesRequest(
        entities=hostile_frame(fdp, ENTITY_KEYS, "int64_values", MAX_ENTITIES),
        feature_service="" if fdp.ConsumeBool() else hostile_text(fdp, (FEATURE_SERVICE, "nope")),
    )


_SERVICER = _servicer()

METHODS = (
    Method(
        Rpc(FEATURES_HEALTH_NAME, f"/{FEATURES_HEALTH_NAME}/GetOnlineFeatures", _SERVICER.GetOnlineFeatures,
            features_pb2.GetOnlineFeaturesRequest, features_pb2.GetOnlineFeaturesResponse),
        _build,
        _check_response,
        frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}),
    ),
)


def entities(drivers: list[int], customers: list[int], **request: str) -> features_pb2.GetOnlineFeaturesRequest:
    frame = types_pb2.Frame(num_rows=len(drivers))
    frame.columns.add(name="driver_id").int64_values.values.extend(drivers)
    frame.columns.add(name="customer_id").int64_values.values.extend(customers)
    return features_pb2.GetOnlineFeaturesRequest(entities=frame, **request)


SEEDS = (
    ("one-entity", wire_input(0, entities([1001], [2001]))),
    ("named-service", wire_input(0, entities([1001, 9999], [2001, 2002], feature_service=FEATURE_SERVICE))),
    ("ten-entities", wire_input(0, entities(list(range(1001, 1011)), list(range(2001, 2011))))),
)

_null_key = entities([1001, 1002], [2001, 2002])
_null_key.entities.columns[0].null_mask.extend([False, True])
_short = entities([1001, 1002], [2001, 2002])
_short.entities.columns[1].int64_values.values.pop()

KNOWN_BAD = (
    ("no-rows", wire_input(0, entities([], [])), grpc.StatusCode.INVALID_ARGUMENT, "no entity rows"),
    ("over-the-limit", wire_input(0, entities([1001] * (MAX_ENTITIES + 1), [2001] * (MAX_ENTITIES + 1))), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ENTITIES}"),
    ("null-key", wire_input(0, _null_key), grpc.StatusCode.INVALID_ARGUMENT, "null"),
    ("count-disagrees", wire_input(0, _short), grpc.StatusCode.INVALID_ARGUMENT, "num_rows"),
    ("unknown-service", wire_input(0, entities([1001], [2001], feature_service="nope")), grpc.StatusCode.NOT_FOUND, "nope"),
    ("random-bytes", b"\x00\x12\xff\xff\xff\xff\x0f", grpc.StatusCode.INVALID_ARGUMENT, "not a valid meshserve.v1.GetOnlineFeaturesRequest"),
)

HARNESS = Harness(METHODS, SEEDS)
