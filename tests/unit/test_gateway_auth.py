"""Gateway authentication (meshserve_gateway.auth): API keys and JWTs.

Keys, key files, JWKS files and tokens are all made here (RSA/EC keys by cryptography,
tokens by PyJWT, hostile tokens by hand). The authenticators are checked directly, then
the interceptor inside a real in-process grpc.aio server, behind the runtime's shared
ServerInterceptor as in the gateway: status codes and messages on the wire, health and
reflection open, the caller in log lines and in a bounded metric label. The servicer
behind it is a stand-in (no pipeline).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc
from prometheus_client import REGISTRY

from meshserve_runtime.errors import NotFound
from meshserve_runtime.interceptors import ServerInterceptor
from meshserve_runtime.logging import CALLER, TraceContextFilter

from meshserve_gateway.auth import (
    ApiKeyAuthenticator,
    AuthConfigError,
    AuthInterceptor,
    Caller,
    JwtAuthenticator,
    Unauthenticated,
    auth_interceptors,
    hash_api_key,
    parse_api_keys,
)
from meshserve_gateway.settings import GatewaySettings

ISSUER = "https://idp.example.com/"
AUDIENCE = "meshserve-gateway"
KEY_A = "key-of-svc-a-" + "x" * 20
KEY_B = "key-of-svc-b-" + "y" * 20
SERVICE = "meshserve.v1.PredictionService"
CALLER_METRIC = "meshserve_gateway_caller_requests_total"


# ------------------------------------------------------------------ keys and tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(private_key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk = algo.to_jwk(private_key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(rsa_key, "rsa-1"), public_jwk(ec_key, "ec-1")]}))
    return path


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-a", "iat": now, "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def forged(header: dict[str, Any], payload: dict[str, Any], signature: Callable[[bytes], bytes] = lambda _: b"") -> str:
    """A token made by hand (for what PyJWT refuses to make: alg none, HS256 keyed by a public key)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(signature(signing_input.encode()))}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def make_jwt_auth(jwks_file: Path, **over: Any) -> JwtAuthenticator:
    kw: dict[str, Any] = dict(
        issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256", "ES256"), leeway_s=30.0,
        caller_claim="sub", metric_callers=("svc-a",),
    )
    kw.update(over)
    return JwtAuthenticator(jwks_file, **kw)


def refused(authenticator: Any, metadata: Any, *, contains: str, secret: str | None = None) -> str:
    """Authenticate, expect UNAUTHENTICATED whose message says `contains` and never `secret`."""
    with pytest.raises(Unauthenticated) as err:
        authenticator.authenticate(metadata)
    message = err.value.message
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert contains.lower() in message.lower(), message
    if secret:
        assert secret not in message
        # no recognizable part of it either (a JWT's signature, a key's tail)
        assert secret[-12:] not in message
    return message


# ------------------------------------------------------------------ API keys


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(
        "# caller:sha256(key)\n"
        f"svc-a:{hash_api_key(KEY_A)}\n"
        "\n"
        f"svc-b : {hash_api_key(KEY_B).upper()}\n"
    )
    return path


def test_keys_file_never_holds_a_usable_key(keys_file: Path) -> None:
    text = keys_file.read_text()
    assert KEY_A not in text and KEY_B not in text
    assert hash_api_key(KEY_A) == hashlib.sha256(KEY_A.encode()).hexdigest()


def test_api_key_accepted_from_either_header(keys_file: Path) -> None:
    a = ApiKeyAuthenticator(keys_file)
    assert a.authenticate([("x-api-key", KEY_A)]) == Caller("svc-a", "svc-a")
    assert a.authenticate(bearer(KEY_B)) == Caller("svc-b", "svc-b")
    # x-api-key wins over an authorization header meant for something else
    assert a.authenticate([("authorization", "Bearer not-a-key"), ("x-api-key", KEY_B)]).id == "svc-b"


