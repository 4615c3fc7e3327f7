"""Gateway-only instrumentation: the time each pipeline stage takes, as a metric and a span,
and calls per authenticated caller."""

from __future__ import annotations

import functools
import time
from typing import Any

from prometheus_client import Counter, Histogram

from meshserve_runtime.metrics import LATENCY_BUCKETS
from meshserve_runtime.tracing import span

STAGE_DURATION = Histogram(
    "meshserve_gateway_stage_duration_seconds",
    "Time spent in each pipeline stage (features, preprocess, model, total) per request.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)

COALESCED_CALLERS = Histogram(
    "meshserve_gateway_coalesced_callers",
    "Callers served by one internal call, per coalesced stage (features; score = preprocess + model). "
    "Mostly 1: no concurrency to coalesce; growing with load: coalescing at work.",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

SKEW_RETRIES = Counter(
    "meshserve_gateway_skew_retries_total",
    "Preprocess+model calls tried again because the model's skew guard refused the tensor (a hot reload switching the pair).",
)

# Exported only with auth on (see meshserve_gateway.auth for why the label is bounded).
CALLER_REQUESTS = Counter(
    "meshserve_gateway_caller_requests_total",
    "PredictionService calls by caller and gRPC status code, with auth on. caller: an API-key caller id, "
    "a JWT caller listed in auth_jwt_metric_callers, other (any other JWT caller) or unauthenticated (refused).",
    ["caller", "code"],
)


class stage:
    """Time one pipeline stage (the one place to add per-stage instrumentation):
    `with stage("features"): ...`.

    The span (`gateway.<stage>`) is the parent of the stage's client call, so a trace
    shows the gateway's own time between hops apart from the hop itself. `total` is not
    traced: the gateway's server span already is the whole request. A class, not a
    generator context manager: four of these run per request.
    """

    __slots__ = ("_name", "_span", "_start")

    def __init__(self, name: str, traced: bool = True) -> None:
        self._name = name
        self._span = span(f"gateway.{name}", stage=name) if traced else None

    def __enter__(self) -> None:
        self._start = time.perf_counter()
        if self._span is not None:
            self._span.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._span is not None:
                self._span.__exit__(*exc)
        finally:
            _stage_child(self._name).observe(time.perf_counter() - self._start)


@functools.cache
def _stage_child(name: str) -> Any:
    """The stage's labelled histogram (looked up once: labels() takes a lock and a dict)."""
    return STAGE_DURATION.labels(name)
