"""The chart's `tls` block: TLS off (plaintext by explicit choice) and on (Secrets mounted
read-only, TLS settings in every service's env, kubelet probes on the plaintext health
port), the render-time checks, and strict Kubernetes validation of the TLS-on objects."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import (
    CONTRACT_PORTS,
    ENV_PREFIX,
    HEALTH_NAMES,
    K8S_VERSIONS,
    SERVICES,
    by_kind,
    chart,
    component,
    config_env,
    container,
    find,
    helm_python,
    strict_failures,
    render,
)


Doc = dict[str, Any]
MOUNT = "/etc/meshserve/tls"
TLS_ON = {"tls": {"enabled": True, "existingSecret": "meshserve-tls"}}


def settings_class(svc: str) -> type:
    from meshserve_features.settings import FeaturesSettings
    from meshserve_gateway.settings import GatewaySettings
    from meshserve_model.settings import ModelSettings
    from meshserve_preprocess.settings import PreprocessSettings

    return {"gateway": GatewaySettings, "features": FeaturesSettings, "preprocess": PreprocessSettings, "model": ModelSettings}[svc]


def deployments(docs: list[Doc]) -> dict[str, Doc]:
    return {component(d): d for d in by_kind(docs, "Deployment")}


def tls_env(docs: list[Doc], dep: Doc) -> dict[str, str]:
    """The transport settings of a Deployment: *_TLS_*, *_PLAINTEXT, *_HEALTH_PORT."""
    return {k: v for k, v in config_env(docs, dep).items() if "_TLS_" in k or k.endswith(("_PLAINTEXT", "_HEALTH_PORT"))}


def probe_ports(dep: Doc) -> set[int]:
    c = container(dep)
    return {c[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}


def tls_volume(dep: Doc) -> Doc | None:
    return next((v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"), None)


def tls_mount(pod_spec: Doc) -> Doc | None:
    return next((m for m in pod_spec["containers"][0]["volumeMounts"] if m["name"] == "tls"), None)


def test_tls_off_is_plaintext_by_explicit_choice() -> None:
    docs = render({})
    for svc, dep in deployments(docs).items():
        p = ENV_PREFIX[svc]
        assert tls_env(docs, dep) == {f"{p}_PLAINTEXT": "true", f"{p}_HEALTH_PORT": "8086"}, svc
        # The probes use the health-only server with TLS off too (answered at the call limit).
        assert probe_ports(dep) == {8086}
        assert tls_volume(dep) is None and tls_mount(dep["spec"]["template"]["spec"]) is None
        assert "health" in {port["name"] for port in container(dep)["ports"]}
    test_pod = by_kind(docs, "Pod")[0]
    assert not any(e["name"].startswith("MESHSERVE_TEST_TLS") for e in test_pod["spec"]["containers"][0]["env"])


def test_tls_on_mounts_the_secret_and_configures_every_service() -> None:
    docs = render(TLS_ON)
    deps = deployments(docs)
    assert set(deps) == set(SERVICES)
    for svc, dep in deps.items():
        p = ENV_PREFIX[svc]
        expected = {
            f"{p}_PLAINTEXT": "false",
            f"{p}_TLS_CERT_FILE": f"{MOUNT}/tls.crt",
            f"{p}_TLS_KEY_FILE": f"{MOUNT}/tls.key",
            f"{p}_HEALTH_PORT": "8086",
        }
        if svc == "gateway":
            # Its callers need no client certificate by default; its calls upstream present one.
            expected |= {
                f"{p}_UPSTREAM_TLS_CA_FILE": f"{MOUNT}/ca.crt",
                f"{p}_UPSTREAM_TLS_CERT_FILE": f"{MOUNT}/tls.crt",
                f"{p}_UPSTREAM_TLS_KEY_FILE": f"{MOUNT}/tls.key",
            }
        else:
            expected[f"{p}_TLS_CLIENT_CA_FILE"] = f"{MOUNT}/ca.crt"  # mutual TLS: only the gateway's certificate
        assert tls_env(docs, dep) == expected, svc
        assert tls_volume(dep) == {"name": "tls", "secret": {"secretName": "meshserve-tls", "defaultMode": 0o440}}
        assert tls_mount(dep["spec"]["template"]["spec"]) == {"name": "tls", "mountPath": MOUNT, "readOnly": True}
        # The kubelet's gRPC probes cannot speak TLS: all three use the plaintext health port.
        assert probe_ports(dep) == {8086}
        c = container(dep)
        assert c["readinessProbe"]["grpc"].get("service") == HEALTH_NAMES[svc]
        assert {"name": "health", "containerPort": 8086, "protocol": "TCP"} in c["ports"]
    # The health port is for the kubelet only: in no Service and no NetworkPolicy.
    for svc_doc in by_kind(docs, "Service"):
        assert all(port["port"] != 8086 and port.get("targetPort") not in (8086, "health") for port in svc_doc["spec"]["ports"])
    for np in by_kind(docs, "NetworkPolicy"):
        assert all(port["port"] != "health" for rule in np["spec"]["ingress"] for port in rule.get("ports", []))


def test_the_env_names_are_real_settings_of_each_service() -> None:
    """Every transport variable the chart sets is a field of that service's settings class
    and parses (a typo would be silently ignored by pydantic-settings' extra=ignore)."""
    docs = render({"tls": {"enabled": True, "existingSecret": "s", "gatewayMutual": True, "serverName": "meshserve.internal"}})
    for svc, dep in deployments(docs).items():
        cls = settings_class(svc)
        prefix = cls.model_config["env_prefix"]
        env = tls_env(docs, dep)
        fields = {k.removeprefix(prefix).lower(): v for k, v in env.items()}
        assert set(fields) <= set(cls.model_fields), (svc, set(fields) - set(cls.model_fields))
        parsed = cls(**fields)
        assert str(parsed.tls_cert_file) == f"{MOUNT}/tls.crt" and parsed.health_port == 8086 and parsed.plaintext is False
        assert str(parsed.tls_client_ca_file) == f"{MOUNT}/ca.crt"  # gatewayMutual: the gateway too
        if svc == "gateway":
            assert parsed.upstream_tls_server_name == "meshserve.internal"


def test_per_service_secrets_win_over_the_shared_one() -> None:
    docs = render({"tls": {"enabled": True, "existingSecret": "shared", "secrets": {"model": "model-tls"}}})
    names = {svc: tls_volume(dep)["secret"]["secretName"] for svc, dep in deployments(docs).items()}  # type: ignore[index]
    assert names == {"gateway": "shared", "features": "shared", "preprocess": "shared", "model": "model-tls"}
    docs = render({"tls": {"enabled": True, "secrets": {s: f"{s}-tls" for s in SERVICES}}})
    assert {svc: tls_volume(dep)["secret"]["secretName"] for svc, dep in deployments(docs).items()} == {s: f"{s}-tls" for s in SERVICES}  # type: ignore[index]


def test_server_only_tls_sets_no_client_certificates() -> None:
    docs = render({"tls": {"enabled": True, "existingSecret": "s", "mutual": False}})
    for svc, dep in deployments(docs).items():
        env = tls_env(docs, dep)
        assert not any(k.endswith(("_TLS_CLIENT_CA_FILE", "_UPSTREAM_TLS_CERT_FILE", "_UPSTREAM_TLS_KEY_FILE")) for k in env), svc
    gateway = tls_env(docs, deployments(docs)["gateway"])
    assert gateway["MESHSERVE_GATEWAY_UPSTREAM_TLS_CA_FILE"] == f"{MOUNT}/ca.crt"


def test_the_helm_test_pod_calls_the_gateway_over_tls() -> None:
    for gateway_mutual in (False, True):
        docs = render({"tls": {"enabled": True, "secrets": {s: f"{s}-tls" for s in SERVICES}, "gatewayMutual": gateway_mutual}})
        pod = by_kind(docs, "Pod")[0]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MESHSERVE_TEST_TLS_CA"] == f"{MOUNT}/ca.crt"
        assert ("MESHSERVE_TEST_TLS_CERT" in env) is gateway_mutual and ("MESHSERVE_TEST_TLS_KEY" in env) is gateway_mutual
        assert tls_mount(pod["spec"]) == {"name": "tls", "mountPath": MOUNT, "readOnly": True}
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
        assert volume["secret"]["secretName"] == "gateway-tls"


def test_notes_show_a_tls_call() -> None:
    from chart_helpers import render_raw

    notes = next(v for k, v in render_raw({"tls": {"enabled": True, "existingSecret": "s", "gatewayMutual": True}}).items() if k.endswith("NOTES.txt"))
    assert "-plaintext" not in notes
    assert "grpcurl -cacert ca.crt -servername meshserve-gateway -cert tls.crt -key tls.key" in notes


TEMPLATE_ERRORS = [
    ("no TLS and no plaintext choice", {"tls": {"plaintext": False}}, "tls.enabled and tls.plaintext are both false"),
    ("TLS inside the Istio mesh", {"istio": {"enabled": True}, "tls": {"enabled": True, "existingSecret": "s"}},
     "tls.enabled with istio.enabled: keep TLS off under Istio"),
    ("TLS without a Secret", {"tls": {"enabled": True}}, "tls.enabled: set tls.existingSecret or tls.secrets.gateway"),
    ("a service without a Secret", {"tls": {"enabled": True, "secrets": {"gateway": "g", "features": "f", "preprocess": "p"}}},
     "tls.secrets.model"),
    ("health port on a gRPC port", {"grpc": {"healthPort": 50053}},
     "grpc.healthPort (50053) must differ from preprocess.port"),
]


@pytest.mark.parametrize(("what", "values", "message"), TEMPLATE_ERRORS, ids=[c[0] for c in TEMPLATE_ERRORS])
def test_template_rejects(what: str, values: dict[str, Any], message: str) -> None:
    chart().validate_schema(values)
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(values)
    assert message in str(err.value), f"{what}: {err.value}"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"tls": {"enabled": True, "existingSecret": "Not_A_Name"}}, "existingSecret"),
        ({"tls": {"secrets": {"router": "x"}}}, "secrets"),
        ({"grpc": {"healthPort": 0}}, "healthPort"),
        ({"tls": {"mountPath": "relative/path"}}, "mountPath"),
        ({"tls": {"enable": True}}, "tls"),
    ],
)
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart().validate_schema(values)
    assert where in str(err.value), err.value


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "values",
    [TLS_ON, {"tls": {"enabled": True, "secrets": {s: f"{s}-tls" for s in SERVICES}, "gatewayMutual": True},
              "grpc": {"healthPort": 9443}}],
    ids=["shared-secret", "per-service-mutual"],
)
def test_tls_objects_validate_strict(values: dict[str, Any], version: str) -> None:
    docs = render(values)
    failures = strict_failures(docs, version)
    assert not failures, f"Kubernetes {version} strict validation failed:\n" + "\n".join(failures)
    assert find(docs, "Deployment", "meshserve-model") is not None


def test_helm_lint_clean_with_tls() -> None:
    from chart_helpers import CHART_DIR, NAMESPACE

    report = helm_python.lint(str(CHART_DIR), TLS_ON, strict=True, namespace=NAMESPACE, kube_version="v1.37.0")
    assert not report["errors"], report["errors"]
    assert not [m for m in report["messages"] if m["severity"] >= 2]
