"""Settings shared by every meshserve service.

Each service subclasses ServerSettings with its own env prefix
(MESHSERVE_GATEWAY_, MESHSERVE_FEATURES_, ...). Field docstrings become the field
descriptions, which the README's settings table is generated from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


def meshserve_home() -> Path:
    """Root of local state (MLflow db, artifacts, Feast registry): $MESHSERVE_HOME or ./.meshserve."""
    return Path(os.environ.get("MESHSERVE_HOME", ".meshserve")).resolve()


def setting_name(settings: object, field: str) -> str:
    """The environment variable of a settings field (of a settings class or instance),
    e.g. MESHSERVE_GATEWAY_TLS_CERT_FILE."""
    config = getattr(settings, "model_config", {}) or {}
    return f"{config.get('env_prefix', '')}{field}".upper()


def load_settings(cls: type[S]) -> S:
    """Read a service's settings from its environment, or exit 2 naming what is wrong.

    A process entry point calls this (never at import). A bad value is a configuration
    mistake, not a crash: one line per wrong variable on stderr, e.g.
    `MESHSERVE_FEATURES_PORT='abc': Input should be a valid integer`, and no traceback.
    """
    try:
        return cls()
    except ValidationError as err:
        lines = []
        for e in err.errors(include_url=False):
            field = ".".join(str(part) for part in e["loc"])
            name = setting_name(cls, field) if field else setting_name(cls, "").rstrip("_")
            value = e.get("input")
            shown = f"={value!r}" if isinstance(value, str | int | float | bool) and not _secret(field) else ""
            lines.append(f"{name}{shown}: {e['msg']}")
        print(f"cannot start: invalid settings ({cls.__name__}):\n  " + "\n  ".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def _secret(field: str) -> bool:
    """Fields whose values must not be echoed into logs."""
    return any(word in field for word in ("password", "secret", "token", "key", "url"))


class ServerSettings(BaseSettings):
    """What every service's gRPC server needs. Subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True, extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    """Address the gRPC and metrics servers bind to (0.0.0.0 in a pod)."""
    port: int = Field(default=0, ge=0, le=65535)
    """gRPC port."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    grace_period_s: float = Field(default=10.0, ge=0)
    """On SIGTERM: how long in-flight calls may take to finish before they are cancelled."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted or sent."""
    max_concurrent_rpcs: int = Field(default=2048, ge=1)
    """Calls handled at once; past it the server answers RESOURCE_EXHAUSTED at once."""
    max_connection_age_s: float = Field(default=300.0, ge=0)
    """Clients reconnect after this long, so new pods behind an HPA get traffic (0: never)."""
    gc_freeze: bool = True
    """Once the artifacts are loaded and warmed up, freeze the heap (gc.freeze): full garbage collections then skip the static objects instead of stalling every call in flight for 100 ms or more."""
    load_retry_s: float = Field(default=5.0, gt=0)
    """Wait between attempts when loading artifacts fails at start-up."""
    log_level: str = "INFO"
    """Log level (DEBUG, INFO, WARNING, ERROR)."""
    log_json: bool = True
    """JSON log lines (false: plain text, for a terminal)."""
    access_log: bool = False
    """One log line per RPC (method, status, duration, peer) at INFO."""
    tls_cert_file: Path | None = None
    """PEM certificate chain of the gRPC port; with tls_key_file the port serves TLS only (unset: no TLS)."""
    tls_key_file: Path | None = None
    """PEM private key (unencrypted) of tls_cert_file; re-read with it when the files change."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: when set, only clients presenting a certificate it signed are served (mutual TLS)."""
    plaintext: bool = False
    """Explicitly allow plaintext gRPC off loopback where no TLS is configured (served port, gateway's upstream calls): behind a mesh that encrypts, or a trusted network."""
    health_port: int = Field(default=0, ge=0, le=65535)
    """Extra plaintext port serving only grpc.health.v1, for the kubelet's probes: its own server, so it answers while the service port is at max_concurrent_rpcs or speaks TLS (the chart always sets it); 0: none."""


class RegistryClientSettings(BaseSettings):
    """How a service that loads artifacts (preprocess, model) talks to an MLflow server."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True, extra="ignore", frozen=True)

    registry_http_retries: int = Field(default=2, ge=0, le=10)
    """Retries of one MLflow REST request before a registry lookup fails (sets MLFLOW_HTTP_REQUEST_MAX_RETRIES). MLflow's default, 7 with exponential backoff, holds one alias check for minutes while the registry is down; the service retries on its own: every load_retry_s at start-up, every alias_poll_s for reloads."""
    registry_http_timeout_s: int = Field(default=15, ge=1)
    """Seconds one MLflow REST request may wait for the server (sets MLFLOW_HTTP_REQUEST_TIMEOUT; MLflow's default is 120)."""
