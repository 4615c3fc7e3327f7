"""Gateway chunking and coalescing, against fake internal services (no processes)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.v1 import features_pb2, preprocess_pb2, types_pb2

from meshserve_runtime.codecs import decode_frame, encode_frame, encode_tensor, float_column
from meshserve_runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, ServiceError
from meshserve_runtime.protocol import MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER, SKEW_GUARD_MESSAGE_PREFIX

from meshserve_gateway.coalesce import Coalescer
from meshserve_gateway.deadline import Deadline
from meshserve_gateway.pipeline import GROUP_HEADROOM_BYTES, Pipeline
from meshserve_gateway.rows import concat_frames, rows_to_frame, slice_frame

UNKNOWN_DRIVER = 9999


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class Fakes:
    """features: x = driver_id / 10000 (+ customer_id / 1e6); preprocess: 2x; model: x + run offset.

    Each call sleeps `delay` (so calls overlap) and records its row count; preprocess
    refuses x < 0 with INVALID_ARGUMENT like a real column check would.
    """

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.features_calls: list[int] = []
        self.preprocess_calls: list[int] = []
        self.model_calls: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_preprocess: grpc.StatusCode | None = None
        self.model_run_ids: list[str] = []  # popped per model call when set (hot reload)
        self.skew_refusals = 0  # the next N model calls are refused by the skew guard

    async def _work(self, timeout: float | None) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if timeout is not None and timeout < self.delay:
                await asyncio.sleep(timeout)
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def GetOnlineFeatures(self, request: features_pb2.GetOnlineFeaturesRequest, timeout: float | None = None) -> features_pb2.GetOnlineFeaturesResponse:
        self.features_calls.append(request.entities.num_rows)
        await self._work(timeout)
        cols = decode_frame(request.entities)
        drivers, customers = cols["driver_id"].values, cols["customer_id"].values
        x = drivers / 10000 + customers / 1e6
        found = drivers != UNKNOWN_DRIVER
        reply = features_pb2.GetOnlineFeaturesResponse(
            features=encode_frame({"x": float_column(x, ~found)}, len(x)), feature_service="fs"
        )
        statuses = [features_pb2.FEATURE_STATUS_PRESENT if f else features_pb2.FEATURE_STATUS_NOT_FOUND for f in found]
        reply.statuses.add(name="x", statuses=statuses)
        return reply

    async def Transform(self, request: preprocess_pb2.TransformRequest, timeout: float | None = None) -> preprocess_pb2.TransformResponse:
        self.preprocess_calls.append(request.frame.num_rows)
        await self._work(timeout)
        if self.fail_preprocess is not None:
            raise rpc_error(self.fail_preprocess, "preprocess is down")
        x = decode_frame(request.frame)["x"].values
        if (x < 0).any():
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"row {int(np.argmax(x < 0))} column 'x' is negative")
        tensor = encode_tensor((2 * x).astype(np.float32).reshape(-1, 1))
        return preprocess_pb2.TransformResponse(tensor=tensor, preprocessor=types_pb2.ArtifactIdentity(name="pre", run_id="run1"))

    async def ModelInfer(self, request: v2.ModelInferRequest, timeout: float | None = None) -> v2.ModelInferResponse:
        self.model_calls.append(request.inputs[0].shape[0])
        await self._work(timeout)
        assert request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param == "run1"
        if self.skew_refusals:
            self.skew_refusals -= 1
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, f"{SKEW_GUARD_MESSAGE_PREFIX} the input was made by run 'run1' ...")
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
        out = v2.ModelInferResponse(model_name="m", model_version="1")
        run_id = self.model_run_ids.pop(0) if self.model_run_ids else "run1"
        out.parameters[MODEL_RUN_ID_PARAMETER].string_param = run_id
        out.raw_output_contents.append((x + 0.125).astype("<f4").tobytes())
        return out


def entity(driver: int, customer: int = 2001) -> types_pb2.Row:
    row = types_pb2.Row()
    row.values["driver_id"].int64_value = driver
    row.values["customer_id"].int64_value = customer
    return row


def raw(x: float) -> types_pb2.Row:
    row = types_pb2.Row()
    row.values["x"].double_value = x
    return row


def pipeline(fakes: Fakes, *, chunk_rows: int = 0, delay_us: int = 0, max_rows: int = 0) -> Pipeline:
    return Pipeline(fakes, fakes, fakes, "m", 1000, chunk_rows=chunk_rows, coalesce_max_delay_us=delay_us, coalesce_max_rows=max_rows)


def probs(reply) -> list[float | str]:
    return [p.probability if p.WhichOneof("result") == "probability" else p.error.status for p in reply.predictions]


def expected(driver: int, customer: int = 2001) -> float:
    return float(np.float32(2 * (driver / 10000 + customer / 1e6)) + np.float32(0.125))


# --- frame helpers ------------------------------------------------------------


def test_slice_and_concat_round_trip_with_nulls() -> None:
    rows = [raw(float(i)) for i in range(5)]
    rows[3].values["x"].null_value = 0
    frame = rows_to_frame(rows, "rows", allow_null=True)
    parts = [slice_frame(frame, 0, 2), slice_frame(frame, 2, 5)]
    assert not len(parts[0].columns[0].null_mask)  # no nulls there: mask dropped
    assert concat_frames(parts) == frame


# --- (a) chunking -------------------------------------------------------------


def test_big_batch_is_chunked_concurrently_and_reassembled_in_order() -> None:
    async def go() -> tuple[list, list, Fakes]:
        fakes = Fakes()
        rows = [raw(i / 1000) for i in range(1000)]
        chunked = await pipeline(fakes, chunk_rows=256).predict_rows(rows, Deadline(5))
        whole = await pipeline(Fakes()).predict_rows(rows, Deadline(5))
        return probs(chunked), probs(whole), fakes

    chunked, whole, fakes = asyncio.run(go())
    assert fakes.preprocess_calls == [256, 256, 256, 232]
    assert sorted(fakes.model_calls) == [232, 256, 256, 256]
    assert fakes.max_in_flight == 4  # the chunks ran concurrently
    assert chunked == whole
    np.testing.assert_allclose(chunked, [np.float32(2 * i / 1000) + np.float32(0.125) for i in range(1000)], atol=1e-6)


def test_entities_get_one_features_call_however_many_chunks() -> None:
    fakes = Fakes()
    reply = asyncio.run(pipeline(fakes, chunk_rows=3).predict_entities([entity(1000 + i) for i in range(10)], Deadline(5)))
    assert fakes.features_calls == [10]
    assert len(fakes.preprocess_calls) == 4
    np.testing.assert_allclose(probs(reply), [expected(1000 + i) for i in range(10)], atol=1e-6)


def test_chunks_answered_by_two_releases_are_rescored_never_mixed() -> None:
    fakes = Fakes()
    fakes.model_run_ids = ["run1", "run2"]  # a hot reload lands between the two chunks
    reply = asyncio.run(pipeline(fakes, chunk_rows=2).predict_rows([raw(0.1)] * 4, Deadline(5)))
    assert len(fakes.model_calls) == 4  # scored twice; the second time both chunks agree
    assert reply.model.run_id == "run1"


# --- (b) coalescing -----------------------------------------------------------


def test_concurrency_one_adds_no_delay() -> None:
    async def go() -> float:
        fakes = Fakes(delay=0.001)
        p = pipeline(fakes, delay_us=2_000_000, max_rows=256)  # a 2 s max delay: must never be paid alone
        start = time.perf_counter()
        for i in range(5):
            await p.predict_entities([entity(1000 + i)], Deadline(5))
        assert p.features_coalescer.groups == p.score_coalescer.groups == 0
        return time.perf_counter() - start

    assert asyncio.run(go()) < 0.5


def test_concurrent_callers_are_coalesced_and_get_their_own_answers() -> None:
    async def go() -> tuple[list, Fakes, Pipeline]:
        fakes = Fakes()
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        replies = await asyncio.gather(*(p.predict_entities([entity(1000 + i), entity(1100 + i)], Deadline(5)) for i in range(20)))
        return [probs(r) for r in replies], fakes, p

    got, fakes, p = asyncio.run(go())
    want = [[expected(1000 + i), expected(1100 + i)] for i in range(20)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(fakes.features_calls) < 20 and sum(fakes.features_calls) == 40
    assert len(fakes.preprocess_calls) < 20 and sum(fakes.preprocess_calls) == 40
    assert p.features_coalescer.groups >= 1


def test_max_rows_caps_a_group() -> None:
    async def go() -> Fakes:
        fakes = Fakes()
        p = pipeline(fakes, delay_us=50_000, max_rows=4)
        await asyncio.gather(*(p.predict_entities([entity(1000 + i)], Deadline(5)) for i in range(13)))
        return fakes

    fakes = asyncio.run(go())
    assert max(fakes.features_calls) <= 4 and sum(fakes.features_calls) == 13


def test_a_group_is_bounded_in_bytes_and_a_caller_too_big_to_share_goes_alone_at_once() -> None:
    """Callers that each fit the hop's message limit never share a call that does not."""
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def run_one(item: str, deadline: Deadline) -> str:
        calls.append([item])
        if item == "first":
            await release.wait()
        return item

    async def run_group(items, deadline: Deadline) -> list[str]:  # noqa: ANN001
        calls.append(list(items))
        return list(items)

    async def scenario() -> list[str]:
        c: Coalescer[str, str] = Coalescer(run_one, run_group, max_delay_us=100, max_rows=256, max_bytes=10, size_of=len)
        first = asyncio.ensure_future(c.submit("k", "first", 1, Deadline(5)))  # in flight alone: no size taken
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(c.submit("k", s, 1, Deadline(5))) for s in ("aaaa", "bbbb", "cc", "ddddd")]
        big = asyncio.ensure_future(c.submit("k", "x" * 10, 1, Deadline(5)))
        await asyncio.sleep(0.01)
        assert ["x" * 10] in calls  # as big as the bound: sent alone, without waiting for "first"
        assert ["aaaa", "bbbb", "cc"] in calls  # 10 bytes: a full group goes at once, like max_rows
        release.set()
        return list(await asyncio.gather(first, *queued, big))

    assert asyncio.run(scenario()) == ["first", "aaaa", "bbbb", "cc", "ddddd", "x" * 10]
    assert sorted(calls) == sorted([["first"], ["aaaa", "bbbb", "cc"], ["ddddd"], ["x" * 10]])