def test_api_key_refusals(keys_file: Path) -> None:
    a = ApiKeyAuthenticator(keys_file)
    wrong = KEY_A + "z"
    refused(a, [("x-api-key", wrong)], contains="invalid API key", secret=wrong)
    refused(a, bearer(wrong), contains="invalid API key", secret=wrong)
    refused(a, [], contains="x-api-key")
    refused(a, None, contains="x-api-key")
    refused(a, [("x-api-key", KEY_A), ("x-api-key", KEY_B)], contains="one x-api-key", secret=KEY_A)
    refused(a, [("authorization", f"Basic {KEY_A}")], contains="Bearer", secret=KEY_A)
    refused(a, [("authorization", "Bearer ")], contains="Bearer")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("svc-a:abc\n", "line 1: expected `caller:sha256-hex`"),
        (f"# only\n\n{hash_api_key(KEY_A)}\n", "line 3: expected"),
        (f"bad name:{hash_api_key(KEY_A)}\n", "line 1: caller id must match"),
        (f"other:{hash_api_key(KEY_A)}\n", "reserved"),
        (f"unauthenticated:{hash_api_key(KEY_A)}\n", "reserved"),
        (f"a:{hash_api_key(KEY_A)}\nb:{hash_api_key(KEY_A)}\n", "line 2: the same key digest as line 1"),
        ("# nothing\n", "no `caller:sha256-hex` line"),
    ],
)
def test_bad_keys_file_is_refused_at_start(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(AuthConfigError) as err:
        ApiKeyAuthenticator(path)
    assert says in str(err.value) and str(path) in str(err.value)
    assert hash_api_key(KEY_A) not in str(err.value)


def test_missing_keys_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        ApiKeyAuthenticator(tmp_path / "absent")


def test_several_keys_per_caller_for_rotation() -> None:
    entries = parse_api_keys(f"svc-a:{hash_api_key('old')}\nsvc-a:{hash_api_key('new')}\n".encode())
    assert [c for _, c in entries] == ["svc-a", "svc-a"]


def replace_file(path: Path, text: str) -> None:
    """Swap in new content the way a Kubernetes volume update does (a new file, renamed over)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_keys_file_is_reloaded_when_it_changes(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = ApiKeyAuthenticator(keys_file, reload_check_s=0)
    assert a.authenticate([("x-api-key", KEY_A)]).id == "svc-a"
    replace_file(keys_file, f"svc-c:{hash_api_key('rotated')}\n")  # svc-a revoked, svc-c added
    assert a.authenticate([("x-api-key", "rotated")]).id == "svc-c"
    refused(a, [("x-api-key", KEY_A)], contains="invalid API key")
    # A broken update keeps the keys that work, and says so.
    with caplog.at_level(logging.ERROR, logger="meshserve.gateway.auth"):
        replace_file(keys_file, "garbage\n")
        assert a.authenticate([("x-api-key", "rotated")]).id == "svc-c"
    assert any("cannot reload" in r.getMessage() and str(keys_file) in r.getMessage() for r in caplog.records)


def test_emptying_or_deleting_the_keys_file_revokes_every_key(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Revoking the last (leaked) key must take effect: an emptied or deleted keys file
    refuses every caller (fail closed) until keys come back, never keeps the old ones."""
    a = ApiKeyAuthenticator(keys_file, reload_check_s=0)
    assert a.authenticate([("x-api-key", KEY_A)]).id == "svc-a"
    replace_file(keys_file, "# every key revoked\n")
    refused(a, [("x-api-key", KEY_A)], contains="invalid API key")
    replace_file(keys_file, f"svc-a:{hash_api_key(KEY_A)}\n")
    assert a.authenticate([("x-api-key", KEY_A)]).id == "svc-a"
    with caplog.at_level(logging.ERROR, logger="meshserve.gateway.auth"):
        keys_file.unlink()
        refused(a, [("x-api-key", KEY_A)], contains="invalid API key")
    assert any("refusing every call" in r.getMessage() for r in caplog.records)
    replace_file(keys_file, f"svc-b:{hash_api_key(KEY_B)}\n")  # back: read again
    assert a.authenticate([("x-api-key", KEY_B)]).id == "svc-b"


# ------------------------------------------------------------------ JWT


def test_valid_tokens_give_the_caller(jwks_file: Path, rsa_key: Any, ec_key: Any) -> None:
    a = make_jwt_auth(jwks_file)
    assert a.authenticate(bearer(sign(rsa_key, claims()))) == Caller("svc-a", "svc-a")
    # an unlisted caller keeps its identity for logs but is `other` in the metric
    assert a.authenticate(bearer(sign(ec_key, claims(sub="svc-b"), alg="ES256", kid="ec-1"))) == Caller("svc-b", "other")
    # aud may be a list that includes ours; nbf in the past is fine
    token = sign(rsa_key, claims(aud=["someone-else", AUDIENCE], nbf=int(time.time()) - 5))
    assert a.authenticate(bearer(token)).id == "svc-a"


def test_caller_claim_is_configurable(jwks_file: Path, rsa_key: Any) -> None:
    a = make_jwt_auth(jwks_file, caller_claim="azp", metric_callers=("reporting",))
    assert a.authenticate(bearer(sign(rsa_key, claims(azp="reporting")))) == Caller("reporting", "reporting")
    refused(a, bearer(sign(rsa_key, claims())), contains="'azp'")
    refused(a, bearer(sign(rsa_key, claims(azp=42))), contains="not a non-empty string")


def test_leeway_tolerates_small_clock_skew_only(jwks_file: Path, rsa_key: Any) -> None:
    now = int(time.time())
    a = make_jwt_auth(jwks_file, leeway_s=30.0)
    assert a.authenticate(bearer(sign(rsa_key, claims(exp=now - 5)))).id == "svc-a"
    refused(a, bearer(sign(rsa_key, claims(exp=now - 120))), contains="expired")
    strict = make_jwt_auth(jwks_file, leeway_s=0.0)
    refused(strict, bearer(sign(rsa_key, claims(exp=now - 5))), contains="expired")


def test_jwt_refusals(jwks_file: Path, rsa_key: Any, other_rsa_key: Any) -> None:
    a = make_jwt_auth(jwks_file)
    now = int(time.time())

    def no(token: str, contains: str) -> None:
        refused(a, bearer(token), contains=contains, secret=token)

    no(sign(rsa_key, claims(exp=now - 3600)), "expired")
    no(sign(rsa_key, claims(iss="https://evil.example.com/")), f"issuer (iss) is not {ISSUER!r}")
    no(sign(rsa_key, claims(aud="another-service")), f"does not include {AUDIENCE!r}")
    no(sign(rsa_key, claims(nbf=now + 3600)), "not valid yet")
    # signed by a key the gateway does not trust, under a trusted kid
    no(sign(other_rsa_key, claims()), "signature does not verify")
    # a valid token with one claim altered
    header, payload, signature = sign(rsa_key, claims()).split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["sub"] = "admin"
    no(f"{header}.{b64url(json.dumps(tampered).encode())}.{signature}", "signature does not verify")
    for claim in ("exp", "iss", "aud", "sub"):
        no(sign(rsa_key, claims(**{claim: None})), f"lacks the required {claim!r} claim")
    no(sign(rsa_key, claims(), kid="unknown-kid"), "kid 'unknown-kid'")
    no(sign(rsa_key, claims(), kid=None), "no `kid` header")
    no("not-a-jwt", "not a JWT")
    no("a.b.c", "not a JWT")
    refused(a, [], contains="Bearer <JWT>")
    refused(a, [("x-api-key", "whatever")], contains="Bearer <JWT>")


def test_alg_none_and_key_confusion_are_refused(jwks_file: Path, rsa_key: Any) -> None:
    a = make_jwt_auth(jwks_file)
    unsigned = forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims())
    refused(a, bearer(unsigned), contains="algorithm 'none' is not accepted")
    # HS256 keyed with the RSA public key (which anyone can get from the JWKS)
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = forged({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(),
                      lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    refused(a, bearer(confused), contains="algorithm 'HS256' is not accepted", secret=confused)
    # An allowed algorithm that is not the key's: ES256 header on the RSA key's kid.
    rs = sign(rsa_key, claims())
    header = json.loads(base64.urlsafe_b64decode(rs.split(".")[0] + "=="))
    header["alg"] = "ES256"
    mixed = ".".join([b64url(json.dumps(header).encode()), *rs.split(".")[1:]])
    refused(a, bearer(mixed), contains="is not the one of the key it names", secret=mixed)


def test_algorithm_allowlist_is_asymmetric_only() -> None:
    for bad in (("none",), ("HS256",), ("RS256", "HS512"), ()):
        with pytest.raises(ValueError, match="allowed"):
            GatewaySettings(auth_jwt_algorithms=bad)
    assert GatewaySettings().auth_jwt_algorithms == ("RS256", "ES256")


def test_only_listed_algorithms_verify(jwks_file: Path, ec_key: Any) -> None:
    rs_only = make_jwt_auth(jwks_file, algorithms=("RS256",))
    refused(rs_only, bearer(sign(ec_key, claims(), alg="ES256", kid="ec-1")), contains="'ES256' is not accepted")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # signing with it, on purpose
def test_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(weak, "weak")]}))
    a = make_jwt_auth(path)
    refused(a, bearer(sign(weak, claims(), kid="weak")), contains="too weak")


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ([{"kty": "oct", "k": b64url(b"s" * 32), "kid": "hs"}], "symmetric (oct) key"),
        ("private", "private key"),
        ("ec-only-allowed-rs", "no signature key of an allowed algorithm"),
        ([], "not a JWKS"),
        ("not-json", "not JSON"),
    ],
)
def test_bad_jwks_is_refused_at_start(tmp_path: Path, rsa_key: Any, ec_key: Any, keys: Any, says: str) -> None:
    path = tmp_path / "jwks.json"
    if keys == "private":
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
        path.write_text(json.dumps({"keys": [jwk]}))
    elif keys == "ec-only-allowed-rs":
        path.write_text(json.dumps({"keys": [public_jwk(ec_key, "ec-1")]}))
    elif keys == "not-json":
        path.write_text("{keys:")
    else:
        path.write_text(json.dumps({"keys": keys}))
    with pytest.raises(AuthConfigError) as err:
        make_jwt_auth(path, algorithms=("RS256",))
    assert says in str(err.value) and str(path) in str(err.value)


