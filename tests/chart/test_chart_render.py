"""Shape: the chart renders for every case, every document validates against its schema,
and `helm lint` finds nothing."""

from __future__ import annotations

import re

import pytest
import yaml
from chart_helpers import (
    CASES,
    CHART_DIR,
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    SERVICES,
    by_kind,
    case_docs,
    helm_python,
    import_kubernetes_validate,
    strict_failures,
    is_custom_resource,
    render_raw,
)

kubernetes_validate = import_kubernetes_validate()

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)


def test_supported_versions_are_bundled_and_declared() -> None:
    bundled = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    for version in K8S_VERSIONS:
        assert version in bundled, f"kubernetes-validate has no schemas for {version} (has {sorted(bundled)})"
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    oldest = re.match(r">=\s*(\d+\.\d+)", meta["kubeVersion"])
    assert oldest and oldest.group(1) == K8S_VERSIONS[0], "Chart.yaml kubeVersion and the tested oldest version disagree"


def test_expected_kinds_per_case(case: str) -> None:
    docs = case_docs(case)
    v = CASES[case]
    kinds = {d["kind"] for d in docs}
    for kind in ("Deployment", "Service", "ConfigMap"):
        assert kind in kinds
    istio = v.get("istio", {}).get("enabled", False)
    for kind in ("DestinationRule", "VirtualService", "PeerAuthentication", "AuthorizationPolicy"):
        assert (kind in kinds) == istio, f"{kind} rendered={kind in kinds} with istio.enabled={istio}"
    sm = v.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    assert ("ServiceMonitor" in kinds) == sm
    canary = v.get("canary", {}).get("enabled", False)
    deployments = {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    expected = {f"{RELEASE}-{svc}" for svc in SERVICES}
    if canary:
        expected |= {f"{RELEASE}-{svc}-canary" for svc in ("gateway", "preprocess", "model")}
    assert deployments == expected
    off = case == "all-optional-off"
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"):
        assert (kind in kinds) != off, f"{kind} presence wrong in case {case}"
    assert ("Pod" in kinds) != off  # the helm test hook
    for doc in docs:
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']} not namespaced"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_validate_strict(case: str, version: str) -> None:
    failures = strict_failures(case_docs(case), version)
    assert not failures, f"Kubernetes {version} strict validation failed:\n" + "\n".join(failures)


def test_custom_resources_validate_strict(case: str, strict_schema) -> None:
    failures = []
    checked = 0
    for doc in case_docs(case):
        if not is_custom_resource(doc):
            continue
        checked += 1
        for err in strict_schema(doc).iter_errors(doc):
            path = "/".join(str(p) for p in err.absolute_path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']} at /{path}: {err.message}")
    assert not failures, "custom-resource schema validation failed:\n" + "\n".join(failures)
    if CASES[case].get("istio", {}).get("enabled"):
        assert checked > 0


def test_cel_rules_the_schemas_cannot_check(case: str) -> None:
    """x-kubernetes-validations that jsonschema ignores, checked by hand for what the chart uses."""
    duration = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
    for doc in case_docs(case):
        spec = doc.get("spec", {})
        if doc["kind"] == "PeerAuthentication" and "portLevelMtls" in spec:
            assert spec.get("selector", {}).get("matchLabels"), "portLevelMtls requires selector"
            for port in spec["portLevelMtls"]:
                assert 0 < int(port) <= 65535
        if doc["kind"] == "AuthorizationPolicy":
            assert sum(k in spec for k in ("selector", "targetRef", "targetRefs")) <= 1
        if doc["kind"] == "DestinationRule":
            policy = spec.get("trafficPolicy", {})
            for value in (policy.get("connectionPool", {}).get("tcp", {}).get("connectTimeout"),
                          policy.get("outlierDetection", {}).get("interval"),
                          policy.get("outlierDetection", {}).get("baseEjectionTime")):
                assert value is None or duration.match(str(value)), f"bad duration {value!r}"
        if doc["kind"] == "VirtualService":
            for route in spec["http"]:
                for value in (route.get("timeout"), route.get("retries", {}).get("perTryTimeout")):
                    assert value is None or duration.match(str(value)), f"bad duration {value!r}"


def test_standard_labels_on_every_object(case: str) -> None:
    for doc in case_docs(case):
        labels = doc["metadata"].get("labels") or {}
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "meshserve"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] == "Deployment":
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert all(k in pod_labels for k in STANDARD_LABELS)
            assert "helm.sh/chart" not in pod_labels, "a chart bump alone must not roll the pods"


@pytest.mark.parametrize("version", ["v1.29.0", "v1.37.0"])
def test_helm_lint_clean(case: str, version: str) -> None:
    report = helm_python.lint(str(CHART_DIR), CASES[case], strict=True, namespace=NAMESPACE, kube_version=version)
    assert not report["errors"], report["errors"]
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious, serious


def test_notes_tell_how_to_call_the_gateway() -> None:
    notes = next(v for k, v in render_raw({}).items() if k.endswith("NOTES.txt"))
    assert "grpcurl" in notes
    assert "meshserve.v1.PredictionService/PredictEntities" in notes
    body = '{"entities":[{"values":{"driver_id":{"int64Value":"1001"},"customer_id":{"int64Value":"2001"}}}]}'
    assert body in notes
    assert f"svc/{RELEASE}-gateway 50051:50051" in notes
    canary_notes = next(v for k, v in render_raw(CASES["istio-canary-10"]).items() if k.endswith("NOTES.txt"))
    assert "x-meshserve-track: canary" in canary_notes
    assert "--set canary.weight=" in canary_notes
    assert f"{RELEASE}-preprocess-canary" in canary_notes and f"{RELEASE}-model-canary" in canary_notes


def test_release_name_prefixing() -> None:
    """Another release name gets its own prefix; names stay valid DNS labels."""
    long_name = "a-very-long-release-name-for-meshserve-serving-x"
    docs = [d for d in yaml.safe_load_all("\n---\n".join(
        v for k, v in render_raw(CASES["istio-canary-10"], name=long_name).items() if not k.endswith("NOTES.txt"))) if d]
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name), name
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert any(n.endswith("-preprocess-headless") for n in names)
    services = render_raw({}, name="prod")["meshserve/templates/service.yaml"]
    other = {d["metadata"]["name"] for d in yaml.safe_load_all(services) if d}
    assert "prod-meshserve-gateway" in other
