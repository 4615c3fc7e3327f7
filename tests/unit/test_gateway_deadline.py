"""The gateway answers a caller's deadline itself, a little before the caller's own timer,
so the caller gets the hop that was slow (and the trace id), not gRPC's bare
client-side "Deadline Exceeded"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_runtime.interceptors import ServerInterceptor

from meshserve_gateway.pipeline import Pipeline
from meshserve_gateway.servicer import PredictionServicer


@asynccontextmanager
async def gateway(pipeline: Pipeline) -> AsyncIterator[prediction_pb2_grpc.PredictionServiceStub]:
    """The gateway's servicer over `pipeline`, on a real gRPC server, and a stub to call it."""
    server = grpc.aio.server(interceptors=[ServerInterceptor("gateway")])
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(pipeline, default_timeout_s=5.0), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield prediction_pb2_grpc.PredictionServiceStub(channel)
    finally:
        await server.stop(None)


def one_row() -> types_pb2.Row:
    row = types_pb2.Row()
    row.values["x"].double_value = 0.5
    return row


class HungPreprocess:
    """A preprocess service that never answers (paused, or stuck on a slow node)."""

    async def Transform(self, request: object, timeout: float | None = None) -> object:
        await asyncio.sleep(timeout if timeout is not None else 60)
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline Exceeded")


@pytest.mark.parametrize("caller_timeout", [0.3, 1.0])
async def test_a_caller_deadline_is_answered_by_the_gateway_naming_the_slow_hop(caller_timeout: float) -> None:
    pipeline = Pipeline(None, HungPreprocess(), None, "m", 1000)  # type: ignore[arg-type]
    async with gateway(pipeline) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(prediction_pb2.PredictRequest(rows=[one_row()]), timeout=caller_timeout)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "preprocess" in (info.value.details() or ""), info.value.details()  # the server's answer, not the client timer's


class SlowPreprocess:
    """A preprocess service that takes 2 s (or the call's timeout, if shorter) and then fails."""

    async def Transform(self, request: object, timeout: float | None = None) -> object:
        await asyncio.sleep(min(timeout if timeout is not None else 60, 2.0))
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline Exceeded")


async def test_a_caller_queued_behind_a_longer_call_is_answered_at_its_own_deadline() -> None:
    """Coalescing on: a caller that queues behind a call in flight under a later deadline
    still gets the gateway's DEADLINE_EXCEEDED naming the hop, at its own deadline."""
    pipeline = Pipeline(
        None, SlowPreprocess(), None, "m", 1000, coalesce_max_delay_us=1000, coalesce_max_rows=256,  # type: ignore[arg-type]
    )
    async with gateway(pipeline) as stub:
        first = asyncio.ensure_future(stub.Predict(prediction_pb2.PredictRequest(rows=[one_row()]), timeout=5))
        await asyncio.sleep(0.1)  # the first call is in flight on the lane
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(prediction_pb2.PredictRequest(rows=[one_row()]), timeout=0.3)
        first.cancel()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "preprocess" in (info.value.details() or ""), info.value.details()  # the server's answer, not the client timer's
