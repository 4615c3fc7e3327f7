"""Observability proof on the real four processes: one trace across all hops, metrics that
move by the right amounts, logs that join the trace, and a dashboard and alert rules that
name only metrics the services really export.

The stack exports spans over OTLP/gRPC (OTEL_TRACES_EXPORTER=otlp, sampling always_on) to
a collector stand-in this test serves on loopback with opentelemetry-proto's TraceService.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshserve_local.stack import HEALTH_NAMES, Stack
from meshserve_runtime.tracing import TRACE_ID_METADATA_KEY

from tests.e2e.conftest import make_stack_config
from tests.fixtures.metrics import Samples, scrape_service, value
from tests.e2e.test_pipeline import FEATURES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "meshserve"
DASHBOARD = CHART_DIR / "files" / "dashboards" / "meshserve.json"
SERVICES = list(HEALTH_NAMES)  # gateway, features, preprocess, model
OTEL_NAMES = {s: f"meshserve-{s}" for s in SERVICES}
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
ENTITY = (1001, 2001)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC trace collector stand-in: keeps every span with its service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext) -> Any:
        with self._lock:
            for rs in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend((attrs.get("service.name", "?"), s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced_stack(trained_home: Path, collector: tuple[Collector, int]) -> Iterator[Stack]:
    _, port = collector
    config = make_stack_config(trained_home, "sqlite")
    for service in SERVICES:
        config.extra_env[service] = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export within the test's patience
            f"MESHSERVE_{service.upper()}_ACCESS_LOG": "true",
        }
    with Stack(config) as stack:
        yield stack


def scrape(stack: Stack) -> dict[str, Samples]:
    """Every sample of every service's /metrics: {service: {(name, labels): value}}."""
    return {service: scrape_service(stack, service) for service in SERVICES}


def metric_names(samples_by_service: dict) -> set[str]:
    return {name for samples in samples_by_service.values() for name, _ in samples}


