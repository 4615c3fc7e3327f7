"""The direct read path: Feast's own online-store API, without get_online_features around it.

get_online_features redoes per call what never changes between calls (resolving the
feature service's views and their state, grouping feature references, building a
response proto we then take apart). Here that is done once at load (a ReadPlan); per
call we only serialize the entity keys with Feast's own helpers and read:
- Redis: every (entity, feature view) HMGET in ONE pipeline, with Feast's key and field
  helpers and its reply decoder (the same commands get_online_features sends);
- any other store (SQLite): the provider's online_read per feature view (a local file read).
The integration test asserts both paths return identical values on SQLite and Redis.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from meshserve_features.cache import EntityCache

_NUMERIC = frozenset({"float_val", "double_val", "int32_val", "int64_val", "bool_val"})


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """One feature view of a FeatureService, resolved at load."""

    fv: Any
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    rows: tuple[int, ...]
    """Row of each feature in the FeatureService's feature order."""
    fv_name: str
    hset_keys: tuple[Any, ...] = ()
    """Redis only: the hash fields Feast stores these features (and the timestamp) under."""
    redis_fields: tuple[str, ...] = ()
    """Redis only: the names of those fields, in order, as Feast's reply decoder wants them."""


@dataclass(frozen=True, slots=True)
class ReadPlan:
    views: tuple[ViewPlan, ...]
    unservable: str | None
    """Why Feast would refuse to serve (a view disabled or not materialized), else None."""


def _servable(fv: Any) -> str | None:
    if getattr(fv, "enabled", True) is False:
        return f"Feature view '{fv.name}' is disabled and cannot serve features"
    state = getattr(fv, "state", None)
    try:
        from feast.feature_view import FeatureViewState
    except ImportError:
        return None
    if isinstance(state, FeatureViewState) and state not in (FeatureViewState.STATE_UNSPECIFIED, FeatureViewState.AVAILABLE_ONLINE):
        return f"Feature view '{fv.name}' is in state '{state.name}' and cannot serve features"
    return None


@dataclass(slots=True)
class _Job:
    """One read in progress: outputs, per-view (view, entities, inverse, cached) and misses."""

    values: np.ndarray
    has: np.ndarray
    ts: np.ndarray
    todo: list[tuple[ViewPlan, list[tuple], np.ndarray, list[Any]]] = field(default_factory=list)
    misses: list[list[int]] = field(default_factory=list)
    commands: list[tuple[Any, list[Any]]] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)


def _entity_key(view: ViewPlan, entity: tuple) -> Any:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    vals = [Value(string_val=v) if isinstance(v, str) else Value(int64_val=int(v)) for v in entity]
    return EntityKey(join_keys=list(view.join_keys), entity_values=vals)