def padded(driver: int, pad: int) -> types_pb2.Row:
    row = entity(driver)
    row.values["note"].string_value = "n" * pad  # a string column: the frame's bytes, not its rows, grow
    return row


@pytest.mark.parametrize("limit", [None, GROUP_HEADROOM_BYTES + 7_000])
def test_entity_callers_are_grouped_within_the_hops_message_limit(limit: int | None) -> None:
    async def go() -> tuple[list, Fakes]:
        fakes = Fakes()
        p = Pipeline(fakes, fakes, fakes, "m", 1000, coalesce_max_delay_us=50_000, coalesce_max_rows=256,
                     max_message_bytes=limit or 0)
        replies = await asyncio.gather(*(p.predict_entities([padded(1000 + i, 3_000)], Deadline(5)) for i in range(7)))
        return [probs(r) for r in replies], fakes

    got, fakes = asyncio.run(go())
    np.testing.assert_allclose(got, [[expected(1000 + i)] for i in range(7)], atol=1e-6)
    assert sum(fakes.features_calls) == 7
    if limit is None:
        assert max(fakes.features_calls) > 2  # unbounded: the six queued callers left together
    else:
        assert max(fakes.features_calls) == 2  # ~3 KB each within 7,000 bytes: two at most


def test_unknown_entity_stays_with_its_caller() -> None:
    async def go() -> list:
        p = pipeline(Fakes(), delay_us=50_000, max_rows=256)
        calls = [
            p.predict_entities([entity(1001)], Deadline(5)),
            p.predict_entities([entity(1002), entity(UNKNOWN_DRIVER)], Deadline(5)),
            p.predict_entities([entity(UNKNOWN_DRIVER)], Deadline(5)),
            p.predict_entities([entity(1003)], Deadline(5)),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    a, b, c, d = asyncio.run(go())
    assert probs(a) == pytest.approx([expected(1001)], abs=1e-6)
    assert probs(b)[0] == pytest.approx(expected(1002), abs=1e-6) and probs(b)[1] == "NOT_FOUND"
    assert isinstance(c, NotFound) and "driver_id=9999" in c.message
    assert probs(d) == pytest.approx([expected(1003)], abs=1e-6)


def test_an_entity_group_goes_to_preprocess_as_one_frame_of_its_found_rows() -> None:
    """The features group starts one score call for all its found rows; every caller
    gets its own rows back, unknown entities in the middle of a group included."""
    async def go() -> tuple[list, Fakes, Pipeline]:
        fakes = Fakes()
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_entities([entity(1000)], Deadline(5)))  # occupies the lanes
        await asyncio.sleep(0)
        group = [
            p.predict_entities([entity(1001), entity(UNKNOWN_DRIVER), entity(1002)], Deadline(5)),
            p.predict_entities([entity(UNKNOWN_DRIVER)], Deadline(5)),
            p.predict_entities([entity(UNKNOWN_DRIVER), entity(1003)], Deadline(5)),
            p.predict_entities([entity(1004, 2002)], Deadline(5)),
        ]
        return await asyncio.gather(first, *group, return_exceptions=True), fakes, p

    (first, a, b, c, d), fakes, p = asyncio.run(go())
    assert probs(first) == pytest.approx([expected(1000)], abs=1e-6)
    assert probs(a)[0] == pytest.approx(expected(1001), abs=1e-6) and probs(a)[1] == "NOT_FOUND"
    assert probs(a)[2] == pytest.approx(expected(1002), abs=1e-6)
    assert isinstance(b, NotFound)
    assert probs(c)[0] == "NOT_FOUND" and probs(c)[1] == pytest.approx(expected(1003), abs=1e-6)
    assert probs(d) == pytest.approx([expected(1004, 2002)], abs=1e-6)
    assert "driver_id=9999" in a.predictions[1].error.message
    assert fakes.features_calls == [1, 7]
    assert fakes.preprocess_calls == [1, 4]  # the group's 4 found rows, in one frame
    assert p.score_coalescer.groups == 0  # not cut per caller and merged again: one item
    assert a.model.version == d.model.version == "1"


