"""The model Service: loads the model by alias onto its device, then serves V2 inference."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_runtime.metrics import ARTIFACT_INFO
from meshserve_runtime.protocol import MODEL_HEALTH_NAME
from meshserve_runtime.server import Service

from meshserve_model.model import load_model
from meshserve_model.servicer import InferenceServicer
from meshserve_model.settings import ModelSettings


class ModelService(Service):
    name = MODEL_HEALTH_NAME

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.servicer = InferenceServicer(settings.model_name, settings.max_batch_rows)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        return [MODEL_HEALTH_NAME]

    async def load(self) -> bool:
        s = self.settings
        # Loading and warm-up block: run them off the event loop so health keeps answering.
        loaded = await asyncio.to_thread(
            load_model, s.mlflow_tracking_uri, s.model_name, s.alias, s.device, s.num_threads, s.warmup_batch_sizes
        )
        self.servicer.current = loaded
        ARTIFACT_INFO.info({**loaded.artifact.labels(), "device": str(loaded.device)})
        return True
