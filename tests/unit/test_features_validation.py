"""FeatureService.GetOnlineFeatures validation and encoding, with a fake store (no Feast)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import numpy as np
import pytest
from meshserve.v1 import features_pb2, types_pb2

from meshserve_features.servicer import FeatureServicer
from meshserve_features.store import KEY_KIND_INT64, FeatureBatch, ServiceSpec, Status
from meshserve_runtime.codecs import decode_frame
from meshserve_runtime.errors import InvalidArgument, ServiceError, Unavailable

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips", "current_balance", "avg_passenger_count", "lifetime_trip_count")
SPEC = ServiceSpec(
    name="driver_ranking_v1",
    features=FEATURES,
    join_keys={"driver_id": KEY_KIND_INT64, "customer_id": KEY_KIND_INT64},
    ttl_s=(None,) * 6,
    feast_service=None,
)
KNOWN_DRIVERS = {1001, 1002}


class FakeStore:
    """Drivers 1001/1002 exist; every customer exists; driver 1002's stats are too old."""

    def __init__(self) -> None:
        self.reads: list[dict[str, list]] = []

    def service(self, name: str) -> ServiceSpec:
        if name != SPEC.name:
            raise KeyError(name)
        return SPEC

    @property
    def service_names(self) -> list[str]:
        return [SPEC.name]

    def read(self, spec: ServiceSpec, keys: Mapping[str, list]) -> FeatureBatch:
        self.reads.append(dict(keys))
        values: list[list[float]] = [[] for _ in range(6)]
        status: list[list[int]] = [[] for _ in range(6)]
        for d, c in zip(keys["driver_id"], keys["customer_id"], strict=True):
            driver = Status.PRESENT if d in KNOWN_DRIVERS and d != 1002 else (Status.OUTSIDE_MAX_AGE if d == 1002 else Status.NOT_FOUND)
            for j, v in enumerate([d / 10000, 0.5, d % 7]):
                values[j].append(v if driver == Status.PRESENT else float("nan"))
                status[j].append(int(driver))
            for j, v in enumerate([c / 10000, 0.25, c % 5], start=3):
                values[j].append(v)
                status[j].append(int(Status.PRESENT))
        return FeatureBatch(spec.features, values, status)


def make_servicer(max_entities: int = 3) -> tuple[FeatureServicer, FakeStore]:
    async def run_inline(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)

    servicer = FeatureServicer("driver_ranking_v1", max_entities, run_inline)
    store = FakeStore()
    servicer.store = store
    return servicer, store


def frame(n: int | None = None, **columns: list) -> types_pb2.Frame:
    """int lists -> int64 columns, float lists -> double, str lists -> string; None -> null."""
    rows = n if n is not None else (len(next(iter(columns.values()))) if columns else 0)
    f = types_pb2.Frame(num_rows=rows)
    for name, values in columns.items():
        col = f.columns.add(name=name)
        sample = next((v for v in values if v is not None), 0)
        nulls = [v is None for v in values]
        if isinstance(sample, float):
            col.double_values.values.extend([v if v is not None else 0.0 for v in values])
        elif isinstance(sample, str):
            col.string_values.values.extend([v if v is not None else "" for v in values])
        else:
            col.int64_values.values.extend([v if v is not None else 0 for v in values])
        if any(nulls):
            col.null_mask.extend(nulls)
    return f


def call(servicer: FeatureServicer, entities: types_pb2.Frame, feature_service: str = "") -> features_pb2.GetOnlineFeaturesResponse:
    req = features_pb2.GetOnlineFeaturesRequest(entities=entities, feature_service=feature_service)
    return asyncio.run(servicer.GetOnlineFeatures(req, None))  # type: ignore[arg-type]


def expect_error(servicer: FeatureServicer, entities: types_pb2.Frame, code: grpc.StatusCode, *fragments: str, feature_service: str = "") -> str:
    with pytest.raises(ServiceError) as info:
        call(servicer, entities, feature_service)
    assert info.value.code == code, info.value.message
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    return info.value.message


def test_answers_features_in_service_order_with_null_mask_and_statuses() -> None:
    servicer, store = make_servicer()
    resp = call(servicer, frame(driver_id=[1001, 9999, 1002], customer_id=[2001, 2002, 2003]))
    assert resp.feature_service == "driver_ranking_v1"
    assert [c.name for c in resp.features.columns] == list(FEATURES)
    assert [s.name for s in resp.statuses] == list(FEATURES)
    cols = decode_frame(resp.features)
    assert all(c.kind == "double_values" for c in cols.values())
    assert cols["conv_rate"].values[0] == pytest.approx(0.1001)
    assert cols["conv_rate"].null_mask().tolist() == [False, True, True]
    assert cols["current_balance"].null is None  # customers all present: no mask sent
    P, NF, OLD = (features_pb2.FEATURE_STATUS_PRESENT, features_pb2.FEATURE_STATUS_NOT_FOUND,
                  features_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE)
    assert list(resp.statuses[0].statuses) == [P, NF, OLD]
    assert list(resp.statuses[5].statuses) == [P, P, P]
    # Placeholders under the mask are finite (never NaN on the wire).
    assert np.isfinite(cols["acc_rate"].values).all()
    assert store.reads[0]["driver_id"] == [1001, 9999, 1002]  # plain ints reach the store
    assert all(type(d) is int for d in store.reads[0]["driver_id"])