def test_an_entity_group_whose_shared_score_call_times_out_scores_each_caller_alone() -> None:
    """The group's score call runs under its earliest deadline; when that runs out, each
    caller is scored again alone under its own deadline, so only the short one fails."""
    class ShortTimeoutsRefused(Fakes):
        async def Transform(self, request: preprocess_pb2.TransformRequest, timeout: float | None = None) -> preprocess_pb2.TransformResponse:
            if timeout is not None and timeout < 1.0:
                self.preprocess_calls.append(request.frame.num_rows)
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return await super().Transform(request, timeout)

    async def go() -> tuple[list, Fakes]:
        fakes = ShortTimeoutsRefused()
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_entities([entity(1000)], Deadline(5)))
        await asyncio.sleep(0)
        group = [p.predict_entities([entity(1001)], Deadline(0.5)), p.predict_entities([entity(1002)], Deadline(5))]
        return await asyncio.gather(first, *group, return_exceptions=True), fakes

    (first, short, long_), fakes = asyncio.run(go())
    assert probs(first) == pytest.approx([expected(1000)], abs=1e-6)
    assert isinstance(short, ServiceError) and short.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert probs(long_) == pytest.approx([expected(1002)], abs=1e-6)
    assert fakes.features_calls == [1, 2]
    assert 2 in fakes.preprocess_calls  # the group's call was tried before the callers went alone


