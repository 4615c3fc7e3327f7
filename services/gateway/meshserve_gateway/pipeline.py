"""The gateway's data plane: features -> preprocess -> model for a batch of rows.

The servicer is a thin adapter over this. Every downstream failure is re-raised with
its own status code and the name of the hop it came from; the caller's deadline is
carried to every hop.

A big batch is cut into `chunk_rows` chunks that go through preprocess and model
concurrently (one features call per request still). Under concurrency, callers are
coalesced (see coalesce.py) into one features call and one preprocess+model call per
group of callers with the same frame schema; each caller's input is validated before
it joins a group. A group of entity callers stays one frame from features to model:
the features group starts one score call for all its found rows, and each caller
takes its share of the answer (cutting the features reply per caller and gluing the
pieces back together for preprocess cost the gateway about 75 us per caller).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
from meshserve.v1 import features_pb2, features_pb2_grpc, prediction_pb2, preprocess_pb2, preprocess_pb2_grpc, types_pb2

from meshserve_runtime.codecs import decode_frame, encode_frame
from meshserve_runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, ServiceError, Unavailable, from_rpc_error
from meshserve_runtime.protocol import (
    MODEL_ALIAS_PARAMETER,
    MODEL_RUN_ID_METADATA_KEY,
    MODEL_RUN_ID_PARAMETER,
    PREPROCESSOR_RUN_ID_PARAMETER,
    SKEW_GUARD_MESSAGE_PREFIX,
)

from meshserve_gateway.coalesce import Coalescer
from meshserve_gateway.deadline import Deadline
from meshserve_gateway.metrics import COALESCED_CALLERS, SKEW_RETRIES, stage
from meshserve_gateway.rows import (
    RowError,
    check_finite,
    concat_frames,
    describe_row,
    downstream_error,
    frame_schema,
    rows_to_frame,
    slice_frame,
)

_NOT_FOUND = features_pb2.FEATURE_STATUS_NOT_FOUND

__all__ = ["Deadline", "Pipeline", "Scored"]


@dataclass(slots=True)
class Scored:
    probabilities: np.ndarray
    model: types_pb2.ArtifactIdentity
    preprocessor: types_pb2.ArtifactIdentity

    def release(self) -> tuple[str, str, str, str]:
        """Which preprocessor + model pair answered (chunks must all agree)."""
        return (self.preprocessor.run_id, self.preprocessor.version, self.model.run_id, self.model.version)


@dataclass(slots=True)
class _FeaturesShare:
    """One caller's part of a coalesced features call: its rows the store lacked
    features for, and the group's one score call for every found row (shared by the group)."""

    #: This caller's row -> names of the features the store did not have (rows missing any).
    missing: dict[int, list[str]]
    #: This caller's first row in `found` (its found rows are contiguous there).
    found_start: int
    #: The group's found rows, and their score call (None when nothing was found).
    found: types_pb2.Frame | None
    scored: asyncio.Future[Scored] | None


