"""Tracing: SDK set-up from the standard OTEL_* variables, W3C context in gRPC metadata,
and `span()` for the services' in-process stages.

`span()` uses the OpenTelemetry API only; it is a no-op until `configure_tracing()` has
installed the SDK at start-up, so code can mark its stages unconditionally.

Propagation is hand-rolled in our own interceptors (interceptors.py, channels.py) instead
of opentelemetry-instrumentation-grpc: the stock instrumentation cost 25-35% of a 3-hop
chain's throughput here (FINDINGS.md), ours is one dict and one span per side.

Environment (standard OpenTelemetry names, read once at start-up):
- OTEL_SDK_DISABLED=true: no SDK at all (no trace ids in logs or responses).
- OTEL_TRACES_EXPORTER: none (default), otlp (OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT
  or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), console (JSON on stdout), or any installed
  `opentelemetry_traces_exporter` entry point.
- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: default parentbased_traceidratio 0.01
  when an exporter is set, parentbased_always_off when none (ids for logs, nothing kept).
- OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES: default service.name meshserve-<service>.
- OTEL_BSP_*: the batch span processor's queue size, batch size and delay.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

log = logging.getLogger("meshserve.tracing")

#: Response metadata key (trailing) carrying the request's trace id, on every service.
TRACE_ID_METADATA_KEY = "x-meshserve-trace-id"

#: Default ratio of new traces kept when an exporter is configured.
DEFAULT_SAMPLE_RATIO = 0.01

_tracer = trace.get_tracer("meshserve")
_configured = False
# The cheap path for calls whose trace is not sampled (99% or more of them): with a
# parent-based sampler and W3C propagation their spans would be dropped anyway, so we
# parse/format `traceparent` ourselves and skip the SDK (its regex, sampler and span
# objects cost tens of microseconds per hop). Enabled by configure_tracing() only when
# both hold; baggage is not carried on that path (meshserve sets none).
_fast_unsampled = False
# With no exporter the sampler is parent-based always-off: new traces are never recorded
# either, so their root spans skip the SDK too (ids only).
_roots_unsampled = False
_rng = random.Random()


class span:
    """A child span of the current one, e.g. `with span("forward", batch_size=n): ...`.

    `parent` (an OpenTelemetry Context, from `current_context()`) parents it elsewhere:
    work done for several calls at once (a batch) hangs under the call that opened it
    and `links` the others. A class rather than a generator context manager: it is on
    every request's path several times, and its unsampled case must cost next to nothing.
    """

    __slots__ = ("_name", "_parent", "_links", "_attributes", "_cm")

    def __init__(self, name: str, *, parent: Any = None, links: Any = None, **attributes: Any) -> None:
        self._name = name
        self._parent = parent
        self._links = links
        self._attributes = attributes
        self._cm: Any = None

    def __enter__(self) -> trace.Span:
        if _fast_unsampled:
            current = trace.get_current_span(self._parent)
            if not current.get_span_context().trace_flags.sampled:
                # Under a parent-based sampler a child of an unsampled span is dropped anyway:
                # skip the SDK (tens of microseconds per span, several spans per request).
                return current
        self._cm = _tracer.start_as_current_span(
            self._name, context=self._parent, links=self._links,
            attributes={f"meshserve.{k}": v for k, v in self._attributes.items()},
        )
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if self._cm is not None:
            return self._cm.__exit__(*exc)
        return None


def current_context() -> Any:
    """The caller's tracing context, to parent work that runs later in another task."""
    return otel_context.get_current()


def link_to(ctx: Any) -> Any:
    """A span Link to the span current in `ctx` (None when that span is not sampled)."""
    sc = trace.get_current_span(ctx).get_span_context()
    return trace.Link(sc) if sc.is_valid and sc.trace_flags.sampled else None


def tracer() -> trace.Tracer:
    """The tracer every meshserve span comes from (a proxy until the SDK is installed)."""
    return _tracer


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _make_exporter(name: str) -> Any:
    """The span exporter named by OTEL_TRACES_EXPORTER (None for `none`)."""
    if name in ("", "none"):
        return None
    if name in ("otlp", "otlp_proto_grpc"):
        # Imported lazily: grpc exporter pulls in googleapis protos, only needed when used.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from importlib.metadata import entry_points

    for ep in entry_points(group="opentelemetry_traces_exporter", name=name):
        return ep.load()()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: no such exporter installed (use otlp, console or none)")


