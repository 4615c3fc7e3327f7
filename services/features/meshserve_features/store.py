"""The Feast wrapper: registry loaded once, one online-store read per call, lists out.

All registry work (feature services, their join keys, feature order, TTLs) happens in
load(); read() only asks Feast's online store for N entity rows and turns the response
into per-feature float values plus a per-value status.

Per-request data stay Python lists from the store's reply to the response proto, never
numpy: a call carries a few to a few thousand values, where each numpy call's fixed cost
(tens of microseconds once the process has sat idle a few milliseconds, as at low load)
outweighed the arithmetic it saved (see bench/HISTORY.md).

Feast quirks handled here (feast 0.67):
- The response lists features in its own order, not the FeatureService's: columns are
  matched by name.
- Redis answers PRESENT with an empty value for an entity it has never seen (SQLite says
  NOT_FOUND): a value that is not set is NOT_FOUND whatever the status says.
- The online read does not check the feature view TTL (only the pre-computed path does),
  while the offline point-in-time join does: with enforce_ttl, a value older than its TTL
  is OUTSIDE_MAX_AGE and null, so online matches offline.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshserve_feature_repo.config import FeastSettings
from meshserve_runtime.errors import Unavailable

from meshserve_features.cache import EntityCache
from meshserve_features.direct import DirectReader, ReadPlan, key_value_field, numeric_values

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("meshserve.features")


class Status(IntEnum):
    """Per-value status; numbers match meshserve.v1.FeatureStatus."""

    PRESENT = 1
    NOT_FOUND = 2
    OUTSIDE_MAX_AGE = 3


# Plain ints: IntEnum attribute access is slow on a per-request path.
_PRESENT, _NOT_FOUND, _OUTSIDE_MAX_AGE = (int(s) for s in (Status.PRESENT, Status.NOT_FOUND, Status.OUTSIDE_MAX_AGE))

# feast.protos.feast.serving.ServingService_pb2.FieldStatus numbers.
_FEAST_PRESENT = 1
_FEAST_OUTSIDE_MAX_AGE = 4

# Frame column kind each Feast join-key type must arrive as.
KEY_KIND_INT64 = "int64_values"
KEY_KIND_STRING = "string_values"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a Feast FeatureService needs and returns, resolved once at load."""

    name: str
    features: tuple[str, ...]
    """Feature names in the FeatureService's order (the response order)."""
    join_keys: Mapping[str, str]
    """Join key -> frame column kind it must have (e.g. int64_values), in request order."""
    ttl_s: tuple[float | None, ...]
    """Per feature: its feature view's TTL in seconds (None: never expires)."""
    feast_service: Any
    """The feast.FeatureService object, passed to every read (no registry lookup)."""
    plan: Any = None
    """The direct read path's ReadPlan (read_path="direct"), resolved at load."""
    int32_keys: frozenset[str] = frozenset()
    """Join keys Feast declares Int32: sent as int64 columns, they must fit in 32 bits."""


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """features x rows: one list per feature, in the service's order."""

    names: tuple[str, ...]
    values: list[list[float]]
    """Per feature, one float per row (NaN where the status is not PRESENT)."""
    status: list[list[int]]
    """Per feature, one Status code per row."""


def _key_kind(dtype: Any) -> str:
    """The frame column kind a join key of this Feast type arrives as (Int32 too comes as
    int64 values); the supported types are direct.key_value_field's."""
    return KEY_KIND_STRING if key_value_field(dtype) == "string_val" else KEY_KIND_INT64


