"""The registry behind authentication: a real `mlflow server --app-name basic-auth`.

A platform team's MLflow usually asks for credentials, and the chart hands them to
preprocess and model from a Secret (mlflow.existingSecret; MLflow reads
MLFLOW_TRACKING_USERNAME / _PASSWORD or _TOKEN). Here the server grants nothing by
default (NO_PERMISSIONS), training registers as its admin, and the services read as a
user of their own:
- a wrong password: not ready, and the log says the credentials were refused (HTTP 401)
  and which settings carry them;
- a user with READ on the two registered models only: not ready, and the log says HTTP
  403, names the user, and the READ on the experiment it also needs (the artifacts are
  downloaded through the run);
- READ on the experiment granted while the service keeps retrying: it turns ready on its
  next attempt, with no restart;
- the right password: the whole stack serves the registered release.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshserve_local.stack import Stack

from tests.e2e.conftest import make_stack_config
from tests.e2e.test_hot_reload import steady_load
from tests.e2e.test_registry_server import mlflow_server
from tests.fixtures.trained import train_into

pytestmark = pytest.mark.e2e

ADMIN = ("admin", "admin-pw-for-the-test")
READER = ("meshserve-reader", "reader-pw-for-the-test")

#: Longest wait for a service's next load attempt to log or succeed (attempts are 5 s apart).
ATTEMPT_S = 60.0


def _auth_config(root: Path) -> Path:
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return config


def _credentials(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def _wait_for_log(stack: Stack, service: str, *fragments: str) -> None:
    deadline = time.monotonic() + ATTEMPT_S
    while time.monotonic() < deadline:
        log = stack.log_tail(service, 200)
        if all(f in log for f in fragments):
            return
        time.sleep(0.5)
    raise AssertionError((fragments, stack.log_tail(service, 5)))


@contextmanager
def _as_admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The admin's credentials in this test process only: the stack must not inherit them."""
    with monkeypatch.context() as admin:
        for name, value in _credentials(*ADMIN).items():
            admin.setenv(name, value)
        yield


def test_services_read_an_auth_enabled_registry_with_their_own_credentials(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(tmp_path_factory.mktemp("mlflow-auth-server"))
    home = Path(tmp_path_factory.mktemp("registry-auth-home"))
    server_env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(root)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],  # creates the admin on the first start
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "meshserve-test",  # the auth app's CSRF key
    }
    with mlflow_server(root, args=("--app-name", "basic-auth"), env=server_env) as server:
        from mlflow import MlflowClient
        from mlflow.server import get_app_client

        with _as_admin(monkeypatch):
            trained = train_into(home, None, seed=7, tracking_uri=server.url)
            experiment_id = MlflowClient(tracking_uri=server.url).get_run(trained.run_id).info.experiment_id
            users = get_app_client("basic-auth", tracking_uri=server.url)
            users.create_user(*READER)
            for model in ("driver_ranking", "driver_ranking_preprocessor"):
                users.grant_user_permission(READER[0], "registered_model", model, "READ")

        config = make_stack_config(home, "sqlite")
        for service, password in (("preprocess", READER[1]), ("model", "not-the-password")):
            config.extra_env[service] = {
                f"MESHSERVE_{service.upper()}_MLFLOW_TRACKING_URI": server.url, **_credentials(READER[0], password)
            }
        config.extra_env["gateway"] = {"MESHSERVE_GATEWAY_DEFAULT_TIMEOUT_S": "20"}
        stack = Stack(config)
        try:
            stack.start()
            _wait_for_log(stack, "model", "loading artifacts failed", "HTTP 401", "MLFLOW_TRACKING_PASSWORD")
            _wait_for_log(stack, "preprocess", "loading artifacts failed", "HTTP 403", repr(READER[0]),
                          "on the experiment that holds its runs")
            assert not stack.is_serving("model") and not stack.is_serving("preprocess")

            with _as_admin(monkeypatch):
                get_app_client("basic-auth", tracking_uri=server.url).grant_user_permission(
                    READER[0], "experiment", experiment_id, "READ"
                )
            stack.wait_service_ready("preprocess", ATTEMPT_S)  # its next attempt, same process
            assert not stack.is_serving("model")  # still the wrong password

            stack.stop_service("model")
            config.extra_env["model"].update(_credentials(*READER))
            stack.start_service("model")
            stack.wait_ready()
            with steady_load(stack, trained.model_version) as load:
                time.sleep(1)
            assert load.answers and not load.errors, load.errors[:5]
            assert {run for _, run, _ in load.answers} == {trained.run_id}
        finally:
            stack.stop()