def test_default_and_named_feature_service() -> None:
    servicer, _ = make_servicer()
    assert call(servicer, frame(driver_id=[1001], customer_id=[2001]), "driver_ranking_v1").feature_service == "driver_ranking_v1"


def test_unknown_feature_service_is_not_found() -> None:
    servicer, store = make_servicer()
    expect_error(servicer, frame(driver_id=[1001], customer_id=[2001]), grpc.StatusCode.NOT_FOUND,
                 "'nope'", "driver_ranking_v1", feature_service="nope")
    assert store.reads == []


def test_missing_key_names_it() -> None:
    servicer, _ = make_servicer()
    expect_error(servicer, frame(driver_id=[1001]), grpc.StatusCode.INVALID_ARGUMENT, "customer_id", "missing")


def test_wrong_key_type_names_column_and_expected_type() -> None:
    servicer, _ = make_servicer()
    expect_error(servicer, frame(driver_id=["1001"], customer_id=[2001]), grpc.StatusCode.INVALID_ARGUMENT,
                 "driver_id", "int64", "string")
    expect_error(servicer, frame(driver_id=[1001], customer_id=[2001.0]), grpc.StatusCode.INVALID_ARGUMENT,
                 "customer_id", "int64", "double")


def test_null_key_is_refused() -> None:
    servicer, _ = make_servicer()
    expect_error(servicer, frame(driver_id=[1001, None], customer_id=[2001, 2002]), grpc.StatusCode.INVALID_ARGUMENT,
                 "driver_id", "null", "row 1")


def test_empty_batch_is_refused() -> None:
    servicer, store = make_servicer()
    expect_error(servicer, frame(driver_id=[], customer_id=[]), grpc.StatusCode.INVALID_ARGUMENT, "no entity rows")
    expect_error(servicer, types_pb2.Frame(), grpc.StatusCode.INVALID_ARGUMENT, "no entity rows")
    assert store.reads == []


def test_batch_over_the_limit_names_the_limit() -> None:
    servicer, store = make_servicer(max_entities=3)
    expect_error(servicer, frame(driver_id=[1001] * 4, customer_id=[2001] * 4), grpc.StatusCode.INVALID_ARGUMENT,
                 "4 entity rows", "at most 3")
    assert store.reads == []
    assert len(call(servicer, frame(driver_id=[1001] * 3, customer_id=[2001] * 3)).statuses[0].statuses) == 3


def test_unknown_column_is_refused() -> None:
    servicer, _ = make_servicer()
    expect_error(servicer, frame(driver_id=[1001], customer_id=[2001], driverid=[1]), grpc.StatusCode.INVALID_ARGUMENT,
                 "driverid")


def test_malformed_frame_is_invalid_argument() -> None:
    servicer, _ = make_servicer()
    bad = frame(driver_id=[1001, 1002], customer_id=[2001, 2002])
    bad.num_rows = 3
    with pytest.raises(InvalidArgument):
        call(servicer, bad)


def test_not_loaded_is_unavailable() -> None:
    servicer, _ = make_servicer()
    servicer.store = None
    with pytest.raises(Unavailable):
        call(servicer, frame(driver_id=[1001], customer_id=[2001]))



def test_an_int32_key_outside_32_bits_is_refused_before_the_store() -> None:
    """An Int32 join key arrives as int64: a value that cannot exist in the store is the
    caller's mistake (INVALID_ARGUMENT naming the row), never a crash in key building."""
    import dataclasses

    servicer, store = make_servicer()
    spec = dataclasses.replace(SPEC, int32_keys=frozenset({"driver_id"}))
    store.service = lambda name: spec  # type: ignore[method-assign]
    expect_error(servicer, frame(driver_id=[1001, 2**31], customer_id=[2001, 2002]), grpc.StatusCode.INVALID_ARGUMENT,
                 "'driver_id' is Int32", "row 1", str(2**31))
    expect_error(servicer, frame(driver_id=[-(2**31) - 1], customer_id=[2001]), grpc.StatusCode.INVALID_ARGUMENT, "row 0")
    assert store.reads == []
    call(servicer, frame(driver_id=[2**31 - 1, -(2**31)], customer_id=[2001, 2002]))  # the bounds themselves are fine
    assert len(store.reads) == 1
