"""Gateway authentication: who is calling, checked before a PredictionService handler runs.

`auth_mode` (gateway settings) picks the authenticator:

- none (default): nothing is checked and no interceptor is installed, so `make run`, the
  tests and the benchmark need no credentials and pay nothing. Turn it on wherever callers
  other than trusted in-cluster services can reach the gateway.
- api_key: the caller sends `x-api-key: <key>` (or `authorization: Bearer <key>`). The keys
  file (a mounted Secret) has one `caller:sha256-hex-of-the-key` line per key, so it never
  holds a usable key; several lines may name one caller (rotation). The presented key's
  digest is compared with every line in constant time.
- jwt: the caller sends `authorization: Bearer <JWT>`, verified with PyJWT against a JWKS
  file of public keys: allowed algorithms only (asymmetric; never `none` or HS*, which
  would let a public key act as a shared secret), the key picked by `kid`, and `exp`, `iss`
  and `aud` required and checked (`nbf` when present), with a small leeway. The caller is
  the `auth_jwt_caller_claim` claim (sub by default).

Missing or invalid credentials answer UNAUTHENTICATED with a message that says what to
send or what failed, never the credential itself. Health and reflection stay open:
kubelet gRPC probes and grpcurl discovery carry no credentials.

The keys/JWKS file is re-read when it changes (a Kubernetes Secret or ConfigMap update
swaps the file under a directory mount); a file that no longer parses keeps the previous
keys and logs an error. At start-up a missing or bad file stops the gateway.

The caller reaches every log line of the call (meshserve_runtime.logging.CALLER, so the
access log has it) and the counter meshserve_gateway_caller_requests_total{caller,code},
whose caller label is bounded: API-key callers come from the file (a finite, configured
set), JWT callers keep their name only when listed in `auth_jwt_metric_callers` and are
`other` otherwise, and refused calls are `unauthenticated`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
import jwt

from meshserve_runtime.errors import ServiceError
from meshserve_runtime.logging import CALLER

from meshserve_gateway.metrics import CALLER_REQUESTS
from meshserve_gateway.settings import RESERVED_CALLER_LABELS, GatewaySettings

log = logging.getLogger("meshserve.gateway.auth")

#: Services answered without credentials (probes and discovery).
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})

API_KEY_METADATA = "x-api-key"
AUTHORIZATION_METADATA = "authorization"

#: Metric label of a JWT caller not listed in auth_jwt_metric_callers.
OTHER = "other"
#: Metric label of a refused call.
UNAUTHENTICATED = "unauthenticated"
RESERVED_CALLERS = RESERVED_CALLER_LABELS
assert {OTHER, UNAUTHENTICATED} <= RESERVED_CALLERS

#: API-key caller ids: short, printable and safe as a Prometheus label value.
CALLER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

#: Longest caller identity put in a log line (a JWT claim can be long).
_MAX_LOGGED_CALLER = 200
#: How often a changed keys/JWKS file is looked for, at most (one stat per interval).
RELOAD_CHECK_S = 1.0

Metadata = Sequence[tuple[str, str | bytes]]
T = TypeVar("T")


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class AuthConfigError(ValueError):
    """The keys or JWKS file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Caller:
    #: Full identity, for logs.
    id: str
    #: Bounded metric label.
    label: str


class Authenticator(Protocol):
    def authenticate(self, metadata: Metadata | None) -> Caller:
        """The caller the metadata proves; raises Unauthenticated otherwise."""
        ...


# ------------------------------------------------------------------ files that change


