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
from meshserve_runtime.protocol import (
    MODEL_ALIAS_PARAMETER,
    MODEL_RUN_ID_METADATA_KEY,
    MODEL_RUN_ID_PARAMETER,
    PREPROCESSOR_RUN_ID_PARAMETER,
    SKEW_GUARD_MESSAGE_PREFIX,
)
from meshserve_runtime.registry import ArtifactNotFound

from meshserve_model.codecs import check_output, check_requested_outputs, decode_input, encode_output
from meshserve_model.model import INPUT_NAME, OUTPUT_NAME, LoadedModel

log = logging.getLogger("meshserve.model")

SERVER_NAME = "meshserve-model"
SERVER_VERSION = "0.1.0"

#: Longest wait between two checks of whether `previous` may go (seconds): also how soon
#: a version a later switch dropped is freed.
RETIRE_RECHECK_S = 1.0


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model_name: str, max_batch_rows: int, reload_wait_s: float = 0.0) -> None:
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows
        self.current: LoadedModel | None = None
        #: The version served before the last switch, kept for calls whose input came from
        #: its preprocessor: the preprocess service may switch later than we did, or never
        #: (its new version refused), so it goes only once unused (see previous_retire_in).
        self.previous: LoadedModel | None = None
        #: Monotonic time a call last used `previous` (the switch counts as one).
        self.previous_used = 0.0
        #: True once `current` answered an input of its own run since it was installed:
        #: proof the preprocessor of its release serves too.
        self.current_paired = False
        #: Set by the service: checks the alias now, True if it switched (the preprocess
        #: service may have switched before we noticed the move).
        self.check_reload: Callable[[], Awaitable[bool]] | None = None
        self.reload_wait_s = reload_wait_s

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from now on (one reference swap); return the version it replaces.

        At most two versions stay loaded: the new one, and as `previous` whichever of the
        old two last paired with its preprocessor. Normally that is the old current; but
        if the old current never answered an input of its own run (its preprocessor was
        refused: a one-sided reload failure), the old previous is still the release the
        preprocess service serves, so it stays and the unpaired version goes."""
        old = self.current
        if old is not None and (self.current_paired or self.previous is None):
            self.previous, self.previous_used = old, time.monotonic()
        self.current, self.current_paired = model, False
        return old

    def previous_retire_in(self, overlap_s: float) -> float:
        """Seconds before `previous` may be dropped (<= 0: now): once no call used it for
        `overlap_s`, and the current version has paired with its own preprocessor (until
        then the previous release may be the only whole pair, e.g. while traffic is idle)."""
        if not self.current_paired:
            return RETIRE_RECHECK_S
        return self.previous_used + overlap_s - time.monotonic()

    def _for_run(self, run_id: str) -> LoadedModel | None:
        """The loaded version made in `run_id`: current, or previous until it is retired."""
        current = self.current
        if current is not None and current.artifact.run_id == run_id:
            self.current_paired = True
            return current
        prev = self.previous
        if prev is not None and prev.artifact.run_id == run_id:
            self.previous_used = time.monotonic()
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
                "retry so both come from the same release",
                trailing_metadata=self._loaded_runs(model),
            )
        return found

    def _loaded_runs(self, model: LoadedModel) -> tuple[tuple[str, str], ...]:
        """The runs of the versions held now (a reload may have just installed one), current
        first, as the skew guard's trailing metadata: the gateway asks preprocess for one
        of their preprocessors next, so a pair both services still hold answers at once."""
        current, prev = self.current or model, self.previous
        runs: tuple[tuple[str, str], ...] = ((MODEL_RUN_ID_METADATA_KEY, current.artifact.run_id),)
        if prev is not None and prev.artifact.run_id != current.artifact.run_id:
            runs += ((MODEL_RUN_ID_METADATA_KEY, prev.artifact.run_id),)
        return runs

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
        if param is not None:
            if param.string_param == model.artifact.run_id:
                self.current_paired = True  # one attribute store: the common case stays cheap
            else:
                paired = await self._model_for_input(model, param.string_param, context)
                if request.model_version and paired.artifact.version != request.model_version:
                    # A pinned version is a promise about who answers: refuse rather than let the
                    # skew guard's pick (the previous version, or one a reload just installed)
                    # answer in its place.
                    raise FailedPrecondition(
                        f"model {self.model_name!r} version {request.model_version!r} was requested, but the input was made "
                        f"by the preprocessor of run {param.string_param!r}, which pairs with version "
                        f"{paired.artifact.version!r}; "
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
