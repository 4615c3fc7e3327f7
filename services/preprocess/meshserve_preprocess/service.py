"""The preprocess Service: loads the preprocessor by alias, then serves Transform."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from meshserve.v1 import preprocess_pb2_grpc

from meshserve_runtime import heap
from meshserve_runtime.metrics import ARTIFACT_INFO
from meshserve_runtime.protocol import PREPROCESS_HEALTH_NAME
from meshserve_runtime.registry import ResolvedArtifact, bound_http_requests
from meshserve_runtime.reload import AliasWatcher
from meshserve_runtime.server import Service

from meshserve_preprocess.servicer import PreprocessServicer
from meshserve_preprocess.settings import PreprocessSettings
from meshserve_preprocess.transformer import load_preprocessor

#: Seconds after a switch before the retired version's leftovers are collected.
RETIRED_VERSION_COLLECT_AFTER_S = 10.0


class PreprocessService(Service):
    name = PREPROCESS_HEALTH_NAME

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.servicer = PreprocessServicer(settings.max_rows)
        self._refreezes: set[asyncio.Task[None]] = set()
        self.watcher = AliasWatcher(
            settings.mlflow_tracking_uri, settings.model_name, settings.alias, settings.alias_poll_s,
            served=lambda: None if self.servicer.current is None else self.servicer.current.artifact.version,
            switch=self._switch,
        )

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server(self.servicer, server)
        return [PREPROCESS_HEALTH_NAME]

    async def _switch(self, artifact: ResolvedArtifact | None) -> None:
        s = self.settings
        # MLflow and scikit-learn work is blocking: keep the event loop (health, and on a
        # reload the old version) answering.
        loaded = await asyncio.to_thread(
            load_preprocessor, s.mlflow_tracking_uri, s.model_name, s.alias, artifact, s.compile,
            trusted_types=s.skops_trusted_types, allow_unsigned=s.allow_unsigned_artifacts,
        )
        # One reference swap: in-flight calls keep the version they pinned. The replaced
        # version stays as `previous` until the next switch, for calls pinned to its run
        # (the gateway asks for it when the model still serves that release); the one that
        # drops out is freed when the last call holding it ends.
        dropped = self.servicer.install(loaded)
        ARTIFACT_INFO.info(loaded.artifact.labels())
        if dropped is not None:
            task = asyncio.get_running_loop().create_task(self._refreeze_later())
            self._refreezes.add(task)
            task.add_done_callback(self._refreezes.discard)

    async def _refreeze_later(self) -> None:
        """Once in-flight calls have dropped the old version, collect its reference cycles
        (heap.py). Calls are short; one still holding it after this just keeps it alive."""
        await asyncio.sleep(RETIRED_VERSION_COLLECT_AFTER_S)
        heap.refreeze("previous preprocessor version retired")

    async def load(self) -> bool:
        bound_http_requests(self.settings.registry_http_retries, self.settings.registry_http_timeout_s)
        await self._switch(None)
        self.watcher.start()
        return True

    async def close(self) -> None:
        await self.watcher.stop()
        for task in list(self._refreezes):
            task.cancel()