def test_jwks_rotation_is_picked_up(jwks_file: Path, rsa_key: Any, other_rsa_key: Any) -> None:
    a = make_jwt_auth(jwks_file, reload_check_s=0)
    new_token = sign(other_rsa_key, claims(), kid="rsa-2")
    refused(a, bearer(new_token), contains="kid 'rsa-2'")
    replace_file(jwks_file, json.dumps({"keys": [public_jwk(other_rsa_key, "rsa-2")]}))
    assert a.authenticate(bearer(new_token)).id == "svc-a"
    refused(a, bearer(sign(rsa_key, claims())), contains="kid 'rsa-1'")  # rotated out


def test_settings_name_what_a_mode_lacks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE"):
        GatewaySettings(auth_mode="api_key")
    with pytest.raises(ValueError, match="AUTH_JWT_ISSUER, MESHSERVE_GATEWAY_AUTH_JWT_AUDIENCE"):
        GatewaySettings(auth_mode="jwt", auth_jwt_jwks_file=tmp_path / "jwks.json")
    with pytest.raises(ValueError, match="not other/unauthenticated"):
        GatewaySettings(auth_jwt_metric_callers=("svc-a", "other"))
    assert auth_interceptors(GatewaySettings()) == []  # auth off: nothing installed


# ------------------------------------------------------------------ on the wire