def test_malformed_input_fails_only_its_caller() -> None:
    async def go() -> tuple[list, Fakes]:
        fakes = Fakes()
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        calls = [
            p.predict_rows([raw(0.1)], Deadline(5)),
            p.predict_rows([raw(0.2)], Deadline(5)),
            p.predict_rows([raw(float("nan"))], Deadline(5)),  # refused before joining a group
            p.predict_rows([raw(-1.0)], Deadline(5)),  # refused downstream: group retried alone
            p.predict_rows([raw(0.3)], Deadline(5)),
            p.predict_entities([entity(1001), types_pb2.Row()], Deadline(5)),  # refused before joining
        ]
        return await asyncio.gather(*calls, return_exceptions=True), fakes

    (a, b, nan, neg, e, bad), fakes = asyncio.run(go())
    for reply, x in ((a, 0.1), (b, 0.2), (e, 0.3)):
        assert probs(reply) == pytest.approx([np.float32(2 * x) + np.float32(0.125)], abs=1e-6)
    assert isinstance(nan, InvalidArgument) and "NaN" in nan.message
    assert isinstance(neg, ServiceError) and neg.code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in neg.message
    assert isinstance(bad, InvalidArgument)
    assert max(fakes.preprocess_calls) > 1  # there was a group, and it was split on failure


