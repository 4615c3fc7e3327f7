"""The model Service: loads the model by alias onto its device, then serves V2 inference."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_runtime import heap
from meshserve_runtime.metrics import ARTIFACT_INFO
from meshserve_runtime.protocol import MODEL_HEALTH_NAME
from meshserve_runtime.registry import ResolvedArtifact, bound_http_requests
from meshserve_runtime.reload import AliasWatcher
from meshserve_runtime.server import Service

from meshserve_model import metrics
from meshserve_model.batching import Batcher, batch_buckets
from meshserve_model.model import LoadedModel, configure_threads, load_model
from meshserve_model.servicer import RETIRE_RECHECK_S, InferenceServicer
from meshserve_model.settings import ModelSettings

log = logging.getLogger("meshserve.model")


class ModelService(Service):
    name = MODEL_HEALTH_NAME

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.servicer = InferenceServicer(settings.model_name, settings.max_batch_rows, settings.reload_wait_s)
        self.watcher = AliasWatcher(
            settings.mlflow_tracking_uri, settings.model_name, settings.alias, settings.alias_poll_s,
            served=self._served_version, switch=self._switch,
        )
        if settings.alias_poll_s > 0:
            self.servicer.check_reload = self.watcher.check_now
        self._retiring: set[asyncio.Task[None]] = set()

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        return [MODEL_HEALTH_NAME]

    def _served_version(self) -> str | None:
        return None if self.servicer.current is None else self.servicer.current.artifact.version

    async def _load(self, artifact: ResolvedArtifact | None) -> LoadedModel:
        s = self.settings
        # Warm every batch size the batcher can form, so no real call is the first of its size.
        warmup = tuple(sorted(set(s.warmup_batch_sizes) | set(batch_buckets(s.max_batch_size))))
        # Loading and warm-up block: run them off the event loop so health (and, on a
        # reload, the old version) keeps answering.
        loaded = await asyncio.to_thread(
            load_model, s.mlflow_tracking_uri, s.model_name, s.alias, s.device, s.num_threads, warmup, s.dtype, artifact, s.optimize,
            allow_unsigned=s.allow_unsigned_artifacts,
        )
        # Forward passes run on this (the event loop's) thread, not the loader's: set its
        # thread count too, and run one small pass here so the thread's own state (its
        # OpenMP team) exists before the first real call. One pass, not every bucket: the
        # loader warmed those, and this blocks the loop (the old version, during a reload).
        configure_threads(s.num_threads)
        loaded.warm_up((1,))
        loaded.batcher = Batcher(loaded.predict, s.max_batch_size, s.max_queue_delay_us, s.max_queue_size)
        return loaded

    async def load(self) -> bool:
        bound_http_requests(self.settings.registry_http_retries, self.settings.registry_http_timeout_s)
        loaded = await self._load(None)
        self.servicer.install(loaded)
        ARTIFACT_INFO.info({**loaded.artifact.labels(), "device": str(loaded.device)})
        metrics.export_device(loaded.device, self.settings.dtype, self.settings.num_threads)
        self.watcher.start()
        return True

    async def _switch(self, artifact: ResolvedArtifact) -> None:
        """Load and warm the new version beside the old, swap, retire the old once unused."""
        try:
            new = await self._load(artifact)
        except Exception:
            metrics.RELOADS.labels("failed").inc()
            raise
        old = self.servicer.install(new)
        metrics.RELOADS.labels("switched").inc()
        ARTIFACT_INFO.info({**new.artifact.labels(), "device": str(new.device)})
        if old is not None:
            # `old` is now `previous` (this task retires it once unused), or was dropped by
            # install (this task frees it at once); a dropped older previous is freed by its own task.
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: LoadedModel) -> None:
        """Drop the old version once no call used it for reload_overlap_s and the new one
        paired with its preprocessor (checked periodically, not after a fixed time: while
        the preprocess service still serves the old release, e.g. its new version was
        refused, inputs for `old` keep coming and it keeps answering them); or at once when
        a later switch replaced it. Then free it after its in-flight calls are done."""
        servicer = self.servicer
        while servicer.previous is old:
            wait = servicer.previous_retire_in(self.settings.reload_overlap_s)
            if wait <= 0:
                servicer.previous = None
                break
            await asyncio.sleep(min(wait, RETIRE_RECHECK_S))
        if old.batcher is not None:
            await old.batcher.close()  # waits for queued calls; later stragglers run unbatched
        labels = old.artifact.labels()
        del old  # the last reference this task holds, before the collection below
        heap.refreeze("previous model version retired")  # its reference cycles (see heap.py)
        log.info("previous version freed", extra=labels)

    async def close(self) -> None:
        await self.watcher.stop()
        for task in list(self._retiring):
            task.cancel()
        current = self.servicer.current
        if current is not None and current.batcher is not None:
            await current.batcher.close()
