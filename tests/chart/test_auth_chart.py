"""The chart's gateway authentication (gateway.auth) and the isolation of the internal services.

- auth off (default) renders exactly what it did before: no auth env, volume or mount;
- api_key and jwt mount the named Secret/ConfigMap read-only as a directory (so updates
  reach the running gateway) into every gateway pod (both tracks), with the env the
  gateway's settings read, and nothing secret in values, ConfigMaps or env literals;
- what each mode needs is enforced at render time, the schema refuses what cannot work;
- features/preprocess/model accept gRPC only from the gateway: NetworkPolicy, and with
  Istio an AuthorizationPolicy on the gateway's own service account;
- the helm test pod carries the test credential by secretKeyRef, and its script sends it.
Every rendered core object validates strictly (kubernetes-validate) on the oldest and newest
supported Kubernetes versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import helm_python
import kubernetes_validate
import pytest
from chart_helpers import (
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    by_kind,
    case_docs,
    component,
    config_env,
    container,
    find,
    is_custom_resource,
    label_selector_match,
    render,
    render_raw,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_gateway.settings import GatewaySettings

MOUNT = "/etc/meshserve/auth"
API_KEY = {"gateway": {"auth": {"mode": "api_key", "apiKeys": {"existingSecret": "gateway-api-keys"}}}}
JWT_CONFIGMAP = {
    "gateway": {"auth": {"mode": "jwt", "jwt": {
        "jwksConfigMap": "idp-jwks", "issuer": "https://idp.example.com/", "audience": "meshserve",
        "metricCallers": ["checkout", "search"], "algorithms": ["ES256"], "callerClaim": "azp", "leewaySeconds": 10,
    }}},
}
JWT_SECRET = {
    "gateway": {"auth": {"mode": "jwt", "jwt": {"jwksSecret": "idp-jwks", "jwksKey": "keys.json",
                                                "issuer": "https://idp.example.com/", "audience": "meshserve"}}},
}
ISTIO_CANARY = {"istio": {"enabled": True}, "canary": {"enabled": True, "weight": 10}}


def gateways(docs: list[dict]) -> list[dict]:
    return [d for d in by_kind(docs, "Deployment") if component(d) == "gateway"]


def auth_mount_and_volume(dep: dict) -> tuple[dict | None, dict | None]:
    pod = dep["spec"]["template"]["spec"]
    mounts = [m for m in container(dep).get("volumeMounts", []) if m["mountPath"] == MOUNT]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if not mounts:
        return None, None
    (mount,) = mounts
    return mount, volumes[mount["name"]]


def gateway_env(docs: list[dict], dep: dict) -> dict[str, str]:
    return {k: v for k, v in config_env(docs, dep).items() if k.startswith("MESHSERVE_GATEWAY_AUTH_")}


def pod_container(pod: dict) -> dict:
    (c,) = pod["spec"]["containers"]
    return c


def validate_core(docs: list[dict]) -> None:
    for version in K8S_VERSIONS:
        for doc in docs:
            if not is_custom_resource(doc):
                kubernetes_validate.validate(doc, version, strict=True)


def test_off_by_default_renders_nothing_of_auth() -> None:
    docs = render({})
    for dep in by_kind(docs, "Deployment"):
        assert auth_mount_and_volume(dep) == (None, None)
        assert not gateway_env(docs, dep)
    (pod,) = by_kind(docs, "Pod")
    assert not [e for e in pod_container(pod)["env"] if e["name"].startswith(("MESHSERVE_TEST_AUTH", "MESHSERVE_TEST_CREDENTIAL"))]
    # the gateway's own default agrees
    assert GatewaySettings().auth_mode == "none"


def test_api_key_mode_mounts_the_secret_read_only_in_every_gateway() -> None:
    values = {**API_KEY, **ISTIO_CANARY}
    docs = render(values)
    validate_core(docs)
    deps = gateways(docs)
    assert {d["spec"]["template"]["metadata"]["labels"]["track"] for d in deps} == {"stable", "canary"}
    for dep in deps:
        mount, volume = auth_mount_and_volume(dep)
        assert mount is not None and mount["readOnly"] is True
        assert "subPath" not in mount, "a subPath mount never sees Secret updates"
        assert volume["secret"]["secretName"] == "gateway-api-keys"
        assert volume["secret"]["items"] == [{"key": "api-keys", "path": "api-keys"}]
        assert volume["secret"]["defaultMode"] == 0o440
        env = gateway_env(docs, dep)
        assert env == {"MESHSERVE_GATEWAY_AUTH_MODE": "api_key", "MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE": f"{MOUNT}/api-keys"}
    for dep in by_kind(docs, "Deployment"):
        if component(dep) != "gateway":
            assert auth_mount_and_volume(dep) == (None, None), "only the gateway authenticates callers"


@pytest.mark.parametrize(("values", "source"), [(JWT_CONFIGMAP, "configMap"), (JWT_SECRET, "secret")], ids=["configmap", "secret"])
def test_jwt_mode_env_is_what_the_gateway_reads(values: dict[str, Any], source: str) -> None:
    docs = render(values)
    validate_core(docs)
    (dep,) = gateways(docs)
    mount, volume = auth_mount_and_volume(dep)
    assert mount is not None and mount["readOnly"] is True
    jwt_values = values["gateway"]["auth"]["jwt"]
    key = jwt_values.get("jwksKey", "jwks.json")
    assert set(volume) == {"name", source}
    assert volume[source].get("secretName", volume[source].get("name")) == "idp-jwks"
    assert volume[source]["items"] == [{"key": key, "path": key}]
    env = gateway_env(docs, dep)
    assert env["MESHSERVE_GATEWAY_AUTH_JWT_JWKS_FILE"] == f"{MOUNT}/{key}"
    # The rendered env, read by the real settings class, configures what the values say.
    settings = GatewaySettings(**{k.removeprefix("MESHSERVE_GATEWAY_").lower(): v for k, v in env.items()
                                  if k != "MESHSERVE_GATEWAY_AUTH_JWT_ALGORITHMS" and not k.endswith("METRIC_CALLERS")},
                               auth_jwt_algorithms=json.loads(env["MESHSERVE_GATEWAY_AUTH_JWT_ALGORITHMS"]),
                               auth_jwt_metric_callers=json.loads(env["MESHSERVE_GATEWAY_AUTH_JWT_METRIC_CALLERS"]))
    assert settings.auth_mode == "jwt"
    assert settings.auth_jwt_issuer == jwt_values["issuer"] and settings.auth_jwt_audience == jwt_values["audience"]
    assert list(settings.auth_jwt_algorithms) == jwt_values.get("algorithms", ["RS256", "ES256"])
    assert list(settings.auth_jwt_metric_callers) == jwt_values.get("metricCallers", [])
    assert settings.auth_jwt_caller_claim == jwt_values.get("callerClaim", "sub")
    assert settings.auth_jwt_leeway_s == jwt_values.get("leewaySeconds", 30)


def test_env_from_the_real_environment_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap values go through pydantic-settings' env parsing (JSON lists) unchanged."""
    docs = render(JWT_CONFIGMAP)
    (dep,) = gateways(docs)
    for key, value in gateway_env(docs, dep).items():
        monkeypatch.setenv(key, value)
    settings = GatewaySettings()
    assert settings.auth_jwt_metric_callers == ("checkout", "search")
    assert settings.auth_jwt_algorithms == ("ES256",)
    assert settings.auth_jwt_caller_claim == "azp" and settings.auth_jwt_leeway_s == 10