def test_one_request_one_trace_metrics_and_logs(traced_stack: Stack, collector: tuple[Collector, int]) -> None:
    spans_in, _ = collector
    before = scrape(traced_stack)
    row = types_pb2.Row()
    row.values["driver_id"].int64_value = ENTITY[0]
    row.values["customer_id"].int64_value = ENTITY[1]
    with grpc.insecure_channel(traced_stack.config.target("gateway")) as channel:
        stub = prediction_pb2_grpc.PredictionServiceStub(channel)
        reply, call = stub.PredictEntities.with_call(prediction_pb2.PredictEntitiesRequest(entities=[row]), timeout=30)
    assert reply.predictions[0].WhichOneof("result") == "probability"
    trace_id = dict(call.trailing_metadata())[TRACE_ID_METADATA_KEY]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32

    # --- one trace, all four services, correctly parented
    deadline = time.monotonic() + 15
    while True:
        spans = spans_in.trace(trace_id)
        servers = {svc for svc, s in spans if s.kind == SPAN_KIND_SERVER}
        if servers >= set(OTEL_NAMES.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    assert servers == set(OTEL_NAMES.values()), f"server spans from {servers}"
    assert len({s.trace_id for _, s in spans}) == 1

    def server_span(service: str, name: str) -> Any:
        found = [s for svc, s in spans if svc == OTEL_NAMES[service] and s.kind == SPAN_KIND_SERVER and s.name == name]
        assert len(found) == 1, (service, name, [(svc, s.name) for svc, s in spans])
        return found[0]

    root = server_span("gateway", "meshserve.v1.PredictionService/PredictEntities")
    assert root.parent_span_id == b"", "the gateway's server span is the root"
    hops = {
        "features": "meshserve.v1.FeatureService/GetOnlineFeatures",
        "preprocess": "meshserve.v1.PreprocessService/Transform",
        "model": "inference.GRPCInferenceService/ModelInfer",
    }
    for service, name in hops.items():
        server = server_span(service, name)
        client_svc, client = by_id[server.parent_span_id]
        assert (client_svc, client.kind, client.name) == (OTEL_NAMES["gateway"], SPAN_KIND_CLIENT, name)
        # client span -> gateway stage span -> gateway server span
        stage_svc, stage = by_id[client.parent_span_id]
        assert (stage_svc, stage.name) == (OTEL_NAMES["gateway"], f"gateway.{service}")
        assert stage.parent_span_id == root.span_id
        # every in-process span of the hop's service hangs below its server span
        for svc, s in spans:
            if svc == OTEL_NAMES[service] and s is not server:
                ancestor = s
                while ancestor.parent_span_id and ancestor.parent_span_id != server.span_id:
                    assert ancestor.parent_span_id in by_id, f"{service} span {s.name} has a parent outside the trace"
                    ancestor = by_id[ancestor.parent_span_id][1]
                assert ancestor.parent_span_id == server.span_id, (service, s.name)

    # the in-process stages have spans of their own, with their attributes
    inner = {(svc, s.name): {a.key for a in s.attributes} for svc, s in spans}
    for service, name, attribute in (("features", "store_read", "meshserve.entities"), ("preprocess", "transform", "meshserve.rows"),
                                     ("model", "forward", "meshserve.batch_size")):
        assert attribute in inner.get((OTEL_NAMES[service], name), set()), (service, name, sorted(inner))

    # --- metrics moved by exactly one request
    after = scrape(traced_stack)
    methods = {"gateway": "PredictEntities", "features": "GetOnlineFeatures", "preprocess": "Transform", "model": "ModelInfer"}
    for service, method in methods.items():
        labels = {"service": HEALTH_NAMES[service], "method": method}
        for name, extra in (("meshserve_rpc_requests_total", {"code": "OK"}), ("meshserve_rpc_duration_seconds_count", {})):
            delta = value(after[service], name, **labels, **extra) - value(before[service], name, **labels, **extra)
            assert delta == 1, (service, name, delta)
        assert value(after[service], "meshserve_rpc_in_flight", **labels) == 0
        assert value(after[service], "meshserve_ready", service=HEALTH_NAMES[service]) == 1
        # Loaded and warmed up, so the heap was frozen (gc_freeze, on by default).
        assert value(after[service], "meshserve_gc_frozen_objects") > 1000, service
        # The sum moved by the server-side duration: positive, below the test's timeout.
        dsum = value(after[service], "meshserve_rpc_duration_seconds_sum", **labels) - value(before[service], "meshserve_rpc_duration_seconds_sum", **labels)
        assert 0 < dsum < 30
    gw_before, gw_after = before["gateway"], after["gateway"]
    for stage_name in ("features", "preprocess", "model", "total"):
        name = "meshserve_gateway_stage_duration_seconds_count"
        assert value(gw_after, name, stage=stage_name) - value(gw_before, name, stage=stage_name) == 1, stage_name
    # Features: one store read, one value per feature of the one entity.
    n_features = len(FEATURES)
    fb, fa = before["features"], after["features"]
    assert value(fa, "meshserve_feature_store_read_seconds_count") - value(fb, "meshserve_feature_store_read_seconds_count") == 1
    assert value(fa, "meshserve_feature_values_total") - value(fb, "meshserve_feature_values_total") == n_features
    assert value(fa, "meshserve_feature_entities_per_request_count") - value(fb, "meshserve_feature_entities_per_request_count") == 1
    assert value(fa, "meshserve_feature_entities_per_request_sum") - value(fb, "meshserve_feature_entities_per_request_sum") == 1
    # Model batching (if exported): one row through at least one forward pass.
    mb, ma = before["model"], after["model"]
    if any(n == "meshserve_model_batch_size_sum" for n, _ in ma):
        assert value(ma, "meshserve_model_batch_size_sum") - value(mb, "meshserve_model_batch_size_sum") == 1
    # The info metric names the served versions.
    assert value(after["model"], "meshserve_artifact_info", version=reply.model.version) == 1
    assert value(after["preprocess"], "meshserve_artifact_info", version=reply.preprocessor.version) == 1

    # --- every service logged the call with the trace id (access log, JSON)
    time.sleep(0.2)
    for service, method in methods.items():
        text = (traced_stack.log_dir / f"{service}.log").read_text()
        # Nothing but JSON lines (MLflow's download progress bars used to interleave).
        assert all(ln.startswith("{") for ln in text.splitlines() if ln.strip()), (service, [ln for ln in text.splitlines() if not ln.startswith("{")][:5])
        lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        access = [ln for ln in lines if ln.get("message") == "rpc" and ln.get("trace_id") == trace_id]
        assert [(a["method"], a["code"]) for a in access] == [(method, "OK")], (service, access)
        assert re.fullmatch(r"[0-9a-f]{16}", access[0]["span_id"])
        assert {"duration_ms", "peer"} <= access[0].keys()
        # The start-up line says which gRPC I/O switch the process runs with (grpc_env).
        listening = [ln for ln in lines if ln.get("message") == "listening"]
        assert listening and listening[-1]["grpc_experiments"] == traced_stack.env_for(service)["GRPC_EXPERIMENTS"], listening


# ---------------------------------------------------------------- dashboard and rules

_PROMQL_WORD = re.compile(r"\b(meshserve_[a-z0-9_]+)\b")


def promql_metric_names(expr: str) -> set[str]:
    """meshserve_* metric names an expression selects (label names never start with it)."""
    return set(_PROMQL_WORD.findall(expr))


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(board["panels"])
    exprs.extend(v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
                 for v in board.get("templating", {}).get("list", []) if v.get("type") == "query")
    return [e for e in exprs if e]


def rendered_rule() -> dict:
    import helm_python

    values = {"metrics": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
    rendered = helm_python.Chart.load(str(CHART_DIR)).render(values, name="meshserve", namespace="ml-serving")
    docs = [d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    assert len(rules) == 1
    return rules[0]


def rule_exprs(rule: dict) -> list[str]:
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_prometheus_rule_is_well_formed() -> None:
    rule = rendered_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] and rule["metadata"]["namespace"] == "ml-serving"
    alerts, records = [], []
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert isinstance(r["expr"], str) and r["expr"].strip()
            assert ("alert" in r) != ("record" in r), r
            if "alert" in r:
                assert r["labels"]["severity"] in {"page", "ticket", "critical", "warning", "info"}
                assert r["annotations"]["summary"] and r["annotations"]["description"]
                alerts.append((r["alert"], r["labels"].get("component", "")))
            else:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", r["record"])
                records.append(r["record"])
    expected = {"MeshserveAvailabilityBudgetBurnFast", "MeshserveAvailabilityBudgetBurnSlow",
                "MeshserveLatencyBudgetBurnFast", "MeshserveLatencyBudgetBurnSlow",
                "MeshserveNotReady", "MeshserveSkewGuardRejections", "MeshserveModelQueueSaturated"}
    names = {name for name, _ in alerts}
    assert expected | {"MeshserveServiceDown"} <= names, names
    # One rule per name, or per (name, component) for an alert written out per service.
    assert len(set(alerts)) == len(alerts)


def test_dashboard_and_rules_name_only_exported_metrics(traced_stack: Stack) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["panels"] and board.get("uid")
    exported = metric_names(scrape(traced_stack))
    records = {r["record"] for g in rendered_rule()["spec"]["groups"] for r in g["rules"] if "record" in r}
    referenced: Counter[str] = Counter()
    for expr in dashboard_exprs() + rule_exprs(rendered_rule()):
        for name in promql_metric_names(expr):
            referenced[name] += 1
    unknown = {n for n in referenced if n not in exported and n not in records}
    assert not unknown, f"PromQL names metrics no service exports: {sorted(unknown)}"
    # And the dashboard covers every service's RED metrics, the stages and the batcher.
    for name in ("meshserve_rpc_requests_total", "meshserve_rpc_duration_seconds_bucket",
                 "meshserve_gateway_stage_duration_seconds_bucket", "meshserve_ready", "meshserve_artifact_info"):
        assert name in referenced, name
