"""A registry refusing access is restated for whoever configures the pod.

The errors are made by MLflow's own REST and download helpers from HTTP responses, so
they are the exceptions the services meet; tests/e2e/test_registry_auth.py meets them from a
real auth-enabled `mlflow server`.
"""

from __future__ import annotations

import json

import pytest
import requests
from mlflow.utils.request_utils import augmented_raise_for_status
from mlflow.utils.rest_utils import verify_rest_response

from meshserve_runtime.registry import RegistryAccessDenied, RegistryAnswerNotMlflow, restate_registry_error

URI = "http://reader:hunter2@mlflow.example:5000"


def _response(status: int, body: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    response.url = "http://mlflow.example:5000/api/2.0/mlflow/registered-models/alias"
    return response


def _rest_error(status: int, body: str) -> Exception:
    with pytest.raises(Exception) as caught:
        verify_rest_response(_response(status, body), "/api/2.0/mlflow/registered-models/alias")
    return caught.value


def _download_error(status: int, body: str) -> Exception:
    with pytest.raises(requests.HTTPError) as caught:
        augmented_raise_for_status(_response(status, body))
    return caught.value


@pytest.mark.parametrize("make", [_rest_error, _download_error])
def test_401_names_the_credential_settings(make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    err = restate_registry_error(make(401, "You are not authenticated."), URI, "the alias 'production' of registered model 'm'")
    assert isinstance(err, RegistryAccessDenied)
    message = str(err)
    assert "HTTP 401" in message and "the alias 'production' of registered model 'm'" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_TOKEN" in message and "mlflow.existingSecret" in message
    assert "hunter2" not in message and "mlflow.example:5000" in message


@pytest.mark.parametrize("make", [_rest_error, _download_error])
def test_403_names_the_user_and_the_rights_it_needs(make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "meshserve-reader")
    err = restate_registry_error(make(403, "Permission denied"), URI, "the artifacts of models:/m/3")
    assert isinstance(err, RegistryAccessDenied)
    message = str(err)
    assert "HTTP 403" in message and "'meshserve-reader'" in message and "models:/m/3" in message
    assert "READ on the registered model and on the experiment" in message


@pytest.mark.parametrize("make", [_rest_error, _download_error])
def test_a_403_from_the_mesh_names_the_authorization_policy_not_mlflow_rights(make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Envoy's RBAC filter (an Istio AuthorizationPolicy) answers 403 with this body: no
    MLflow right would help, so the message must not send anyone to grant one."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "meshserve-reader")
    err = restate_registry_error(make(403, "RBAC: access denied"), URI, "the artifacts of models:/m/3")
    assert isinstance(err, RegistryAccessDenied)
    message = str(err)
    assert "HTTP 403 'RBAC: access denied'" in message and "AuthorizationPolicy" in message and "models:/m/3" in message
    assert "preprocess.serviceAccount" in message and "READ on" not in message
    assert "hunter2" not in message and "mlflow.example:5000" in message


def test_a_json_error_body_is_read_by_its_code() -> None:
    body = json.dumps({"error_code": "PERMISSION_DENIED", "message": "no"})
    assert isinstance(restate_registry_error(_rest_error(403, body), URI, "x"), RegistryAccessDenied)


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, {"message": "Unauthorized"}), (403, {"message": "You cannot consume this service"}), (502, {"error": "bad gateway"})],
    ids=["kong-401", "kong-403", "other-502"],
)
def test_a_json_answer_that_is_not_mlflows_is_named_as_the_proxys(status: int, body: dict) -> None:
    """An API gateway in front of MLflow (Kong answers `{"message": ...}`) gives a JSON
    body without MLflow's error_code: MLflow's client turns it into INTERNAL_ERROR and
    drops the status, so the message must say where the answer came from."""
    raw = _rest_error(status, json.dumps(body))
    assert "INTERNAL_ERROR" in str(raw)  # what MLflow alone would have told the operator
    err = restate_registry_error(raw, URI, "the alias 'production' of registered model 'm'")
    assert isinstance(err, RegistryAnswerNotMlflow)
    message = str(err)
    assert json.dumps(body) in message and "not MLflow's own format" in message
    assert "the alias 'production' of registered model 'm'" in message
    assert "MLFLOW_TRACKING_TOKEN" in message and "mlflow.existingSecret" in message
    assert "hunter2" not in message and "mlflow.example:5000" in message


def test_a_long_foreign_answer_is_quoted_cut() -> None:
    raw = _rest_error(401, json.dumps({"message": "x" * 5000}))
    message = str(restate_registry_error(raw, URI, "x"))
    assert "...(cut)" in message and len(message) < 1500


@pytest.mark.parametrize(
    "err",
    [
        _rest_error(500, "boom"),
        _rest_error(404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"})),
        _download_error(503, "unavailable"),
        requests.ConnectionError("connection refused"),
        RuntimeError("anything else"),
    ],
    ids=["500", "404", "download-503", "connection", "other"],
)
def test_other_failures_are_left_as_they_are(err: Exception) -> None:
    assert restate_registry_error(err, URI, "x") is None
