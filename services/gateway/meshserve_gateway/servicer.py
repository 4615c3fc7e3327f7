"""PredictionService: a thin adapter over the pipeline."""

from __future__ import annotations

import grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_gateway.metrics import stage
from meshserve_gateway.pipeline import Deadline, Pipeline


class PredictionServicer(prediction_pb2_grpc.PredictionServiceServicer):
    def __init__(self, pipeline: Pipeline, default_timeout_s: float) -> None:
        self.pipeline = pipeline
        self.default_timeout_s = default_timeout_s

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        seconds = self.default_timeout_s if remaining is None else min(remaining, self.default_timeout_s)
        return Deadline(seconds)

    async def PredictEntities(self, request: prediction_pb2.PredictEntitiesRequest, context: grpc.aio.ServicerContext) -> prediction_pb2.PredictResponse:
        with stage("total", traced=False):
            return await self.pipeline.predict_entities(request.entities, self._deadline(context))

    async def Predict(self, request: prediction_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> prediction_pb2.PredictResponse:
        with stage("total", traced=False):
            return await self.pipeline.predict_rows(request.rows, self._deadline(context))