def test_stage_failure_fails_every_member_with_its_status() -> None:
    async def go() -> list:
        fakes = Fakes()
        fakes.fail_preprocess = grpc.StatusCode.UNAVAILABLE
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        return await asyncio.gather(*(p.predict_rows([raw(0.1)], Deadline(5)) for _ in range(6)), return_exceptions=True)

    for err in asyncio.run(go()):
        assert isinstance(err, ServiceError) and err.code == grpc.StatusCode.UNAVAILABLE
        assert err.message == "preprocess: preprocess is down"


def test_short_deadline_member_does_not_fail_the_others() -> None:
    async def go() -> list:
        fakes = Fakes(delay=0.03)
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_rows([raw(0.1)], Deadline(5)))  # occupies the lane
        await asyncio.sleep(0)
        calls = [p.predict_rows([raw(0.2)], Deadline(0.04)), p.predict_rows([raw(0.3)], Deadline(5))]
        return [await first, *await asyncio.gather(*calls, return_exceptions=True)]

    first, short, long_ = asyncio.run(go())
    assert isinstance(short, DeadlineExceeded) or getattr(short, "code", None) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert probs(long_) == pytest.approx([np.float32(0.6) + np.float32(0.125)], abs=1e-6)
    assert len(probs(first)) == 1


def test_a_cancelled_caller_does_not_cancel_its_group() -> None:
    async def go() -> tuple[list, list]:
        p = pipeline(Fakes(delay=0.01), delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_rows([raw(0.1)], Deadline(5)))
        await asyncio.sleep(0)
        tasks = [asyncio.ensure_future(p.predict_rows([raw(x)], Deadline(5))) for x in (0.2, 0.3, 0.4)]
        await asyncio.sleep(0.001)
        tasks[1].cancel()
        done = await asyncio.gather(first, *tasks, return_exceptions=True)
        return [*probs(done[0]), *probs(done[1]), *probs(done[3])], [type(x) for x in done]

    got, types = asyncio.run(go())
    assert types[2] is asyncio.CancelledError
    assert got == pytest.approx([np.float32(2 * x) + np.float32(0.125) for x in (0.1, 0.2, 0.4)], abs=1e-6)


def test_disabled_coalescer_passes_through() -> None:
    async def go() -> int:
        calls = 0

        async def one(item: int, deadline: Deadline) -> int:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.001)
            return item * 2

        async def group(items, deadline):  # noqa: ANN001
            raise AssertionError("no groups when disabled")

        c: Coalescer[int, int] = Coalescer(one, group, max_delay_us=0, max_rows=256)
        assert await asyncio.gather(*(c.submit("k", i, 1, Deadline(5)) for i in range(8))) == [i * 2 for i in range(8)]
        return calls

    assert asyncio.run(go()) == 8


def test_saturated_stage_grows_groups_instead_of_adding_calls() -> None:
    """With the lane's in-flight cap reached, the delay timer sends nothing: callers that
    arrive while the stage is busy wait for a completion and then go as one group."""
    calls: list[int] = []
    release = asyncio.Event()

    async def run_one(item: int, deadline: Deadline) -> int:
        calls.append(1)
        await release.wait()
        return item * 10

    async def run_group(items, deadline: Deadline) -> list[int]:  # noqa: ANN001
        calls.append(len(items))
        return [i * 10 for i in items]

    dispatched: list[tuple[int, int]] = []

    async def scenario() -> list[int]:
        c: Coalescer[int, int] = Coalescer(run_one, run_group, max_delay_us=100, max_rows=256, max_in_flight=1,
                                           on_dispatch=lambda callers, rows: dispatched.append((callers, rows)))
        first = asyncio.ensure_future(c.submit("k", 1, 1, Deadline(5)))
        await asyncio.sleep(0)  # the first caller is now in flight, alone
        rest = [asyncio.ensure_future(c.submit("k", i, 1, Deadline(5))) for i in range(2, 12)]
        await asyncio.sleep(0.02)  # 200x the delay: with the cap reached nothing else was sent
        assert calls == [1]
        release.set()
        return list(await asyncio.gather(first, *rest))

    answers = asyncio.run(scenario())
    assert answers == [i * 10 for i in range(1, 12)]
    assert calls == [1, 10]  # the ten waiting callers went as one group
    assert dispatched == [(1, 1), (10, 10)]


