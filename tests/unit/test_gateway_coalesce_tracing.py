"""Coalesced calls keep each request's trace: a group's call is in its leader's trace (never
in that of whoever flushed the lane, e.g. a finished request), the other members get a
`gateway.coalesced` span linked to the leader, a member retried alone is in its own trace.

Real OpenTelemetry SDK (always_on, in-memory exporter) around the real Pipeline with the
fake internal services of test_gateway_coalesce. Each case runs in a fresh interpreter:
the SDK is installed once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import asyncio, json, sys
    import numpy as np
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from meshserve_runtime import tracing
    from meshserve_runtime.codecs import decode_frame
    from meshserve_gateway.deadline import Deadline
    from tests.unit.test_gateway_coalesce import Fakes, entity, pipeline, raw

    tracing.configure_tracing("meshserve-test")
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if hasattr(provider, "add_span_processor"):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.tracer()
    CUSTOMER = 2001

    class Traced(Fakes):
        """Each internal call opens a span standing for the callee's server span, in the
        caller's current context, naming the rows' owners (driver ids, or raw x * 1000)."""

        async def GetOnlineFeatures(self, request, timeout=None):
            owners = [int(d) for d in decode_frame(request.entities)["driver_id"].values]
            with tracing.span("downstream.features", owners=owners):
                return await super().GetOnlineFeatures(request, timeout)

        async def Transform(self, request, timeout=None):
            x = decode_frame(request.frame)["x"].values
            owners = [int(round(v * 1000)) if MODE == "rows" else int(round((v - CUSTOMER / 1e6) * 10000)) for v in x]
            with tracing.span("downstream.preprocess", owners=owners):
                return await super().Transform(request, timeout)

        async def ModelInfer(self, request, timeout=None):
            x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").astype(np.float64) / 2
            owners = [int(round(v * 1000)) if MODE == "rows" else int(round((v - CUSTOMER / 1e6) * 10000)) for v in x]
            with tracing.span("downstream.model", owners=owners):
                return await super().ModelInfer(request, timeout)

    MODE = sys.argv[1]
    fakes = Traced(delay=0.004)
    pipe = pipeline(fakes, delay_us=2000, max_rows=64)
    roots = {}  # owner -> (trace id, root span id)
    outcome = {}

    async def caller(owner, start):
        await asyncio.sleep(start)
        with tracer.start_as_current_span("root", kind=trace.SpanKind.SERVER) as root:
            ctx = root.get_span_context()
            roots[owner] = (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
            try:
                if MODE == "rows":
                    await pipe.predict_rows([raw(owner / 1000)], Deadline(5.0))
                else:
                    await pipe.predict_entities([entity(owner, CUSTOMER)], Deadline(5.0))
                outcome[owner] = "OK"
            except Exception as err:
                outcome[owner] = type(err).__name__

    async def main():
        if MODE == "rows":
            # One caller goes alone; the others queue and leave as one group, refused
            # (INVALID_ARGUMENT: -5 is negative) and so retried member by member.
            owners = [101, 102, 103, -5, 104]
            await asyncio.gather(*(caller(o, 0.0) for o in owners))
        else:
            # Waves overlapping the calls in flight: groups are flushed by finished
            # callers and by other groups' tasks.
            await asyncio.gather(*(caller(1000 + i, 0.0015 * i) for i in range(40)))

    asyncio.run(main())
    spans = []
    for s in exporter.get_finished_spans():
        spans.append({
            "name": s.name, "trace": format(s.context.trace_id, "032x"), "id": format(s.context.span_id, "016x"),
            "parent": format(s.parent.span_id, "016x") if s.parent else None,
            "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in (s.attributes or {}).items()},
            "links": [format(lk.context.trace_id, "032x") + "/" + format(lk.context.span_id, "016x") for lk in s.links],
        })
    print(json.dumps({"roots": {str(k): v for k, v in roots.items()}, "outcome": {str(k): v for k, v in outcome.items()},
                      "groups": pipe.features_coalescer.groups + pipe.score_coalescer.groups, "spans": spans}))
''')


def run(mode: str, env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "always_on", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_downstream_in_leaders_trace(out: dict) -> list[dict]:
    """Every internal call's span is in the trace of the caller owning its first row (the
    group's leader), never another request's; returns those spans."""
    roots = {int(k): v for k, v in out["roots"].items()}
    calls = [s for s in out["spans"] if s["name"].startswith("downstream.")]
    assert calls
    wrong = [
        (s["name"], s["attrs"]["meshserve.owners"], s["trace"], roots[s["attrs"]["meshserve.owners"][0]][0])
        for s in calls if s["trace"] != roots[s["attrs"]["meshserve.owners"][0]][0]
    ]
    assert not wrong, f"{len(wrong)} of {len(calls)} internal calls in the wrong trace, e.g. {wrong[:3]}"
    # The stage span over each call is in the same trace (it is the call's parent).
    by_id = {s["id"]: s for s in out["spans"]}
    for s in calls:
        parent = by_id[s["parent"]]
        assert parent["name"].startswith("gateway.") and parent["trace"] == s["trace"]
    return calls


def test_coalesced_entity_calls_are_in_their_leaders_trace_and_members_link_to_it() -> None:
    out = run("entities")
    roots = {int(k): v for k, v in out["roots"].items()}
    assert set(out["outcome"].values()) == {"OK"}
    assert out["groups"] >= 3  # coalescing happened, in several groups
    calls = check_downstream_in_leaders_trace(out)
    features_calls = [s for s in calls if s["name"] == "downstream.features"]
    leader_of = {o: c["attrs"]["meshserve.owners"][0] for c in features_calls for o in c["attrs"]["meshserve.owners"]}
    assert len(leader_of) == len(roots)  # one features call per caller's rows, no more
    assert any(o != leader for o, leader in leader_of.items())
    coalesced = [s for s in out["spans"] if s["name"] == "gateway.coalesced"]
    for owner, (trace_id, root_id) in roots.items():
        mine = [s for s in out["spans"] if s["trace"] == trace_id]
        assert any(s["id"] == root_id for s in mine)
        leader = leader_of[owner]
        if leader == owner:
            assert any(s["name"] == "downstream.features" for s in mine), owner
            continue
        # Served by the leader's call: in its own trace, a span under its root linked to the leader's.
        linked = [s for s in coalesced if s["trace"] == trace_id and s["attrs"].get("meshserve.stage") == "features"]
        assert len(linked) == 1, (owner, linked)
        assert linked[0]["parent"] == root_id
        assert linked[0]["links"] == ["/".join(roots[leader])]
        assert linked[0]["attrs"]["meshserve.calls"] >= 2


def test_a_member_retried_alone_is_served_in_its_own_trace() -> None:
    out = run("rows")
    roots = {int(k): v for k, v in out["roots"].items()}
    assert out["outcome"] == {"101": "OK", "102": "OK", "103": "OK", "-5": "RowError", "104": "OK"}
    check_downstream_in_leaders_trace(out)
    preprocess = [s for s in out["spans"] if s["name"] == "downstream.preprocess"]
    group = [s for s in preprocess if len(s["attrs"]["meshserve.owners"]) > 1]
    assert [s["attrs"]["meshserve.owners"] for s in group] == [[102, 103, -5, 104]]
    assert group[0]["trace"] == roots[102][0]  # the leader's, not 101's (who flushed the lane)
    alone = {s["attrs"]["meshserve.owners"][0]: s["trace"] for s in preprocess if len(s["attrs"]["meshserve.owners"]) == 1}
    assert alone == {o: roots[o][0] for o in (101, 102, 103, -5, 104)}
    # The other members also show the failed group call they were part of, linked to its leader.
    for owner in (103, -5, 104):
        linked = [s for s in out["spans"] if s["name"] == "gateway.coalesced" and s["trace"] == roots[owner][0]]
        assert [s["links"] for s in linked] == [["/".join(roots[102])]]


def test_unsampled_requests_get_no_coalesced_spans() -> None:
    for env in ({"OTEL_TRACES_SAMPLER": "always_off"}, {"OTEL_SDK_DISABLED": "true"}):
        out = run("entities", env)
        assert set(out["outcome"].values()) == {"OK"}
        assert out["groups"] >= 3
        assert out["spans"] == []


def test_a_groups_call_runs_in_the_first_recorded_members_context(monkeypatch) -> None:  # noqa: ANN001
    """With sampling, the leader is the first member whose trace is recorded: a sampled
    caller's link then leads to recorded spans, not to an unrecorded leader's."""
    import asyncio
    import contextvars

    from meshserve_gateway import coalesce
    from meshserve_gateway.deadline import Deadline

    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="flusher")
    sampled = {"c"}

    class FakeSpan:
        def __init__(self, name: str) -> None:
            self.name = name

        def is_recording(self) -> bool:
            return self.name in sampled

        def get_span_context(self):  # noqa: ANN202
            from opentelemetry.trace import INVALID_SPAN_CONTEXT

            return INVALID_SPAN_CONTEXT

    monkeypatch.setattr(coalesce.trace, "get_current_span", lambda: FakeSpan(who.get()))
    ran_in: list[str] = []

    async def run_one(item: str, deadline: Deadline) -> str:
        await asyncio.sleep(0.02)  # "a" goes alone; "b" and "c" queue behind it, then leave together
        return item

    async def run_group(items: list[str], deadline: Deadline) -> list[str]:
        ran_in.append(who.get())
        return items

    async def caller(c: coalesce.Coalescer, name: str) -> str:
        who.set(name)
        return await c.submit("lane", name, 1, Deadline(5))

    async def go() -> list[str]:
        c = coalesce.Coalescer(run_one, run_group, max_delay_us=20_000, max_rows=64, max_in_flight=1)
        return await asyncio.gather(*(caller(c, n) for n in ("a", "b", "c")))

    assert asyncio.run(go()) == ["a", "b", "c"]  # rows keep their order
    assert ran_in == ["c"]  # the group [b, c] ran in c's context: b is not sampled