class StandIn(prediction_pb2_grpc.PredictionServiceServicer):
    """Records the caller each call ran as; PredictEntities with no rows answers NOT_FOUND."""

    def __init__(self) -> None:
        self.callers: list[str | None] = []

    async def PredictEntities(self, request: Any, context: grpc.aio.ServicerContext) -> prediction_pb2.PredictResponse:
        self.callers.append(CALLER.get())
        logging.getLogger("meshserve.test.standin").info("handled")
        if not request.entities:
            raise NotFound("no such entity (stand-in)")
        return prediction_pb2.PredictResponse()


class Served:
    def __init__(self, channel: grpc.aio.Channel, servicer: StandIn) -> None:
        self.channel = channel
        self.servicer = servicer
        self.stub = prediction_pb2_grpc.PredictionServiceStub(channel)


async def serve(authenticator: Any) -> tuple[grpc.aio.Server, Served]:
    server = grpc.aio.server(interceptors=[ServerInterceptor(SERVICE, access_log=True), AuthInterceptor(authenticator)])
    servicer = StandIn()
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server, Served(grpc.aio.insecure_channel(f"127.0.0.1:{port}"), servicer)


# In the test's own loop (the project default for async fixtures is the session loop):
# a grpc.aio channel belongs to the loop it was made in.
@pytest_asyncio.fixture(loop_scope="function")
async def api_key_server(keys_file: Path) -> AsyncIterator[Served]:
    server, served = await serve(ApiKeyAuthenticator(keys_file))
    yield served
    await served.channel.close()
    await server.stop(None)


@pytest_asyncio.fixture(loop_scope="function")
async def jwt_server(jwks_file: Path) -> AsyncIterator[Served]:
    server, served = await serve(make_jwt_auth(jwks_file))
    yield served
    await served.channel.close()
    await server.stop(None)


