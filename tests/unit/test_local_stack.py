"""The local stack refuses to start over ports something else holds (instead of reporting a
stale stack's services as its own), and takes its ports, host and log format from the
user's environment or --port-offset (while an explicit StackConfig, the tests', wins)."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2_grpc

from meshserve_local import cli
from meshserve_local import stack as stack_module
from meshserve_local.stack import HEALTH_NAMES, PORT_OFFSET_ENV, Stack, StackConfig, StackError, free_ports


def test_a_taken_port_stops_the_start_before_any_process(tmp_path: Path) -> None:
    ports = free_ports(2 * len(HEALTH_NAMES))
    names = list(HEALTH_NAMES)
    config = StackConfig(home=tmp_path, ports=dict(zip(names, ports)), metrics_ports=dict(zip(names, ports[len(names):])))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.ports["model"]))
        holder.listen()
        stack = Stack(config)
        with pytest.raises(StackError, match=f"model gRPC 127.0.0.1:{config.ports['model']}"):
            stack.start()
        assert stack.procs == {}  # nothing was started


def test_free_ports_pass_the_check(tmp_path: Path) -> None:
    names = list(HEALTH_NAMES)
    ports = free_ports(len(names))
    Stack(StackConfig(home=tmp_path, ports=dict(zip(names, ports)), metrics_ports={n: 0 for n in names})).check_ports_free()


def test_a_service_runs_its_module_unless_the_config_names_another_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def popen(args: list[str], **kwargs: object) -> object:
        started.append(args)
        return object()

    monkeypatch.setattr(stack_module.subprocess, "Popen", popen)
    stack = Stack(StackConfig(home=tmp_path, commands={"model": ["-m", "bench.replay", "model"]}))
    stack.log_dir.mkdir(parents=True)
    stack.start_service("gateway")
    stack.start_service("model")
    assert started == [[sys.executable, "-m", "meshserve_gateway"], [sys.executable, "-m", "bench.replay", "model"]]


#: Variables of the local stack's services that a developer's shell could hold.
STACK_VARS = [f"MESHSERVE_{s.upper()}_{v}" for s in HEALTH_NAMES for v in ("PORT", "METRICS_PORT", "HEALTH_PORT", "HOST", "LOG_JSON")]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*STACK_VARS, PORT_OFFSET_ENV]:
        monkeypatch.delenv(name, raising=False)


def test_the_users_environment_chooses_ports_host_and_log_format(tmp_path: Path) -> None:
    env = {
        "MESHSERVE_GATEWAY_PORT": "60051",
        "MESHSERVE_GATEWAY_LOG_JSON": "false",
        "MESHSERVE_MODEL_METRICS_PORT": "0",
        "MESHSERVE_FEATURES_HOST": "0.0.0.0",
        "MESHSERVE_PREPROCESS_HEALTH_PORT": "60099",
    }
    config = StackConfig.from_env(tmp_path, env, port_offset=1000)
    # Set: used as given; unset: the default plus the offset.
    assert config.ports == {"features": 51052, "preprocess": 51053, "model": 51054, "gateway": 60051}
    assert config.metrics_ports == {"features": 10102, "preprocess": 10103, "model": 0, "gateway": 10101}
    assert config.health_ports == {"preprocess": 60099}
    assert config.target("features") == "127.0.0.1:51052"  # a bind-all address is called on loopback
    stack = Stack(config)
    gateway = stack.env_for("gateway")
    assert (gateway["MESHSERVE_GATEWAY_PORT"], gateway["MESHSERVE_GATEWAY_LOG_JSON"]) == ("60051", "false")
    assert gateway["MESHSERVE_GATEWAY_FEATURES_TARGET"] == "127.0.0.1:51052"
    features = stack.env_for("features")
    assert (features["MESHSERVE_FEATURES_HOST"], features["MESHSERVE_FEATURES_LOG_JSON"]) == ("0.0.0.0", "true")
    assert stack.env_for("model")["MESHSERVE_MODEL_METRICS_PORT"] == "0"


def test_an_explicit_config_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' StackConfigs pass their own ports: a developer's shell must not move them."""
    monkeypatch.setenv("MESHSERVE_GATEWAY_PORT", "60051")
    monkeypatch.setenv("MESHSERVE_GATEWAY_LOG_JSON", "false")
    monkeypatch.setenv("MESHSERVE_GATEWAY_HOST", "0.0.0.0")
    names = list(HEALTH_NAMES)
    ports = free_ports(len(names))
    env = Stack(StackConfig(home=tmp_path, ports=dict(zip(names, ports)))).env_for("gateway")
    assert env["MESHSERVE_GATEWAY_PORT"] == str(ports[names.index("gateway")])
    assert (env["MESHSERVE_GATEWAY_LOG_JSON"], env["MESHSERVE_GATEWAY_HOST"]) == ("true", "127.0.0.1")


