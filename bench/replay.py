"""`python -m bench.replay SERVICE`: a meshserve service whose data-plane handler answers every
call with the first answer it computed. For the bench's cost split only, never for serving.

Everything around the handler stays real: the service loads its artifacts as usual and
reports ready after warm-up, and every call still goes through gRPC, the runtime's
interceptor (metrics, tracing, error mapping), and request parsing and reply encoding.
Only the handler's own work (the Redis read, the transform, the forward pass) runs once.
A stack whose features, preprocess and model run this way, behind the real gateway, costs
what meshserve's runtime and protocols cost; the real stack minus it is what the handlers'
work costs; it minus the empty echo chain is what the runtime and protocols add to bare
gRPC hops (bench/RESULTS.md, "What the c=1 time is made of").
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

#: Service -> (servicer module, servicer class, the data-plane method replayed).
HANDLERS: dict[str, tuple[str, str, str]] = {
    "features": ("meshserve_features.servicer", "FeatureServicer", "GetOnlineFeatures"),
    "preprocess": ("meshserve_preprocess.servicer", "PreprocessServicer", "Transform"),
    "model": ("meshserve_model.servicer", "InferenceServicer", "ModelInfer"),
}

Handler = Callable[[Any, Any, Any], Awaitable[Any]]


def replaying(handler: Handler) -> Handler:
    """`handler`, computing its first successful answer for real and returning that one
    to every later call. A failure is not kept: the next call runs the handler again."""
    answer: list[Any] = []

    async def replay(self: Any, request: Any, context: Any) -> Any:
        if answer:
            return answer[0]
        reply = await handler(self, request, context)
        answer.append(reply)
        return reply

    replay.__name__ = getattr(handler, "__name__", "replay")
    return replay


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in HANDLERS:
        raise SystemExit(f"usage: python -m bench.replay {{{','.join(HANDLERS)}}}")
    service = args[0]
    module, cls_name, method = HANDLERS[service]
    cls = getattr(importlib.import_module(module), cls_name)
    setattr(cls, method, replaying(getattr(cls, method)))
    importlib.import_module(f"meshserve_{service}.__main__").main()


if __name__ == "__main__":
    main()
