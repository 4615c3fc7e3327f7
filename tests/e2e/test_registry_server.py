"""The registry as the chart deploys it: an MLflow tracking server over HTTP.

In a cluster, preprocess and model load from `http://mlflow...:5000`, not from a SQLite file.
Here a real `mlflow server` (its own process, SQLite backend, artifacts proxied by the server
with --artifacts-destination) is the registry:
- training registers through it, uploading the artifacts through the server's proxy rather
  than writing them to a local path;
- started while the server is down, preprocess and model stay not ready, each load attempt
  failing within seconds, and they turn ready once it is up;
- the services resolve @production and download through it;
- while the server is down, serving carries on untouched (no request reads the registry;
  only the alias watchers do). Their lookups fail within seconds, not after MLflow's own
  retries of several minutes (registry_http_retries), and the next poll tries again;
- once it is back, a release registered through it is picked up under load, with no
  failed request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshserve_local.stack import HEALTH_NAMES, Stack, free_ports

from tests.e2e.conftest import make_stack_config
from tests.e2e.test_hot_reload import _logged, steady_load
from tests.fixtures.trained import TrainedHome, train_into

pytestmark = pytest.mark.e2e

#: How long the server gets to answer /health (it starts in about 10 s on a 2-core machine).
SERVER_START_S = 90.0

#: Longest the registry stays down waiting for both watchers to report it (a lookup gives up
#: after about 5 s with the default registry_http_retries; MLflow's own default takes minutes).
OUTAGE_S = 60.0


class MlflowServer:
    """`mlflow server` in its own process group on a loopback port, restartable on the same
    backend and artifact store."""

    def __init__(self, root: Path, port: int, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = args  # more `mlflow server` options (e.g. --app-name basic-auth)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the process owns it
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}  # 2 processes, not 10
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", *self.args,
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlflow server exited {self.proc.returncode}:\n{self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"mlflow server did not answer /health within {SERVER_START_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def down(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
        except OSError:
            return True
        return False

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextmanager
def mlflow_server(root: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[MlflowServer]:
    server = MlflowServer(root, free_ports(1)[0], args=args, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wait_logged(stack: Stack, services: tuple[str, ...], message: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and not all(_logged(stack, s, message) for s in services):
        time.sleep(0.5)
    for service in services:
        assert _logged(stack, service, message), (message, stack.log_tail(service))


def test_served_from_an_mlflow_server_that_starts_late_goes_down_and_comes_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = Path(tmp_path_factory.mktemp("registry-server-home"))
    with mlflow_server(Path(tmp_path_factory.mktemp("mlflow-server"))) as server:
        first = train_into(home, None, seed=7, tracking_uri=server.url)

        # The artifacts went through the server's proxy: its store has them, the home has none.
        stored = [p for p in (server.root / "artifacts").rglob("*") if p.is_file()]
        assert any(p.name == "MLmodel" for p in stored), stored[:10]
        assert not (home / "mlartifacts").exists()

        config = make_stack_config(home, "sqlite")
        for service in ("model", "preprocess"):
            prefix = f"MESHSERVE_{service.upper()}_"
            config.extra_env[service] = {prefix + "MLFLOW_TRACKING_URI": server.url, prefix + "ALIAS_POLL_S": "0.5"}
        config.extra_env["gateway"] = {"MESHSERVE_GATEWAY_DEFAULT_TIMEOUT_S": "20"}
        stack = Stack(config)
        try:
            # Pods starting while the registry is down: not ready, each load attempt failing
            # after its bounded retries (MLflow's own default would hold the first for minutes).
            server.stop()
            stack.start()
            _wait_logged(stack, ("model", "preprocess"), "loading artifacts failed", OUTAGE_S)
            assert not stack.is_serving("model") and not stack.is_serving("preprocess")
            server.start()
            stack.wait_ready()
            _serve_through_an_outage(stack, server, home, first)
        finally:
            stack.stop()


def _serve_through_an_outage(stack: Stack, server: MlflowServer, home: Path, first: TrainedHome) -> None:
    """Steady load while the server goes down, then comes back with a new release."""
    with steady_load(stack, first.model_version) as load:
        # The registry goes away under load: requests never touch it.
        served_before = len(load.answers)
        server.stop()
        assert server.down()
        # Each watcher's lookup gives up after its bounded retries (about 5 s), logs it,
        # and the next poll tries again.
        _wait_logged(stack, ("model", "preprocess"), "alias check failed", OUTAGE_S)
        assert len(load.answers) > served_before + 20
        assert [s for s in HEALTH_NAMES if not stack.is_serving(s)] == []

        # Back, and a new release registered through it reaches the running services.
        server.start()
        second = train_into(home, None, seed=8, tracking_uri=server.url)
        assert second.model_version != first.model_version
        deadline = time.monotonic() + 120
        while second.model_version not in load.versions() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # some answers from the new release too

    assert not load.errors, (load.errors[:5], stack.log_tail("model"))
    assert second.model_version in load.versions(), (
        load.versions(), stack.log_tail("model"), stack.log_tail("preprocess"), server.log_tail()
    )
    assert all(model_run == pre_run for _, model_run, pre_run in load.answers)
    # Every answer came from one of the two releases, each a whole pair.
    assert {run for _, run, _ in load.answers} == {first.run_id, second.run_id}
