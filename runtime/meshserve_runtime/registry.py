"""MLflow registry access shared by the services that load artifacts.

Artifacts are resolved by alias once, then loaded by the exact version the alias
pointed at, so a concurrent alias move can't make us load one version and report
another. Requires the `mlflow` extra.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from meshserve.v1 import types_pb2

from meshserve_runtime.integrity import DIGEST_TAG
from meshserve_runtime.redact import redact_url

log = logging.getLogger("meshserve.registry")


@dataclass(frozen=True, slots=True)
class ResolvedArtifact:
    """A registered model version an alias points at."""

    name: str
    version: str
    run_id: str
    alias: str
    source: str
    #: The registered digest of the version's artifacts (tag meshserve.sha256); None: unsigned.
    sha256: str | None = None

    @property
    def uri(self) -> str:
        """models:/ URI of this exact version."""
        return f"models:/{self.name}/{self.version}"

    def identity(self) -> types_pb2.ArtifactIdentity:
        return types_pb2.ArtifactIdentity(name=self.name, version=self.version, run_id=self.run_id, alias=self.alias)

    def labels(self) -> dict[str, str]:
        """For logs and the artifact info metric ("name" would clash with LogRecord.name)."""
        return {"model": self.name, "version": self.version, "alias": self.alias, "run_id": self.run_id}


class ArtifactNotFound(LookupError):
    """The registered model or its alias does not exist (yet)."""


def resolve_alias(tracking_uri: str, name: str, alias: str) -> ResolvedArtifact:
    """Look up which version `alias` points at; raise ArtifactNotFound if it points nowhere."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ArtifactNotFound(
                f"no version of registered model {name!r} has alias {alias!r} in {redact_url(tracking_uri)} "
                "(train and register one with `make train`)"
            ) from err
        raise
    return ResolvedArtifact(
        name=name, version=str(mv.version), run_id=mv.run_id or "", alias=alias, source=mv.source or "",
        sha256=(mv.tags or {}).get(DIGEST_TAG),
    )


def bound_http_requests(retries: int, timeout_s: int) -> None:
    """Bound MLflow's REST client in this process (it reads these variables per request):
    while the registry is down a lookup then fails in seconds, not minutes, and the
    service's own loops (start-up retries, the alias watcher's polls) do the retrying."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
