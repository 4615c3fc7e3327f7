"""The gateway's data plane: features -> preprocess -> model for a batch of rows.

The servicer is a thin adapter over this. Every downstream failure is re-raised with
its own status code and the name of the hop it came from; the caller's deadline is
carried to every hop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
from meshserve.v1 import features_pb2, features_pb2_grpc, prediction_pb2, preprocess_pb2, preprocess_pb2_grpc, types_pb2

from meshserve_runtime.codecs import decode_frame, encode_frame
from meshserve_runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, from_rpc_error
from meshserve_runtime.protocol import MODEL_ALIAS_PARAMETER, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER

from meshserve_gateway.metrics import stage
from meshserve_gateway.rows import describe_row, rows_to_frame

_NOT_FOUND = features_pb2.FEATURE_STATUS_NOT_FOUND


@dataclass(slots=True)
class Scored:
    probabilities: np.ndarray
    model: types_pb2.ArtifactIdentity
    preprocessor: types_pb2.ArtifactIdentity


class Deadline:
    """Seconds left for the whole pipeline, shared by its hops."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self, hop: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling {hop}")
        return left


class Pipeline:
    def __init__(
        self,
        features: features_pb2_grpc.FeatureServiceStub,
        preprocess: preprocess_pb2_grpc.PreprocessServiceStub,
        model: v2_grpc.GRPCInferenceServiceStub,
        model_name: str,
        max_batch_rows: int,
    ) -> None:
        self.features = features
        self.preprocess = preprocess
        self.model = model
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows

    def _check_batch(self, rows: Sequence[types_pb2.Row], field: str) -> None:
        if not rows:
            raise InvalidArgument(f"{field} is empty: send at least one row")
        if len(rows) > self.max_batch_rows:
            raise InvalidArgument(f"{field} has {len(rows)} rows; at most {self.max_batch_rows} are accepted per call")

    async def predict_entities(self, entities: Sequence[types_pb2.Row], deadline: Deadline) -> prediction_pb2.PredictResponse:
        self._check_batch(entities, "entities")
        frame = rows_to_frame(entities, "entities", allow_null=False)
        with stage("features"):
            try:
                feats = await self.features.GetOnlineFeatures(
                    features_pb2.GetOnlineFeaturesRequest(entities=frame), timeout=deadline.remaining("features")
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, "features") from None

        # Rows with a feature the store does not have get a per-row NOT_FOUND; the rest
        # are scored (stale values arrive as nulls and are imputed by the preprocessor).
        n = len(entities)
        missing: list[list[str]] = [[] for _ in range(n)]
        for status in feats.statuses:
            for i, s in enumerate(status.statuses):
                if s == _NOT_FOUND:
                    missing[i].append(status.name)
        ok = [i for i in range(n) if not missing[i]]
        errors = {
            i: f"no features for entity ({describe_row(entities[i])}) in the online store: {', '.join(missing[i])} not found"
            for i in range(n)
            if missing[i]
        }
        if n == 1 and errors:
            raise NotFound(errors[0])
        predictions = [prediction_pb2.RowPrediction() for _ in range(n)]
        for i, message in errors.items():
            predictions[i].error.code = grpc.StatusCode.NOT_FOUND.value[0]
            predictions[i].error.status = "NOT_FOUND"
            predictions[i].error.message = message
        response = prediction_pb2.PredictResponse()
        if ok:
            feature_frame = feats.features if len(ok) == n else _take_rows(feats.features, ok)
            scored = await self._score(feature_frame, deadline)
            for j, i in enumerate(ok):
                predictions[i].probability = float(scored.probabilities[j])
            response.model.CopyFrom(scored.model)
            response.preprocessor.CopyFrom(scored.preprocessor)
        response.predictions.extend(predictions)
        return response

    async def predict_rows(self, rows: Sequence[types_pb2.Row], deadline: Deadline) -> prediction_pb2.PredictResponse:
        self._check_batch(rows, "rows")
        frame = rows_to_frame(rows, "rows", allow_null=True)
        scored = await self._score(frame, deadline)
        response = prediction_pb2.PredictResponse(model=scored.model, preprocessor=scored.preprocessor)
        for p in scored.probabilities:
            response.predictions.add(probability=float(p))
        return response

    async def _score(self, frame: types_pb2.Frame, deadline: Deadline) -> Scored:
        with stage("preprocess"):
            try:
                pre = await self.preprocess.Transform(
                    preprocess_pb2.TransformRequest(frame=frame), timeout=deadline.remaining("preprocess")
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, "preprocess") from None

        tensor = pre.tensor
        request = v2.ModelInferRequest(model_name=self.model_name)
        request.inputs.add(name="input", datatype="FP32", shape=list(tensor.shape))
        request.raw_input_contents.append(tensor.data)  # already little-endian float32
        # Skew guard: the model refuses a tensor made by another release's preprocessor.
        request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = pre.preprocessor.run_id
        with stage("model"):
            try:
                out = await self.model.ModelInfer(request, timeout=deadline.remaining("model"))
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, "model") from None
        probabilities = np.frombuffer(out.raw_output_contents[0], dtype="<f4")
        model = types_pb2.ArtifactIdentity(
            name=out.model_name,
            version=out.model_version,
            run_id=out.parameters[MODEL_RUN_ID_PARAMETER].string_param,
            alias=out.parameters[MODEL_ALIAS_PARAMETER].string_param,
        )
        return Scored(probabilities, model, pre.preprocessor)


def _take_rows(frame: types_pb2.Frame, rows: list[int]) -> types_pb2.Frame:
    columns = decode_frame(frame)
    index = np.asarray(rows)
    for col in columns.values():
        col.values = col.values[index]
        if col.null is not None:
            col.null = col.null[index]
    return encode_frame(columns, len(rows))
