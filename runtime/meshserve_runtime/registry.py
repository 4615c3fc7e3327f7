"""MLflow registry access shared by the services that load artifacts.

Artifacts are resolved by alias once, then loaded by the exact version the alias
pointed at, so a concurrent alias move can't make us load one version and report
another. Requires the `mlflow` extra.
"""

from __future__ import annotations

import json
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


class RegistryAccessDenied(PermissionError):
    """The registry turned this service's credentials away (HTTP 401) or did not let them
    read what it needs (HTTP 403). Retried like any load failure: rights granted later are
    picked up by the next attempt, with no restart."""


#: MLflow's error codes for the two statuses (its REST client maps the HTTP status to them).
_DENIED_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}

#: Where a service's registry credentials come from: named by both refusals they can fix.
_CREDENTIAL_SETTINGS = (
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN "
    "(in the Helm chart: a Secret named by mlflow.existingSecret, its keys mapped by mlflow.secretEnv)"
)

#: The body Envoy's RBAC filter answers a request an Istio AuthorizationPolicy denies. In a
#: mesh a 403 may come from there rather than from MLflow, and then no MLflow right helps.
MESH_DENIED_BODY = "RBAC: access denied"


def _answer_text(err: BaseException) -> str:
    """What the server answered: the body of a failed download, or MLflow's message, which
    quotes the body of a REST answer that was not MLflow's own JSON."""
    text = getattr(getattr(err, "response", None), "text", None)
    return text if isinstance(text, str) else str(err)


class RegistryAnswerNotMlflow(RuntimeError):
    """Something in front of the registry (an API gateway, an authenticating proxy) answered
    a REST call with a JSON body that is not MLflow's error format. MLflow's client keeps
    such a body but drops the HTTP status, so whether it was a refusal is not known."""


#: The longest rendering of a foreign answer's body quoted in a message.
_FOREIGN_BODY_CHARS = 300


def _foreign_answer(err: BaseException) -> dict | None:
    """The JSON body of a failed REST call when it is not MLflow's own error (no
    `error_code`): MLflow's client then reports INTERNAL_ERROR whatever the status was."""
    body = getattr(err, "json", None)  # mlflow.exceptions.RestException keeps the parsed body
    if isinstance(body, dict) and "error_code" not in body:
        return body
    return None


def restate_registry_error(err: BaseException, tracking_uri: str, what: str) -> Exception | None:
    """`err` restated for whoever configures the pod, when it is the registry refusing access
    to `what` (RegistryAccessDenied) or something in front of it answering in a format that
    is not MLflow's (RegistryAnswerNotMlflow); None for any other failure. MLflow's own
    message names an endpoint, not the setting or the right that is missing."""
    response = getattr(err, "response", None)  # requests.HTTPError: an artifact download
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        status = _DENIED_CODES.get(str(getattr(err, "error_code", "")))  # MlflowException: the REST API
    where = redact_url(tracking_uri)
    if status == 401:
        return RegistryAccessDenied(
            f"the MLflow registry at {where} did not accept this service's credentials (HTTP 401) when reading {what}: "
            f"set {_CREDENTIAL_SETTINGS}"
        )
    if status == 403 and MESH_DENIED_BODY in _answer_text(err):
        return RegistryAccessDenied(
            f"the service mesh, not MLflow, refused this pod's request to the MLflow registry at {where} when reading "
            f"{what} (HTTP 403 {MESH_DENIED_BODY!r}, Envoy's RBAC filter): an Istio AuthorizationPolicy on the "
            "registry's side does not allow this workload; allow this pod's service account (in the Helm chart: "
            "preprocess.serviceAccount / model.serviceAccount) to reach the registry"
        )
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "the credentials in use"
        return RegistryAccessDenied(
            f"the MLflow registry at {where} does not let {who} read {what} (HTTP 403): the serving identity needs "
            "READ on the registered model and on the experiment that holds its runs (the artifacts are downloaded "
            "through the run)"
        )
    foreign = _foreign_answer(err)
    if foreign is not None:
        quoted = json.dumps(foreign, ensure_ascii=False)
        if len(quoted) > _FOREIGN_BODY_CHARS:
            quoted = quoted[:_FOREIGN_BODY_CHARS] + "...(cut)"
        return RegistryAnswerNotMlflow(
            f"the MLflow registry at {where} answered the request for {what} with {quoted}, an error that is not "
            "MLflow's own format: an API gateway or authenticating proxy in front of MLflow answered it, and "
            "MLflow's client does not keep the HTTP status of such an answer. If the proxy refused this service's "
            f"credentials, set {_CREDENTIAL_SETTINGS}, as it expects; otherwise the proxy's own log says why it "
            "answered so"
        )
    return None


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
        restated = restate_registry_error(err, tracking_uri, f"the alias {alias!r} of registered model {name!r}")
        if restated is not None:
            raise restated from err
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