class OnlineFeatureStore:
    """A loaded Feast FeatureStore and the FeatureServices of its project."""

    def __init__(
        self,
        settings: FeastSettings,
        *,
        enforce_ttl: bool = True,
        clock: Callable[[], float] = time.time,
        read_path: str = "direct",
        cache: EntityCache | None = None,
        redis_read: str = "script",
        redis_script_max_keys: int = 64,
        redis_lane: bool = True,
    ) -> None:
        self.settings = settings
        self.redis_read = redis_read
        self.redis_script_max_keys = redis_script_max_keys
        self.redis_lane = redis_lane
        self.enforce_ttl = enforce_ttl
        if read_path not in ("direct", "feast"):
            raise ValueError(f"read_path must be 'direct' or 'feast', got {read_path!r}")
        self.read_path = read_path
        self.cache = cache if read_path == "direct" else None  # the cache sits in the direct path
        self._direct: DirectReader | None = None
        self.clock = clock  # wall clock for TTL checks (injectable for tests)
        self.where = settings.describe_online_store()
        self._store: FeatureStore | None = None
        self._services: dict[str, ServiceSpec] = {}

    # -- load (blocking; run in a thread) ---------------------------------------------

    def load(self, probe_service: str) -> None:
        """Load the registry and every FeatureService once, then probe the online store."""
        from feast import FeatureStore

        start = time.perf_counter()
        if self.settings.registry_kind == "file" and not Path(self.settings.feast_registry).exists():
            raise FileNotFoundError(f"no Feast registry at {self.settings.feast_registry} (run `make train`)")
        # Cache TTL 0: the registry is read once here and never refreshed on the request path.
        store = FeatureStore(config=self.settings.repo_config(registry_cache_ttl_s=0))
        if self.settings.online_store == "redis":
            _fail_fast_redis(store)
        if self.read_path == "direct":
            self._direct = DirectReader(store, redis=self.settings.online_store == "redis", cache=self.cache,
                                        redis_read=self.redis_read,
                                        script_max_keys=self.redis_script_max_keys, lane=self.redis_lane)
        services = {fs.name: self._resolve(store, fs) for fs in store.list_feature_services()}
        if probe_service not in services:
            raise LookupError(
                f"feature service {probe_service!r} is not in the registry {self.settings.describe_registry()} "
                f"(project {self.settings.feast_project!r}; it has {sorted(services)})"
            )
        self._store, self._services = store, services
        self.probe(probe_service)
        log.info(
            "feast loaded",
            extra={"online_store": self.where, "feature_services": sorted(services),
                   "seconds": round(time.perf_counter() - start, 2)},
        )

    def _resolve(self, store: FeatureStore, fs: Any) -> ServiceSpec:
        features: list[str] = []
        ttls: list[float | None] = []
        keys: dict[str, str] = {}
        int32_keys: set[str] = set()
        for proj in fs.feature_view_projections:
            if proj.join_key_map:
                raise RuntimeError(f"feature service {fs.name!r}: join key mapping is not supported")
            fv = store.get_feature_view(proj.name)
            ttl = fv.ttl.total_seconds() if fv.ttl else None
            for col in fv.entity_columns:
                keys.setdefault(col.name, _key_kind(col.dtype))
                if key_value_field(col.dtype) == "int32_val":
                    int32_keys.add(col.name)
            for f in proj.features:
                features.append(f.name)
                ttls.append(ttl if ttl and ttl > 0 else None)
        if len(set(features)) != len(features):
            raise RuntimeError(f"feature service {fs.name!r} has duplicate feature names {features}")
        plan = self._direct.plan(fs, tuple(features)) if self._direct is not None else None
        return ServiceSpec(fs.name, tuple(features), keys, tuple(ttls), fs, plan, frozenset(int32_keys))

    def probe(self, service: str) -> None:
        """One read for a key that does not exist: proves the online store answers (never
        the entity cache: a probe it answered would report a dead store as ready)."""
        spec = self.service(service)
        dummy: dict[str, list[Any]] = {k: [0] if kind == KEY_KIND_INT64 else [""] for k, kind in spec.join_keys.items()}
        self.read(spec, dummy, use_cache=False)

    # -- per request -----------------------------------------------------------------

    def service(self, name: str) -> ServiceSpec:
        """The loaded FeatureService spec; KeyError if the registry has no such service."""
        return self._services[name]

    @property
    def service_names(self) -> list[str]:
        return sorted(self._services)

    def read(self, spec: ServiceSpec, keys: Mapping[str, Sequence[Any]], use_cache: bool = True) -> FeatureBatch:
        """One online-store read for N rows (blocking: run it off the event loop);
        use_cache=False bypasses the entity cache (direct path)."""
        if self._store is None:
            raise Unavailable("the Feast registry is not loaded yet")
        with self._store_errors():
            if self._direct is not None and spec.plan is not None:
                values, has, ts = self._direct.read(_servable(spec.plan), dict(keys), len(spec.features), use_cache)
                return self._finish_direct(spec, values, has, ts)
            rows = {k: list(keys[k]) for k in spec.join_keys}
            n = len(next(iter(rows.values()))) if rows else 0
            resp = self._store.get_online_features(features=spec.feast_service, entity_rows=rows)
        return self._to_batch(spec, resp.proto, n)

    @property
    def async_reads(self) -> bool:
        """True when read_async() serves reads on the event loop (Redis, direct path)."""
        return self._direct is not None and self._direct.redis

    async def read_async(self, spec: ServiceSpec, keys: Mapping[str, Sequence[Any]]) -> FeatureBatch:
        """read() without a thread: Redis through redis.asyncio (only when async_reads)."""
        if self._store is None or self._direct is None or spec.plan is None:
            raise Unavailable("the Feast registry is not loaded yet")
        with self._store_errors():
            values, has, ts = await self._direct.read_async(_servable(spec.plan), dict(keys), len(spec.features))
        return self._finish_direct(spec, values, has, ts)

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        """Failures that mean "the online store can't answer now" become Unavailable (both paths)."""
        try:
            yield
        except Exception as err:
            if _is_unavailable(err):
                raise Unavailable(f"online store {self.where} is unavailable: {type(err).__name__}: {err}") from err
            raise

    def _finish_direct(self, spec: ServiceSpec, values: list[list[float]], has: list[list[bool]], ts: list[list[float]]) -> FeatureBatch:
        # The direct path reads present values only: no Feast statuses to combine.
        return self._finish(spec, values, has, None, ts)

    def _to_batch(self, spec: ServiceSpec, proto: Any, n: int) -> FeatureBatch:
        index = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
        values: list[list[float]] = []
        has_value: list[list[bool]] = []
        feast_status: list[list[int]] = []
        ts: list[list[float]] = []
        for name in spec.features:
            vec = proto.results[index[name]]
            vals, has = numeric_values(vec.values)
            values.append(vals)
            has_value.append(has)
            feast_status.append(list(vec.statuses))
            ts.append([t.seconds + t.nanos * 1e-9 for t in vec.event_timestamps])
        return self._finish(spec, values, has_value, feast_status, ts)

    def _finish(self, spec: ServiceSpec, values: list[list[float]], has: list[list[bool]],
                fst: list[list[int]] | None, ts: list[list[float]]) -> FeatureBatch:
        """Statuses from per-feature values, has-value, Feast statuses (None: all PRESENT,
        the direct path) and event timestamps in epoch seconds (both paths)."""
        now = self.clock() if self.enforce_ttl else None
        status: list[list[int]] = []
        out: list[list[float]] = []
        for j, (vals, present) in enumerate(zip(values, has, strict=True)):
            ttl = spec.ttl_s[j] if now is not None else None
            oldest = now - ttl if now is not None and ttl is not None else None
            feast = fst[j] if fst is not None else None
            if feast is None and (oldest is None or min(ts[j], default=oldest) >= oldest) and all(present):
                # The common case: every value set and fresh.
                status.append([_PRESENT] * len(vals))
                out.append(vals)
                continue
            codes = [
                _value_status(h, f, t, oldest)
                for h, f, t in zip(present, feast if feast is not None else _all_present(len(vals)), ts[j], strict=True)
            ]
            status.append(codes)
            out.append([v if c == _PRESENT else _NAN for v, c in zip(vals, codes, strict=True)])
        return FeatureBatch(spec.features, out, status)

    def close(self) -> None:
        self._store = None


