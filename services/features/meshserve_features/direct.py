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
from dataclasses import dataclass
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


class DirectReader:
    def __init__(self, store: Any, redis: bool, cache: EntityCache | None = None) -> None:
        self.store = store
        self.config = store.config
        self.online = store._get_provider().online_store
        self.provider = store._get_provider()
        self.redis = redis
        self.cache = cache

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
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        n = len(next(iter(keys.values())))
        values = np.full((n_features, n), np.nan)
        has = np.zeros((n_features, n), dtype=bool)
        ts = np.zeros((n_features, n))
        todo = []  # (view, unique entity tuples, inverse, decoded rows (None: read it))
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
            todo.append((view, entities, inverse, cached))

        def proto(view: ViewPlan, entity: tuple) -> Any:
            vals = [Value(string_val=v) if isinstance(v, str) else Value(int64_val=int(v)) for v in entity]
            return EntityKey(join_keys=list(view.join_keys), entity_values=vals)

        # Read every miss of every view; for Redis in one pipeline.
        misses = [[i for i, c in enumerate(cached) if c is None] for _, _, _, cached in todo]
        if self.redis:
            commands, spans = [], []
            for (view, entities, _, _), miss in zip(todo, misses, strict=True):
                rkeys = self.online._generate_redis_keys_for_entities(self.config, [proto(view, entities[i]) for i in miss])
                spans.append(len(rkeys))
                commands += [(k, list(view.hset_keys)) for k in rkeys]
            replies = self.online._read_hash_fields(self.config, commands) if commands else []
            offset = 0
            read_rows = []
            for (view, _, _, _), span in zip(todo, spans, strict=True):
                chunk = replies[offset:offset + span]
                offset += span
                read_rows.append(self.online._convert_redis_values_to_protobuf(chunk, view.fv_name, list(view.redis_fields)) if chunk else [])
        else:
            read_rows = [
                self.provider.online_read(config=self.config, table=view.fv,
                                          entity_keys=[proto(view, entities[i]) for i in miss],
                                          requested_features=list(view.features)) if miss else []
                for (view, entities, _, _), miss in zip(todo, misses, strict=True)
            ]

        for (view, entities, inverse, cached), miss, rows in zip(todo, misses, read_rows, strict=True):
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