@pytest.fixture
def log_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog with the runtime's log filter, so records carry `caller` as in production."""
    caplog.handler.addFilter(TraceContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def metric(caller: str, code: str) -> float:
    return REGISTRY.get_sample_value(CALLER_METRIC, {"caller": caller, "code": code}) or 0.0


def rpc_count(code: str) -> float:
    return REGISTRY.get_sample_value(
        "meshserve_rpc_requests_total", {"service": SERVICE, "method": "PredictEntities", "code": code}
    ) or 0.0


def one_row() -> prediction_pb2.PredictEntitiesRequest:
    request = prediction_pb2.PredictEntitiesRequest()
    request.entities.add().values["driver_id"].int64_value = 1001
    return request


async def test_wire_api_key(api_key_server: Served, log_records: pytest.LogCaptureFixture) -> None:
    stub = api_key_server.stub
    ok_before, refused_before, rpc_refused_before = metric("svc-a", "OK"), metric("unauthenticated", "UNAUTHENTICATED"), rpc_count("UNAUTHENTICATED")

    await stub.PredictEntities(one_row(), metadata=[("x-api-key", KEY_A)], timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PredictEntities(one_row(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-api-key" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PredictEntities(one_row(), metadata=[("x-api-key", KEY_A + "!")], timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and KEY_A not in err.value.details()

    # the handler ran once, as svc-a; refused calls never reached it
    assert api_key_server.servicer.callers == ["svc-a"]
    assert metric("svc-a", "OK") == ok_before + 1
    assert metric("unauthenticated", "UNAUTHENTICATED") == refused_before + 2
    assert rpc_count("UNAUTHENTICATED") == rpc_refused_before + 2  # the runtime's RED metric saw them

    # the caller is on the handler's lines and the access-log line; not on refused calls' lines
    handled = [r for r in log_records.records if r.name == "meshserve.test.standin"]
    assert [getattr(r, "caller", None) for r in handled] == ["svc-a"]
    access = [r for r in log_records.records if r.name == "meshserve.rpc" and getattr(r, "method", "") == "PredictEntities"]
    assert [(r.code, getattr(r, "caller", None)) for r in access] == [("OK", "svc-a"), ("UNAUTHENTICATED", None), ("UNAUTHENTICATED", None)]
    for r in log_records.records:
        assert KEY_A not in r.getMessage() and KEY_A not in str(r.__dict__)


async def test_wire_handler_errors_are_counted_per_caller(api_key_server: Served) -> None:
    before = metric("svc-b", "NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api_key_server.stub.PredictEntities(prediction_pb2.PredictEntitiesRequest(), metadata=bearer(KEY_B), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the handler's own status passes through
    assert metric("svc-b", "NOT_FOUND") == before + 1


async def test_wire_health_and_reflection_stay_open(api_key_server: Served) -> None:
    reply = await health_pb2_grpc.HealthStub(api_key_server.channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stream = reflection_pb2_grpc.ServerReflectionStub(api_key_server.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for r in stream for s in r.list_services_response.service]
    assert SERVICE in names


async def test_wire_refused_body_is_never_parsed(api_key_server: Served) -> None:
    garbage = api_key_server.channel.unary_unary(f"/{SERVICE}/PredictEntities")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await garbage(b"\xff\xff\xff not protobuf", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not INVALID_ARGUMENT: refused before decoding
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await garbage(b"\xff\xff\xff not protobuf", metadata=[("x-api-key", KEY_A)], timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # authenticated: decoded, and refused for that


async def test_wire_jwt_label_is_bounded(jwt_server: Served, rsa_key: Any, log_records: pytest.LogCaptureFixture) -> None:
    def labels() -> set[str]:
        return {s.labels["caller"] for m in REGISTRY.collect() if m.name == CALLER_METRIC.removesuffix("_total")
                for s in m.samples if s.name == CALLER_METRIC}

    before_labels = labels()
    before_other = metric("other", "OK")
    subjects = ["svc-a"] + [f"user-{i}" for i in range(5)]
    for sub in subjects:
        await jwt_server.stub.PredictEntities(one_row(), metadata=bearer(sign(rsa_key, claims(sub=sub))), timeout=5)
    assert jwt_server.servicer.callers == subjects  # full identity for logs...
    assert metric("other", "OK") == before_other + 5  # ...but five unlisted callers are one label
    assert labels() - before_labels <= {"svc-a", "other"}
    assert not any(label.startswith("user-") for label in labels())
    access = [getattr(r, "caller", None) for r in log_records.records if r.name == "meshserve.rpc"]
    assert access == subjects

    expired = sign(rsa_key, claims(exp=int(time.time()) - 3600))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jwt_server.stub.PredictEntities(one_row(), metadata=bearer(expired), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in err.value.details() and expired.split(".")[2] not in err.value.details()
