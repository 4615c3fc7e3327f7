"""The observability additions of the chart: Grafana dashboard ConfigMap and PrometheusRule.

Both are off by default (the existing value cases never render them); here they are
rendered on, checked for shape, and checked to render nothing when off. Whether every
metric they name is really exported is checked against a live scrape in
tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART_DIR, K8S_VERSIONS, NAMESPACE, RELEASE

from meshserve_runtime.metrics import LATENCY_BUCKETS

ON = {"metrics": {"dashboard": {"enabled": True}, "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}}


def render(values: dict[str, Any]) -> list[dict]:
    rendered = helm_python.Chart.load(str(CHART_DIR)).render(values, name=RELEASE, namespace=NAMESPACE)
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