class WatchedFile(Generic[T]):
    """A file parsed at start-up and again whenever it changes.

    The change check is one stat() (inode, size, mtime; it follows the symlinks a
    Kubernetes volume swaps) at most every `check_s` seconds, on the calling thread: a
    few microseconds, cheaper than a watcher thread.
    """

    def __init__(self, path: Path, parse: Callable[[bytes], T], check_s: float = RELOAD_CHECK_S, *,
                 reparse: Callable[[bytes], T] | None = None, missing: T | None = None) -> None:
        """`reparse`: the parser of a changed file (default `parse`); `missing`: the value
        while the file is gone after start-up (None: keep the last one loaded)."""
        self.path = path
        self._parse = reparse or parse
        self._missing = missing
        self._check_s = check_s
        try:
            self._signature: tuple[int, int, int] | None = self._stat()
            self.value = parse(path.read_bytes())
        except OSError as err:
            raise AuthConfigError(f"{path}: cannot read ({err.strerror or err})") from err
        except AuthConfigError as err:
            raise AuthConfigError(f"{path}: {err}") from err
        self._next_check = time.monotonic() + check_s

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> T:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_s
            self._reload_if_changed()
        return self.value

    def _reload_if_changed(self) -> None:
        try:
            signature = self._stat()
        except OSError as err:
            if self._signature is not None:
                if self._missing is not None:
                    self.value = self._missing
                    log.error("cannot stat %s (%s); refusing every call until it is back", self.path, err.strerror or err)
                else:
                    log.error("cannot stat %s (%s); keeping the keys loaded before", self.path, err.strerror or err)
                self._signature = None  # one line per change, not per check
            return
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self.value = self._parse(self.path.read_bytes())
        except (OSError, AuthConfigError) as err:
            log.error("cannot reload %s (%s); keeping the keys loaded before", self.path, err)
            return
        log.info("reloaded %s", self.path)


# ------------------------------------------------------------------ metadata


def _values(metadata: Metadata | None, key: str) -> list[str]:
    return [v.decode("latin-1") if isinstance(v, bytes) else v for k, v in metadata or () if k == key]


def bearer_credential(metadata: Metadata | None) -> str | None:
    """The credential of `authorization: Bearer <credential>`, None without the header."""
    values = _values(metadata, AUTHORIZATION_METADATA)
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(f"send one authorization header, not {len(values)}")
    scheme, _, credential = values[0].strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated("the authorization header must be `Bearer <credential>` (scheme Bearer, then one space)")
    return credential


def _printable(text: str, limit: int = 64) -> str:
    """A caller-supplied value made safe to quote back (short, printable)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ API keys


def hash_api_key(key: str) -> str:
    """The line format's digest of a key: sha256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_api_keys(data: bytes, *, allow_empty: bool = False) -> tuple[tuple[bytes, str], ...]:
    """`caller:sha256-hex` lines (# comments, blank lines ignored) -> (digest, caller) pairs.

    Errors name the line number, never its content. `allow_empty`: a file without a key
    line is "no caller" (a reload that revokes the last key), not an error.
    """
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise AuthConfigError("not UTF-8 text") from err
    entries: list[tuple[bytes, str]] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        caller, sep, digest_hex = (part.strip() for part in line.partition(":"))
        if not sep or not _SHA256_HEX.fullmatch(digest_hex):
            raise AuthConfigError(
                f"line {number}: expected `caller:sha256-hex` (64 hex digits of the key's sha256; "
                "`meshserve api-key --caller NAME` prints one)"
            )
        if not CALLER_ID.fullmatch(caller):
            raise AuthConfigError(f"line {number}: caller id must match {CALLER_ID.pattern} (it becomes a metric label)")
        if caller in RESERVED_CALLERS:
            raise AuthConfigError(f"line {number}: caller id {caller!r} is reserved for the metric label")
        digest = bytes.fromhex(digest_hex)
        if digest in seen:
            raise AuthConfigError(f"line {number}: the same key digest as line {seen[digest]}")
        seen[digest] = number
        entries.append((digest, caller))
    if not entries and not allow_empty:
        raise AuthConfigError("no `caller:sha256-hex` line: every call would be refused")
    return tuple(entries)


class ApiKeyAuthenticator:
    """Callers from a keys file of sha256 digests; every caller keeps its name as label."""

    def __init__(self, keys_file: Path, *, reload_check_s: float = RELOAD_CHECK_S) -> None:
        # At start-up a file without keys is a mistake (refuse to start); once running, emptying
        # or deleting it revokes every key (fail closed), rather than keeping the old ones.
        self._keys: WatchedFile[tuple[tuple[bytes, str], ...]] = WatchedFile(
            keys_file, parse_api_keys, reload_check_s, reparse=lambda data: parse_api_keys(data, allow_empty=True), missing=(),
        )

    def authenticate(self, metadata: Metadata | None) -> Caller:
        keys = _values(metadata, API_KEY_METADATA)
        if len(keys) > 1:
            raise Unauthenticated(f"send one {API_KEY_METADATA} header, not {len(keys)}")
        key = keys[0].strip() if keys else bearer_credential(metadata)
        if not key:
            raise Unauthenticated(
                f"missing credentials: send your API key as `{API_KEY_METADATA}: <key>` "
                "or `authorization: Bearer <key>` metadata"
            )
        digest = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for stored, caller in self._keys.current():
            # No early exit: the time taken does not depend on which line matched.
            if hmac.compare_digest(stored, digest) and found is None:
                found = caller
        if found is None:
            raise Unauthenticated("invalid API key: it matches no configured caller (revoked, mistyped or for another deployment?)")
        return Caller(found, found)


