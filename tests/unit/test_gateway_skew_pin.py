"""The gateway pins Transform to the run the model serves after a skew-guard refusal, so a
one-sided reload failure (one service's new version refused, the other switched) keeps the
old release answering. Fakes for preprocess and model; one test over a real grpc.aio server
with the real model servicer and interceptor (the run id travels in trailing metadata)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import torch
from meshserve.inference.v2 import open_inference_pb2 as v2
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
from meshserve.v1 import prediction_pb2, preprocess_pb2, types_pb2

from meshserve_runtime.codecs import decode_frame, encode_tensor
from meshserve_runtime.errors import ServiceError
from meshserve_runtime.interceptors import ServerInterceptor
from meshserve_runtime.protocol import (
    MODEL_RUN_ID_METADATA_KEY,
    MODEL_RUN_ID_PARAMETER,
    PREPROCESSOR_RUN_ID_PARAMETER,
    SKEW_GUARD_MESSAGE_PREFIX,
)
from meshserve_runtime.registry import ResolvedArtifact

from meshserve_gateway.deadline import Deadline
from meshserve_gateway.pipeline import Pipeline

from meshserve_model.model import LoadedModel
from meshserve_model.servicer import InferenceServicer


def refusal(details: str, trailing: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


class Preprocess:
    """Serves `current` and `previous` runs (scale 1 per run number: x * n); records each pin."""

    def __init__(self, current: str, previous: str | None) -> None:
        self.current, self.previous = current, previous
        self.pins: list[str] = []

    async def Transform(self, request: preprocess_pb2.TransformRequest, timeout: float | None = None) -> preprocess_pb2.TransformResponse:
        self.pins.append(request.run_id)
        run = request.run_id or self.current
        if run not in (self.current, self.previous):
            raise refusal(f"{SKEW_GUARD_MESSAGE_PREFIX} the preprocessor of run {run!r} was requested, but ...")
        x = decode_frame(request.frame)["x"].values
        tensor = encode_tensor((x * int(run[-1])).astype(np.float32).reshape(-1, 1))
        return preprocess_pb2.TransformResponse(tensor=tensor, preprocessor=types_pb2.ArtifactIdentity(version=run[-1], run_id=run))


class Model:
    """Answers tensors of the runs in `serves`; refuses others naming `serving` (its current
    run) first, then the other runs it serves (its previous version)."""

    def __init__(self, serving: str, serves: set[str], name_run: bool = True) -> None:
        self.serving, self.serves, self.name_run = serving, serves, name_run
        self.runs: list[str] = []

    async def ModelInfer(self, request: v2.ModelInferRequest, timeout: float | None = None) -> v2.ModelInferResponse:
        run = request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param
        self.runs.append(run)
        if run not in self.serves:
            named = [self.serving, *sorted(self.serves - {self.serving})]
            trailing = tuple((MODEL_RUN_ID_METADATA_KEY, r) for r in named) if self.name_run else ()
            raise refusal(f"{SKEW_GUARD_MESSAGE_PREFIX} the input was made by the preprocessor of run {run!r} ...", trailing)
        out = v2.ModelInferResponse(model_name="m", model_version=run[-1])
        out.parameters[MODEL_RUN_ID_PARAMETER].string_param = run
        out.raw_output_contents.append(request.raw_input_contents[0])
        return out


def raw(x: float) -> types_pb2.Row:
    row = types_pb2.Row()
    row.values["x"].double_value = x
    return row


def pipeline(pre: Preprocess, model: Model, **kw: object) -> Pipeline:
    return Pipeline(None, pre, model, "m", 1000, **kw)  # type: ignore[arg-type]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The asyncio.sleep calls made (the gateway's backoffs), still sleeping."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float, *args: object) -> object:
        slept.append(seconds)
        return await real_sleep(seconds, *args)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return slept


def test_a_refused_model_reload_keeps_the_old_pair_answering_at_once(sleeps: list[float]) -> None:
    """Preprocess switched to run2, the model's v2 was refused (it serves run1): the refusal
    names run1, the next Transform asks for it, release 1 answers, without backing off."""
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"})
    reply = asyncio.run(pipeline(pre, model).predict_rows([raw(0.25)], Deadline(5)))
    assert sleeps == []  # no backoff: the refusal said which release to ask for
    assert [p.probability for p in reply.predictions] == [pytest.approx(0.25)]
    assert (reply.model.run_id, reply.preprocessor.run_id) == ("run1", "run1")
    assert pre.pins == ["", "run1"] and model.runs == ["run2", "run1"]


def test_a_model_that_switched_ahead_is_paired_through_its_previous_version(sleeps: list[float]) -> None:
    """Release 2's model was refused, so preprocess (run2, previous run1) pairs with nothing
    the model serves; then release 3's model lands first (run3, previous run1): the refusal
    names run3 then run1; preprocess has no run3, so release 1 answers, at once."""
    pre, model = Preprocess("run2", "run1"), Model("run3", {"run3", "run1"})
    reply = asyncio.run(pipeline(pre, model).predict_rows([raw(0.25)], Deadline(5)))
    assert (reply.model.run_id, reply.preprocessor.run_id) == ("run1", "run1")
    assert pre.pins == ["", "run3", "run1"] and sleeps == []


def test_every_request_is_answered_by_one_release_and_chunks_never_mix() -> None:
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"})
    p = pipeline(pre, model, chunk_rows=2, coalesce_max_delay_us=1000, coalesce_max_rows=64)

    async def go() -> list:
        return await asyncio.gather(*(p.predict_rows([raw(i / 10), raw(0.5), raw(0.75)], Deadline(5)) for i in range(6)))

    for reply in asyncio.run(go()):
        assert (reply.model.run_id, reply.preprocessor.run_id) == ("run1", "run1")
        assert len(reply.predictions) == 3


def test_a_pin_the_preprocessor_no_longer_holds_backs_off_then_follows_the_current_pair() -> None:
    """The model names a run preprocess does not hold: the pinned Transform is refused too,
    so the gateway backs off and tries the current pair again (a reload may end the skew)."""
    pre, model = Preprocess("run3", "run2"), Model("run1", {"run1"})

    async def go() -> prediction_pb2.PredictResponse:
        p = pipeline(pre, model)
        task = asyncio.ensure_future(p.predict_rows([raw(0.5)], Deadline(5)))
        await asyncio.sleep(0.1)
        model.serving, model.serves = "run3", {"run3"}  # the model's reload to release 3 lands
        return await task

    reply = asyncio.run(go())
    assert reply.model.run_id == "run3" and reply.preprocessor.run_id == "run3"
    assert pre.pins[:2] == ["", "run1"] and pre.pins[2] == ""  # after the pin was refused: unpinned
    assert 4 <= len(pre.pins) < 20  # backoff, not a hot loop


def test_a_lasting_skew_still_ends_in_bounded_time_with_backoff() -> None:
    pre, model = Preprocess("run3", "run2"), Model("run1", {"run1"})
    with pytest.raises(ServiceError) as err:
        asyncio.run(pipeline(pre, model, skew_retry_s=0.3).predict_rows([raw(0.5)], Deadline(5)))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and SKEW_GUARD_MESSAGE_PREFIX in err.value.message
    assert 2 <= len(pre.pins) < 30


def test_skew_retry_zero_still_means_no_retry() -> None:
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"})
    with pytest.raises(ServiceError) as err:
        asyncio.run(pipeline(pre, model, skew_retry_s=0).predict_rows([raw(0.5)], Deadline(5)))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and pre.pins == [""]


def test_a_refusal_naming_no_run_keeps_the_plain_backoff() -> None:
    """A model that names no run (an older build): the gateway waits the reload out as before."""
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"}, name_run=False)

    async def go() -> prediction_pb2.PredictResponse:
        p = pipeline(pre, model)
        task = asyncio.ensure_future(p.predict_rows([raw(0.5)], Deadline(5)))
        await asyncio.sleep(0.05)
        model.serves = {"run1", "run2"}  # the model switched after all
        return await task

    reply = asyncio.run(go())
    assert reply.model.run_id == "run2" and set(pre.pins) == {""}


# --- over the wire: the real model servicer behind the real interceptor -------------------


class Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def loaded(version: str, run_id: str) -> LoadedModel:
    artifact = ResolvedArtifact(name="m", version=version, run_id=run_id, alias="production", source="")
    return LoadedModel(artifact, Tiny().eval(), torch.device("cpu"), 1, "pytorch")


async def test_the_models_refusal_carries_its_run_over_grpc_and_the_gateway_pins_it() -> None:
    servicer = InferenceServicer("m", max_batch_rows=8)
    servicer.install(loaded("1", "run1"))  # its v2 was refused: serves release 1 only
    server = grpc.aio.server(interceptors=[ServerInterceptor("model")])
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            request = v2.ModelInferRequest(model_name="m")
            request.inputs.add(name="input", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
            request.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run2"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (MODEL_RUN_ID_METADATA_KEY, "run1") in tuple(info.value.trailing_metadata())

            pre = Preprocess("run2", "run1")
            reply = await pipeline(pre, stub).predict_rows([raw(0.5)], Deadline(5))  # type: ignore[arg-type]
            assert (reply.model.run_id, reply.preprocessor.run_id) == ("run1", "run1")
            assert pre.pins == ["", "run1"]
    finally:
        await server.stop(0)


def test_a_found_pin_is_tried_first_by_the_next_calls_then_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """While one side's new version stays refused, later calls go straight to the pair that
    answered (two hops, not a refusal first); after SKEW_PIN_MEMORY_S the current pair is
    asked again, so a good new release can take over."""
    import meshserve_gateway.pipeline as pipeline_module

    clock = [1000.0]
    monkeypatch.setattr(pipeline_module.time, "monotonic", lambda: clock[0])
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"})
    p = pipeline(pre, model)
    for _ in range(3):
        reply = asyncio.run(p.predict_rows([raw(0.5)], Deadline(5)))
        assert (reply.model.run_id, reply.preprocessor.run_id) == ("run1", "run1")
    assert pre.pins == ["", "run1", "run1", "run1"]  # one refusal, then pinned at once
    assert model.runs == ["run2", "run1", "run1", "run1"]
    clock[0] += pipeline_module.SKEW_PIN_MEMORY_S + 0.1
    model.serving, model.serves = "run2", {"run2", "run1"}  # release 2's model now loads fine
    reply = asyncio.run(p.predict_rows([raw(0.5)], Deadline(5)))
    assert (reply.model.run_id, reply.preprocessor.run_id) == ("run2", "run2")  # the pin expired
    assert pre.pins[-1] == ""


def test_a_remembered_pin_that_is_gone_is_dropped_at_once() -> None:
    """Both sides moved on (the pinned run is no longer held): the remembered pin is refused,
    forgotten, and the current pair answers in the same call, without backing off."""
    pre, model = Preprocess("run2", "run1"), Model("run1", {"run1"})
    p = pipeline(pre, model)
    asyncio.run(p.predict_rows([raw(0.5)], Deadline(5)))
    pre.current, pre.previous = "run3", "run2"  # release 3 on both sides: run1 is gone
    model.serving, model.serves = "run3", {"run3", "run2"}
    reply = asyncio.run(p.predict_rows([raw(0.5)], Deadline(5)))
    assert (reply.model.run_id, reply.preprocessor.run_id) == ("run3", "run3")
    assert pre.pins[-2:] == ["run1", ""]
