"""The features service's Feast wrapper and gRPC service on real SQLite and Redis online stores."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.v1 import features_pb2, features_pb2_grpc, types_pb2

from meshserve_feature_repo.definitions import ENTITY_KEYS, FEATURE_SERVICE, MODEL_FEATURES
from meshserve_features.store import FeatureBatch, OnlineFeatureStore, Status
from meshserve_runtime.errors import Unavailable
from tests.fixtures.trained import TrainedHome, feast_settings

DRIVERS = [*range(1001, 1011), 9999]
CUSTOMERS = [*range(2001, 2011), 2001]


@pytest.fixture(params=["sqlite", "redis"])
def online_store(request: pytest.FixtureRequest, trained: TrainedHome) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")  # skips with a reason when Redis is down
    return request.param


def loaded_store(trained: TrainedHome, online_store: str, **kw: object) -> OnlineFeatureStore:
    store = OnlineFeatureStore(feast_settings(trained.home, online_store, trained.redis_url or ""), **kw)  # type: ignore[arg-type]
    store.load(FEATURE_SERVICE)
    return store


def keys(drivers: list[int], customers: list[int]) -> dict[str, list[int]]:
    return {"driver_id": list(drivers), "customer_id": list(customers)}


def arrays(batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
    """(status, values) of a batch as [features, rows] arrays, for slicing in asserts."""
    return np.array(batch.status), np.array(batch.values)


def test_wrapper_returns_exactly_what_feast_returns(trained: TrainedHome, online_store: str) -> None:
    from meshserve_feature_repo import ops

    store = loaded_store(trained, online_store)
    spec = store.service(FEATURE_SERVICE)
    assert spec.features == MODEL_FEATURES
    assert tuple(spec.join_keys) == ENTITY_KEYS
    status, values = arrays(store.read(spec, keys(DRIVERS, CUSTOMERS)))

    fs = ops.feature_store(feast_settings(trained.home, online_store, trained.redis_url or ""))
    expected = fs.get_online_features(
        features=fs.get_feature_service(FEATURE_SERVICE), entity_rows={"driver_id": DRIVERS, "customer_id": CUSTOMERS}
    ).to_dict()
    for j, name in enumerate(MODEL_FEATURES):
        for i in range(len(DRIVERS)):
            want = expected[name][i]
            if want is None:
                assert status[j, i] == Status.NOT_FOUND and np.isnan(values[j, i]), (name, i)
            else:
                assert status[j, i] == Status.PRESENT, (name, i)
                assert values[j, i] == float(want), (name, i)
    # The unknown driver: its stats are NOT_FOUND (also on Redis, which says PRESENT with no
    # value), its customer's profile is present.
    assert (status[:3, -1] == Status.NOT_FOUND).all()
    assert (status[3:, -1] == Status.PRESENT).all()
    assert (status[:, :-1] == Status.PRESENT).all()


def test_unknown_entities_are_not_found(trained: TrainedHome, online_store: str) -> None:
    store = loaded_store(trained, online_store)
    status, values = arrays(store.read(store.service(FEATURE_SERVICE), keys([9999, 1001], [8888, 8888])))
    assert (status[:, 0] == Status.NOT_FOUND).all() and np.isnan(values[:, 0]).all()
    assert (status[:3, 1] == Status.PRESENT).all() and (status[3:, 1] == Status.NOT_FOUND).all()


def test_values_older_than_their_ttl_are_outside_max_age(trained: TrainedHome) -> None:
    """Three days from now the hourly driver stats (TTL 2 days) are too old; profiles (7 days) are not."""
    later = lambda: time.time() + 3 * 86400  # noqa: E731
    store = loaded_store(trained, "sqlite", clock=later)
    status, values = arrays(store.read(store.service(FEATURE_SERVICE), keys([1001], [2001])))
    assert status[:3, 0].tolist() == [Status.OUTSIDE_MAX_AGE] * 3 and np.isnan(values[:3, 0]).all()
    assert status[3:, 0].tolist() == [Status.PRESENT] * 3
    relaxed = loaded_store(trained, "sqlite", clock=later, enforce_ttl=False)
    assert (arrays(relaxed.read(relaxed.service(FEATURE_SERVICE), keys([1001], [2001])))[0] == Status.PRESENT).all()


def test_unreachable_redis_is_unavailable(trained: TrainedHome) -> None:
    store = OnlineFeatureStore(feast_settings(trained.home, "redis", "127.0.0.1:1"))
    with pytest.raises(Unavailable, match="redis at 127.0.0.1:1"):
        store.load(FEATURE_SERVICE)


def test_missing_registry_is_not_ready(tmp_path: Path) -> None:
    store = OnlineFeatureStore(feast_settings(tmp_path, "sqlite"))
    with pytest.raises(FileNotFoundError, match="make train"):
        store.load(FEATURE_SERVICE)


def entity_frame(drivers: list, customers: list) -> types_pb2.Frame:
    f = types_pb2.Frame(num_rows=len(drivers))
    f.columns.add(name="driver_id").int64_values.values.extend(drivers)
    f.columns.add(name="customer_id").int64_values.values.extend(customers)
    return f


async def test_features_service_over_grpc(trained: TrainedHome) -> None:
    """The real service in-process: ready after load, answers, refuses bad input, stays SERVING."""
    from meshserve_features.service import FeaturesService
    from meshserve_features.settings import FeaturesSettings
    from meshserve_runtime.server import ServiceRunner

    settings = FeaturesSettings.for_home(trained.home, online_store="sqlite", port=0, metrics_port=0, log_json=False)
    runner = ServiceRunner(FeaturesService(settings), settings)
    await runner.start()
    try:
        await runner.load_until_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = features_pb2_grpc.FeatureServiceStub(ch)

            async def status() -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=FeaturesService.name), timeout=5)).status

            assert await status() == health_pb2.HealthCheckResponse.SERVING
            reply = await stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entities=entity_frame([1001, 9999], [2001, 2002])), timeout=10
            )
            assert [c.name for c in reply.features.columns] == list(MODEL_FEATURES)
            assert list(reply.statuses[0].statuses) == [features_pb2.FEATURE_STATUS_PRESENT, features_pb2.FEATURE_STATUS_NOT_FOUND]
            assert list(reply.features.columns[0].null_mask) == [False, True]

            bad = [
                (features_pb2.GetOnlineFeaturesRequest(entities=types_pb2.Frame()), grpc.StatusCode.INVALID_ARGUMENT),
                (features_pb2.GetOnlineFeaturesRequest(entities=entity_frame([1001], [2001]), feature_service="nope"),
                 grpc.StatusCode.NOT_FOUND),
            ]
            missing_key = types_pb2.Frame(num_rows=1)
            missing_key.columns.add(name="driver_id").int64_values.values.append(1001)
            bad.append((features_pb2.GetOnlineFeaturesRequest(entities=missing_key), grpc.StatusCode.INVALID_ARGUMENT))
            for request, code in bad:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetOnlineFeatures(request, timeout=10)
                assert err.value.code() == code, err.value.details()
            assert "customer_id" in err.value.details()
            assert await status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        runner.request_stop()
        await runner.drain()
