"""The preprocess Service: loads the preprocessor by alias, then serves Transform."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from meshserve.v1 import preprocess_pb2_grpc

from meshserve_runtime.metrics import ARTIFACT_INFO
from meshserve_runtime.protocol import PREPROCESS_HEALTH_NAME
from meshserve_runtime.server import Service

from meshserve_preprocess.servicer import PreprocessServicer
from meshserve_preprocess.settings import PreprocessSettings
from meshserve_preprocess.transformer import load_preprocessor

class PreprocessService(Service):
    name = PREPROCESS_HEALTH_NAME

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.servicer = PreprocessServicer(settings.max_rows)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        preprocess_pb2_grpc.add_PreprocessServiceServicer_to_server(self.servicer, server)
        return [PREPROCESS_HEALTH_NAME]

    async def load(self) -> bool:
        s = self.settings
        # MLflow and scikit-learn work is blocking: keep the event loop (health) answering.
        loaded = await asyncio.to_thread(load_preprocessor, s.mlflow_tracking_uri, s.model_name, s.alias)
        self.servicer.current = loaded
        ARTIFACT_INFO.info(loaded.artifact.labels())
        return True
