"""FeatureService.GetOnlineFeatures: validate, one store read, answer a columnar frame."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from meshserve.v1 import features_pb2, features_pb2_grpc

from meshserve_runtime.codecs import frame_columns
from meshserve_runtime.errors import InvalidArgument, NotFound, Unavailable
from meshserve_runtime.tracing import span

from meshserve_features.metrics import ENTITIES_PER_REQUEST, FEATURE_VALUES, STORE_READ_DURATION
from meshserve_features.store import FeatureBatch, ServiceSpec, Status

_STATUS_NAMES = {int(s): s.name for s in Status}
_PRESENT = int(Status.PRESENT)  # a plain int: IntEnum attribute access is slow per call


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class FeatureReader(Protocol):
    """What the servicer needs from the loaded store (a fake in unit tests)."""

    def service(self, name: str) -> ServiceSpec: ...

    @property
    def service_names(self) -> list[str]: ...

    def read(self, spec: ServiceSpec, keys: Mapping[str, Sequence[Any]]) -> FeatureBatch: ...


RunBlocking = Callable[..., Awaitable[FeatureBatch]]
RunAsync = Callable[[Awaitable[FeatureBatch]], Awaitable[FeatureBatch]]


async def _to_thread(fn: Callable[..., FeatureBatch], *args: object) -> FeatureBatch:
    return await asyncio.to_thread(fn, *args)


async def _await(read: Awaitable[FeatureBatch]) -> FeatureBatch:
    return await read


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    """Thin adapter: validation and encoding here, Feast in the store."""

    def __init__(
        self,
        default_service: str,
        max_entities: int,
        run_blocking: RunBlocking = _to_thread,
        run_async: RunAsync = _await,
    ) -> None:
        self.default_service = default_service
        self.max_entities = max_entities
        self.store: FeatureReader | None = None
        # Store reads block (SQLite has no async path in Feast): they run off the event loop.
        self._run_blocking = run_blocking
        # Stores with an async path (Redis) read on the loop: no thread hand-off per call.
        self._run_async = run_async

    async def GetOnlineFeatures(
        self, request: features_pb2.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetOnlineFeaturesResponse:
        store = self.store
        if store is None:
            raise Unavailable("the features service is still loading the Feast registry; retry shortly")
        name = request.feature_service or self.default_service
        try:
            spec = store.service(name)
        except KeyError:
            raise NotFound(f"feature service {name!r} not found; this server has {store.service_names}") from None

        keys = self.validate_entities(request, spec)
        n = request.entities.num_rows
        ENTITIES_PER_REQUEST.observe(n)
        start = time.perf_counter()
        with span("store_read", entities=n, feature_service=spec.name):
            if getattr(store, "async_reads", False):
                batch = await self._run_async(store.read_async(spec, keys))  # type: ignore[attr-defined]
            else:
                batch = await self._run_blocking(store.read, spec, keys)
        STORE_READ_DURATION.observe(time.perf_counter() - start)
        return self.encode(spec, batch)

    def validate_entities(self, request: features_pb2.GetOnlineFeaturesRequest, spec: ServiceSpec) -> dict[str, list[Any]]:
        """Entity frame -> {join key: list of values}, or InvalidArgument naming what is wrong."""
        frame = request.entities
        expected = list(spec.join_keys)
        n = frame.num_rows
        if n > self.max_entities:
            raise InvalidArgument(f"{n} entity rows in one call; at most {self.max_entities} are accepted (split the batch)")
        if n == 0:
            raise InvalidArgument(f"no entity rows: send 1..{self.max_entities} rows of {expected}")
        columns = frame_columns(frame)
        missing = [k for k in expected if k not in columns]
        if missing:
            raise InvalidArgument(
                f"missing entity key column(s) {missing}; feature service {spec.name!r} needs {expected}"
            )
        unknown = sorted(set(columns) - set(expected))
        if unknown:
            raise InvalidArgument(f"unknown entity column(s) {unknown}; feature service {spec.name!r} takes exactly {expected}")
        keys: dict[str, list[Any]] = {}
        for key in expected:
            col = columns[key]
            want = spec.join_keys[key]
            if col.kind != want:
                raise InvalidArgument(
                    f"entity key column {key!r} must be {want.removesuffix('_values')}, got {col.kind.removesuffix('_values')}"
                )
            if col.null is not None:
                row = list(col.null).index(True)
                raise InvalidArgument(f"entity key column {key!r} is null at row {row}; entity keys can't be null")
            values = list(col.values)
            if key in spec.int32_keys:
                bad = next((i for i, v in enumerate(values) if not _INT32_MIN <= v <= _INT32_MAX), None)
                if bad is not None:
                    raise InvalidArgument(
                        f"entity key column {key!r} is Int32 in the feature store; row {bad} holds {values[bad]}, "
                        f"outside {_INT32_MIN}..{_INT32_MAX}"
                    )
            keys[key] = values
        return keys

    def encode(self, spec: ServiceSpec, batch: FeatureBatch) -> features_pb2.GetOnlineFeaturesResponse:
        """Double columns in the feature service's order, null where not PRESENT, plus statuses."""
        resp = features_pb2.GetOnlineFeaturesResponse(feature_service=spec.name)
        frame = resp.features
        frame.num_rows = len(batch.status[0]) if batch.status else 0
        absent_total = 0
        for name, values, statuses in zip(batch.names, batch.values, batch.status, strict=True):
            resp.statuses.add(name=name, statuses=statuses)
            column = frame.columns.add(name=name).double_values.values
            present = statuses.count(_PRESENT)
            if present == len(statuses):
                column.extend(values)
                continue
            absent_total += len(statuses) - present
            # 0.0 is the placeholder under the null mask (not NaN: nothing downstream must see one).
            column.extend([v if s == _PRESENT else 0.0 for v, s in zip(values, statuses, strict=True)])
            frame.columns[-1].null_mask.extend([s != _PRESENT for s in statuses])
        total = sum(len(s) for s in batch.status)
        if not absent_total:  # the common case: one counter, no counting pass
            FEATURE_VALUES.labels(spec.name, "PRESENT").inc(total)
            return resp
        counts = Counter(code for statuses in batch.status for code in statuses)
        for code, count in counts.items():
            FEATURE_VALUES.labels(spec.name, _STATUS_NAMES.get(code, str(code))).inc(count)
        return resp
