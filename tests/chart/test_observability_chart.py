"""The observability additions of the chart: Grafana dashboard ConfigMap and PrometheusRule.

Both are off by default (the existing value cases never render them); here they are
rendered on, checked for shape, and checked to render nothing when off. Whether every
metric they name is really exported is checked against a live scrape in
tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart_helpers import (CHART_DIR, HEALTH_NAMES, K8S_VERSIONS, NAMESPACE, RELEASE, SERVICES, deployments_selected,
                           labels_match, track)

from meshserve_runtime.metrics import LATENCY_BUCKETS

ON = {"metrics": {"dashboard": {"enabled": True}, "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}}


def render(values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    rendered = helm_python.Chart.load(str(CHART_DIR)).render(values, name=name, namespace=namespace)
    return [d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def test_off_by_default() -> None:
    docs = render({})
    assert not [d for d in docs if d["kind"] == "PrometheusRule"]
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dashboard_configmap(version: str) -> None:
    cms = [d for d in render(ON) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{RELEASE}-dashboard"]
    assert len(cms) == 1
    cm = cms[0]
    kubernetes_validate.validate(cm, version, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(cm["data"]["meshserve.json"])
    assert board["uid"] == "meshserve-overview"
    titles = " ".join(p["title"] for p in board["panels"])
    for words in ("by service", "by stage", "Batch size", "Queue depth", "Ready replicas", "by track"):
        assert words in titles, words


def test_prometheus_rule_shape_and_thresholds() -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "slo": {"availabilityTarget": 0.995, "latencyThresholdSeconds": "0.25"}}}}
    rules = [d for d in render(values) if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == NAMESPACE
    exprs = {r.get("alert") or r["record"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "(14.4 * (1 - 0.995))" in exprs["MeshserveAvailabilityBudgetBurnFast"]
    assert 'le="0.25"' in exprs["meshserve:gateway_slow:ratio_rate5m"]
    for windows in (("1h", "5m"), ("6h", "30m")):
        for w in windows:
            assert f"meshserve:gateway_errors:ratio_rate{w}" in exprs


def test_latency_threshold_must_be_a_bucket() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    allowed = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["slo"]["properties"]["latencyThresholdSeconds"]["enum"]
    assert allowed == [str(b) for b in LATENCY_BUCKETS]  # the exporter's le strings
    with pytest.raises(Exception):
        render({"metrics": {"prometheusRule": {"enabled": True, "slo": {"latencyThresholdSeconds": "0.2"}}}})


def _env_of(docs: list[dict], svc: str) -> dict[str, str]:
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{RELEASE}-{svc}"]
    assert len(cm) == 1, [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    return cm[0]["data"]


def test_tracing_off_by_default_keeps_ids_but_exports_nothing() -> None:
    docs = render({})
    for svc in ("gateway", "features", "preprocess", "model"):
        env = _env_of(docs, svc)
        assert env["OTEL_TRACES_EXPORTER"] == "none"
        assert env["OTEL_SERVICE_NAME"] == f"meshserve-{svc}"
        assert "meshserve.track=stable" in env["OTEL_RESOURCE_ATTRIBUTES"].split(",")
        assert "OTEL_TRACES_SAMPLER_ARG" not in env
        assert env[f"MESHSERVE_{svc.upper()}_ACCESS_LOG"] == "false"


def test_tracing_on_sets_the_standard_otel_variables() -> None:
    docs = render({"tracing": {"enabled": True, "endpoint": "http://collector.obs:4317", "sampleRatio": 0.05,
                               "resourceAttributes": {"deployment.environment": "prod"}},
                   "logging": {"accessLog": True}})
    env = _env_of(docs, "model")
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.obs:4317"
    assert env["OTEL_EXPORTER_OTLP_INSECURE"] == "true"
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.05")
    assert set(env["OTEL_RESOURCE_ATTRIBUTES"].split(",")) == {
        f"k8s.namespace.name={NAMESPACE}", "meshserve.track=stable", "deployment.environment=prod"}
    assert env["MESHSERVE_MODEL_ACCESS_LOG"] == "true"


@pytest.mark.parametrize("bad", [{"sampleRatio": 1.5}, {"endpoint": "collector:4317"}, {"exporter": "zipkin"}])
def test_tracing_values_are_checked(bad: dict) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"tracing": bad})


def test_the_artifact_panel_groups_by_labels_the_services_export() -> None:
    """The dashboard's served-versions panel must group by the info metric's real label names
    (a label that does not exist groups every artifact into one nameless series)."""
    import re

    from meshserve_runtime.registry import ResolvedArtifact

    cm = [d for d in render(ON) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{RELEASE}-dashboard"][0]
    board = json.loads(cm["data"]["meshserve.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if "meshserve_artifact_info" in t["expr"]]
    assert exprs
    exported = set(ResolvedArtifact(name="m", version="1", run_id="r", alias="production", source="models:/m/1").labels()) | {"track", "namespace"}
    for expr in exprs:
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels = {g.strip() for g in group.split(",")}
            assert labels <= exported, labels - exported


# --- PrometheusRule: per namespace, per release, and an alert for a service with no target ---

_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_BARE_METRIC = re.compile(r"\b(?:meshserve[_:][\w:]*+|up\b)(?!\{)")  # a metric without a selector
_RULE_ON = {"prometheusRule": {"enabled": True}}


def _selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (op, value)}) of every vector selector with braces in `expr`."""
    return [(name, {k: (op, v) for k, op, v in _MATCHER.findall(body)}) for name, body in _SELECTOR.findall(expr)]