def configure_tracing(service_name: str) -> bool:
    """Install the OpenTelemetry SDK for this process from the OTEL_* env; call once at start-up.

    Returns True when a TracerProvider was installed. Idempotent.
    """
    global _configured
    if _configured:
        return True
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased, _get_from_env_or_default

    global _fast_unsampled, _roots_unsampled

    exporter_names = [n.strip().lower() for n in _env("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    exporters = [e for e in (_make_exporter(n) for n in exporter_names) if e is not None]
    if _env("OTEL_TRACES_SAMPLER"):
        sampler = _get_from_env_or_default()
    elif exporters:
        sampler = ParentBased(TraceIdRatioBased(DEFAULT_SAMPLE_RATIO))
    else:
        # Nothing would receive the spans: keep the ids (logs, x-meshserve-trace-id), record nothing.
        sampler = ParentBased(ALWAYS_OFF)
    # Resource.create() merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over ours.
    attributes: dict[str, str] = {"service.name": service_name, "service.namespace": "meshserve"}
    if _env("OTEL_SERVICE_NAME"):
        attributes["service.name"] = _env("OTEL_SERVICE_NAME")
    provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes))
    for exporter in exporters:
        # Batching keeps export off the request path (OTEL_BSP_* tune it).
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    propagators = _env("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "").lower()
    _fast_unsampled = isinstance(sampler, ParentBased) and propagators in ("tracecontext", "tracecontext,baggage")
    _roots_unsampled = _fast_unsampled and not exporters and not _env("OTEL_TRACES_SAMPLER")
    log.info(
        "tracing configured",
        extra={"exporters": exporter_names or ["none"], "sampler": sampler.get_description(), "service_name": attributes["service.name"]},
    )
    return True


def flush_tracing(timeout_s: float = 5.0) -> None:
    """Export the spans still queued in the batch processor (on graceful shutdown).

    Flush, not shutdown: the provider stays usable (in-process tests run several
    runners); the SDK shuts it down at interpreter exit.
    """
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(flush):
        try:
            flush(int(timeout_s * 1000))
        except Exception:  # never let a dead collector block the shutdown
            log.warning("flushing spans failed", exc_info=True)


def _parse_traceparent(value: str) -> SpanContext | None:
    """W3C traceparent version 00 (`00-<trace id>-<parent id>-<flags>`), None if malformed."""
    if len(value) != 55 or value[0:3] != "00-" or value[35] != "-" or value[52] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def start_server_span(name: str, metadata: Any, attributes: dict[str, Any]) -> trace.Span:
    """The SERVER span of one incoming call, child of the W3C context in its metadata.

    Not made current here: the caller attaches it (and must end it).
    """
    traceparent: str | None = None
    tracestate: str | None = None
    baggage = False
    if metadata:
        for key, value in metadata:
            if key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
            elif key == "baggage":
                baggage = True
    if traceparent is None:
        if _roots_unsampled:
            # A new trace that nothing records (no exporter): fresh ids, as the SDK would make.
            return NonRecordingSpan(SpanContext(_rng.getrandbits(128) or 1, _rng.getrandbits(64) or 1, is_remote=False))
        # A new trace (the gateway's callers): the sampler decides.
        return _tracer.start_span(name, kind=SpanKind.SERVER, attributes=attributes)
    if _fast_unsampled and not baggage:
        parent = _parse_traceparent(traceparent)
        if parent is not None and not parent.trace_flags.sampled:
            # Same trace id, fresh span id, not recorded: what the SDK would return.
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id, _rng.getrandbits(64) or 1, is_remote=False,
                    trace_flags=parent.trace_flags,
                    trace_state=TraceState.from_header([tracestate]) if tracestate else None,
                )
            )
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    if baggage:
        carrier["baggage"] = next(v for k, v in metadata if k == "baggage")
    return _tracer.start_span(name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes)


def start_client_span(name: str, attributes: dict[str, Any]) -> tuple[trace.Span | None, list[tuple[str, str]]]:
    """For an outgoing call: its CLIENT span (None when not recorded) and the metadata
    pairs carrying the trace to the callee (empty outside any span)."""
    current = trace.get_current_span()
    ctx = current.get_span_context()
    if not ctx.is_valid:
        return None, []
    if _fast_unsampled and not ctx.trace_flags.sampled:
        # The callee only needs the trace id and "not sampled"; no span of our own.
        pairs = [("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-00")]
        if ctx.trace_state:
            pairs.append(("tracestate", ctx.trace_state.to_header()))
        return None, pairs
    client_span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(client_span))
    return client_span, list(carrier.items())


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, or None outside any span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)
