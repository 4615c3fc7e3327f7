"""Prometheus metrics shared by every service, and the endpoint that serves them.

Names follow Prometheus conventions (meshserve_ prefix, _seconds, _total); labels are
bounded (method, status code, stage), never an entity id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

# 100 us .. 10 s: fine enough for sub-millisecond hops, wide enough for a cold load.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

RPC_REQUESTS = Counter(
    "meshserve_rpc_requests_total",
    "RPCs handled, by method and gRPC status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "meshserve_rpc_duration_seconds",
    "Server-side RPC latency, by method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge(
    "meshserve_rpc_in_flight",
    "RPCs being handled right now, by method.",
    ["service", "method"],
)
READY = Gauge(
    "meshserve_ready",
    "1 when the service's artifacts are loaded and warmed up and it serves, else 0.",
    ["service"],
)
ARTIFACT_INFO = Info(
    "meshserve_artifact",
    "The registered artifact this process serves (name, version, alias, run id).",
)
GC_FROZEN_OBJECTS = Gauge(
    "meshserve_gc_frozen_objects",
    "Objects moved out of the cyclic GC's reach after load (gc.freeze); 0 when gc_freeze is off.",
)


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics over HTTP on a daemon thread (port 0: disabled)."""
    if port:
        start_http_server(port, addr=host)
