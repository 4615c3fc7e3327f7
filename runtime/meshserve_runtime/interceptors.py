"""One server interceptor for every service: RED metrics, error mapping, tracing, access log.

Handlers raise meshserve_runtime.errors.ServiceError; this turns it into the status
and message the caller sees. Anything else becomes INTERNAL with the traceback in the
log (never in the message).

Tracing: the W3C context in the call's metadata (traceparent) becomes the parent of a
SERVER span per RPC, made current while the handler runs, so `span()` stages, client
calls (channels.py) and log lines join it. Every response carries the trace id in the
trailing metadata `x-meshserve-trace-id`, so a caller can report it (a ServiceError's own
trailing_metadata is sent beside it). Health checks get
metrics but no span (probes every few seconds would only be noise).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from meshserve_runtime.errors import InvalidArgument, ServiceError
from meshserve_runtime.metrics import RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS
from meshserve_runtime.tracing import TRACE_ID_METADATA_KEY, start_server_span

log = logging.getLogger("meshserve.rpc")

#: Services whose calls get no span (probes).
UNTRACED_SERVICES = frozenset({"grpc.health.v1.Health"})

# Server-side codes that mean the server failed (OTel RPC semantic conventions), plus
# RESOURCE_EXHAUSTED (overload: the batching queue or the concurrency limit refused the
# call), as the chart's availability SLO counts them; the others (INVALID_ARGUMENT,
# NOT_FOUND, ...) are the caller's problem and leave the span unset.
_SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
})


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through."""

    def __init__(self, service: str, access_log: bool = False) -> None:
        self._service = service
        self._access_log = access_log
        # method -> (the handler function wrapped, its wrapper): built once per method, not
        # per call (closures, labelled metrics). Bounded by the methods the server has.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        full_method = handler_call_details.method
        cached = self._wrapped.get(full_method)
        if cached is not None and cached[0] is handler.unary_unary:
            return cached[1]
        wrapped = self._wrap(full_method, handler)
        self._wrapped[full_method] = (handler.unary_unary, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        rpc_service, _, method = full_method.lstrip("/").rpartition("/")
        inner = handler.unary_unary
        service = self._service
        access_log = self._access_log
        in_flight = RPC_IN_FLIGHT.labels(service, method)
        duration = RPC_DURATION.labels(service, method)
        ok_requests = RPC_REQUESTS.labels(service, method, grpc.StatusCode.OK.name)
        traced = rpc_service not in UNTRACED_SERVICES
        span_name = full_method.lstrip("/")
        span_attributes = {"rpc.system": "grpc", "rpc.service": rpc_service, "rpc.method": method}

        deserialize = handler.request_deserializer

        def tolerant_deserializer(data: bytes) -> Any:
            # grpc answers UNKNOWN when a deserializer raises; keep the failure as a value
            # so the handler below can answer INVALID_ARGUMENT with a reason instead.
            try:
                return deserialize(data) if deserialize else data
            except Exception as err:  # DecodeError, or anything a hostile payload triggers
                return _Undecodable(f"{type(err).__name__}: {err}")

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight.inc()
            if isinstance(request, _Undecodable):
                request = None
                inner_call = _refuse_undecodable(full_method, request_type_name(deserialize))
            else:
                inner_call = inner
            rpc_span: trace.Span | None = None
            token = None
            trailing: tuple[tuple[str, str], ...] = ()
            if traced:
                rpc_span = start_server_span(span_name, context.invocation_metadata(), span_attributes)
                token = otel_context.attach(trace.set_span_in_context(rpc_span))
                span_context = rpc_span.get_span_context()
                if span_context.is_valid:
                    # Trailing metadata rides on the status frame: no extra write, and it
                    # reaches the caller on errors too.
                    trailing = ((TRACE_ID_METADATA_KEY, trace.format_trace_id(span_context.trace_id)),)
                    context.set_trailing_metadata(trailing)
            try:
                return await inner_call(request, context)
            except ServiceError as err:
                code = err.code
                if err.trailing_metadata:
                    # set_trailing_metadata replaces: keep the trace id beside the error's own.
                    context.set_trailing_metadata(trailing + err.trailing_metadata)
                await context.abort(err.code, bounded_message(err.message))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # caller went away or its deadline passed
                raise
            except Exception as err:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                if rpc_span is not None and rpc_span.is_recording():
                    rpc_span.record_exception(err)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
            finally:
                in_flight.dec()
                elapsed = time.perf_counter() - start
                duration.observe(elapsed)
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                (ok_requests if code is grpc.StatusCode.OK else RPC_REQUESTS.labels(service, method, code.name)).inc()
                if access_log:
                    # Logged while the span is still current, so the line carries its ids.
                    log.info(
                        "rpc",
                        extra={"method": method, "code": code.name, "duration_ms": round(elapsed * 1e3, 3), "peer": context.peer()},
                    )
                if rpc_span is not None:
                    if rpc_span.is_recording():
                        rpc_span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in _SERVER_ERROR_CODES:
                            rpc_span.set_status(Status(StatusCode.ERROR, code.name))
                    rpc_span.end()
                if token is not None:
                    otel_context.detach(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=tolerant_deserializer,
            response_serializer=handler.response_serializer,
        )


#: Longest status message sent, in UTF-8 bytes. It travels percent-encoded in the
#: grpc-message trailer, and a client refuses response metadata past about 8 KiB: a
#: message echoing a huge caller-sent name would turn the real status into RESOURCE_EXHAUSTED.
MAX_STATUS_MESSAGE_BYTES = 1024


def bounded_message(message: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """`message`, or its head and tail around a note of what was cut (both ends carry
    meaning: what was wrong, and what is expected instead)."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return message
    head = data[: limit * 3 // 4].decode("utf-8", "ignore")
    tail = data[len(data) - limit // 4 :].decode("utf-8", "ignore")
    cut = len(data) - len(head.encode("utf-8", "surrogatepass")) - len(tail.encode("utf-8", "surrogatepass"))
    return f"{head} ...[{cut} bytes cut]... {tail}"


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def request_type_name(deserialize: Callable[[bytes], Any] | None) -> str:
    """`FromString` of a generated message class -> its full protobuf name."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "the request message")


def _refuse_undecodable(method: str, type_name: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise InvalidArgument(f"{method}: the request body is not a valid {type_name} (malformed or truncated protobuf)")

    return refuse
