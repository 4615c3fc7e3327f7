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


STATUS_SCRIPT = textwrap.dedent('''
    import asyncio, json
    import grpc
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from meshserve_runtime import tracing
    from meshserve_runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
    from meshserve_runtime.interceptors import ServerInterceptor

    tracing.configure_tracing("meshserve-test")
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))

    def raising(err):
        async def handler(request, context):
            if err is None:
                return b"ok"
            raise err
        return grpc.unary_unary_rpc_method_handler(handler)

    async def main():
        server = grpc.aio.server(interceptors=[ServerInterceptor("test")])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
            "Ok": raising(None), "Busy": raising(ResourceExhausted("queue full")),
            "Bad": raising(InvalidArgument("no")), "Down": raising(Unavailable("down")),
        }),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("Ok", "Busy", "Bad", "Down"):
                try:
                    await channel.unary_unary(f"/t.S/{method}")(b"x")
                    codes[method] = "OK"
                except grpc.aio.AioRpcError as err:
                    codes[method] = err.code().name
        await server.stop(None)
        return codes

    codes = asyncio.run(main())
    spans = {s.name.rpartition("/")[2]: s.status.status_code.name for s in exporter.get_finished_spans()}
    print(json.dumps({"codes": codes, "spans": spans}))
''')


def test_server_span_status_follows_the_slo_error_codes() -> None:
    """RESOURCE_EXHAUSTED (overload) is a server fault for the chart's availability SLO,
    so its span is ERROR too; a caller's mistake (INVALID_ARGUMENT) leaves the span unset."""
    proc = subprocess.run([sys.executable, "-c", STATUS_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "always_on"})
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["codes"] == {"Ok": "OK", "Busy": "RESOURCE_EXHAUSTED", "Bad": "INVALID_ARGUMENT", "Down": "UNAVAILABLE"}
    assert out["spans"] == {"Ok": "UNSET", "Busy": "ERROR", "Bad": "UNSET", "Down": "ERROR"}
