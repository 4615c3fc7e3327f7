"""GRPCInferenceService (KServe V2): a thin adapter over the loaded model."""

from __future__ import annotations

import grpc
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_runtime.errors import FailedPrecondition, NotFound, Unavailable
from meshserve_runtime.protocol import MODEL_ALIAS_PARAMETER, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER

from meshserve_model.codecs import check_requested_outputs, decode_input, encode_output
from meshserve_model.model import INPUT_NAME, OUTPUT_NAME, LoadedModel

SERVER_NAME = "meshserve-model"
SERVER_VERSION = "0.1.0"


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model_name: str, max_batch_rows: int) -> None:
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows
        self.current: LoadedModel | None = None

    def _model(self, name: str, version: str = "") -> LoadedModel:
        """The served model, after checking the caller asked for it."""
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}: this server serves {self.model_name!r}")
        model = self.current
        if model is None:
            raise Unavailable(f"model {name!r} is not ready yet (loading); retry shortly")
        if version and version != model.artifact.version:
            raise NotFound(f"model {name!r} version {version!r} is not served; serving version {model.artifact.version!r}")
        return model

    async def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.current is not None)

    async def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext) -> v2.ModelReadyResponse:
        if request.name != self.model_name:
            raise NotFound(f"unknown model {request.name!r}: this server serves {self.model_name!r}")
        model = self.current
        ready = model is not None and (not request.version or request.version == model.artifact.version)
        return v2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> v2.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        T = v2.ModelMetadataResponse.TensorMetadata
        return v2.ModelMetadataResponse(
            name=self.model_name,
            versions=[model.artifact.version],
            platform=model.platform,
            inputs=[T(name=INPUT_NAME, datatype="FP32", shape=[-1, model.num_features])],
            outputs=[T(name=OUTPUT_NAME, datatype="FP32", shape=[-1, 1])],
        )

    async def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext) -> v2.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)  # pinned for the whole call
        param = request.parameters.get(PREPROCESSOR_RUN_ID_PARAMETER)
        if param is not None and param.string_param != model.artifact.run_id:
            raise FailedPrecondition(
                f"skew guard: the input was made by the preprocessor of run {param.string_param!r}, "
                f"but model {self.model_name} v{model.artifact.version} belongs to run {model.artifact.run_id!r}; "
                "retry so both come from the same release"
            )
        x, raw = decode_input(request, model.num_features, self.max_batch_rows)
        check_requested_outputs(request)
        probabilities = model.predict(x)
        response = v2.ModelInferResponse(model_name=self.model_name, model_version=model.artifact.version, id=request.id)
        response.parameters[MODEL_RUN_ID_PARAMETER].string_param = model.artifact.run_id
        response.parameters[MODEL_ALIAS_PARAMETER].string_param = model.artifact.alias
        encode_output(response, probabilities, raw)
        return response
