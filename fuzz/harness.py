"""What every harness shares: one RPC run in-process as the server runs it (deserializer,
ServerInterceptor, servicer) and the check that its outcome is a clean one."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import atheris
import grpc
from google.protobuf.message import Message

from meshserve_runtime.interceptors import ServerInterceptor
from meshserve_runtime.settings import ServerSettings

#: The real server's default receive limit: bigger messages never reach a handler (gRPC
#: answers RESOURCE_EXHAUSTED first), so the harness refuses them the same way.
MAX_MESSAGE_BYTES: int = ServerSettings.model_fields["max_message_bytes"].default

#: A call that has not answered after this long is a hang (libFuzzer's -timeout is the
#: backstop; this gives the unit tests a clear failure instead).
HANG_S = 10.0

#: Largest status message (as sent, percent-encoded) that safely reaches a caller: gRPC
#: clients refuse response metadata past 8 KiB by default (a soft limit, some refused
#: sooner), failing the call with RESOURCE_EXHAUSTED instead of its real status.
MAX_STATUS_MESSAGE_WIRE_BYTES = 4096

#: gRPC's own answer to a message over the size limit (and any service's to overload).
ALWAYS_ALLOWED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})

_LOOP = asyncio.new_event_loop()


class Finding(AssertionError):
    """An outcome other than a valid response or a clean refusal."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the caller would see: OK with the response, or a status and its message."""

    code: grpc.StatusCode
    details: str = ""
    response: Message | None = None


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class _Context:
    """The parts of grpc.aio.ServicerContext the interceptor and the servicers use."""

    def __init__(self, timeout_s: float | None) -> None:
        self._timeout_s = timeout_s
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple:
        return ()

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        self._code = code
        raise _Aborted(code, details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def peer(self) -> str:
        return "ipv4:127.0.0.1:0"

    def time_remaining(self) -> float | None:
        return self._timeout_s


class _LastError(logging.Handler):
    """Keeps the exception the interceptor logged for an INTERNAL, to chain it to the finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.exc: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exc = record.exc_info[1]


_last_error = _LastError()
_rpc_log = logging.getLogger("meshserve.rpc")
_rpc_log.addHandler(_last_error)
_rpc_log.propagate = False  # a finding reports the traceback itself


@dataclass(frozen=True, slots=True)
class _HandlerCallDetails:
    method: str
    invocation_metadata: tuple = ()


class Rpc:
    """One unary method as the server runs it: bytes -> the service's deserializer -> the
    shared ServerInterceptor (error mapping, undecodable requests) -> the servicer."""

    def __init__(
        self,
        service: str,
        full_method: str,
        behaviour: Callable[[Any, Any], Awaitable[Message]],
        request_type: type[Message],
        response_type: type[Message],
        *,
        timeout_s: float | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.full_method = full_method
        self.request_type = request_type
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        inner = grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

        async def continuation(details: Any) -> grpc.RpcMethodHandler:
            return inner

        interceptor = ServerInterceptor(service)
        self.handler = _LOOP.run_until_complete(interceptor.intercept_service(continuation, _HandlerCallDetails(full_method)))

    def call(self, data: bytes) -> Outcome:
        if len(data) > self.max_message_bytes:
            return Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({len(data)} vs. {self.max_message_bytes})")
        _last_error.exc = None
        request = self.handler.request_deserializer(data)
        try:
            response = _LOOP.run_until_complete(asyncio.wait_for(self.handler.unary_unary(request, _Context(self.timeout_s)), HANG_S))
        except _Aborted as aborted:
            cause = _last_error.exc
            if aborted.code == grpc.StatusCode.INTERNAL and cause is not None:
                # The cause in the message too: libFuzzer's report shows only the message.
                trace = "".join(traceback.format_exception(cause))
                raise Finding(f"{self.full_method}: {type(cause).__name__}: {cause}\n{trace}") from cause
            return Outcome(aborted.code, aborted.details)
        except TimeoutError:
            raise Finding(f"{self.full_method}: no answer within {HANG_S:.0f} s (a hang)") from None
        self.handler.response_serializer(response)  # what the server sends must serialize
        return Outcome(grpc.StatusCode.OK, response=response)


def check_outcome(outcome: Outcome, allowed: Collection[grpc.StatusCode], where: str) -> None:
    """A refusal must carry an allowed code and a message a caller can act on."""
    if outcome.code == grpc.StatusCode.OK:
        if outcome.response is None:
            raise Finding(f"{where}: OK without a response")
        return
    if outcome.code not in allowed and outcome.code not in ALWAYS_ALLOWED:
        raise Finding(f"{where}: refused with {outcome.code.name} (allowed: {sorted(c.name for c in allowed)}): {outcome.details}")
    if not outcome.details.strip():
        raise Finding(f"{where}: {outcome.code.name} without a message")
    size = encoded_message_bytes(outcome.details)
    if size > MAX_STATUS_MESSAGE_WIRE_BYTES:
        raise Finding(
            f"{where}: a {size}-byte status message ({outcome.details[:120]!r}...) would exceed the caller's "
            "metadata limit: the caller gets RESOURCE_EXHAUSTED instead of this status"
        )


def encoded_message_bytes(message: str) -> int:
    """Size of the grpc-message trailer gRPC sends for `message` (percent-encoded UTF-8)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode("utf-8", "surrogatepass"))


def require(condition: bool, message: str) -> None:
    """An invariant of a valid response (not `assert`: it must hold under python -O too)."""
    if not condition:
        raise Finding(message)


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC a harness drives: how to build a structured request and what a valid
    response must satisfy for it."""

    rpc: Rpc
    build: Callable[[atheris.FuzzedDataProvider], Message]
    check_response: Callable[[Message, Message], None]
    allowed: frozenset[grpc.StatusCode]


@dataclass(frozen=True, slots=True)
class Harness:
    """The methods of one service and its seed inputs."""

    methods: Sequence[Method]
    #: (label, input) pairs of valid requests, already prefixed with their selector byte.
    seeds: Sequence[tuple[str, bytes]] = field(default_factory=tuple)

    def run(self, data: bytes) -> Outcome:
        """The fuzz target: raises Finding (or whatever escaped) on a bad outcome."""
        selector, body = (data[0], data[1:]) if data else (0, b"")  # empty: the empty request
        method = self.methods[(selector >> 1) % len(self.methods)]
        if selector & 1:
            message = method.build(atheris.FuzzedDataProvider(body))
            wire = message.SerializeToString()
        else:
            wire = body
        outcome = method.rpc.call(wire)
        check_outcome(outcome, method.allowed, method.rpc.full_method)
        if outcome.response is not None:
            method.check_response(method.rpc.request_type.FromString(wire), outcome.response)
        return outcome


def wire_input(method_index: int, message: Message) -> bytes:
    """A seed: `message` serialized, for the method at `method_index`, in wire mode."""
    return bytes([method_index << 1]) + message.SerializeToString()
