"""The direct read path returns exactly what Feast's get_online_features returns (SQLite and Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from meshserve_feature_repo.definitions import FEATURE_SERVICE
from meshserve_features.cache import EntityCache
from meshserve_features.store import OnlineFeatureStore
from meshserve_runtime.errors import Unavailable
from tests.fixtures.trained import TrainedHome, feast_settings

# Every demo pair, repeated rows, and unknown drivers/customers.
DRIVERS = [d for d in range(1001, 1011) for _ in range(10)] + [9999, 1001, 1001, 9999]
CUSTOMERS = [c for _ in range(10) for c in range(2001, 2011)] + [2001, 8888, 2001, 8888]


@pytest.fixture(params=["sqlite", "redis"])
def online_store(request: pytest.FixtureRequest, trained: TrainedHome) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return request.param


def _store(trained: TrainedHome, online_store: str, **kw: object) -> OnlineFeatureStore:
    store = OnlineFeatureStore(feast_settings(trained.home, online_store, trained.redis_url or ""), **kw)  # type: ignore[arg-type]
    store.load(FEATURE_SERVICE)
    return store


def _keys() -> dict[str, list[int]]:
    return {"driver_id": list(DRIVERS), "customer_id": list(CUSTOMERS)}


@pytest.mark.parametrize("later_days", [0, 3])
def test_direct_path_matches_get_online_features(trained: TrainedHome, online_store: str, later_days: int) -> None:
    clock = lambda: time.time() + later_days * 86400  # noqa: E731  (3 days: TTL expiry on both paths)
    feast = _store(trained, online_store, read_path="feast", clock=clock)
    direct = _store(trained, online_store, read_path="direct", clock=clock)
    a = feast.read(feast.service(FEATURE_SERVICE), _keys())
    b = direct.read(direct.service(FEATURE_SERVICE), _keys())
    assert a.names == b.names
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.values, b.values)  # bit-identical, NaN where not PRESENT
    assert direct.async_reads == (online_store == "redis")
    if direct.async_reads:  # the service's path on Redis: the same commands on redis.asyncio
        # One script call; the same read cut into script calls of 5 keys (one pipeline); HMGETs.
        for redis_read, max_keys in (("script", 1000), ("script", 5), ("pipeline", 1000)):
            reader = _store(trained, online_store, read_path="direct", clock=clock, redis_read=redis_read,
                            redis_script_max_keys=max_keys)
            c, calls = _read_counting(reader)
            np.testing.assert_array_equal(a.status, c.status)
            np.testing.assert_array_equal(a.values, c.values)
            assert reader._direct is not None and reader._direct.use_script == (redis_read == "script")
            want = {"script": 1 if redis_read == "script" else 0, "chunked": 1 if max_keys == 5 else 0}
            assert calls == want, (redis_read, max_keys, calls)


def _read_counting(store: OnlineFeatureStore, before: Callable[[], Awaitable[object]] | None = None) -> tuple[object, dict[str, int]]:
    """read_async (after `before`, on the same event loop), counting script reads and chunked
    (pipelined) script reads."""
    direct = store._direct
    assert direct is not None
    calls = {"script": 0, "chunked": 0}
    by_script, chunked = direct._read_by_script, direct._script_pipeline

    async def count_script(client: object, plan: object, job: object) -> object:
        calls["script"] += 1
        return await by_script(client, plan, job)  # type: ignore[arg-type]

    async def count_chunked(client: object, script: object, parts: object) -> object:
        calls["chunked"] += 1
        return await chunked(client, script, parts)

    async def run() -> object:
        if before is not None:
            await before()
        direct._read_by_script = count_script  # type: ignore[method-assign]
        direct._script_pipeline = count_chunked  # type: ignore[method-assign]
        return await store.read_async(store.service(FEATURE_SERVICE), _keys())

    return asyncio.run(run()), calls


def test_plan_script_reads_binary_fields_on_real_redis(redis_url: str) -> None:
    """The generated Lua (fields written in as escapes) returns what HMGET returns, for hash
    fields holding any byte, keys of two views, and a key with no hash."""
    import redis

    from meshserve_features.direct import plan_script, script_calls

    host, port = redis_url.split(",")[0].split(":")
    db = int(redis_url.split("db=")[1].split(",")[0]) if "db=" in redis_url else 0
    r = redis.Redis(host=host, port=int(port), db=db)
    fields_a, fields_b = (bytes(range(256)), b"\x00\"\\", b"_ts:a"), (b"\xff\xfe", b"_ts:b")
    r.hset("msplan:a1", mapping={fields_a[0]: b"x", fields_a[1]: b"y", fields_a[2]: b"t1"})
    r.hset("msplan:b1", mapping={fields_b[0]: b"z", fields_b[1]: b"t2"})
    try:
        script = r.register_script(plan_script([fields_a, fields_b]))
        (keys, counts), = script_calls([[b"msplan:a1", b"msplan:none"], [b"msplan:b1"]], 64)
        got = script(keys=keys, args=counts)
        want = [r.hmget("msplan:a1", fields_a), r.hmget("msplan:none", fields_a), r.hmget("msplan:b1", fields_b)]
        assert got == want == [[b"x", b"y", b"t1"], [None, None, None], [b"z", b"t2"]]
    finally:
        r.delete("msplan:a1", "msplan:b1")


def test_chunked_script_reads_survive_a_flushed_script_cache(trained: TrainedHome, redis_url: str) -> None:
    """Redis restarted or SCRIPT FLUSH: the pipelined script calls load the script and go again."""
    import redis

    store = _store(trained, "redis", read_path="direct", redis_script_max_keys=5)
    want = store.read(store.service(FEATURE_SERVICE), _keys())
    host, port = redis_url.split(",")[0].split(":")

    async def read_then_flush() -> None:
        await store.read_async(store.service(FEATURE_SERVICE), _keys())  # Redis knows the script
        redis.Redis(host=host, port=int(port)).script_flush()

    got, calls = _read_counting(store, before=read_then_flush)
    np.testing.assert_array_equal(want.values, got.values)  # type: ignore[attr-defined]
    assert calls == {"script": 1, "chunked": 1}
    assert store._direct is not None and store._direct.use_script


def test_a_redis_that_refuses_scripts_is_read_by_pipeline(trained: TrainedHome, redis_url: str) -> None:
    """ACLs or a managed Redis may forbid EVALSHA: the read falls back, same values."""
    import redis.exceptions as rex

    store = _store(trained, "redis", read_path="direct")
    assert store._direct is not None and store._direct.use_script

    class Refusing:
        sha = "0" * 40  # unknown to Redis: the lane hears NOSCRIPT and hands the read to the script

        async def __call__(self, **kwargs: object) -> list:
            raise rex.ResponseError("NOPERM this user has no permissions to run the 'evalsha' command")

    plan = store.service(FEATURE_SERVICE).plan
    assert plan is not None and plan.script
    store._direct._scripts[plan.script] = Refusing()
    want = store.read(store.service(FEATURE_SERVICE), _keys())
    got = asyncio.run(store.read_async(store.service(FEATURE_SERVICE), _keys()))
    np.testing.assert_array_equal(want.values, got.values)
    assert not store._direct.use_script


def test_the_lane_connection_reads_the_same_and_survives_kills_flushes_and_cancels(trained: TrainedHome, redis_url: str) -> None:
    """A read with none other in flight goes on the reader's own connection (the lane); the
    values are Feast's, and a killed lane connection, a flushed script cache, overlapping reads
    and a cancelled read all leave later reads correct, on the lane again."""
    import redis

    store = _store(trained, "redis", read_path="direct")
    spec = store.service(FEATURE_SERVICE)
    want = _store(trained, "redis", read_path="feast").read(spec, _keys())
    direct = store._direct
    assert direct is not None and direct.use_script
    host, port = redis_url.split(",")[0].split(":")
    admin = redis.Redis(host=host, port=int(port))
    on_lane: list[bool] = []
    lane_read = direct._read_on_lane

    async def counting_lane(*args: object) -> object:
        reply = await lane_read(*args)  # type: ignore[arg-type]
        on_lane.append(reply is not None)
        return reply

    direct._read_on_lane = counting_lane  # type: ignore[method-assign]

    async def read() -> None:
        got = await store.read_async(spec, _keys())
        np.testing.assert_array_equal(want.status, got.status)
        np.testing.assert_array_equal(want.values, got.values)

    async def lane_client_id() -> int:
        conn = direct._lane
        await conn.send_command("CLIENT", "ID")
        return int(await conn.read_response())

    async def run() -> None:
        admin.script_flush()
        await read()  # the first read loads the script through the pool (NOSCRIPT on the lane)
        await read()
        assert on_lane == [False, True]
        first_id = await lane_client_id()

        admin.client_kill_filter(_id=first_id)  # Redis drops the lane: that read falls back
        await read()
        await read()  # ... and the next one reconnects the lane
        assert on_lane[2:] == [False, True]
        assert await lane_client_id() != first_id

        admin.script_flush()  # NOSCRIPT on the lane: the pool's Script loads it again
        await read()
        await read()
        assert on_lane[4:] == [False, True]

        await asyncio.gather(*(read() for _ in range(6)))  # overlapping reads: one lane, the rest pooled
        assert on_lane[6:] == [True]

        for _ in range(3):  # cancelled while it waits for Redis: it stops, or finishes its read
            cancelled = asyncio.ensure_future(store.read_async(spec, _keys()))
            await asyncio.sleep(0)  # the read has sent its command when it is cancelled
            assert direct._lane_busy
            cancelled.cancel()
            try:
                got = await cancelled
            except asyncio.CancelledError:
                pass
            else:
                np.testing.assert_array_equal(want.values, got.values)
        for _ in range(3):  # a late reply is never taken for the next read's
            await read()
        assert on_lane[-3:] == [True, True, True]

    asyncio.run(run())


def test_cache_serves_identical_values_and_counts_hits(trained: TrainedHome, online_store: str) -> None:
    cache = EntityCache(ttl_s=60, max_entries=1000)
    cached = _store(trained, online_store, read_path="direct", cache=cache)
    plain = _store(trained, online_store, read_path="direct")
    spec = cached.service(FEATURE_SERVICE)
    first = cached.read(spec, _keys())
    second = cached.read(spec, _keys())  # all from the cache
    want = plain.read(plain.service(FEATURE_SERVICE), _keys())
    for got in (first, second):
        np.testing.assert_array_equal(got.status, want.status)
        np.testing.assert_array_equal(got.values, want.values)
    assert 0 < len(cache) <= 1000


def test_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache = EntityCache(ttl_s=1.0, max_entries=2, clock=lambda: now[0])
    for k in "abc":
        cache.put(k, k)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") == "c"
    now[0] = 2.0
    assert cache.get("c") is None


def test_an_unservable_view_is_unavailable_on_every_read_path(trained: TrainedHome, online_store: str) -> None:
    """A view Feast would refuse (disabled, not materialized) answers Unavailable, not a bare
    error, whether the batch is read in a thread or on the event loop."""
    direct = _store(trained, online_store, read_path="direct")
    spec = direct.service(FEATURE_SERVICE)
    reason = "Feature view 'driver_hourly_stats' is disabled and cannot serve features"
    spec = dataclasses.replace(spec, plan=dataclasses.replace(spec.plan, unservable=reason))
    with pytest.raises(Unavailable, match="cannot serve features"):
        direct.read(spec, _keys())
    if direct.async_reads:
        with pytest.raises(Unavailable, match="cannot serve features"):
            asyncio.run(direct.read_async(spec, _keys()))


# -- a second, small Feast repo: an Int32 entity, two feature services over one view --------

STORE_IDS = [1, 2, 3, 2, 99]  # repeated and unknown ids


@pytest.fixture(scope="module")
def int32_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A Feast repo of its own (project meshserve_int32, so its Redis keys never meet the demo's):
    entity `store` with an Int32 join key, view store_stats (score, rating), and two
    feature services selecting different features of that view; materialized into SQLite
    and, when Redis answers, into the tests' Redis db."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Int32

    from meshserve_feature_repo.config import FeastSettings
    from tests.fixtures.trained import REDIS_TEST_URL, redis_available

    root = tmp_path_factory.mktemp("int32_repo")
    (root / "data").mkdir()
    now = datetime.now(UTC)
    pd.DataFrame({
        "store_id": pd.Series([1, 2, 3], dtype="int32"),
        "score": pd.Series([0.5, 0.75, 0.25], dtype="float32"),
        "rating": pd.Series([4.0, 3.5, 5.0], dtype="float32"),
        "event_timestamp": [now - timedelta(hours=1)] * 3,
        "created": [now] * 3,
    }).to_parquet(root / "data" / "stores.parquet")
    common = dict(feast_registry=root / "registry.db", feast_data_dir=root / "data", sqlite_path=root / "online.db",
                  feast_project="meshserve_int32", redis_url=REDIS_TEST_URL)
    stores = {"sqlite": FeastSettings(online_store="sqlite", **common)}
    if redis_available():
        stores["redis"] = FeastSettings(online_store="redis", **common)
    entity = Entity(name="store", join_keys=["store_id"], value_type=ValueType.INT32)
    source = FileSource(name="stores", path=str(root / "data" / "stores.parquet"), timestamp_field="event_timestamp",
                        created_timestamp_column="created")
    view = FeatureView(name="store_stats", entities=[entity], ttl=timedelta(days=2), online=True, source=source,
                       schema=[Field(name="store_id", dtype=Int32), Field(name="score", dtype=Float32),
                               Field(name="rating", dtype=Float32)])
    services = [FeatureService(name="stores", features=[view]),
                FeatureService(name="store_ratings", features=[view[["rating"]]])]
    for settings in stores.values():
        fs = FeatureStore(config=settings.repo_config())
        fs.apply([entity, source, view, *services])
        fs.materialize(now - timedelta(days=1), now)
    return stores


def _int32_store(int32_repo: dict[str, object], online_store: str, **kw: object) -> OnlineFeatureStore:
    if online_store not in int32_repo:
        pytest.skip("Redis is not answering PING at 127.0.0.1:6379; start it to run the Redis read tests")
    store = OnlineFeatureStore(int32_repo[online_store], **kw)  # type: ignore[arg-type]
    store.load("stores")
    return store


def test_an_int32_join_key_reads_the_same_on_both_paths(int32_repo: dict[str, object], online_store: str) -> None:
    """Feast serializes an Int32 key as int32_val: the direct path must build the same key, or
    every entity reads as NOT_FOUND."""
    feast = _int32_store(int32_repo, online_store, read_path="feast")
    direct = _int32_store(int32_repo, online_store, read_path="direct")
    a = feast.read(feast.service("stores"), {"store_id": list(STORE_IDS)})
    b = direct.read(direct.service("stores"), {"store_id": list(STORE_IDS)})
    assert a.values[0][:4] == [0.5, 0.75, 0.25, 0.75]  # found, by Feast's own read
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.values, b.values)
    if direct.async_reads:
        c = asyncio.run(direct.read_async(direct.service("stores"), {"store_id": list(STORE_IDS)}))
        np.testing.assert_array_equal(a.values, c.values)
    assert direct.service("stores").int32_keys == frozenset({"store_id"})


def test_the_cache_keeps_feature_services_of_one_view_apart(int32_repo: dict[str, object], online_store: str) -> None:
    """Two feature services select different features of one view: a row cached for one must
    never answer the other (in either order)."""
    plain = _int32_store(int32_repo, online_store, read_path="feast")
    keys = {"store_id": list(STORE_IDS)}
    want = {name: plain.read(plain.service(name), keys) for name in ("stores", "store_ratings")}
    for order in (("stores", "store_ratings"), ("store_ratings", "stores")):
        cached = _int32_store(int32_repo, online_store, read_path="direct", cache=EntityCache(ttl_s=60, max_entries=100))
        for name in (*order, *order):  # the second round comes from the cache
            got = cached.read(cached.service(name), keys)
            assert got.names == want[name].names
            np.testing.assert_array_equal(got.values, want[name].values)
            np.testing.assert_array_equal(got.status, want[name].status)


def test_the_store_probe_never_answers_from_the_cache(trained: TrainedHome) -> None:
    """With the entity cache on, a probe must still reach the online store: a dead store has
    to read as not ready, not as the probe's cached row."""
    store = _store(trained, "sqlite", read_path="direct", cache=EntityCache(ttl_s=60, max_entries=100))
    store.probe(FEATURE_SERVICE)
    direct = store._direct
    assert direct is not None

    def store_down(**_: object) -> object:
        import sqlite3

        raise sqlite3.OperationalError("unable to open database file")

    direct.provider.online_read = store_down  # the store goes away after a first good probe
    with pytest.raises(Unavailable, match="unavailable"):
        store.probe(FEATURE_SERVICE)
