"""The registry behind authentication: a real `mlflow server --app-name basic-auth`.

A platform team's MLflow usually asks for credentials, and the chart hands them to
preprocess and model from a Secret (mlflow.existingSecret; MLflow reads
MLFLOW_TRACKING_USERNAME / _PASSWORD or _TOKEN). Here the server grants nothing by
default (NO_PERMISSIONS), training registers as its admin, and the services read as a
user of their own:
- model's user, not created yet: not ready, and the log says the credentials were
  refused (HTTP 401) and which settings carry them;
- preprocess's user, with READ on the two registered models only: not ready, and the log
  says HTTP 403, names the user, and the READ on the experiment it also needs (the
  artifacts are downloaded through the run);
- READ on the experiment granted, and model's user created with its rights, while the
  services keep retrying: each turns ready on its next attempt, with no restart, and the
  whole stack serves the registered release.

The chart's default credential is a token instead (mlflow.secretEnv maps
MLFLOW_TRACKING_TOKEN), which MLflow sends as `Authorization: Bearer`. MLflow's own
server does not check tokens; the deployments that issue them put an authenticating
proxy in front of it. Here a small reverse proxy (the test's own, in front of a real
`mlflow server`) refuses any other token with HTTP 401 as such proxies do, plain text,
not MLflow's JSON:
- a token the proxy does not know: not ready, and the log names MLFLOW_TRACKING_TOKEN;
- the proxy accepts that token later (issued after the pods started): the service turns
  ready on its next attempt, with no restart, the stack serves, and the token rode on the
  artifact downloads as well as on the registry's REST calls.
In a mesh, Envoy in front of the registry may refuse first: an Istio AuthorizationPolicy
that does not allow a workload gets HTTP 403 `RBAC: access denied`, whatever its token.
The same proxy plays that part for preprocess's requests: its log names the
AuthorizationPolicy (not an MLflow right), and once the policy allows it, it turns ready
on its next attempt.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from meshserve_local.stack import Stack, free_ports

from tests.e2e.conftest import make_stack_config
from tests.e2e.test_hot_reload import steady_load
from tests.e2e.test_registry_server import mlflow_server
from tests.fixtures.trained import TrainedHome, train_into

pytestmark = pytest.mark.e2e

ADMIN = ("admin", "admin-pw-for-the-test")
READER = ("meshserve-reader", "reader-pw-for-the-test")
LATE_READER = ("meshserve-model-reader", "created-after-the-pods-started")

#: Longest wait for a service's next load attempt to log or succeed (attempts are 5 s apart).
ATTEMPT_S = 60.0

TOKENS = ("meshserve-token-for-the-test", "meshserve-token-issued-later")

#: Not forwarded: they describe one connection, not the request.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length", "host", "authorization"}


def _auth_config(root: Path) -> Path:
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own opt-in: a credential that passed is not hashed again for 60 s (a
        # password check costs tens of ms by design, and training sends hundreds of
        # requests). Only successes are cached, so a refused user stays refused.
        "auth_cache_ttl_seconds = 60\n"
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


def _model_turns_ready_then_all_serve(stack: Stack, trained: TrainedHome) -> None:
    """The model service's next load attempt succeeds (same process, no restart); then the
    whole stack answers steady load from the trained release, with no error."""
    stack.wait_service_ready("model", ATTEMPT_S)
    stack.wait_ready()
    with steady_load(stack, trained.model_version) as load:
        time.sleep(1)
    assert load.answers and not load.errors, load.errors[:5]
    assert {run for _, run, _ in load.answers} == {trained.run_id}


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
        for service, user in (("preprocess", READER), ("model", LATE_READER)):
            config.extra_env[service] = {
                f"MESHSERVE_{service.upper()}_MLFLOW_TRACKING_URI": server.url, **_credentials(*user)
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
                users = get_app_client("basic-auth", tracking_uri=server.url)
                users.grant_user_permission(READER[0], "experiment", experiment_id, "READ")
            stack.wait_service_ready("preprocess", ATTEMPT_S)  # its next attempt, same process
            assert not stack.is_serving("model")  # its user still does not exist

            with _as_admin(monkeypatch):
                users.create_user(*LATE_READER)
                for model in ("driver_ranking", "driver_ranking_preprocessor"):
                    users.grant_user_permission(LATE_READER[0], "registered_model", model, "READ")
                users.grant_user_permission(LATE_READER[0], "experiment", experiment_id, "READ")
            _model_turns_ready_then_all_serve(stack, trained)
        finally:
            stack.stop()


class BearerProxy:
    """A reverse proxy on a loopback port that lets through only `Authorization: Bearer
    <token>` with a token it accepts and answers anything else 401 in plain text, as an
    authenticating proxy in front of MLflow does. Counts what it passed and refused, by path.
    Before that, it answers the callers of `mesh_denied` tokens as Envoy's RBAC filter does
    when an Istio AuthorizationPolicy does not allow their workload: 403, `RBAC: access denied`."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = urlsplit(upstream)
        self.accepted = {f"Bearer {token}"}
        self.mesh_denied: frozenset[str] = frozenset()
        self.passed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                path = self.path.split("?", 1)[0]
                if self.headers.get("Authorization") in proxy.mesh_denied:
                    self._refuse(403, b"RBAC: access denied")  # Envoy's local reply, as sent
                    return
                if self.headers.get("Authorization") not in proxy.accepted:
                    with proxy._lock:
                        proxy.refused[path] += 1
                    self._refuse(401, b"401 Authorization Required\n", ("WWW-Authenticate", 'Bearer realm="mlflow"'))
                    return
                with proxy._lock:
                    proxy.passed[path] += 1
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=data, headers=headers)
                    reply = upstream.getresponse()
                    body = reply.read()
                    self.send_response(reply.status)
                    for k, v in reply.getheaders():
                        if k.lower() not in _HOP_BY_HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
                pass  # counted above; pytest's output stays readable

        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def accept(self, token: str) -> None:
        self.accepted = self.accepted | {f"Bearer {token}"}  # one swap: handler threads read it

    def deny_by_mesh(self, *tokens: str) -> None:
        self.mesh_denied = frozenset(f"Bearer {t}" for t in tokens)  # one swap, as above

    def __enter__(self) -> BearerProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def test_services_send_the_chart_default_token_through_an_authenticating_proxy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = Path(tmp_path_factory.mktemp("mlflow-token-server"))
    home = Path(tmp_path_factory.mktemp("registry-token-home"))
    with mlflow_server(root) as server, BearerProxy(server.url, TOKENS[0]) as proxy:
        trained = train_into(home, None, seed=7, tracking_uri=server.url)  # the trainer's own way in

        config = make_stack_config(home, "sqlite")
        for service, token in (("preprocess", TOKENS[0]), ("model", TOKENS[1])):
            config.extra_env[service] = {
                f"MESHSERVE_{service.upper()}_MLFLOW_TRACKING_URI": proxy.url, "MLFLOW_TRACKING_TOKEN": token
            }
        config.extra_env["gateway"] = {"MESHSERVE_GATEWAY_DEFAULT_TIMEOUT_S": "20"}
        stack = Stack(config)
        proxy.deny_by_mesh(TOKENS[0])  # preprocess's workload: not yet allowed by the registry's policy
        try:
            stack.start()
            _wait_for_log(stack, "model", "loading artifacts failed", "HTTP 401", "MLFLOW_TRACKING_TOKEN")
            _wait_for_log(stack, "preprocess", "loading artifacts failed", "HTTP 403 'RBAC: access denied'",
                          "AuthorizationPolicy", "preprocess.serviceAccount")
            assert "READ on" not in stack.log_tail("preprocess", 200)  # no MLflow right would help
            assert not stack.is_serving("preprocess")

            proxy.deny_by_mesh()  # the policy now allows it
            stack.wait_service_ready("preprocess", ATTEMPT_S)
            assert not stack.is_serving("model")
            assert proxy.refused, "the model service's token, not yet accepted, never reached the proxy"

            proxy.accept(TOKENS[1])
            _model_turns_ready_then_all_serve(stack, trained)
        finally:
            stack.stop()
    # Both kinds of request carried the token: the alias lookups and the artifact downloads.
    assert any(path.startswith("/api/2.0/mlflow/registered-models/alias") for path in proxy.passed), proxy.passed
    assert any("mlflow-artifacts" in path for path in proxy.passed), proxy.passed
