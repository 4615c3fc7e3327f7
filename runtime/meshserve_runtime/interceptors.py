"""One server interceptor for every service: RED metrics, error mapping, access log.

Handlers raise meshserve_runtime.errors.ServiceError; this turns it into the status
and message the caller sees. Anything else becomes INTERNAL with the traceback in the
log (never in the message).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from meshserve_runtime.errors import ServiceError
from meshserve_runtime.metrics import RPC_DURATION, RPC_IN_FLIGHT, RPC_REQUESTS

log = logging.getLogger("meshserve.rpc")


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through."""

    def __init__(self, service: str, access_log: bool = False) -> None:
        self._service = service
        self._access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        service = self._service
        access_log = self._access_log
        in_flight = RPC_IN_FLIGHT.labels(service, method)
        duration = RPC_DURATION.labels(service, method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight.inc()
            try:
                return await inner(request, context)
            except ServiceError as err:
                code = err.code
                await context.abort(err.code, err.message)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # caller went away or its deadline passed
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
            finally:
                in_flight.dec()
                elapsed = time.perf_counter() - start
                duration.observe(elapsed)
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                RPC_REQUESTS.labels(service, method, code.name).inc()
                if access_log:
                    log.info(
                        "rpc",
                        extra={"method": method, "code": code.name, "duration_ms": round(elapsed * 1e3, 3), "peer": context.peer()},
                    )

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