class DirectReader:
    def __init__(self, store: Any, redis: bool, cache: EntityCache | None = None) -> None:
        self.store = store
        self.config = store.config
        self.online = store._get_provider().online_store
        self.provider = store._get_provider()
        self.redis = redis
        self.cache = cache
        self._async_client: Any = None

    def plan(self, fs: Any, feature_order: tuple[str, ...]) -> ReadPlan:
        views = []
        reasons = []
        for proj in fs.feature_view_projections:
            fv = self.store.get_feature_view(proj.name)
            reason = _servable(fv)
            if reason:
                reasons.append(reason)
            feats = tuple(f.name for f in proj.features)
            fv_name = fv.name
            hset: tuple[Any, ...] = ()
            names: tuple[str, ...] = ()
            if self.redis:
                from feast.infra.online_stores.redis import _versioned_fv_name

                fv_name = _versioned_fv_name(fv, self.config)
                requested, fields = self.online._generate_hset_keys_for_features(fv, list(feats), fv_name_override=fv_name)
                hset, names = tuple(fields), tuple(requested)
            views.append(ViewPlan(fv, tuple(c.name for c in fv.entity_columns), feats,
                                  tuple(feature_order.index(f) for f in feats), fv_name, hset, names))
        return ReadPlan(tuple(views), "; ".join(reasons) or None)

    def read(self, plan: ReadPlan, keys: dict[str, np.ndarray], n_features: int) -> tuple[np.ndarray, ...]:
        """-> values, has_value [features, rows] and event timestamps (s) for N rows, one store round trip."""
        job = self._prepare(plan, keys, n_features)
        if self.redis:
            replies = self.online._read_hash_fields(self.config, job.commands) if job.commands else []
            read_rows = self._split_redis(job, replies)
        else:
            read_rows = [
                self.provider.online_read(config=self.config, table=view.fv,
                                          entity_keys=[_entity_key(view, entities[i]) for i in miss],
                                          requested_features=list(view.features)) if miss else []
                for (view, entities, _, _), miss in zip(job.todo, job.misses, strict=True)
            ]
        return self._assemble(job, read_rows)

    async def read_async(self, plan: ReadPlan, keys: dict[str, np.ndarray], n_features: int) -> tuple[np.ndarray, ...]:
        """read() for Redis on the event loop: the same commands in one redis.asyncio pipeline.

        Why: a thread hand-off per request cost ~1 ms of latency and a GIL fight at
        concurrency 1 here (make bench), far more than the read itself.
        """
        job = self._prepare(plan, keys, n_features)
        replies: list[Any] = []
        if job.commands:
            client = await self.async_client()
            async with client.pipeline(transaction=False) as pipe:
                for redis_key, fields in job.commands:
                    pipe.hmget(redis_key, fields)
                replies = await pipe.execute()
        return self._assemble(job, self._split_redis(job, replies))

    async def async_client(self) -> Any:
        """Feast's own redis.asyncio client for this store (same connection settings)."""
        if self._async_client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = await self.online._get_client_async(self.config.online_store)
            # One immediate retry (a pooled connection gone stale after a Redis restart),
            # not redis-py's default backoff that outlives the caller's deadline.
            client.set_retry(Retry(NoBackoff(), 1))
            self._async_client = client
        return self._async_client

    def _prepare(self, plan: ReadPlan, keys: dict[str, np.ndarray], n_features: int) -> _Job:
        """Unique entities per view, cache lookups, and (Redis) the HMGET commands of the misses."""
        n = len(next(iter(keys.values())))
        job = _Job(np.full((n_features, n), np.nan), np.zeros((n_features, n), dtype=bool), np.zeros((n_features, n)))
        for view in plan.views:
            cols = [keys[k] for k in view.join_keys]
            if len(cols) == 1:
                uniq, inverse = np.unique(cols[0], return_inverse=True)
                entities = [(v,) for v in uniq.tolist()]
            else:
                stacked = np.rec.fromarrays(cols)
                uniq, inverse = np.unique(stacked, return_inverse=True)
                entities = [tuple(u) for u in uniq.tolist()]
            cached = [self.cache.get((view.fv_name, e)) if self.cache is not None else None for e in entities]
            job.todo.append((view, entities, inverse, cached))
            job.misses.append([i for i, c in enumerate(cached) if c is None])
        if self.redis:
            for (view, entities, _, _), miss in zip(job.todo, job.misses, strict=True):
                rkeys = self.online._generate_redis_keys_for_entities(self.config, [_entity_key(view, entities[i]) for i in miss])
                job.spans.append(len(rkeys))
                job.commands += [(k, list(view.hset_keys)) for k in rkeys]
        return job

    def _split_redis(self, job: _Job, replies: list[Any]) -> list[list[Any]]:
        """HMGET replies -> Feast's (event_ts, {feature: Value}) rows, per view."""
        offset = 0
        read_rows = []
        for (view, _, _, _), span in zip(job.todo, job.spans, strict=True):
            chunk = replies[offset:offset + span]
            offset += span
            read_rows.append(self.online._convert_redis_values_to_protobuf(chunk, view.fv_name, list(view.redis_fields)) if chunk else [])
        return read_rows

    def _assemble(self, job: _Job, read_rows: list[list[Any]]) -> tuple[np.ndarray, ...]:
        values, has, ts = job.values, job.has, job.ts
        for (view, entities, inverse, cached), miss, rows in zip(job.todo, job.misses, read_rows, strict=True):
            for i, row in zip(miss, rows, strict=True):
                cached[i] = self._decode(view, row)
                if self.cache is not None:
                    self.cache.put((view.fv_name, entities[i]), cached[i])
            u_vals = np.array([c[0] for c in cached]).T  # [view features, unique entities]
            u_has = np.array([c[1] for c in cached]).T
            u_ts = np.array([c[2] for c in cached])
            r = list(view.rows)
            values[r] = u_vals[:, inverse]
            has[r] = u_has[:, inverse]
            ts[r] = u_ts[inverse]
        return values, has, ts

    @staticmethod
    def _decode(view: ViewPlan, row: tuple[Any, Any]) -> tuple[list[float], list[bool], float]:
        event_ts, data = row
        vals, has = [], []
        for f in view.features:
            v = data.get(f) if data else None
            kind = v.WhichOneof("val") if v is not None else None
            if kind in _NUMERIC:
                vals.append(float(getattr(v, kind)))
                has.append(True)
            else:
                vals.append(float("nan"))
                has.append(False)
        return vals, has, _seconds(event_ts)


def _seconds(ts: datetime | None) -> float:
    """Epoch seconds; a naive datetime from a store is UTC (never the host's local time)."""
    if ts is None:
        return 0.0
    return ts.timestamp() if ts.tzinfo is not None else calendar.timegm(ts.timetuple()) + ts.microsecond * 1e-6