def test_below_the_in_flight_cap_the_delay_still_sends_a_group() -> None:
    """max_in_flight=2: while one call is out, a second group goes after the delay."""
    calls: list[int] = []
    release = asyncio.Event()

    async def run_one(item: int, deadline: Deadline) -> int:
        calls.append(1)
        await release.wait()
        return item

    async def run_group(items, deadline: Deadline) -> list[int]:  # noqa: ANN001
        calls.append(len(items))
        return list(items)

    async def scenario() -> None:
        c: Coalescer[int, int] = Coalescer(run_one, run_group, max_delay_us=100, max_rows=256, max_in_flight=2)
        first = asyncio.ensure_future(c.submit("k", 1, 1, Deadline(5)))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(c.submit("k", i, 1, Deadline(5))) for i in range(2, 5)]
        await asyncio.sleep(0.02)
        assert calls == [1, 3]  # the group did not wait for the first call
        release.set()
        assert await asyncio.gather(first, *rest) == [1, 2, 3, 4]

    asyncio.run(scenario())


def test_a_skew_guard_refusal_is_retried_until_the_pair_agrees() -> None:
    """Preprocess and model switch releases one after the other: the gateway tries the pair
    again (preprocess too, so both come from one release) instead of failing the caller."""
    fakes = Fakes(delay=0.001)
    fakes.skew_refusals = 2
    reply = asyncio.run(pipeline(fakes).predict_entities([entity(1001)], Deadline(5)))
    assert probs(reply) == [pytest.approx(expected(1001))]
    assert len(fakes.model_calls) == 3 and len(fakes.preprocess_calls) == 3


def test_a_lasting_skew_is_answered_failed_precondition_in_bounded_time() -> None:
    fakes = Fakes(delay=0.001)
    fakes.skew_refusals = 10_000  # a misconfigured pair, not a reload
    p = Pipeline(fakes, fakes, fakes, "m", 1000, skew_retry_s=0.3)
    with pytest.raises(ServiceError) as err:
        asyncio.run(p.predict_entities([entity(1001)], Deadline(5)))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert SKEW_GUARD_MESSAGE_PREFIX in err.value.message
    assert 2 <= len(fakes.model_calls) < 20  # backoff, not a hot loop


# --- a group cut short by its earliest deadline during a hot reload --------------


class Reloading(Fakes):
    """A hot reload: the model refuses every tensor (skew guard) for `reload_s`, from the
    first call of `trigger_rows` rows on (the coalesced group's call)."""

    def __init__(self, trigger_rows: int, reload_s: float = 0.3) -> None:
        super().__init__(delay=0.005)
        self.trigger_rows = trigger_rows
        self.reload_s = reload_s
        self.until = 0.0

    async def ModelInfer(self, request: v2.ModelInferRequest, timeout: float | None = None) -> v2.ModelInferResponse:
        if request.inputs[0].shape[0] == self.trigger_rows and not self.until:
            self.until = time.monotonic() + self.reload_s
        if time.monotonic() < self.until:
            self.model_calls.append(request.inputs[0].shape[0])
            await asyncio.sleep(0.002)
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, f"{SKEW_GUARD_MESSAGE_PREFIX} the input was made by run 'run1' ...")
        return await super().ModelInfer(request, timeout)