def _rule_doc(docs: list[dict]) -> dict:
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    return rules[0]


def _rules(docs: list[dict]) -> list[dict]:
    return [r for g in _rule_doc(docs)["spec"]["groups"] for r in g["rules"]]


def _down_rules(docs: list[dict]) -> list[dict]:
    return [r for r in _rules(docs) if r.get("alert") == "MeshserveServiceDown"]


def _with_service_monitor(canary: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"metrics": {**_RULE_ON, "serviceMonitor": {"enabled": True}}}
    if canary:
        values.update({"istio": {"enabled": True}, "canary": {"enabled": True, "weight": 10}})
    return values


def test_records_and_alerts_are_per_namespace() -> None:
    """Two releases in two namespaces, one Prometheus: each release's records carry its
    namespace (no empty label set both overwrite) and each alert reads its own only."""
    exprs: dict[str, dict[str, str]] = {}
    for ns in ("staging", "prod"):
        rules = _rules(render({"metrics": _RULE_ON}, namespace=ns))
        exprs[ns] = {r.get("alert", "") + r.get("record", ""): r["expr"] for r in rules}
        for rule in rules:
            name, expr = rule.get("record") or rule["alert"], rule["expr"]
            assert not _BARE_METRIC.findall(expr), (name, _BARE_METRIC.findall(expr))
            sels = _selectors(expr)
            assert sels, name
            for metric, matchers in sels:
                assert matchers.get("namespace") == ("=", ns), (name, metric, matchers)
            if "record" in rule:
                assert not re.search(r"\bsum\s*\(", expr), (name, "an aggregation without by (namespace)")
                groups = re.findall(r"\bby\s*\(([^)]*)\)", expr)
                assert groups and all("namespace" in {g.strip() for g in grp.split(",")} for grp in groups), (name, groups)
    assert {k: v.replace('"staging"', '"prod"') for k, v in exprs["staging"].items()} == exprs["prod"]


@pytest.mark.parametrize("canary", [False, True], ids=["stable-only", "canary"])
def test_service_down_alert_matches_the_service_monitor_targets(canary: bool) -> None:
    """MeshserveServiceDown selects `up` by the labels the ServiceMonitor gives its targets:
    job from its jobLabel (a label of the Service), service = the Service's name (so per
    release), namespace from namespaceSelector, and a track per Deployment behind it."""
    docs = render(_with_service_monitor(canary))
    sms = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(sms) == 1
    sm = sms[0]["spec"]
    assert "track" in sm["podTargetLabels"]
    expected: dict[tuple[str, str, str], set[str]] = {}
    for svc in (d for d in docs if d["kind"] == "Service"):
        ns = svc["metadata"]["namespace"]
        selected = labels_match(sm["selector"]["matchLabels"], svc["metadata"]["labels"])
        if ns not in sm["namespaceSelector"]["matchNames"] or not selected:
            continue
        tracks = {track(dep) for dep in deployments_selected(docs, svc["spec"]["selector"])}
        expected[(ns, svc["metadata"]["labels"][sm["jobLabel"]], svc["metadata"]["name"])] = tracks
    assert len(expected) == len(SERVICES)
    assert {t for ts in expected.values() for t in ts} == ({"stable", "canary"} if canary else {"stable"})

    found: dict[tuple[str, str, str], set[str]] = {}
    for rule in _down_rules(docs):
        expr = rule["expr"]
        assert rule["for"] == "5m" and rule["labels"]["severity"] == "page", rule
        assert re.match(r"sum by \(namespace, job, service, track\) \(up\{[^}]*\}\) == 0\s", expr), expr
        absent = re.findall(r"\bor absent\((up\{[^}]*\})\)", expr)
        assert len(absent) == expr.count("absent(") >= 1, expr
        keys = set()
        tracks = set()
        for metric, m in _selectors(expr):
            assert metric == "up" and all(op == "=" for op, _ in m.values()), (metric, m)
            keys.add((m["namespace"][1], m["job"][1], m["service"][1]))
            if "track" in m:
                tracks.add(m["track"][1])
        assert len(keys) == 1, keys
        key = keys.pop()
        assert rule["labels"]["component"] == key[1]
        found[key] = tracks
        for text in rule["annotations"].values():
            assert "{{ $labels.track }}" in text or "{{ $labels.namespace }}" in text
    assert found == expected


