"""Shared helpers of the offline checks of the Helm chart (deploy/helm/meshserve) and the plain manifests (deploy/k8s).

The chart is rendered by the real Helm engine through helm-python-sdk (no helm binary, no
cluster). Istio and ServiceMonitor templates are gated on values (istio.enabled,
metrics.serviceMonitor.enabled) because helm_python's render() cannot set API versions.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

import helm_python  # helm-python-sdk (requirements/dev.txt)

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "meshserve"
K8S_DIR = REPO / "deploy" / "k8s"
# The Istio and prometheus-operator JSON schemas live outside the repo (shared/schemas next
# to it); a checkout elsewhere names them with MESHSERVE_CRD_SCHEMAS.
SCHEMAS_DIR = Path(os.environ.get("MESHSERVE_CRD_SCHEMAS") or REPO.parent / "shared" / "schemas" / "strict")
RELEASE = "meshserve"
NAMESPACE = "ml-serving"

# Oldest and newest Kubernetes versions the chart supports (Chart.yaml kubeVersion: >=1.29.0-0);
# kubernetes-validate 1.37.0 bundles schemas for 1.25 to 1.37.
K8S_VERSIONS = ("1.29", "1.37")

SERVICES = ("gateway", "features", "preprocess", "model")
HEALTH_NAMES = {
    "gateway": "meshserve.v1.PredictionService",
    "features": "meshserve.v1.FeatureService",
    "preprocess": "meshserve.v1.PreprocessService",
    "model": "inference.GRPCInferenceService",
}
ENV_PREFIX = {svc: f"MESHSERVE_{svc.upper()}" for svc in SERVICES}
CONTRACT_PORTS = {"gateway": (50051, 9101), "features": (50052, 9102), "preprocess": (50053, 9103), "model": (50054, 9104)}

Doc = dict[str, Any]

_ALL_OFF: dict[str, Any] = {
    svc: {
        "autoscaling": {"enabled": False},
        "pdb": {"enabled": False},
        "serviceAccount": {"create": False},
    }
    for svc in SERVICES
}
_ALL_OFF.update({
    "networkPolicy": {"enabled": False},
    "topologySpread": {"enabled": False},
    "tests": {"enabled": False},
    "istio": {"enabled": False},
    "metrics": {"serviceMonitor": {"enabled": False}},
})

# The matrix of values every structural and semantic check runs on.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": {
        "model": {
            "device": "cuda",
            "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia",
                    "nodeSelector": {"nvidia.com/gpu.present": "true"}, "imageTag": "0.1.0-cuda"},
        },
    },
    "istio-canary-10": {
        "istio": {"enabled": True, "ingress": {"gateways": ["istio-ingress/public"], "hosts": ["predict.example.com"]}},
        "canary": {"enabled": True, "weight": 10, "imageTag": "0.2.0"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    },
    "istio-no-canary": {"istio": {"enabled": True}},
    "istio-canary-100-gpu": {
        "istio": {"enabled": True},
        # From weight 50 every canary needs 2+ replicas (and then gets a PDB).
        "canary": {"enabled": True, "weight": 100, "imageTag": "0.2.0",
                   "replicas": {"gateway": 2, "preprocess": 2, "model": 3}},
        "model": {"device": "cuda", "gpu": {"enabled": True}},
    },
    "hpa-custom-metric": {
        "model": {"autoscaling": {"metric": "custom",
                                  "custom": {"name": "meshserve_model_queue_depth", "targetAverageValue": "8"}}},
    },
    "secrets": {
        "mlflow": {"existingSecret": "mlflow-credentials", "secretEnv": {"MLFLOW_TRACKING_TOKEN": "token"}},
        "features": {"redis": {"existingSecret": "redis-url", "urlKey": "url"},
                     "feast": {"existingSecret": "feast-registry", "registryKey": "url"}},
        "imageDefaults": {"registry": "ghcr.io/acme/", "tag": "1.2.3"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "all-optional-off": _ALL_OFF,
    "file-registry-volume": {
        "features": {
            "feast": {"registry": "/etc/feast/registry.db"},
            "extraVolumes": [{"name": "feast-registry", "configMap": {"name": "feast-registry"}}],
            "extraVolumeMounts": [{"name": "feast-registry", "mountPath": "/etc/feast", "readOnly": True}],
        },
    },
}

CUSTOM_RESOURCE_GROUPS = ("networking.istio.io", "security.istio.io", "monitoring.coreos.com")


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


@functools.lru_cache(maxsize=1)
def chart() -> Any:
    return helm_python.Chart.load(str(CHART_DIR))


def render_raw(values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    return chart().render(copy.deepcopy(values or {}), name=name, namespace=namespace)


def parse(rendered: dict[str, str]) -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None = None, **kw: Any) -> list[Doc]:
    return parse(render_raw(values, **kw))


@functools.lru_cache(maxsize=None)
def _case_docs(case: str) -> tuple[str, ...]:
    # Cached as JSON text so that no test can mutate another test's documents.
    return tuple(json.dumps(d) for d in render(CASES[case]))


def case_docs(case: str) -> list[Doc]:
    return [json.loads(d) for d in _case_docs(case)]


def case_values(case: str) -> dict[str, Any]:
    """The values a case really renders with (chart defaults + the case)."""
    return deep_merge(chart().values, CASES[case])


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def is_hook(doc: Doc) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def is_custom_resource(doc: Doc) -> bool:
    return doc["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS


def pod_templates(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(owner, pod spec holder) pairs: Deployments' templates and bare Pods (helm test)."""
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            out.append((doc, doc["spec"]["template"]))
        elif doc["kind"] == "Pod":
            out.append((doc, doc))
    return out


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_match(selector: Doc, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against labels."""
    if not labels_match(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def deployments_selected(docs: list[Doc], selector: dict[str, str]) -> list[Doc]:
    return [d for d in by_kind(docs, "Deployment") if labels_match(selector, d["spec"]["template"]["metadata"]["labels"])]


def component(doc: Doc) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def track(doc: Doc) -> str:
    return doc["spec"]["template"]["metadata"]["labels"]["track"]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def config_env(docs: list[Doc], deployment: Doc) -> dict[str, str]:
    """The plain environment of a Deployment's container (its ConfigMaps + literal env)."""
    env: dict[str, str] = {}
    c = container(deployment)
    for source in c.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            cm = find(docs, "ConfigMap", ref["name"])
            assert cm is not None, f"{deployment['metadata']['name']}: envFrom ConfigMap {ref['name']} is not rendered"
            env.update(cm.get("data") or {})
    for item in c.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("meshserve_k8s_generate", K8S_DIR / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(case: str) -> list[Doc]:
    return case_docs(case)


@pytest.fixture
def values(case: str) -> dict[str, Any]:
    return case_values(case)


@pytest.fixture(scope="session")
def strict_schema() -> Callable[[Doc], Any]:
    """A jsonschema validator factory for the custom resources (Istio, ServiceMonitor)."""
    if not SCHEMAS_DIR.is_dir():
        pytest.skip(f"custom-resource schemas not found at {SCHEMAS_DIR} (shared/schemas/strict next to the repo, "
                    "or set MESHSERVE_CRD_SCHEMAS to the folder of their *.json)")
    import jsonschema

    cache: dict[str, Any] = {}

    def validator(doc: Doc) -> Any:
        group, version = doc["apiVersion"].split("/")
        name = f"{group}_{version}_{doc['kind']}.json"
        if name not in cache:
            path = SCHEMAS_DIR / name
            assert path.is_file(), f"no schema {name} in {SCHEMAS_DIR} for {doc['kind']} {doc['apiVersion']}"
            schema = json.loads(path.read_text())
            cache[name] = jsonschema.Draft7Validator(schema)
        return cache[name]

    return validator


def import_kubernetes_validate() -> Any:
    """kubernetes_validate (skip if missing), with its schema file reads cached.

    validate() re-reads its (large) schema files on every call; caching the file contents
    makes the chart matrix ~6x faster and changes nothing else.
    """
    kv = pytest.importorskip("kubernetes_validate")
    utils = getattr(kv, "utils", None)
    if utils is not None and hasattr(utils, "schema_contents") and not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return kv


def strict_failures(docs: list[Doc], version: str) -> list[str]:
    """What `kubernetes-validate --strict` refuses among the core kinds of `docs`."""
    kv = import_kubernetes_validate()
    failures = []
    for doc in docs:
        if is_custom_resource(doc):
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message}")
    return failures