@pytest.mark.parametrize("kind", ["rows", "entities"])
def test_a_reload_outlasting_the_groups_earliest_deadline_retries_the_others_alone(kind: str) -> None:
    """The group's call waits out the reload only until its earliest deadline; then the
    short caller gets DEADLINE_EXCEEDED and the one with time left waits it out alone."""
    async def go() -> tuple[list, float, Reloading]:
        fakes = Reloading(trigger_rows=2)
        p = pipeline(fakes, delay_us=50_000, max_rows=256)
        if kind == "rows":
            def call(seconds: float, driver: int):  # noqa: ANN202
                return p.predict_rows([raw(driver / 10000 + 2001 / 1e6)], Deadline(seconds))
        else:
            def call(seconds: float, driver: int):  # noqa: ANN202
                return p.predict_entities([entity(driver)], Deadline(seconds))
        first = asyncio.ensure_future(call(5, 1000))  # occupies the lanes, so the next two coalesce
        await asyncio.sleep(0)
        start = time.monotonic()
        got = await asyncio.gather(call(5, 1001), call(0.1, 1002), return_exceptions=True)
        elapsed = time.monotonic() - start
        await first
        return got, elapsed, fakes

    (long_, short), elapsed, fakes = asyncio.run(go())
    assert 2 in fakes.model_calls  # the group's call was refused during the reload
    assert probs(long_) == pytest.approx([expected(1001)], abs=1e-6)
    assert elapsed >= 0.25  # it waited the reload out
    assert isinstance(short, ServiceError) and short.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_lone_caller_whose_deadline_ends_the_reload_wait_gets_deadline_exceeded() -> None:
    fakes = Fakes(delay=0.001)
    fakes.skew_refusals = 10_000
    with pytest.raises(DeadlineExceeded) as err:
        asyncio.run(pipeline(fakes).predict_rows([raw(0.1)], Deadline(0.2)))  # skew_retry_s is 15 s
    assert "waiting out a model reload" in err.value.message and SKEW_GUARD_MESSAGE_PREFIX in err.value.message


# --- lanes are released ----------------------------------------------------------


def test_a_lane_whose_queued_callers_all_gave_up_is_released() -> None:
    """Lanes are keyed by caller-chosen schemas: one left behind whenever every queued
    caller gave up would grow memory without bound."""
    release = asyncio.Event()

    async def run_one(item: int, deadline: Deadline) -> int:
        await release.wait()
        return item

    async def run_group(items, deadline: Deadline) -> list[int]:  # noqa: ANN001
        raise AssertionError("every queued caller gave up: no group")

    async def scenario() -> None:
        c: Coalescer[int, int] = Coalescer(run_one, run_group, max_delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(c.submit("k", 1, 1, Deadline(5)))
        await asyncio.sleep(0)  # in flight
        queued = [asyncio.ensure_future(c.submit("k", i, 1, Deadline(5))) for i in (2, 3)]
        await asyncio.sleep(0)
        for t in queued:
            t.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        assert len(c._lanes["k"].queue) == 2  # still queued, given up
        release.set()
        assert await first == 1
        assert c._lanes == {}

    asyncio.run(scenario())


def test_schemas_whose_queued_callers_were_cancelled_leave_no_lanes_behind() -> None:
    class RefusesUnknownColumns(Fakes):
        async def Transform(self, request: preprocess_pb2.TransformRequest, timeout: float | None = None) -> preprocess_pb2.TransformResponse:
            await self._work(timeout)
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "wrong column set")

    async def pair(p: Pipeline, i: int) -> None:
        row = types_pb2.Row()
        row.values[f"c{i}"].double_value = 0.5  # a schema no one else uses
        a = asyncio.ensure_future(p.predict_rows([row], Deadline(5)))  # idle lane: in flight
        await asyncio.sleep(0)
        b = asyncio.ensure_future(p.predict_rows([row], Deadline(5)))  # queued behind it
        await asyncio.sleep(0)
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)

    async def go() -> Pipeline:
        p = pipeline(RefusesUnknownColumns(delay=0.002), delay_us=1000, max_rows=256)
        for i in range(20):
            await pair(p, i)
        return p

    p = asyncio.run(go())
    assert p.score_coalescer._lanes == {} and p.features_coalescer._lanes == {}


# --- row errors name the caller's row ----------------------------------------------