def test_service_down_alert_without_the_service_monitor_uses_meshserve_ready() -> None:
    rules = _down_rules(render({"metrics": _RULE_ON}))
    assert sorted(r["labels"]["component"] for r in rules) == sorted(SERVICES)
    for rule in rules:
        svc = rule["labels"]["component"]
        assert rule["expr"] == f'absent(meshserve_ready{{namespace="{NAMESPACE}",service="{HEALTH_NAMES[svc]}"}})'


def test_service_down_alert_is_per_release_in_a_shared_namespace() -> None:
    def services(release: str) -> set[str]:
        docs = render(_with_service_monitor(False), name=release, namespace="shared")
        return {m["service"][1] for r in _down_rules(docs) for _, m in _selectors(r["expr"])}

    a, b = services("a"), services("b")
    assert len(a) == len(b) == len(SERVICES) and not a & b


# --- promtool (the Prometheus release's tool; Debian's `prometheus` package ships it) ---

def _promtool() -> str:
    # `make test` puts one in the venv (tools/fetch_promtool.sh), beside this interpreter.
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if not tool:
        pytest.skip("promtool not found (make test fetches Debian's into the venv; else set PROMTOOL or put it on PATH)")
    return tool


def _rule_file(path: Path, docs: list[dict], annotations: bool = True) -> str:
    spec = json.loads(json.dumps(_rule_doc(docs)["spec"]))
    if not annotations:
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(spec))
    return path.name


@pytest.mark.parametrize("service_monitor", [False, True])
def test_promtool_check_rules(tmp_path: Path, service_monitor: bool) -> None:
    tool = _promtool()
    values = _with_service_monitor(canary=True) if service_monitor else {"metrics": _RULE_ON}
    name = _rule_file(tmp_path / "rules.yaml", render(values))
    proc = subprocess.run([tool, "check", "rules", name], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    return {"series": metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_promtool_rule_semantics(tmp_path: Path) -> None:
    """With synthetic series: staging's errors page for staging only; a service whose pods
    are down (up == 0) or gone (no target) pages for that release only."""
    tool = _promtool()
    files = [
        _rule_file(tmp_path / "staging.yaml", render(_with_service_monitor(False), namespace="staging"), annotations=False),
        _rule_file(tmp_path / "prod.yaml", render(_with_service_monitor(False), namespace="prod"), annotations=False),
        _rule_file(tmp_path / "other.yaml", render(_with_service_monitor(False), name="other", namespace="prod"),
                   annotations=False),
    ]
    gw = {"service": "meshserve.v1.PredictionService", "method": "Predict"}
    calls = [
        _series("meshserve_rpc_requests_total", "0+60x90", namespace="staging", code="OK", **gw),
        _series("meshserve_rpc_requests_total", "0+60x90", namespace="staging", code="INTERNAL", **gw),
        _series("meshserve_rpc_requests_total", "0+60x90", namespace="prod", code="OK", **gw),
        _series("meshserve_rpc_requests_total", "0x90", namespace="prod", code="INTERNAL", **gw),
    ]
    up = []
    # (namespace, fullname of the release): a second release "other" shares prod.
    releases = (("staging", "meshserve", {}), ("prod", "meshserve", {"gateway": "0x15"}), ("prod", "other-meshserve", {}))
    for ns, fullname, down in releases:
        for svc in SERVICES:
            if (ns, fullname, svc) == ("prod", "meshserve", "features"):
                continue  # no target at all: nothing scrapes it
            # The target labels the ServiceMonitor gives (job from jobLabel, service = the Service).
            up.append(_series("up", down.get(svc, "1x15"), namespace=ns, job=svc, service=f"{fullname}-{svc}",
                              track="stable", pod=f"{fullname}-{svc}-1", endpoint="metrics",
                              instance="10.0.0.1:9100", container=f"meshserve-{svc}"))

    def down(svc: str) -> dict:
        return {"exp_labels": {"severity": "page", "component": svc, "namespace": "prod", "job": svc,
                               "service": f"meshserve-{svc}", "track": "stable"}}

    test = {
        "rule_files": files,
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": calls,
             "promql_expr_test": [{"expr": "meshserve:gateway_errors:ratio_rate5m", "eval_time": "70m", "exp_samples": [
                 {"labels": 'meshserve:gateway_errors:ratio_rate5m{namespace="staging"}', "value": 0.5},
                 {"labels": 'meshserve:gateway_errors:ratio_rate5m{namespace="prod"}', "value": 0}]}],
             "alert_rule_test": [{"eval_time": "70m", "alertname": "MeshserveAvailabilityBudgetBurnFast",
                                  "exp_alerts": [{"exp_labels": {"severity": "page", "namespace": "staging"}}]}]},
            {"interval": "1m", "input_series": up,
             "alert_rule_test": [{"eval_time": "3m", "alertname": "MeshserveServiceDown", "exp_alerts": []},
                                 {"eval_time": "10m", "alertname": "MeshserveServiceDown",
                                  "exp_alerts": [down("gateway"), down("features")]}]},
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    proc = subprocess.run([tool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
