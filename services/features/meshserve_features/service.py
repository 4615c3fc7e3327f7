"""The features Service: loads Feast once, then serves GetOnlineFeatures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from meshserve.v1 import features_pb2_grpc

from meshserve_runtime.errors import Unavailable
from meshserve_runtime.metrics import ARTIFACT_INFO
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME
from meshserve_runtime.server import ReadinessCallback, Service

from meshserve_features.cache import EntityCache
from meshserve_features.readiness import StoreReadiness
from meshserve_features.servicer import FeatureServicer
from meshserve_features.settings import FeaturesSettings
from meshserve_features.store import FeatureBatch, OnlineFeatureStore

log = logging.getLogger("meshserve.features")


class FeaturesService(Service):
    name = FEATURES_HEALTH_NAME

    def __init__(self, settings: FeaturesSettings) -> None:
        self.settings = settings
        # Redis is read on the event loop (redis.asyncio; a thread hand-off per call cost more
        # than the read). SQLite has no async path in Feast: its reads, and the store probes,
        # go to this small dedicated pool, off the event loop and off the default pool that
        # load() uses.
        self._executor = ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="feast-read")
        self.servicer = FeatureServicer(settings.feature_service, settings.max_entities, self._run_read, self._run_async)
        self.store: OnlineFeatureStore | None = None
        self.readiness = StoreReadiness(settings.store_probe_interval_s)

    async def _run_read(self, fn: Callable[..., FeatureBatch], *args: object) -> FeatureBatch:
        return await self._run_async(asyncio.get_running_loop().run_in_executor(self._executor, fn, *args))

    async def _run_async(self, read: Awaitable[FeatureBatch]) -> FeatureBatch:
        try:
            return await read
        except Unavailable as err:
            # The store went away: not-ready now, not at the next probe (the caller still
            # gets this UNAVAILABLE with the store's own message).
            await self.readiness.report(False, err.message)
            raise

    async def _probe(self, store: OnlineFeatureStore) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, store.probe, self.settings.feature_service)

    def bind_readiness(self, set_ready: ReadinessCallback) -> None:
        self.readiness.bind(set_ready)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        features_pb2_grpc.add_FeatureServiceServicer_to_server(self.servicer, server)
        return [FEATURES_HEALTH_NAME]

    async def load(self) -> bool:
        """Ready once the registry is loaded and the online store answered a probe read."""
        s = self.settings
        # A fresh FeatureStore per attempt: the registry is cached forever once loaded, so a
        # failed attempt (e.g. before `make train` finished) must not pin a stale one.
        cache = EntityCache(s.cache_ttl_s, s.cache_max_entries) if s.cache_ttl_s > 0 else None
        store = OnlineFeatureStore(s, enforce_ttl=s.enforce_ttl, read_path=s.read_path, cache=cache, redis_read=s.redis_read,
                                     redis_script_max_keys=s.redis_script_max_keys, redis_lane=s.redis_lane)
        try:
            await asyncio.to_thread(store.load, s.feature_service)
        except (FileNotFoundError, LookupError, Unavailable) as err:
            # Expected while training has not run yet or the store is down: no traceback.
            log.warning("features not ready: %s", err)
            return False
        self.store = store
        self.servicer.store = store
        self.readiness.start(lambda: self._probe(store), store.where)
        ARTIFACT_INFO.info({
            "feature_service": s.feature_service,
            "online_store": s.online_store,
            "feast_project": s.feast_project,
            "feast_registry": s.describe_registry(),
        })
        return True

    async def close(self) -> None:
        await self.readiness.stop()
        self.servicer.store = None
        if self.store is not None:
            self.store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