_NAN = float("nan")


def _all_present(n: int) -> list[int]:
    return [_FEAST_PRESENT] * n


def _value_status(has: bool, feast_status: int, ts: float, oldest: float | None) -> int:
    """One value's status: an unset value is NOT_FOUND whatever Feast says (Redis answers
    PRESENT with no value for an entity it never saw); a set one is OUTSIDE_MAX_AGE when
    Feast says so or it is older than its view's TTL allows (`oldest`), else PRESENT."""
    if not has:
        return _NOT_FOUND
    if feast_status != _FEAST_PRESENT:
        return _OUTSIDE_MAX_AGE if feast_status == _FEAST_OUTSIDE_MAX_AGE else _NOT_FOUND
    if oldest is not None and ts < oldest:
        return _OUTSIDE_MAX_AGE
    return _PRESENT


def _servable(plan: ReadPlan) -> ReadPlan:
    """The plan, or the ValueError Feast raises for a view it can't serve (checked once at load)."""
    if plan.unservable:
        raise ValueError(plan.unservable)
    return plan


def _fail_fast_redis(store: FeatureStore) -> None:
    """One immediate retry instead of redis-py's default 3 with 1-10 s backoff.

    With the default, a call during a Redis outage blocks about 7 s (past the gateway's
    deadline) and holds a read thread; failing fast answers UNAVAILABLE in time. The one
    retry still covers a pooled connection that went stale when Redis restarted. Feast has
    no public hook for its Redis client, hence the guarded private call.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client = store.provider.online_store._get_client(store.config.online_store)  # type: ignore[attr-defined]
        client.set_retry(Retry(NoBackoff(), 1))
    except AttributeError as err:
        log.warning("could not shorten Redis retries (feast internals changed?): %s", err)


def _is_unavailable(err: BaseException) -> bool:
    """Errors that mean "the online store can't answer now", not "the request is wrong"."""
    if isinstance(err, (ConnectionError, TimeoutError, OSError, sqlite3.OperationalError, sqlite3.DatabaseError)):
        return True
    try:
        import redis.exceptions as rex

        if isinstance(err, (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError)):
            return True
    except ImportError:
        pass
    # Feast refuses feature views that are not materialized yet (state CREATED/GENERATED).
    return isinstance(err, ValueError) and "cannot serve features" in str(err)
