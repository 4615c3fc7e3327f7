"""In-process spans: skipped under an unsampled parent (parent-based sampling), real under a
sampled one, and batch spans parented to the call that opened the batch.

Each case runs in a fresh interpreter: the OpenTelemetry SDK is installed once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import os, json
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from meshserve_runtime import tracing

    tracing.configure_tracing("meshserve-test")
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("t")
    sampled = trace.SpanContext(0x1234, 0x99, is_remote=True, trace_flags=trace.TraceFlags(1))
    unsampled = trace.SpanContext(0x5678, 0x98, is_remote=True, trace_flags=trace.TraceFlags(0))

    out = {}
    with trace.use_span(trace.NonRecordingSpan(unsampled)):
        with tracing.span("inner", n=1) as s:
            out["unsampled_recording"] = s.is_recording()
    with trace.use_span(trace.NonRecordingSpan(sampled)):
        ctx = tracing.current_context()
    with tracing.span("forward", parent=ctx, batch_size=3) as s:   # from another task, no current span
        out["parented_recording"] = s.is_recording()
    spans = exporter.get_finished_spans()
    out["names"] = [x.name for x in spans]
    out["parent_trace"] = [format(x.context.trace_id, "x") for x in spans]
    out["attrs"] = [dict(x.attributes) for x in spans]
    print(json.dumps(out))
''')


def run(env: dict[str, str]) -> dict:
    import json

    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parent_based_sampling_skips_children_of_unsampled_calls() -> None:
    out = run({"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"})
    assert out["unsampled_recording"] is False
    # A sampled caller's trace is continued, even from a task that runs outside the call.
    assert out["parented_recording"] is True
    assert out["names"] == ["forward"]
    assert out["parent_trace"] == ["1234"]
    assert out["attrs"] == [{"meshserve.batch_size": 3}]


def test_always_on_records_every_span() -> None:
    out = run({"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "always_on"})
    assert out["unsampled_recording"] is True  # not parent-based: the SDK decides, and keeps it
    assert out["names"] == ["inner", "forward"]