# ------------------------------------------------------------------ JWT


@dataclass(frozen=True)
class KeySet:
    """Usable verification keys of a JWKS: by kid, and the sole key when there is one."""

    by_kid: dict[str, jwt.PyJWK]
    only: jwt.PyJWK | None


def parse_jwks(data: bytes, algorithms: Sequence[str]) -> KeySet:
    """A JWKS document -> its public signature keys of an allowed algorithm.

    Refuses symmetric (oct) and private keys outright: a JWKS that holds them is a
    leaked secret, not a mistake to work around.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AuthConfigError(f"not JSON ({type(err).__name__})") from err
    raw_keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(raw_keys, list) or not raw_keys:
        raise AuthConfigError('not a JWKS: expected {"keys": [ ...JWK objects... ]} with at least one key')
    signing: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_keys):
        if not isinstance(raw, dict):
            raise AuthConfigError(f"keys[{index}] is not a JSON object")
        if raw.get("kty") == "oct":
            raise AuthConfigError(f"keys[{index}] is a symmetric (oct) key: a JWKS for the gateway holds public keys only")
        if "d" in raw:
            raise AuthConfigError(f"keys[{index}] holds a private key: publish only its public part")
        if raw.get("use", "sig") == "sig":  # leave out encryption keys
            signing.append(raw)
    try:
        key_set = jwt.PyJWKSet(signing)
    except jwt.PyJWTError as err:
        raise AuthConfigError(f"no usable signature key ({err})") from err
    if len(key_set.keys) < len(signing):
        # PyJWKSet skips keys it cannot build (unknown kty or curve); say so once per load.
        log.warning("%d of the JWKS's %d signature keys are not usable and are ignored", len(signing) - len(key_set.keys), len(signing))
    usable: list[jwt.PyJWK] = []
    for key in key_set:
        if key.algorithm_name in algorithms:
            usable.append(key)
        else:
            log.warning("JWKS key %r uses %s, not an allowed algorithm (%s); ignored",
                        key.key_id, key.algorithm_name, ", ".join(algorithms))
    if not usable:
        raise AuthConfigError(f"no signature key of an allowed algorithm ({', '.join(algorithms)})")
    by_kid = {k.key_id: k for k in usable if k.key_id}
    return KeySet(by_kid=by_kid, only=usable[0] if len(usable) == 1 else None)


class JwtAuthenticator:
    """Callers proven by a JWT signed with a key of the JWKS file."""

    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway_s: float,
        caller_claim: str,
        metric_callers: Sequence[str],
        reload_check_s: float = RELOAD_CHECK_S,
    ) -> None:
        self._algorithms = tuple(algorithms)
        self._keys = WatchedFile(jwks_file, lambda data: parse_jwks(data, self._algorithms), reload_check_s)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._claim = caller_claim
        self._metric_callers = frozenset(metric_callers)
        self._options: dict[str, Any] = {
            "require": ["exp", "iss", "aud", caller_claim],
            "enforce_minimum_key_length": True,  # refuse e.g. 1024-bit RSA
        }

    def authenticate(self, metadata: Metadata | None) -> Caller:
        token = bearer_credential(metadata)
        if token is None:
            raise Unauthenticated(f"missing credentials: send `authorization: Bearer <JWT>` metadata (a token for audience {self._audience!r})")
        claims = self._verify(token)
        caller = claims.get(self._claim)
        if not isinstance(caller, str) or not caller:
            raise Unauthenticated(f"the token's {self._claim!r} claim (the caller identity) is not a non-empty string")
        label = caller if caller in self._metric_callers else OTHER
        return Caller(_printable(caller, _MAX_LOGGED_CALLER), label)

    def _key_for(self, token: str) -> tuple[jwt.PyJWK, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer credential is not a JWT (expected header.payload.signature, base64url)") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = _printable(alg) if isinstance(alg, str) else repr(type(alg).__name__)
            raise Unauthenticated(f"token algorithm {shown!r} is not accepted; sign with one of {', '.join(self._algorithms)}")
        keys = self._keys.current()
        kid = header.get("kid")
        if kid is None:
            if keys.only is None:
                raise Unauthenticated("the token has no `kid` header and the gateway trusts several keys: set kid to the signing key's id")
            return keys.only, alg
        key = keys.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None and keys.only is not None and keys.only.key_id is None:
            key = keys.only  # a JWKS of one key without a kid: the token's kid cannot name it
        if key is None:
            raise Unauthenticated(f"the token's signing key (kid {_printable(str(kid))!r}) is not one the gateway trusts (rotated out, or another issuer?)")
        return key, alg

    def _verify(self, token: str) -> dict[str, Any]:
        key, alg = self._key_for(token)
        try:
            return jwt.decode(
                token, key=key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                leeway=self._leeway, options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"the token has expired: get a new one from {self._issuer!r}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf is in the future; check the issuer's clock)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token's audience (aud) does not include {self._audience!r}, this gateway's audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the token's issuer (iss) is not {self._issuer!r}, the issuer this gateway trusts") from None
        except jwt.MissingRequiredClaimError as err:
            raise Unauthenticated(f"the token lacks the required {err.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify with the gateway's key for it (tampered, or signed by another key)") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("the token's algorithm (alg) is not the one of the key it names (kid)") from None
        except jwt.InvalidKeyError:
            raise Unauthenticated("the token's signing key is too weak to be trusted") from None
        except jwt.PyJWTError as err:
            # Class name only: some PyJWT messages quote parts of the token.
            raise Unauthenticated(f"the token is invalid ({type(err).__name__})") from None


# ------------------------------------------------------------------ interceptor


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call except OPEN_SERVICES before its handler runs.

    Installed after the runtime's ServerInterceptor (Service.interceptors), so a refusal
    still gets its RED metric, span and access-log line, and the caller set here is in
    that access-log line.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # UNIMPLEMENTED
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if service in OPEN_SERVICES:
            return handler
        try:
            caller = self._authenticator.authenticate(handler_call_details.invocation_metadata)
        except Unauthenticated as err:
            log.debug("refused %s: %s", handler_call_details.method, err.message)
            return _refusal(handler, err.message)
        return _as_caller(handler, caller)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNAUTHENTICATED without decoding the request."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        CALLER_REQUESTS.labels(UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED.name).inc()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # No request_deserializer: the body of a refused call is never parsed.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller) -> grpc.RpcMethodHandler:
    """Run the handler as `caller`: in its log lines and, with its final code, in the metric."""
    inner = handler.unary_unary
    if inner is None:
        return handler  # the gateway serves unary calls only; others pass unobserved

    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Each RPC runs in its own asyncio task (own context), so this never leaks into
        # another call; it stays set for the runtime interceptor's access-log line.
        CALLER.set(caller.id)
        code = grpc.StatusCode.UNKNOWN
        try:
            response = await inner(request, context)
            code = grpc.StatusCode.OK
            return response
        except ServiceError as err:
            code = err.code
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL  # the runtime interceptor answers INTERNAL
            raise
        finally:
            CALLER_REQUESTS.labels(caller.label, code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN").inc()

    return grpc.unary_unary_rpc_method_handler(
        observed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def build_authenticator(settings: GatewaySettings) -> Authenticator | None:
    """The authenticator `auth_mode` asks for (None: auth off). Raises AuthConfigError."""
    if settings.auth_mode == "api_key":
        assert settings.auth_api_keys_file is not None  # enforced by GatewaySettings
        return ApiKeyAuthenticator(settings.auth_api_keys_file)
    if settings.auth_mode == "jwt":
        assert settings.auth_jwt_jwks_file is not None
        return JwtAuthenticator(
            settings.auth_jwt_jwks_file,
            issuer=settings.auth_jwt_issuer,
            audience=settings.auth_jwt_audience,
            algorithms=settings.auth_jwt_algorithms,
            leeway_s=settings.auth_jwt_leeway_s,
            caller_claim=settings.auth_jwt_caller_claim,
            metric_callers=settings.auth_jwt_metric_callers,
        )
    return None


def auth_interceptors(settings: GatewaySettings) -> list[grpc.aio.ServerInterceptor]:
    """The gateway's extra server interceptors: the authenticator's, when auth is on."""
    authenticator = build_authenticator(settings)
    if authenticator is None:
        return []
    log.info("authentication on", extra={"auth_mode": settings.auth_mode})
    return [AuthInterceptor(authenticator)]
