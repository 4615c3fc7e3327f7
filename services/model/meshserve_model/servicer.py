"""GRPCInferenceService (KServe V2): a thin adapter over the loaded model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc

from meshserve_runtime.errors import FailedPrecondition, NotFound, Unavailable
from meshserve_runtime.protocol import MODEL_ALIAS_PARAMETER, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER, SKEW_GUARD_MESSAGE_PREFIX
from meshserve_runtime.registry import ArtifactNotFound

from meshserve_model.codecs import check_output, check_requested_outputs, decode_input, encode_output
from meshserve_model.model import INPUT_NAME, OUTPUT_NAME, LoadedModel

log = logging.getLogger("meshserve.model")

SERVER_NAME = "meshserve-model"
SERVER_VERSION = "0.1.0"


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model_name: str, max_batch_rows: int, reload_wait_s: float = 0.0) -> None:
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows
        self.current: LoadedModel | None = None
        #: The version served before the last switch, kept for calls whose input came from
        #: its preprocessor (the preprocess service may switch later than we did).
        self.previous: LoadedModel | None = None
        self.previous_until = 0.0
        #: Set by the service: checks the alias now, True if it switched (the preprocess
        #: service may have switched before we noticed the move).
        self.check_reload: Callable[[], Awaitable[bool]] | None = None
        self.reload_wait_s = reload_wait_s

    def install(self, model: LoadedModel, overlap_s: float) -> LoadedModel | None:
        """Serve `model` from now on (one reference swap); return the version it replaces."""
        old = self.current
        self.previous, self.previous_until = old, time.monotonic() + overlap_s
        self.current = model
        return old

    def _for_run(self, run_id: str) -> LoadedModel | None:
        """The loaded version made in `run_id`: current, or previous during the overlap."""
        if self.current is not None and self.current.artifact.run_id == run_id:
            return self.current
        prev = self.previous
        if prev is not None and prev.artifact.run_id == run_id and time.monotonic() < self.previous_until:
            return prev
        return None

    async def _model_for_input(self, model: LoadedModel, run_id: str, context: grpc.aio.ServicerContext | None) -> LoadedModel:
        """Skew guard: the version whose run made the input, never another one."""
        found = self._for_run(run_id)
        if found is None and self.check_reload is not None:
            # Maybe the preprocess service switched first: check the alias now (joining a
            # reload already under way) and wait for it, within the caller's deadline. An
            # alias that did not move answers at once, so a stray run id fails fast.
            remaining = context.time_remaining() if context is not None else None
            budget = self.reload_wait_s if remaining is None else min(self.reload_wait_s, remaining - 0.05)
            if budget > 0:
                try:
                    await asyncio.wait_for(self.check_reload(), budget)
                except TimeoutError:
                    pass
                except ArtifactNotFound as err:
                    # The registry answered: the alias points at no version, so no reload is
                    # coming to pair with this input. It stays the skew guard's refusal below
                    # (waiting won't help; the partner service switching back would).
                    log.warning("alias check found no version; refusing the input", extra={"run_id": run_id[:64], "error": str(err)})
                except Exception as err:  # noqa: BLE001
                    # The watcher catches reload failures itself, so this is the registry
                    # lookup failing (down, unreachable, erroring). We can't tell whether a
                    # newer release pairs with this input: a transient condition, so
                    # UNAVAILABLE (the caller retries with backoff), not a verdict on the input.
                    log.warning("alias check failed; answering UNAVAILABLE", extra={"run_id": run_id[:64], "error": f"{type(err).__name__}: {err}"})
                    raise Unavailable(
                        f"the input was made by the preprocessor of run {run_id!r}, which model {self.model_name} "
                        f"v{model.artifact.version} (run {model.artifact.run_id!r}) does not pair with, and checking the "
                        f"model registry for a newer version failed ({type(err).__name__}); retry with backoff"
                    ) from err
                found = self._for_run(run_id)
        if found is None:
            raise FailedPrecondition(
                f"{SKEW_GUARD_MESSAGE_PREFIX} the input was made by the preprocessor of run {run_id!r}, "
                f"but model {self.model_name} v{model.artifact.version} belongs to run {model.artifact.run_id!r}; "
                "retry so both come from the same release"
            )
        return found

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
            paired = await self._model_for_input(model, param.string_param, context)
            if request.model_version and paired.artifact.version != request.model_version:
                # A pinned version is a promise about who answers: refuse rather than let the
                # skew guard's pick (the previous version in the overlap, or one a reload
                # just installed) answer in its place.
                raise FailedPrecondition(
                    f"model {self.model_name!r} version {request.model_version!r} was requested, but the input was made "
                    f"by the preprocessor of run {param.string_param!r}, which pairs with version {paired.artifact.version!r}; "
                    f"to be answered by version {request.model_version!r}, send an input made by the preprocessor of its run "
                    f"{model.artifact.run_id!r}, or leave model_version empty"
                )
            model = paired
        x, raw = decode_input(request, model.num_features, self.max_batch_rows)
        check_requested_outputs(request)
        probabilities = await model.infer(x)  # batched per LoadedModel: never across versions
        check_output(probabilities, model.dtype)
        response = v2.ModelInferResponse(model_name=self.model_name, model_version=model.artifact.version, id=request.id)
        response.parameters[MODEL_RUN_ID_PARAMETER].string_param = model.artifact.run_id
        response.parameters[MODEL_ALIAS_PARAMETER].string_param = model.artifact.alias
        encode_output(response, probabilities, raw)
        return response
