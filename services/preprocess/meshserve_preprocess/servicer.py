"""PreprocessService: a thin gRPC adapter over the loaded preprocessor."""

from __future__ import annotations

import grpc
import numpy as np
from meshserve.v1 import preprocess_pb2, preprocess_pb2_grpc

from meshserve_runtime.codecs import decode_frame, encode_tensor
from meshserve_runtime.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshserve_runtime.protocol import SKEW_GUARD_MESSAGE_PREFIX
from meshserve_runtime.tracing import span

from meshserve_preprocess.transformer import LoadedPreprocessor, row_error


class PreprocessServicer(preprocess_pb2_grpc.PreprocessServiceServicer):
    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.current: LoadedPreprocessor | None = None
        #: The version served before the last switch, kept until the next one for calls
        #: that ask for its run (TransformRequest.run_id): if the model's new version is
        #: refused, the model still serves this release, and the pair must stay whole.
        self.previous: LoadedPreprocessor | None = None

    def install(self, loaded: LoadedPreprocessor) -> LoadedPreprocessor | None:
        """Serve `loaded` from now on (one reference swap); keep the version it replaces as
        `previous` and return the one that drops out (the old previous)."""
        dropped = self.previous
        self.previous, self.current = self.current, loaded
        return dropped

    def _loaded(self, run_id: str = "") -> LoadedPreprocessor:
        pre = self.current
        if pre is None:
            raise Unavailable("the preprocessor is still loading; retry shortly")
        if not run_id or run_id == pre.artifact.run_id:
            return pre
        prev = self.previous
        if prev is not None and prev.artifact.run_id == run_id:
            return prev
        loaded = f"run {pre.artifact.run_id!r} (version {pre.artifact.version}, current)"
        if prev is not None:
            loaded += f" and run {prev.artifact.run_id!r} (version {prev.artifact.version}, previous)"
        # The skew guard's prefix: the gateway retries it like the model's refusal (the
        # pair is mid-switch), asking for the current version next.
        raise FailedPrecondition(
            f"{SKEW_GUARD_MESSAGE_PREFIX} the preprocessor of run {run_id!r} was requested, but this service has "
            f"{loaded} loaded; leave run_id empty for the current version"
        )

    async def Transform(self, request: preprocess_pb2.TransformRequest, context: grpc.aio.ServicerContext) -> preprocess_pb2.TransformResponse:
        pre = self._loaded(request.run_id)  # one reference for the whole call: a reload can't mix versions
        if not request.HasField("frame") or request.frame.num_rows == 0:
            raise InvalidArgument("frame is empty: send at least one row")
        columns = decode_frame(request.frame, max_rows=self.max_rows)
        with span("transform", rows=request.frame.num_rows, version=pre.artifact.version):
            x = pre.to_matrix(columns, request.frame.num_rows)
            y = pre.transform(x)
        # Finite input can still overflow the float32 tensor (e.g. 1e308, or a value the
        # scaler blows up): refuse it here rather than hand the model NaN or infinity.
        finite = np.isfinite(y)
        if not finite.all():
            row = int(np.argmin(finite.all(axis=1)))
            values = {name: float(v) for name, v in zip(pre.input_columns, x[row], strict=True)}
            raise row_error(row, f"{values} overflows float32 once preprocessed; send feature values of a realistic magnitude")
        return preprocess_pb2.TransformResponse(tensor=encode_tensor(y), preprocessor=pre.artifact.identity())

    async def GetPreprocessorInfo(self, request: preprocess_pb2.GetPreprocessorInfoRequest, context: grpc.aio.ServicerContext) -> preprocess_pb2.GetPreprocessorInfoResponse:
        pre = self._loaded()
        return preprocess_pb2.GetPreprocessorInfoResponse(
            input_columns=list(pre.input_columns), num_outputs=pre.num_outputs, preprocessor=pre.artifact.identity()
        )