def test_auth_config_changes_roll_the_gateway_only() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in by_kind(render(values), "Deployment")}

    before, after = checksums({}), checksums(JWT_CONFIGMAP)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {f"{RELEASE}-gateway"}


@pytest.mark.parametrize("values", [API_KEY, JWT_CONFIGMAP, JWT_SECRET], ids=["api_key", "jwt-configmap", "jwt-secret"])
def test_no_secret_material_in_rendered_objects(values: dict[str, Any]) -> None:
    docs = render(values)
    assert not by_kind(docs, "Secret"), "the chart references Secrets, never creates them"
    for cm in by_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert '"keys"' not in value and "BEGIN" not in value, f"{cm['metadata']['name']}.{key}"
    for dep in by_kind(docs, "Deployment"):
        for item in container(dep).get("env") or []:
            assert "value" not in item or "AUTH" not in item["name"]


def test_chart_defaults_hold_no_credentials() -> None:
    from chart_helpers import chart

    auth = chart().values["gateway"]["auth"]
    assert auth["mode"] == "none"
    assert auth["apiKeys"]["existingSecret"] == "" and auth["jwt"]["jwksSecret"] == "" and auth["jwt"]["jwksConfigMap"] == ""
    assert chart().values["tests"]["credentials"]["existingSecret"] == ""


