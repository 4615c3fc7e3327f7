"""The internal channels' service config, against tiny in-process grpc.aio servers.

Shows that gRPC accepts the config (a channel built with it works), that UNAVAILABLE and a
server's CANCELLED are retried up to the attempt limit, that a caller's own cancellation or
deadline is not, that retry throttling stops retries against a failing server (and lets
them resume after successes), and that client-side health checking keeps calls off a
replica that is not SERVING. Each test uses its own server port: gRPC keeps retry-throttle
state per server name for the whole process.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from meshserve_runtime.channels import create_channel, service_config
from meshserve_runtime.errors import from_rpc_error

SERVICE = "test.Flaky"
METHOD = f"/{SERVICE}/Call"


class Flaky:
    """Fails the first `fail_first` attempts of every call (keyed by the request bytes)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.fail_first = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.hang: asyncio.Event | None = None  # set: every attempt waits on it
        self.attempts: Counter[bytes] = Counter()
        self.previous_attempts: list[str] = []  # grpc-previous-rpc-attempts of each attempt
        self.started = asyncio.Event()

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts[request] += 1
        md = dict(context.invocation_metadata() or ())
        self.previous_attempts.append(md.get("grpc-previous-rpc-attempts", "0"))
        self.started.set()
        if self.hang is not None:
            await self.hang.wait()
        if self.attempts[request] <= self.fail_first:
            await context.abort(self.code, f"attempt {self.attempts[request]} refused on purpose")
        return self.name.encode() or b"ok"


async def start_server(flaky: Flaky, health: HealthServicer | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(flaky.call)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Call": handler})])
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@asynccontextmanager
async def flaky_server() -> AsyncIterator[tuple[Flaky, grpc.aio.Channel]]:
    """A Flaky server and a channel to it built by create_channel (3 attempts)."""
    f = Flaky()
    server, port = await start_server(f)
    channel = create_channel(f"127.0.0.1:{port}", retry_attempts=3, tracing=False)
    try:
        yield f, channel
    finally:
        if f.hang is not None:
            f.hang.set()
        await channel.close()
        await server.stop(None)


async def call(channel: grpc.aio.Channel, request: bytes, timeout: float = 10) -> bytes:
    return await channel.unary_unary(METHOD)(request, timeout=timeout)


async def test_unavailable_is_retried_until_an_attempt_succeeds() -> None:
    async with flaky_server() as (f, channel):
        f.fail_first = 2
        assert await call(channel, b"a") == b"ok"
        assert f.attempts[b"a"] == 3
        # gRPC itself made the retries (it numbers them), not some loop of ours.
        assert f.previous_attempts == ["0", "1", "2"]


async def test_retries_stop_at_max_attempts() -> None:
    async with flaky_server() as (f, channel):
        f.fail_first = 10
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(channel, b"a")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "refused on purpose" in err.value.details()
        assert f.attempts[b"a"] == 3


async def test_cancelled_from_the_server_is_retried() -> None:
    async with flaky_server() as (f, channel):
        f.fail_first, f.code = 1, grpc.StatusCode.CANCELLED
        assert await call(channel, b"a") == b"ok"
        assert f.attempts[b"a"] == 2


async def test_other_codes_are_not_retried() -> None:
    async with flaky_server() as (f, channel):
        f.fail_first, f.code = 1, grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(channel, b"a")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f.attempts[b"a"] == 1


async def test_a_callers_cancellation_is_not_retried() -> None:
    async with flaky_server() as (f, channel):
        f.hang = asyncio.Event()
        pending = channel.unary_unary(METHOD)(b"a", timeout=30)
        await asyncio.wait_for(f.started.wait(), 10)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert await pending.code() == grpc.StatusCode.CANCELLED
        f.hang.set()  # were a retry coming, it would now be let through
        assert await call(channel, b"b") == b"ok"  # a later call on the same channel: the retry had its chance
        assert f.attempts[b"a"] == 1


async def test_a_passed_deadline_is_not_retried() -> None:
    async with flaky_server() as (f, channel):
        f.hang = asyncio.Event()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(channel, b"a", timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        f.hang.set()
        assert await call(channel, b"b") == b"ok"
        assert f.attempts[b"a"] == 1


async def test_throttling_stops_retries_and_successes_restore_them() -> None:
    async with flaky_server() as (f, channel):
        f.fail_first = 10**6  # a server that always fails
        attempts = []
        for i in range(6):
            request = f"fail-{i}".encode()
            with pytest.raises(grpc.aio.AioRpcError):
                await call(channel, request)
            attempts.append(f.attempts[request])
        # maxTokens 10: each failed attempt costs a token and retries stop at half, so the
        # first call is retried fully and, a few calls later, no call is retried at all.
        assert attempts[0] == 3
        assert attempts[-3:] == [1, 1, 1], attempts
        assert sum(attempts) < 3 * len(attempts)

        f.fail_first = 1  # from here every call fails once, then succeeds when retried
        request = b"still-throttled"
        with pytest.raises(grpc.aio.AioRpcError):
            await call(channel, request)
        assert f.attempts[request] == 1

        f.fail_first = 0
        for i in range(80):  # each success gives back 0.1 token (tokenRatio)
            await call(channel, f"ok-{i}".encode())
        f.fail_first = 1
        assert await call(channel, b"retried-again") == b"ok"
        assert f.attempts[b"retried-again"] == 2


def test_service_config_without_retries_has_no_retry_policy() -> None:
    assert "retryPolicy" not in service_config(1)
    assert "healthCheckConfig" not in service_config(3)


async def test_health_checking_keeps_calls_off_a_replica_that_is_not_serving() -> None:
    replicas = [Flaky("a"), Flaky("b")]
    healths = [HealthServicer(), HealthServicer()]
    started = [await start_server(f, h) for f, h in zip(replicas, healths, strict=True)]
    await healths[0].set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    await healths[1].set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in started)
    options = [("grpc.service_config", service_config(3, health_service=SERVICE))]
    channel = grpc.aio.insecure_channel(target, options=options)
    try:
        answers = Counter([await call(channel, f"{i}".encode()) for i in range(20)])
        assert answers == Counter({b"b": 20})

        # Swap: a comes up, b goes away; the channel follows the Watch stream.
        await healths[0].set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await healths[1].set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        for _ in range(200):
            if await call(channel, b"probe") == b"a":
                break
            await asyncio.sleep(0.05)
        answers = Counter([await call(channel, f"swap-{i}".encode()) for i in range(20)])
        assert answers == Counter({b"a": 20})

        # No replica SERVING: calls fail at once with UNAVAILABLE, no handler runs.
        await healths[0].set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        for _ in range(200):
            try:
                await call(channel, b"probe-down")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("calls still reached a replica after both reported NOT_SERVING")
        before = sum(sum(f.attempts.values()) for f in replicas)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(channel, b"down")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sum(sum(f.attempts.values()) for f in replicas) == before
        # The gateway turns gRPC's terse wording into something a caller can act on.
        assert from_rpc_error(err.value, "features").message.startswith("features: no replica is ready")
    finally:
        await channel.close()
        for server, _ in started:
            await server.stop(None)