class Pipeline:
    def __init__(
        self,
        features: features_pb2_grpc.FeatureServiceStub,
        preprocess: preprocess_pb2_grpc.PreprocessServiceStub,
        model: v2_grpc.GRPCInferenceServiceStub,
        model_name: str,
        max_batch_rows: int,
        *,
        chunk_rows: int = 0,
        coalesce_max_delay_us: int = 0,
        coalesce_max_rows: int = 0,
        coalesce_max_in_flight: int = 1,
        max_row_values: int | None = None,
        skew_retry_s: float = 15.0,
        max_message_bytes: int = 0,
    ) -> None:
        self.features = features
        self.preprocess = preprocess
        self.model = model
        self.model_name = model_name
        self.max_batch_rows = max_batch_rows
        self.max_row_values = max_row_values
        self.chunk_rows = chunk_rows
        self.skew_retry_s = skew_retry_s
        # The run a skew refusal last led to (a pinned Transform that then answered), tried
        # first by the next calls until _pin_until: while one side's new version stays
        # refused, a call costs two hops, not a refusal and two more. Short-lived, so the
        # current pair is asked again soon (a pin kept forever would keep the old release
        # in use, and never let a good new one take over).
        self._pin = ""
        self._pin_until = 0.0
        # A coalesced call must fit the hop's message limit whenever each caller's would:
        # groups are bounded in bytes too (0: no bound).
        group_bytes = max(max_message_bytes - GROUP_HEADROOM_BYTES, 1) if max_message_bytes else 0
        features_callers = COALESCED_CALLERS.labels("features")
        score_callers = COALESCED_CALLERS.labels("score")
        self.features_coalescer: Coalescer[types_pb2.Frame, features_pb2.GetOnlineFeaturesResponse | _FeaturesShare] = Coalescer(
            self._fetch, self._fetch_group, max_delay_us=coalesce_max_delay_us, max_rows=coalesce_max_rows,
            max_in_flight=coalesce_max_in_flight, max_bytes=group_bytes, size_of=types_pb2.Frame.ByteSize,
            on_dispatch=lambda callers, _rows: features_callers.observe(callers), stage="features", hop="features",
        )
        self.score_coalescer: Coalescer[types_pb2.Frame, Scored] = Coalescer(
            self._score_chunked, self._score_group, max_delay_us=coalesce_max_delay_us, max_rows=coalesce_max_rows,
            max_in_flight=coalesce_max_in_flight, max_bytes=group_bytes, size_of=types_pb2.Frame.ByteSize,
            on_dispatch=lambda callers, _rows: score_callers.observe(callers), stage="score", hop="preprocess and model",
        )

    def _check_batch(self, rows: Sequence[types_pb2.Row], field: str) -> None:
        if not rows:
            raise InvalidArgument(f"{field} is empty: send at least one row")
        if len(rows) > self.max_batch_rows:
            raise InvalidArgument(f"{field} has {len(rows)} rows; at most {self.max_batch_rows} are accepted per call")

    async def predict_entities(self, entities: Sequence[types_pb2.Row], deadline: Deadline) -> prediction_pb2.PredictResponse:
        self._check_batch(entities, "entities")
        frame = rows_to_frame(entities, "entities", allow_null=False, max_values=self.max_row_values)
        # Coalesced only with callers of the same key columns and types, so a caller
        # with a malformed key (wrong type, missing column) never shares a call.
        feats = await self.features_coalescer.submit(frame_schema(frame), frame, len(entities), deadline)

        # Rows with a feature the store does not have get a per-row NOT_FOUND; the rest
        # are scored (stale values arrive as nulls and are imputed by the preprocessor).
        n = len(entities)
        missing = feats.missing if isinstance(feats, _FeaturesShare) else _missing_rows(feats.statuses)
        errors = {
            i: f"no features for entity ({describe_row(entities[i])}) in the online store: {', '.join(names)} not found"
            for i, names in sorted(missing.items())
        }
        if n == 1 and errors:
            raise NotFound(errors[0])
        ok = [i for i in range(n) if i not in missing]
        predictions = [prediction_pb2.RowPrediction() for _ in range(n)]
        for i, message in errors.items():
            predictions[i].error.code = grpc.StatusCode.NOT_FOUND.value[0]
            predictions[i].error.status = "NOT_FOUND"
            predictions[i].error.message = message
        response = prediction_pb2.PredictResponse()
        if ok:
            try:
                if isinstance(feats, _FeaturesShare):
                    scored = await self._score_share(feats, len(ok), deadline)
                else:
                    scored = await self._score(feats.features if len(ok) == n else _take_rows(feats.features, ok), deadline)
            except RowError as err:
                # The frame scored held only this caller's found rows: name the caller's row.
                if len(ok) == n or not 0 <= err.row < len(ok):
                    raise
                raise err.at(ok[err.row]) from None
            for j, i in enumerate(ok):
                predictions[i].probability = float(scored.probabilities[j])
            response.model.CopyFrom(scored.model)
            response.preprocessor.CopyFrom(scored.preprocessor)
        response.predictions.extend(predictions)
        return response

    async def predict_rows(self, rows: Sequence[types_pb2.Row], deadline: Deadline) -> prediction_pb2.PredictResponse:
        self._check_batch(rows, "rows")
        frame = rows_to_frame(rows, "rows", allow_null=True, max_values=self.max_row_values)
        check_finite(frame, "rows")  # before it may share a preprocess call with others
        scored = await self._score(frame, deadline)
        response = prediction_pb2.PredictResponse(model=scored.model, preprocessor=scored.preprocessor)
        for p in scored.probabilities:
            response.predictions.add(probability=float(p))
        return response

    # --- features -------------------------------------------------------------

    async def _fetch(self, frame: types_pb2.Frame, deadline: Deadline) -> features_pb2.GetOnlineFeaturesResponse:
        with stage("features"):
            try:
                return await self.features.GetOnlineFeatures(
                    features_pb2.GetOnlineFeaturesRequest(entities=frame), timeout=deadline.remaining("features")
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, "features") from None

    async def _fetch_group(self, frames: Sequence[types_pb2.Frame], deadline: Deadline) -> list[_FeaturesShare]:
        """One features call for several callers, then one score call for all their found
        rows, started here so the features lane is free for the next group meanwhile.
        Each caller gets its share: its rows' statuses (so one caller's unknown entity
        stays that caller's) and its slice of the group's answer."""
        merged = await self._fetch(concat_frames(frames), deadline)
        missing = _missing_rows(merged.statuses)
        n = merged.features.num_rows
        found: types_pb2.Frame | None = merged.features
        if missing:
            rows = [i for i in range(n) if i not in missing]
            found = _take_rows(merged.features, rows) if rows else None
        scored: asyncio.Future[Scored] | None = None
        if found is not None:
            scored = asyncio.ensure_future(self._score(found, deadline, callers=len(frames)))
            scored.add_done_callback(_retrieve)  # every caller may have given up meanwhile
        shares: list[_FeaturesShare] = []
        start = found_start = 0
        for f in frames:
            stop = start + f.num_rows
            own = {i - start: names for i, names in missing.items() if start <= i < stop}
            shares.append(_FeaturesShare(own, found_start, found, scored))
            found_start += f.num_rows - len(own)
            start = stop
        return shares

    async def _score_share(self, share: _FeaturesShare, rows: int, deadline: Deadline) -> Scored:
        """This caller's `rows` found rows out of its group's score call."""
        assert share.scored is not None and share.found is not None
        try:
            # Shielded: one caller going away must not cancel the call its group shares.
            scored = await asyncio.shield(share.scored)
        except ServiceError as err:
            if err.code not in self.score_coalescer.retry_alone:  # the same rule as a coalesced group's
                raise ServiceError(err.message, err.code) from None  # one exception object per caller
            # A status this caller's rows or the group's (earliest) deadline may have
            # caused: score this caller's rows alone, within its own deadline.
            return await self._score(slice_frame(share.found, share.found_start, share.found_start + rows), deadline)
        stop = share.found_start + rows
        return Scored(scored.probabilities[share.found_start:stop], scored.model, scored.preprocessor)

    # --- preprocess + model -----------------------------------------------------

    async def _score(self, frame: types_pb2.Frame, deadline: Deadline, callers: int = 1) -> Scored:
        return await self.score_coalescer.submit(frame_schema(frame), frame, frame.num_rows, deadline, callers)

    async def _score_group(self, frames: Sequence[types_pb2.Frame], deadline: Deadline) -> list[Scored]:
        scored = await self._score_chunked(concat_frames(frames), deadline)
        out: list[Scored] = []
        start = 0
        for f in frames:
            stop = start + f.num_rows
            out.append(Scored(scored.probabilities[start:stop], scored.model, scored.preprocessor))
            start = stop
        return out

    async def _score_chunked(self, frame: types_pb2.Frame, deadline: Deadline) -> Scored:
        """Cut a big frame into chunk_rows chunks scored concurrently, reassembled in order."""
        n = frame.num_rows
        if self.chunk_rows <= 0 or n <= self.chunk_rows:
            return await self._score_once(frame, deadline)
        starts = range(0, n, self.chunk_rows)
        chunks = [slice_frame(frame, a, min(a + self.chunk_rows, n)) for a in starts]
        for _ in range(2):
            parts = await _gather_or_cancel([self._score_once(c, deadline, a) for c, a in zip(chunks, starts, strict=True)])
            # During a hot reload chunks may land on different releases; one response
            # names one release, so score again rather than mix them.
            if len({p.release() for p in parts}) == 1:
                return Scored(np.concatenate([p.probabilities for p in parts]), parts[0].model, parts[0].preprocessor)
        raise Unavailable("the model release changed while the batch was being scored; retry")

    async def _score_once(self, frame: types_pb2.Frame, deadline: Deadline, offset: int = 0) -> Scored:
        """Preprocess then model; refused by the skew guard (the two services serving
        different releases), try again with backoff for up to skew_retry_s within the
        caller's deadline: a request may wait for a hot reload, never mix releases.
        A refusal names the runs the model holds: the next attempts ask preprocess for
        those runs' preprocessors (it keeps its previous version), at once, so a release
        both sides hold answers even when one side's new version was refused for good.
        `offset`: the frame's first row in the caller's batch (a chunk), for row errors."""
        backoff = 0.02
        now = time.monotonic()
        give_up = now + self.skew_retry_s
        remembered = pin = self._pin if now < self._pin_until else ""
        pins: list[str] = []  # runs the model named in its last refusal, not tried yet
        while True:
            try:
                scored = await self._score_attempt(frame, deadline, pin)
                if pin and pin != remembered:
                    self._pin, self._pin_until = pin, time.monotonic() + SKEW_PIN_MEMORY_S
                return scored
            except ServiceError as err:
                if not (err.code == grpc.StatusCode.FAILED_PRECONDITION and SKEW_GUARD_MESSAGE_PREFIX in err.message):
                    if offset and isinstance(err, RowError):
                        raise err.at(err.row + offset) from None  # the chunk's row -> the batch's
                    raise
                if remembered and pin == remembered:
                    # The remembered pair is gone (retired, or a new release on both sides):
                    # forget it and ask for the current pair at once.
                    if self._pin == remembered:
                        self._pin_until = 0.0
                    remembered = pin = ""
                    continue
                if not pin and isinstance(err, SkewRefusal):
                    pins = list(err.model_run_ids)
                if pins and time.monotonic() < give_up:
                    # The model named the runs it holds (current first): ask preprocess for
                    # each one's preprocessor (it keeps its previous version) at once. New
                    # information, not a wait: a pinned call preprocess can't serve is
                    # refused before any work.
                    pin = pins.pop(0)
                    SKEW_RETRIES.inc()
                    continue
                pin = ""  # no pair found this round: back off, then the current pair again
                left = min(deadline.end, give_up) - time.monotonic()
                if left <= backoff:
                    if deadline.end < give_up:
                        # The deadline, not skew_retry_s, ended the wait. Say so: the caller's
                        # time ran out, and for a coalesced group (run under its earliest
                        # deadline) DEADLINE_EXCEEDED sends members with time left to retry alone.
                        raise DeadlineExceeded(f"deadline exceeded while waiting out a model reload ({err.message})") from None
                    raise
                SKEW_RETRIES.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    async def _score_attempt(self, frame: types_pb2.Frame, deadline: Deadline, pin: str = "") -> Scored:
        """One preprocess + model pass; `pin`: the run whose preprocessor must answer ("" = current)."""
        transform = preprocess_pb2.TransformRequest(frame=frame)
        if pin:
            transform.run_id = pin
        with stage("preprocess"):
            try:
                pre = await self.preprocess.Transform(transform, timeout=deadline.remaining("preprocess"))
            except grpc.aio.AioRpcError as err:
                raise downstream_error(err, "preprocess") from None  # "row N" of this frame: rebased by the callers

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
                raise _model_error(err) from None
        probabilities = np.frombuffer(out.raw_output_contents[0], dtype="<f4")
        model = types_pb2.ArtifactIdentity(
            name=out.model_name,
            version=out.model_version,
            run_id=out.parameters[MODEL_RUN_ID_PARAMETER].string_param,
            alias=out.parameters[MODEL_ALIAS_PARAMETER].string_param,
        )
        return Scored(probabilities, model, pre.preprocessor)


