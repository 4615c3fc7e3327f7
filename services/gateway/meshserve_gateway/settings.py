"""Settings of the gateway (env prefix MESHSERVE_GATEWAY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.settings import ServerSettings

#: JWT algorithms the gateway may accept: asymmetric only. `none` would accept unsigned
#: tokens, and an HS* algorithm would let anyone holding the (public) JWKS forge tokens.
ASYMMETRIC_JWT_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
#: Caller-label values meshserve_gateway.auth uses itself (no caller may be named so).
RESERVED_CALLER_LABELS = frozenset({"other", "unauthenticated"})


class GatewaySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_")

    port: int = 50051
    """gRPC port."""
    metrics_port: int = 9101
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    features_target: str = "127.0.0.1:50052"
    """gRPC target of the features service (dns:///name:port spreads calls over every address)."""
    preprocess_target: str = "127.0.0.1:50053"
    """gRPC target of the preprocess service."""
    model_target: str = "127.0.0.1:50054"
    """gRPC target of the model service (KServe V2)."""
    model_name: str = "driver_ranking"
    """V2 model name the gateway asks the model service for."""
    max_batch_rows: int = Field(default=1000, ge=1)
    """Most rows (entities or raw rows) one Predict/PredictEntities call may carry."""
    max_row_values: int = Field(default=32, ge=1)
    """Most values (keys) one row may carry; raise it for a model with more input columns. Bounds a call's work at max_batch_rows x this many cells (a 3 MB row of 100,000 keys took seconds)."""
    default_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline for the whole pipeline: the caller's own when shorter, else this. It is also the cap on a longer caller deadline (a server-side bound on what one call may hold); raise it for callers that need longer."""
    retry_attempts: int = Field(default=3, ge=1, le=5)
    """Attempts per internal call on UNAVAILABLE (gRPC service-config retries, throttled)."""
    chunk_rows: int = Field(default=256, ge=0)
    """Rows per preprocess+model call: a bigger batch is cut into chunks scored concurrently (0: never cut)."""
    coalesce_max_delay_us: int = Field(default=1000, ge=0)
    """With coalesce_max_in_flight above 1: longest a request waits (microseconds) for company before a further call goes out while one is in flight (with 1, it waits for that call instead); 0: no coalescing."""
    coalesce_max_rows: int = Field(default=256, ge=0)
    """Most rows one coalesced internal call carries; keep it at most the features service's max_entities (0: no coalescing). A call also stays within max_message_bytes: callers with big string values are grouped by bytes too."""
    coalesce_max_in_flight: int = Field(default=1, ge=1)
    """Coalesced calls out at once per stage before new callers wait for one to finish (and so join a bigger group); more lets callers pass a slow call, at the cost of more, smaller calls (1 measured best: make bench)."""
    skew_retry_s: float = Field(default=15.0, ge=0)
    """How long a request refused by the model's skew guard (preprocess and model switching releases) is retried, within its deadline (0: never)."""
    upstream_tls_ca_file: Path | None = None
    """PEM CA that signed the features/preprocess/model certificates: set, the gateway calls them over TLS (unset: plaintext)."""
    upstream_tls_cert_file: Path | None = None
    """PEM client certificate the gateway presents to features/preprocess/model (mutual TLS; with upstream_tls_key_file)."""
    upstream_tls_key_file: Path | None = None
    """PEM private key (unencrypted) of upstream_tls_cert_file."""
    upstream_tls_server_name: str = ""
    """Name the upstream certificates are checked against instead of each target's host (e.g. a SAN they all share; empty: the target's host)."""
    auth_mode: Literal["none", "api_key", "jwt"] = "none"
    """Caller authentication: none, api_key (keys file) or jwt (JWKS file). Off by default so a local stack needs no setup; turn it on wherever untrusted callers can reach the gateway (health and reflection stay open)."""
    auth_api_keys_file: Path | None = None
    """api_key mode: file of `caller:sha256-hex-of-key` lines (mount it from a Secret; it never holds raw keys); re-read when it changes."""
    auth_jwt_jwks_file: Path | None = None
    """jwt mode: JWKS file (JSON) of the issuer's public signing keys; re-read when it changes."""
    auth_jwt_issuer: str = ""
    """jwt mode: the `iss` every token must carry (required in jwt mode)."""
    auth_jwt_audience: str = ""
    """jwt mode: the `aud` every token must include, this gateway's audience (required in jwt mode)."""
    auth_jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    """jwt mode: accepted signature algorithms, asymmetric only (none and HS* are refused)."""
    auth_jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    """jwt mode: clock skew tolerated when checking exp and nbf, in seconds."""
    auth_jwt_caller_claim: str = Field(default="sub", min_length=1)
    """jwt mode: the claim that names the caller (e.g. sub, azp, client_id)."""
    auth_jwt_metric_callers: tuple[str, ...] = ()
    """jwt mode: callers that keep their name in meshserve_gateway_caller_requests_total; any other caller counts as `other`, so the label stays bounded."""

    @field_validator("auth_jwt_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [a for a in value if a not in ASYMMETRIC_JWT_ALGORITHMS]
        if refused or not value:
            raise ValueError(f"allowed: {', '.join(sorted(ASYMMETRIC_JWT_ALGORITHMS))} (refused: {refused or 'empty list'})")
        return value

    @field_validator("auth_jwt_metric_callers")
    @classmethod
    def _label_safe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if not c or c in RESERVED_CALLER_LABELS or len(c) > 128]
        if bad:
            raise ValueError(f"caller names must be non-empty, at most 128 characters and not other/unauthenticated: {bad}")
        return value

    @model_validator(mode="after")
    def _mode_needs_its_files(self) -> GatewaySettings:
        p = "MESHSERVE_GATEWAY_"
        if self.auth_mode == "api_key" and self.auth_api_keys_file is None:
            raise ValueError(f"auth_mode=api_key needs {p}AUTH_API_KEYS_FILE (the caller:sha256 keys file)")
        if self.auth_mode == "jwt":
            missing = [name for name, value in (
                ("AUTH_JWT_JWKS_FILE", self.auth_jwt_jwks_file),
                ("AUTH_JWT_ISSUER", self.auth_jwt_issuer),
                ("AUTH_JWT_AUDIENCE", self.auth_jwt_audience),
            ) if not value]
            if missing:
                raise ValueError(f"auth_mode=jwt needs {', '.join(p + m for m in missing)}")
        return self
