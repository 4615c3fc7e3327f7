"""Gateway authentication on the real four processes, the gateway in jwt mode.

The test is the identity provider: it makes an RSA key, writes the JWKS the gateway
trusts, and signs tokens. Checked: a valid caller gets its prediction (also through the
`meshserve predict --token` CLI), bad or missing credentials get UNAUTHENTICATED with a
message that helps and never echoes the token, health and reflection answer without
credentials (the stack's own readiness wait uses them), and the caller shows in the
gateway's metrics scrape, with a bounded label, and in its access log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_local import cli
from meshserve_local.stack import HEALTH_NAMES, Stack

from tests.e2e.conftest import make_stack_config
from tests.fixtures.metrics import scrape_service, value

pytestmark = pytest.mark.e2e

ISSUER = "https://idp.test/"
AUDIENCE = "meshserve-e2e"
METRIC = "meshserve_gateway_caller_requests_total"
KID = "e2e-1"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: Any, sub: str = "checkout", kid: str = KID, **over: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600, **over}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def auth_stack(trained_home: Path, tmp_path_factory: pytest.TempPathFactory, signing_key: rsa.RSAPrivateKey) -> Iterator[Stack]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwks = tmp_path_factory.mktemp("auth") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig"}]}))
    config = make_stack_config(trained_home, "sqlite")
    config.extra_env["gateway"] = {
        "MESHSERVE_GATEWAY_AUTH_MODE": "jwt",
        "MESHSERVE_GATEWAY_AUTH_JWT_JWKS_FILE": str(jwks),
        "MESHSERVE_GATEWAY_AUTH_JWT_ISSUER": ISSUER,
        "MESHSERVE_GATEWAY_AUTH_JWT_AUDIENCE": AUDIENCE,
        "MESHSERVE_GATEWAY_AUTH_JWT_METRIC_CALLERS": '["checkout"]',
        "MESHSERVE_GATEWAY_ACCESS_LOG": "true",
    }
    # Stack waits for every health name to be SERVING, asked without credentials.
    with Stack(config) as stack:
        yield stack


def request() -> prediction_pb2.PredictEntitiesRequest:
    req = prediction_pb2.PredictEntitiesRequest()
    row = req.entities.add()
    row.values["driver_id"].int64_value = 1001
    row.values["customer_id"].int64_value = 2001
    return req


def predict(stack: Stack, metadata: list[tuple[str, str]] | None) -> prediction_pb2.PredictResponse:
    with grpc.insecure_channel(stack.config.target("gateway")) as channel:
        return prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(request(), metadata=metadata, timeout=30)


def bearer(t: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {t}")]


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    lines = []
    for line in (stack.log_dir / "gateway.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("logger") == "meshserve.rpc" and record.get("method") == "PredictEntities":
            lines.append(record)
    return lines


def test_valid_callers_are_served_and_counted(auth_stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    before = scrape_service(auth_stack, "gateway")
    logged_before = len(access_lines(auth_stack))

    for sub in ("checkout", "batch-job-7"):
        reply = predict(auth_stack, bearer(token(signing_key, sub=sub)))
        assert reply.predictions[0].WhichOneof("result") == "probability"
        assert 0.0 <= reply.predictions[0].probability <= 1.0

    after = scrape_service(auth_stack, "gateway")
    assert value(after, METRIC, caller="checkout", code="OK") - value(before, METRIC, caller="checkout", code="OK") == 1
    # the unlisted caller is counted, under the bounded label
    assert value(after, METRIC, caller="other", code="OK") - value(before, METRIC, caller="other", code="OK") == 1
    labels = {dict(ls).get("caller") for name, ls in after if name == METRIC}
    assert "batch-job-7" not in labels and labels <= {"checkout", "other", "unauthenticated"}

    # the access log has the full identity of both (logged before each reply was sent)
    new = access_lines(auth_stack)[logged_before:]
    assert [(r["caller"], r["code"]) for r in new] == [("checkout", "OK"), ("batch-job-7", "OK")]


def test_bad_credentials_are_refused(auth_stack: Stack, signing_key: rsa.RSAPrivateKey) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    cases = [
        (None, "Bearer <JWT>"),
        ([("x-api-key", "an-api-key")], "Bearer <JWT>"),
        (bearer(token(signing_key, aud="another-service")), f"does not include {AUDIENCE!r}"),
        (bearer(token(signing_key, iss="https://evil.test/")), f"is not {ISSUER!r}"),
        (bearer(token(signing_key, exp=now - 3600)), "expired"),
        (bearer(token(stranger)), "signature does not verify"),
        (bearer(token(stranger, kid="stranger")), "kid 'stranger'"),
        (bearer("not.a.jwt"), "not a JWT"),
    ]
    before = scrape_service(auth_stack, "gateway")
    for metadata, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            predict(auth_stack, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (says, err.value.details())
        details = err.value.details()
        assert says in details, details
        if metadata and metadata[0][0] == "authorization":
            assert metadata[0][1].removeprefix("Bearer ").split(".")[-1] not in details
    after = scrape_service(auth_stack, "gateway")
    refused = value(after, METRIC, caller="unauthenticated", code="UNAUTHENTICATED") - value(before, METRIC, caller="unauthenticated", code="UNAUTHENTICATED")
    assert refused == len(cases)
    # the shared RED metric counts them too, as the caller's error (not a server fault)
    red = "meshserve_rpc_requests_total"
    labels = {"method": "PredictEntities", "code": "UNAUTHENTICATED"}
    assert value(after, red, **labels) - value(before, red, **labels) == len(cases)


def test_health_and_reflection_need_no_credentials(auth_stack: Stack) -> None:
    with grpc.insecure_channel(auth_stack.config.target("gateway")) as channel:
        for name in ("", HEALTH_NAMES["gateway"]):
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert HEALTH_NAMES["gateway"] in names


def test_cli_sends_the_token(auth_stack: Stack, signing_key: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = auth_stack.config.target("gateway")
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    args = ["predict", "--driver", "1001", "--customer", "2001", "--target", target]

    assert cli.main(args) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err

    assert cli.main([*args, "--token", token(signing_key)]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["probability"] >= 0

    monkeypatch.setenv(cli.TOKEN_ENV, token(signing_key))  # the way that keeps it out of `ps`
    assert cli.main(args) == 0
    capsys.readouterr()