def test_a_row_error_in_a_chunk_names_the_callers_row() -> None:
    rows = [raw(0.1)] * 1000
    rows[600] = raw(-1.0)
    with pytest.raises(InvalidArgument) as err:
        asyncio.run(pipeline(Fakes(), chunk_rows=256).predict_rows(rows, Deadline(5)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message == "preprocess: row 600 column 'x' is negative"  # chunk 2's row 88


def test_a_row_error_in_a_coalesced_group_names_the_callers_row() -> None:
    async def go() -> list:
        p = pipeline(Fakes(), chunk_rows=4, delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_rows([raw(0.1)], Deadline(5)))
        await asyncio.sleep(0)
        bad = [raw(0.2)] * 6
        bad[5] = raw(-1.0)
        return await asyncio.gather(first, p.predict_rows([raw(0.3)] * 3, Deadline(5)), p.predict_rows(bad, Deadline(5)),
                                    return_exceptions=True)

    first, ok, bad = asyncio.run(go())
    assert len(probs(first)) == 1 and len(probs(ok)) == 3
    assert isinstance(bad, InvalidArgument) and bad.message == "preprocess: row 5 column 'x' is negative"


def test_a_row_error_names_the_callers_entity_row_after_unknown_entities_were_left_out() -> None:
    """Unknown entities are not scored, and the batch is chunked: neither may move the row."""
    entities = [entity(1000 + i) for i in range(10)]
    entities[1] = entities[2] = entity(UNKNOWN_DRIVER)
    entities[7] = entity(-5000)  # features give a negative x: preprocess refuses it
    # found rows [0, 3, 4, 5, 6, 7, 8, 9]: row 7 is the 6th, row 2 of the second chunk of 3
    with pytest.raises(InvalidArgument) as err:
        asyncio.run(pipeline(Fakes(), chunk_rows=3).predict_entities(entities, Deadline(5)))
    assert err.value.message == "preprocess: row 7 column 'x' is negative"


def test_a_row_error_in_an_entity_group_names_the_callers_row() -> None:
    async def go() -> list:
        p = pipeline(Fakes(), delay_us=50_000, max_rows=256)
        first = asyncio.ensure_future(p.predict_entities([entity(1000)], Deadline(5)))
        await asyncio.sleep(0)
        group = [
            p.predict_entities([entity(1001), entity(1002)], Deadline(5)),
            p.predict_entities([entity(UNKNOWN_DRIVER), entity(UNKNOWN_DRIVER), entity(-5000), entity(1003)], Deadline(5)),
        ]
        return await asyncio.gather(first, *group, return_exceptions=True)

    first, ok, bad = asyncio.run(go())
    assert probs(first) == pytest.approx([expected(1000)], abs=1e-6)
    assert probs(ok) == pytest.approx([expected(1001), expected(1002)], abs=1e-6)
    assert isinstance(bad, InvalidArgument) and bad.message == "preprocess: row 2 column 'x' is negative"


def test_a_queued_caller_is_answered_at_its_own_deadline_not_the_call_in_flights() -> None:
    release = asyncio.Event()

    async def run_one(item: int, deadline: Deadline) -> int:
        await release.wait()
        return item

    async def run_group(items, deadline: Deadline) -> list[int]:  # noqa: ANN001
        return list(items)

    async def scenario() -> tuple[BaseException | None | str, list[int]]:
        c: Coalescer[int, int] = Coalescer(run_one, run_group, max_delay_us=100, max_rows=256, stage="preprocess")
        first = asyncio.ensure_future(c.submit("k", 1, 1, Deadline(5)))  # in flight, long deadline
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(c.submit("k", i, 1, Deadline(5))) for i in (3, 4)]
        short = asyncio.ensure_future(c.submit("k", 2, 1, Deadline(0.05)))
        done, _ = await asyncio.wait({short}, timeout=1.0)  # the call in flight is still out
        release.set()
        outcome = short.exception() if done else "still queued"
        if not done:
            short.cancel()
        return outcome, list(await asyncio.gather(first, *others))

    short, rest = asyncio.run(scenario())
    assert isinstance(short, DeadlineExceeded) and "preprocess" in short.message, short
    assert rest == [1, 3, 4]  # the others were served, without the expired caller