#: Bytes a coalesced group's frames leave free under the hop's message limit: room for the
#: request around the frame (run id, model parameters) and for merging the callers'
#: columns, which sums their sizes to within a few bytes per column.
GROUP_HEADROOM_BYTES = 64 * 1024


#: How long a pin found after a skew refusal is tried first by later calls (seconds).
SKEW_PIN_MEMORY_S = 1.0


class SkewRefusal(ServiceError):
    """The model's skew-guard refusal, with the run ids of the versions it holds (current first)."""

    def __init__(self, message: str, model_run_ids: tuple[str, ...]) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION)
        self.model_run_ids = model_run_ids


def _model_error(err: grpc.aio.AioRpcError) -> ServiceError:
    """from_rpc_error for the model hop; a skew-guard refusal keeps the runs the model
    names in its trailing metadata (only on the error path)."""
    failure = from_rpc_error(err, "model")
    if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
        runs = tuple(v for k, v in err.trailing_metadata() or () if k == MODEL_RUN_ID_METADATA_KEY and isinstance(v, str) and v)
        if runs:
            return SkewRefusal(failure.message, runs[:2])  # two versions at most: bound what we try
    return failure


async def _gather_or_cancel(calls: Sequence[Awaitable[Scored]]) -> list[Scored]:
    """asyncio.gather, but the first failure cancels the siblings (no orphan calls)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _missing_rows(statuses: Sequence[features_pb2.FeatureStatusColumn]) -> dict[int, list[str]]:
    """Row -> names of the features the store did not have, for rows missing any."""
    missing: dict[int, list[str]] = {}
    for status in statuses:
        if _NOT_FOUND not in status.statuses:  # the common case: one C-level scan per feature
            continue
        for i, s in enumerate(status.statuses):
            if s == _NOT_FOUND:
                missing.setdefault(i, []).append(status.name)
    return missing


def _retrieve(future: asyncio.Future[Scored]) -> None:
    """Mark a shared score call's failure as seen (its callers may all have gone)."""
    if not future.cancelled():
        future.exception()


def _take_rows(frame: types_pb2.Frame, rows: list[int]) -> types_pb2.Frame:
    columns = decode_frame(frame)
    index = np.asarray(rows)
    for col in columns.values():
        col.values = col.values[index]
        if col.null is not None:
            col.null = col.null[index]
    return encode_frame(columns, len(rows))
