"""Bad values are rejected before anything reaches a cluster, with a message naming the key:
by values.schema.json (Helm enforces it in render, lint and install) or, for what JSON
Schema cannot express (comparing two values, cross-key rules), by `fail` in the templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_helpers import CHART_DIR, K8S_DIR, NAMESPACE, chart, helm_python, render

SCHEMA_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("canary weight above 100", {"canary": {"weight": 101}}, "/canary/weight"),
    ("canary weight below 0", {"canary": {"weight": -1}}, "/canary/weight"),
    ("canary weight not a number", {"canary": {"weight": "ten"}}, "/canary/weight"),
    ("unknown top-level key", {"replicas": 3}, "replicas"),
    ("misspelt nested key", {"gateway": {"replicaCont": 3}}, "replicaCont"),
    ("misspelt autoscaling key", {"model": {"autoscaling": {"maxReplica": 3}}}, "maxReplica"),
    ("unknown HPA metric mode", {"model": {"autoscaling": {"metric": "memory"}}}, "/model/autoscaling/metric"),
    ("minReplicas zero", {"gateway": {"autoscaling": {"minReplicas": 0}}}, "/gateway/autoscaling/minReplicas"),
    ("port out of range", {"features": {"port": 70000}}, "/features/port"),
    ("unknown device", {"model": {"device": "tpu"}}, "/model/device"),
    ("unknown online store", {"features": {"onlineStore": "dynamodb"}}, "/features/onlineStore"),
    ("redis password inlined", {"features": {"redis": {"url": "redis:6379,password=hunter2"}}}, "/features/redis/url"),
    ("redis password inlined in a URL", {"features": {"redis": {"url": "redis://:hunter2@redis:6379/0"}}}, "/features/redis/url"),
    ("redis URL without port", {"features": {"redis": {"url": "redis-master"}}}, "/features/redis/url"),
    ("bad scale policy type",
     {"gateway": {"autoscaling": {"behavior": {"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "periodSeconds": 15}]}}}}},
     "/gateway/autoscaling/behavior/scaleUp/policies/0/type"),
    ("stabilization window too long",
     {"gateway": {"autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 7200}}}}},
     "stabilizationWindowSeconds"),
    ("empty tracking URI", {"mlflow": {"trackingUri": ""}}, "/mlflow/trackingUri"),
    ("bad canary header name", {"canary": {"header": {"name": "X Track"}}}, "/canary/header/name"),
    ("bad mTLS mode", {"istio": {"mtls": {"mode": "OFF"}}}, "/istio/mtls/mode"),
    ("bad probe", {"model": {"probes": {"startup": {"periodSeconds": 0}}}}, "/model/probes/startup/periodSeconds"),
    ("bad CUDA tag suffix", {"model": {"gpu": {"imageTagSuffix": "-cu 126"}}}, "/model/gpu/imageTagSuffix"),
]

TEMPLATE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("minReplicas > maxReplicas", {"model": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
     "model.autoscaling.minReplicas (5) must be <= model.autoscaling.maxReplicas (3)"),
    ("canary without Istio", {"canary": {"enabled": True, "weight": 10}}, "canary.enabled requires istio.enabled"),
    ("weight without canary", {"canary": {"weight": 20}}, "canary.weight is 20 but canary.enabled is false"),
    ("termination grace shorter than drain", {"preprocess": {"gracePeriodSeconds": 30, "terminationGracePeriodSeconds": 30}},
     "preprocess.terminationGracePeriodSeconds (30) must exceed preprocess.gracePeriodSeconds (30)"),
    ("same gRPC and metrics port", {"gateway": {"metricsPort": 50051}}, "gateway.port and gateway.metricsPort must differ"),
    ("both PDB fields", {"features": {"pdb": {"minAvailable": 1}}},
     "features.pdb: set only one of minAvailable and maxUnavailable"),
    ("canary alias equals stable", {"istio": {"enabled": True}, "canary": {"enabled": True, "alias": "production"}},
     "canary.alias (production) must differ from model.alias"),
    ("redis without address", {"features": {"redis": {"url": ""}}}, "set features.redis.url or features.redis.existingSecret"),
    ("cuda device without a GPU", {"model": {"device": "cuda"}},
     "model.device is cuda but model.gpu.enabled is false"),
    ("canary at 50% on single pods", {"istio": {"enabled": True}, "canary": {"enabled": True, "weight": 50}},
     "canary.weight is 50 but canary.replicas.gateway is 1"),
    ("canary at 100% on one model pod",
     {"istio": {"enabled": True},
      "canary": {"enabled": True, "weight": 100, "replicas": {"gateway": 2, "preprocess": 2, "model": 1}}},
     "canary.weight is 100 but canary.replicas.model is 1"),
]


@pytest.mark.parametrize(("what", "values", "where"), SCHEMA_ERRORS, ids=[c[0] for c in SCHEMA_ERRORS])
def test_schema_rejects(what: str, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart().validate_schema(values)
    assert where in str(err.value), f"{what}: message does not name {where}: {err.value}"
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


@pytest.mark.parametrize(("what", "values", "message"), TEMPLATE_ERRORS, ids=[c[0] for c in TEMPLATE_ERRORS])
def test_template_rejects(what: str, values: dict[str, Any], message: str) -> None:
    chart().validate_schema(values)  # well-formed: only the cross-key check catches it
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(values)
    assert message in str(err.value), f"{what}: {err.value}"


def test_canary_below_50_percent_renders_on_single_pods() -> None:
    """The default canary (one pod each) renders up to weight 49; from 50 it needs 2+ replicas."""
    assert render({"istio": {"enabled": True}, "canary": {"enabled": True}})
    assert render({"istio": {"enabled": True}, "canary": {"enabled": True, "weight": 49}})
    assert render({"istio": {"enabled": True}, "canary": {"enabled": True, "weight": 50,
                                                         "replicas": {"gateway": 2, "preprocess": 2, "model": 2}}})


@pytest.mark.parametrize("url", ["redis-master:6379", "redis-master:6379,db=2", "redis://redis-master:6379/2", "rediss://redis-master:6380"])
def test_schema_accepts_both_redis_address_forms(url: str) -> None:
    """The forms the features service reads (meshserve_feature_repo.config.redis_connection_string)."""
    chart().validate_schema({"features": {"redis": {"url": url}}})


def test_lint_reports_schema_violations_as_errors() -> None:
    """Helm's lint runs templates in lint mode, where `fail` only logs (a Helm design choice):
    the cross-key checks above surface on render/template/install, the schema ones on lint too."""
    report = helm_python.lint(str(CHART_DIR), {"canary": {"weight": 101}}, namespace=NAMESPACE)
    assert any("/canary/weight" in e for e in report["errors"]), report
    assert any(m["severity"] == 3 for m in report["messages"])


def test_schema_is_valid_and_accepts_the_defaults() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    assert schema["additionalProperties"] is False


def _objects_without_closed_properties(schema: dict[str, Any]) -> list[str]:
    """Objects that list properties but would still accept unknown keys."""
    open_ones = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties", True) is not False:
                open_ones.append(path or "/")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "")
    return open_ones


def test_every_described_object_rejects_unknown_keys() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert _objects_without_closed_properties(schema) == []


@pytest.mark.parametrize("path", sorted((K8S_DIR / "values").glob("*.yaml")) + [K8S_DIR / "kind" / "values-kind.yaml"],
                         ids=lambda p: str(Path(p).relative_to(K8S_DIR)))
def test_shipped_values_files_are_valid(path: Path) -> None:
    values = yaml.safe_load(path.read_text()) or {}
    chart().validate_schema(values)
    assert render(values)