@pytest.mark.parametrize(
    ("env", "offset", "named"),
    [({"MESHSERVE_MODEL_PORT": "abc"}, 0, "MESHSERVE_MODEL_PORT='abc'"),
     ({"MESHSERVE_GATEWAY_PORT": "0"}, 0, "MESHSERVE_GATEWAY_PORT='0'"),
     ({"MESHSERVE_FEATURES_METRICS_PORT": "70000"}, 0, "MESHSERVE_FEATURES_METRICS_PORT='70000'"),
     ({}, 20000, "port offset 20000")],
)
def test_a_bad_port_variable_or_offset_is_named(tmp_path: Path, env: dict[str, str], offset: int, named: str) -> None:
    with pytest.raises(StackError, match=re.escape(named)):
        StackConfig.from_env(tmp_path, env, port_offset=offset)


def test_up_on_a_taken_port_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    """`meshserve up` whose port is taken says which and how to choose others, exits 1, starts nothing."""
    names = list(HEALTH_NAMES)
    ports = free_ports(2 * len(names))
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and k != PORT_OFFSET_ENV}
    env["MESHSERVE_HOME"] = str(tmp_path)
    for name, port, metrics in zip(names, ports, ports[len(names):]):
        env[f"MESHSERVE_{name.upper()}_PORT"], env[f"MESHSERVE_{name.upper()}_METRICS_PORT"] = str(port), str(metrics)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[names.index("model")]))
        holder.listen()
        # --port-offset too: no default port even if the variables were ignored.
        proc = subprocess.run([sys.executable, "-m", "meshserve_local.stack", "--port-offset", "1000"],
                              env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"model gRPC 127.0.0.1:{ports[names.index('model')]}" in lines[0] and "--port-offset" in lines[0], lines[0]
    assert not (tmp_path / "logs").exists()  # nothing was started


REASON = "cannot train: the Redis online store at 127.0.0.1:1 does not answer; set MESHSERVE_FEATURES_REDIS_URL"


def _fake_training(code: int) -> list[str]:
    """A training process that draws a progress bar and exits with `code` after its reason."""
    script = f"import sys; sys.stderr.write('50%\\r100%\\n'); print({REASON!r}, file=sys.stderr); sys.exit({code})"
    return [sys.executable, "-c", script]


def test_run_training_returns_the_processes_last_stderr_line() -> None:
    assert stack_module.run_training(_fake_training(2), os.environ) == (2, REASON)


def test_up_prints_the_trainings_one_line_reason_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("MESHSERVE_HOME", str(tmp_path))
    monkeypatch.setattr(stack_module, "training_command", lambda online_store, redis_url: _fake_training(2))
    monkeypatch.setattr(Stack, "start", lambda self: pytest.fail("the stack must not start after training failed"))
    assert stack_module.main(["--train-if-empty", "--port-offset", "1000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "CalledProcessError" not in err
    assert err.strip().splitlines()[-1] == f"meshserve up: training the demo model failed (exit 2): {REASON}"


def test_health_checks_the_ports_it_is_given(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--target, --port-offset and MESHSERVE_<SVC>_PORT pick what `meshserve health` calls."""
    import grpc
    from grpc_health.v1 import health, health_pb2

    _clean_env(monkeypatch)
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set(HEALTH_NAMES["gateway"], health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        dead = free_ports(3)
        others = [f"--target={s}=127.0.0.1:{p}" for s, p in zip(("features", "preprocess", "model"), dead)]
        assert cli.main(["health", "--timeout", "1", f"--target=gateway=127.0.0.1:{port}", *others]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == ["gateway", f"127.0.0.1:{port}", "SERVING"]
        assert [ln.split()[1] for ln in out[1:]] == [f"127.0.0.1:{p}" for p in dead]

        # As `meshserve up` places them: the variable, else the default plus the offset.
        monkeypatch.setenv("MESHSERVE_GATEWAY_PORT", str(port))
        args = argparse.Namespace(host=None, port_offset=1000, target=[])
        assert cli.health_targets(args) == {"gateway": f"127.0.0.1:{port}", "features": "127.0.0.1:51052",
                                            "preprocess": "127.0.0.1:51053", "model": "127.0.0.1:51054"}
        assert cli.health_targets(argparse.Namespace(host="10.0.0.7", port_offset=0, target=[]))["gateway"] == f"10.0.0.7:{port}"
    finally:
        server.stop(None)
    with pytest.raises(SystemExit) as exit_info:
        cli.health_targets(argparse.Namespace(host=None, port_offset=0, target=["gateway"]))
    assert exit_info.value.code == 2


def test_predict_exits_non_zero_when_some_rows_failed(capsys: pytest.CaptureFixture[str]) -> None:
    """A script must tell a partial failure (a per-row NOT_FOUND) from a clean answer."""
    from meshserve.v1 import prediction_pb2

    from meshserve_local import cli

    reply = prediction_pb2.PredictResponse()
    reply.predictions.add().probability = 0.5
    reply.predictions.add().error.message = "entity not found"
    assert cli._print_reply(reply) == cli.EXIT_SOME_ROWS_FAILED
    assert "1 of 2 rows failed (rows [1])" in capsys.readouterr().err
    del reply.predictions[1]
    assert cli._print_reply(reply) == 0


def test_an_entity_id_outside_int64_is_a_usage_error_not_a_traceback() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "meshserve_local.cli", "predict", "--driver", "99999999999999999999",
                          "--customer", "2001"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "outside the int64 range" in out.stderr and "Traceback" not in out.stderr, out.stderr