SCHEMA_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown mode", {"gateway": {"auth": {"mode": "basic"}}}, "/gateway/auth/mode"),
    ("alg none", {"gateway": {"auth": {"jwt": {"algorithms": ["none"]}}}}, "/gateway/auth/jwt/algorithms/0"),
    ("HS256", {"gateway": {"auth": {"jwt": {"algorithms": ["RS256", "HS256"]}}}}, "/gateway/auth/jwt/algorithms/1"),
    ("empty algorithms", {"gateway": {"auth": {"jwt": {"algorithms": []}}}}, "/gateway/auth/jwt/algorithms"),
    ("reserved metric caller", {"gateway": {"auth": {"jwt": {"metricCallers": ["other"]}}}}, "/gateway/auth/jwt/metricCallers/0"),
    ("leeway too long", {"gateway": {"auth": {"jwt": {"leewaySeconds": 3600}}}}, "/gateway/auth/jwt/leewaySeconds"),
    ("inlined keys instead of a Secret name", {"gateway": {"auth": {"apiKeys": {"keys": {"svc": "k"}}}}}, "keys"),
    ("bad secret name", {"gateway": {"auth": {"apiKeys": {"existingSecret": "Not_A_Name"}}}}, "/gateway/auth/apiKeys/existingSecret"),
]


@pytest.mark.parametrize(("what", "values", "where"), SCHEMA_ERRORS, ids=[c[0] for c in SCHEMA_ERRORS])
def test_schema_rejects(what: str, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        render_raw(values)
    assert where in str(err.value), str(err.value)


TEMPLATE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("api_key without a Secret", {"gateway": {"auth": {"mode": "api_key"}}}, "set gateway.auth.apiKeys.existingSecret"),
    ("jwt without a JWKS", {"gateway": {"auth": {"mode": "jwt", "jwt": {"issuer": "i", "audience": "a"}}}},
     "set exactly one of gateway.auth.jwt.jwksConfigMap and gateway.auth.jwt.jwksSecret"),
    ("jwt with two JWKS sources",
     {"gateway": {"auth": {"mode": "jwt", "jwt": {"jwksConfigMap": "a", "jwksSecret": "b", "issuer": "i", "audience": "a"}}}},
     "set exactly one of"),
    ("jwt without issuer", {"gateway": {"auth": {"mode": "jwt", "jwt": {"jwksConfigMap": "j", "audience": "a"}}}},
     "set gateway.auth.jwt.issuer and gateway.auth.jwt.audience"),
    ("jwt without audience", {"gateway": {"auth": {"mode": "jwt", "jwt": {"jwksConfigMap": "j", "issuer": "i"}}}},
     "set gateway.auth.jwt.issuer and gateway.auth.jwt.audience"),
    ("Istio trusting the default service account",
     {"istio": {"enabled": True}, "gateway": {"serviceAccount": {"create": False}}},
     "gateway.serviceAccount.create=true"),
]


@pytest.mark.parametrize(("what", "values", "message"), TEMPLATE_ERRORS, ids=[c[0] for c in TEMPLATE_ERRORS])
def test_render_fails_naming_the_key(what: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception) as err:
        render_raw(values)
    assert message in str(err.value), str(err.value)


def test_istio_with_a_named_gateway_service_account_is_fine() -> None:
    docs = render({"istio": {"enabled": True}, "gateway": {"serviceAccount": {"create": False, "name": "gw"}}})
    (ap,) = [a for a in by_kind(docs, "AuthorizationPolicy") if component(a) == "model"]
    assert ap["spec"]["rules"][0]["from"] == [{"source": {"principals": [f"cluster.local/ns/{NAMESPACE}/sa/gw"]}}]


# ---------------------------------------------------------------- internal services: gateway only


