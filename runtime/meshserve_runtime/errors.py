"""Typed errors that carry their gRPC status.

Handlers raise these; the server interceptor turns them into the status and message
the caller sees, so no handler maps errors by hand (and never through HTTP codes).
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error with a gRPC status code and a message a caller can act on.

    `trailing_metadata`: (key, value) pairs sent with the status, for what a calling
    service must read without parsing the message (e.g. the model's skew guard names
    the run it serves, see protocol.MODEL_RUN_ID_METADATA_KEY).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    trailing_metadata: tuple[tuple[str, str], ...] = ()

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, trailing_metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if trailing_metadata:
            self.trailing_metadata = trailing_metadata


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


#: What gRPC's client-side health checking reports when no replica is SERVING.
_NO_HEALTHY_BACKEND = "backend unhealthy"
#: What gRPC reports when a message passes a channel's or server's size limit (either way).
_TOO_LARGE = "message larger than max"


def from_rpc_error(err: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """Re-raise a downstream failure with its own status and which hop it came from."""
    details = err.details() or err.code().name
    if err.code() == grpc.StatusCode.UNAVAILABLE and _NO_HEALTHY_BACKEND in details:
        # gRPC's own wording names no cause; say what it means and where to look.
        details = (f"no replica is ready (each reports NOT_SERVING: loading, draining, or a dependency "
                   f"such as its online store is down; its log says which); gRPC: {details}")
    elif err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in details:
        # gRPC's wording ("CLIENT: Sent message larger than max") names no limit a caller
        # knows of: say which one it is, and what helps.
        details = ("a message to or from it is bigger than the internal message limit (max_message_bytes); "
                   f"send fewer rows or smaller values; gRPC: {details}")
    return ServiceError(f"{what}: {details}", err.code())
