"""PredictionService: a thin adapter over the pipeline."""

from __future__ import annotations

import grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_gateway.metrics import stage
from meshserve_gateway.pipeline import Deadline, Pipeline


#: Time kept back from the caller's deadline for the answer's way back: a few ms plus 2%,
#: at most 50 ms.
ANSWER_MARGIN_S = 0.005
ANSWER_MARGIN_SHARE = 0.02
ANSWER_MARGIN_MAX_S = 0.05


class PredictionServicer(prediction_pb2_grpc.PredictionServiceServicer):
    def __init__(self, pipeline: Pipeline, default_timeout_s: float) -> None:
        self.pipeline = pipeline
        self.default_timeout_s = default_timeout_s

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        if remaining is None:
            return Deadline(self.default_timeout_s)
        # Stop a little before the caller's own timer: our DEADLINE_EXCEEDED, which names the
        # hop that was slow and carries the trace id, then reaches the caller before gRPC's
        # bare client-side one would.
        margin = min(ANSWER_MARGIN_S + ANSWER_MARGIN_SHARE * remaining, ANSWER_MARGIN_MAX_S)
        return Deadline(min(remaining - margin, self.default_timeout_s))

    async def PredictEntities(self, request: prediction_pb2.PredictEntitiesRequest, context: grpc.aio.ServicerContext) -> prediction_pb2.PredictResponse:
        with stage("total", traced=False):
            return await self.pipeline.predict_entities(request.entities, self._deadline(context))

    async def Predict(self, request: prediction_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> prediction_pb2.PredictResponse:
        with stage("total", traced=False):
            return await self.pipeline.predict_rows(request.rows, self._deadline(context))