@pytest.mark.parametrize("case", ["defaults", "istio-canary-10"])
def test_internal_services_admit_only_the_gateway(case: str) -> None:
    docs = case_docs(case)
    pods = {d["metadata"]["name"]: (component(d), d["spec"]["template"]["metadata"]["labels"]) for d in by_kind(docs, "Deployment")}
    (test_pod,) = by_kind(docs, "Pod")
    for svc in ("features", "preprocess", "model"):
        np = find(docs, "NetworkPolicy", f"{RELEASE}-{svc}")
        assert np is not None, f"{svc}: no NetworkPolicy"
        (grpc_rule,) = [r for r in np["spec"]["ingress"] if any(p["port"] == "grpc" for p in r["ports"])]
        admitted = {name for name, (_, labels) in pods.items()
                    if any(label_selector_match(src["podSelector"], labels) for src in grpc_rule["from"])}
        assert admitted == {name for name, (comp, _) in pods.items() if comp == "gateway"}, svc
        assert not any(label_selector_match(src["podSelector"], test_pod["metadata"]["labels"]) for src in grpc_rule["from"])
    if case.startswith("istio"):
        gateway_sas = {d["spec"]["template"]["spec"]["serviceAccountName"] for d in gateways(docs)}
        others = {d["spec"]["template"]["spec"]["serviceAccountName"] for d in by_kind(docs, "Deployment") if component(d) != "gateway"}
        assert len(gateway_sas) == 1 and not gateway_sas & others, "the gateway's identity is its own"
        for svc in ("features", "preprocess", "model"):
            ap = find(docs, "AuthorizationPolicy", f"{RELEASE}-{svc}")
            assert ap is not None and ap["spec"]["action"] == "ALLOW"
            principals = [p for r in ap["spec"]["rules"] for f in r.get("from", []) for p in f["source"]["principals"]]
            assert principals == [f"cluster.local/ns/{NAMESPACE}/sa/{next(iter(gateway_sas))}"]


# ---------------------------------------------------------------- helm test with auth on


def test_helm_test_pod_takes_its_credential_from_a_secret() -> None:
    values = {**API_KEY, "tests": {"enabled": True, "credentials": {"existingSecret": "helm-test-cred"}}}
    docs = render(values)
    validate_core(docs)
    (pod,) = by_kind(docs, "Pod")
    env = {e["name"]: e for e in pod_container(pod)["env"]}
    assert env["MESHSERVE_TEST_AUTH_MODE"]["value"] == "api_key"
    assert env["MESHSERVE_TEST_CREDENTIAL"] == {
        "name": "MESHSERVE_TEST_CREDENTIAL", "valueFrom": {"secretKeyRef": {"name": "helm-test-cred", "key": "credential"}}}


class KeyedGateway(prediction_pb2_grpc.PredictionServiceServicer):
    """Answers a probability to the one accepted credential, UNAUTHENTICATED to anyone else."""

    credential = "the-test-credential"

    def PredictEntities(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.credential}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing credentials")
        reply = prediction_pb2.PredictResponse()
        reply.predictions.add().probability = 0.5
        return reply


@pytest.fixture(scope="module")
def keyed_gateway() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(KeyedGateway(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("meshserve.v1.PredictionService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def run_hook(target: str, values: dict[str, Any], credential: str | None) -> subprocess.CompletedProcess:
    (pod,) = by_kind(render(values), "Pod")
    c = pod_container(pod)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.update(MESHSERVE_TEST_TARGET=target, MESHSERVE_TEST_TIMEOUT_S="10", HOME=os.environ.get("HOME", "/tmp"))
    if credential is not None:
        env["MESHSERVE_TEST_CREDENTIAL"] = credential
    return subprocess.run([sys.executable, "-c", c["command"][2]], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_helm_test_script_with_auth(keyed_gateway: str) -> None:
    with_secret = {**API_KEY, "tests": {"enabled": True, "credentials": {"existingSecret": "helm-test-cred"}}}
    ok = run_hook(keyed_gateway, with_secret, KeyedGateway.credential)
    assert ok.returncode == 0 and "prediction OK" in ok.stdout, ok.stdout + ok.stderr
    wrong = run_hook(keyed_gateway, with_secret, "not-it")
    assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr
    anonymous = run_hook(keyed_gateway, API_KEY, None)  # no credentials Secret: proves auth is enforced
    assert anonymous.returncode == 0 and "anonymous call is refused" in anonymous.stdout, anonymous.stdout + anonymous.stderr
    open_gateway = run_hook(keyed_gateway, {}, None)  # auth off in values, but this gateway refuses: fail
    assert open_gateway.returncode != 0 and "UNAUTHENTICATED" in open_gateway.stderr
