"""Prove the four images for real (what `make test-containers` runs).

    .venv/bin/python docker/test_containers.py

1. Checks each image meshserve-<svc>:$IMAGE_TAG: numeric non-root user, ports, STOPSIGNAL,
   exec-form entrypoint; inside it, no compiler or pip and none of the packages the
   service must not carry (feast outside features, torch outside model, mlflow outside
   preprocess and model).
2. Starts the four containers with host networking as the Helm chart runs them (read-only
   root filesystem, tmpfs at /tmp and /var/cache/meshserve, all capabilities dropped, no
   privilege escalation), on non-default ports so a running `make run` is not disturbed,
   against the trained local state $MESHSERVE_HOME (default ./.meshserve; `make train`
   writes it). A writable snapshot of that state is mounted at the same absolute path:
   MLflow's artifact URIs in its db are absolute host paths, and loading a model by alias
   writes a `registered_model_meta` file next to local artifacts (so a read-only mount
   fails). The snapshot keeps your state untouched and lets uid 10001 write.
3. Waits until every service's own grpc.health.v1 name is SERVING, then makes one
   prediction through the gateway with the host CLI (`meshserve predict`) and asserts a
   probability in (0, 1).
4. Stops them with SIGTERM (`docker stop`, gateway first) and asserts each drained and
   exited with code 0 well before the stop timeout, then removes them (always).

Environment: IMAGE_TAG (dev), DOCKER (docker), MESHSERVE_HOME,
MESHSERVE_TEST_PORT_BASE (51050: gRPC ports base+1..base+4),
MESHSERVE_TEST_METRICS_PORT_BASE (19100: metrics ports base+1..base+4),
MESHSERVE_TEST_READY_TIMEOUT_S (300).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve_runtime.protocol import (
    FEATURES_HEALTH_NAME,
    GATEWAY_HEALTH_NAME,
    MODEL_HEALTH_NAME,
    PREPROCESS_HEALTH_NAME,
)

REPO = Path(__file__).resolve().parent.parent
DOCKER = os.environ.get("DOCKER", "docker")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")
PORT_BASE = int(os.environ.get("MESHSERVE_TEST_PORT_BASE", "51050"))
METRICS_PORT_BASE = int(os.environ.get("MESHSERVE_TEST_METRICS_PORT_BASE", "19100"))
READY_TIMEOUT_S = float(os.environ.get("MESHSERVE_TEST_READY_TIMEOUT_S", "300"))
STOP_TIMEOUT_S = 30  # docker stop -t: SIGKILL after this; a clean drain takes far less
LABEL = "io.meshserve.test-containers"

# Start order: the gateway last (it calls the other three).
SERVICES = ("features", "preprocess", "model", "gateway")
HEALTH_NAMES = {
    "gateway": GATEWAY_HEALTH_NAME,
    "features": FEATURES_HEALTH_NAME,
    "preprocess": PREPROCESS_HEALTH_NAME,
    "model": MODEL_HEALTH_NAME,
}
IMAGE_PORTS = {"gateway": (50051, 9101), "features": (50052, 9102), "preprocess": (50053, 9103), "model": (50054, 9104)}
INDEX = {"gateway": 1, "features": 2, "preprocess": 3, "model": 4}
FORBIDDEN = {
    "gateway": ["feast", "torch", "mlflow", "mlflow-skinny"],
    "features": ["torch", "mlflow", "mlflow-skinny"],
    "preprocess": ["feast", "torch"],
    "model": ["feast"],
}
TOOLS = ["gcc", "cc", "c++", "g++", "make", "pip", "pip3"]

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[test-containers {time.monotonic() - T0:6.1f}s] {message}", flush=True)


class Failure(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise Failure(f"docker {' '.join(args[:3])} ... failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def image(svc: str) -> str:
    return f"meshserve-{svc}:{IMAGE_TAG}"


def grpc_port(svc: str) -> int:
    return PORT_BASE + INDEX[svc]


def metrics_port(svc: str) -> int:
    return METRICS_PORT_BASE + INDEX[svc]


# ---------------------------------------------------------------------------- checks
CHECK_INSIDE = """
import importlib.metadata as md, json, re, shutil, sys
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
print(json.dumps({"present": sorted(set(sys.argv[1].split(",")) & names),
                  "tools": [t for t in sys.argv[2].split(",") if shutil.which(t)]}))
"""


def check_image(svc: str) -> None:
    ref = image(svc)
    proc = docker("image", "inspect", ref, check=False)
    if proc.returncode != 0:
        raise Failure(f"image {ref} not found: run `make images` first")
    config = json.loads(proc.stdout)[0]["Config"]
    grpc_p, metrics_p = IMAGE_PORTS[svc]
    problems = []
    user = config.get("User", "")
    if not user or not user.split(":")[0].isdigit() or user.split(":")[0] == "0":
        problems.append(f"user {user!r} is not a numeric non-root uid")
    if config.get("StopSignal") != "SIGTERM":
        problems.append(f"STOPSIGNAL {config.get('StopSignal')!r}")
    exposed = set(config.get("ExposedPorts") or {})
    if not {f"{grpc_p}/tcp", f"{metrics_p}/tcp"} <= exposed:
        problems.append(f"exposes {sorted(exposed)}, wants {grpc_p} and {metrics_p}")
    if config.get("Entrypoint") != ["python", "-m", f"meshserve_{svc}"]:
        problems.append(f"entrypoint {config.get('Entrypoint')!r}")
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    if env.get(f"MESHSERVE_{svc.upper()}_HOST") != "0.0.0.0":
        problems.append(f"MESHSERVE_{svc.upper()}_HOST is not 0.0.0.0")
    for name in ("HOME", "TMPDIR", "MESHSERVE_HOME"):
        if env.get(name) != "/var/cache/meshserve":
            problems.append(f"{name}={env.get(name)!r}")
    inside = docker(
        "run", "--rm", "--network", "none", "--read-only", "--entrypoint", "python", ref,
        "-c", CHECK_INSIDE, ",".join(FORBIDDEN[svc]), ",".join(TOOLS),
    )
    found = json.loads(inside.stdout.strip().splitlines()[-1])
    if found["present"]:
        problems.append(f"carries {found['present']}")
    if found["tools"]:
        problems.append(f"has build tools {found['tools']}")
    if problems:
        raise Failure(f"{ref}: " + "; ".join(problems))
    say(f"{ref}: user {user}, ports {grpc_p}/{metrics_p}, STOPSIGNAL SIGTERM, "
        f"no {'/'.join(FORBIDDEN[svc])}, no compiler/pip")


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as err:
            raise Failure(f"port {port} is taken ({err}); set MESHSERVE_TEST_PORT_BASE / _METRICS_PORT_BASE") from None


# ---------------------------------------------------------------------------- run
def container_env(svc: str, home: Path) -> dict[str, str]:
    prefix = f"MESHSERVE_{svc.upper()}_"
    env = {
        "MESHSERVE_HOME": str(home),
        prefix + "PORT": str(grpc_port(svc)),
        prefix + "METRICS_PORT": str(metrics_port(svc)),
        # The image binds 0.0.0.0, where plaintext gRPC must be chosen explicitly (or TLS configured).
        prefix + "PLAINTEXT": "true",
    }
    if svc in ("preprocess", "model"):
        uri = f"sqlite:///{home / 'mlflow.db'}"
        env["MLFLOW_TRACKING_URI"] = uri
        env[prefix + "MLFLOW_TRACKING_URI"] = uri
    if svc == "features":
        env[prefix + "ONLINE_STORE"] = "sqlite"
    if svc == "gateway":
        for dep in ("features", "preprocess", "model"):
            env[f"{prefix}{dep.upper()}_TARGET"] = f"127.0.0.1:{grpc_port(dep)}"
    return env


def snapshot_state(home: Path) -> Path:
    """A world-writable copy of $MESHSERVE_HOME; SQLite files through the backup API, so a
    concurrent writer (e.g. a running `make train`) cannot leave a torn copy."""
    snap = Path(tempfile.mkdtemp(prefix="meshserve-test-state-"))
    shutil.copytree(home, snap, dirs_exist_ok=True, ignore=shutil.ignore_patterns("logs", "*.db-journal", "*.db-wal", "*.db-shm"))
    for db in snap.rglob("*.db"):
        with open(db, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                continue
        source = home / db.relative_to(snap)
        db.unlink()
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(db) as dst:
            src.backup(dst)
    for path in [snap, *snap.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return snap


def remove_snapshot(snap: Path) -> None:
    """Files the containers wrote belong to uid 10001: let a root container open them up."""
    try:
        shutil.rmtree(snap)
    except OSError:
        docker("run", "--rm", "--network", "none", "--user", "0", "--volume", f"{snap}:/state",
               "--entrypoint", "chmod", image("gateway"), "-R", "a+rwX", "/state", check=False)
        shutil.rmtree(snap, ignore_errors=True)


def start(svc: str, name: str, home: Path, snap: Path, run_id: str) -> None:
    args = [
        "run", "--detach", "--name", name, "--label", f"{LABEL}={run_id}",
        "--network", "host",
        # As the Helm chart's securityContext and volumes run it.
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/cache/meshserve:mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{snap}:{home}",
    ]
    for key, value in container_env(svc, home).items():
        args += ["--env", f"{key}={value}"]
    docker(*args, image(svc))


def state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)


def logs(name: str, tail: int = 40) -> str:
    proc = docker("logs", "--tail", str(tail), name, check=False)
    return (proc.stdout + proc.stderr).strip()


def serving(svc: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(svc)}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_NAMES[svc]), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_ready(names: dict[str, str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = set(names)
    while waiting:
        for svc in sorted(waiting):
            st = state(names[svc])
            if not st["Running"]:
                raise Failure(f"{svc} exited with code {st['ExitCode']}:\n{logs(names[svc])}")
            if serving(svc):
                waiting.discard(svc)
                say(f"{svc} SERVING ({HEALTH_NAMES[svc]} on 127.0.0.1:{grpc_port(svc)})")
        if waiting and time.monotonic() > deadline:
            tails = "\n".join(f"--- {svc}\n{logs(names[svc])}" for svc in sorted(waiting))
            raise Failure(f"not ready after {READY_TIMEOUT_S:.0f}s: {sorted(waiting)}\n{tails}")
        if waiting:
            time.sleep(0.5)


def predict() -> float:
    cli = Path(sys.executable).parent / "meshserve"
    cmd = [str(cli), "predict", "--driver", "1001", "--customer", "2001",
           "--target", f"127.0.0.1:{grpc_port('gateway')}", "--timeout", "30"]
    say("$ " + " ".join([".venv/bin/meshserve", *cmd[1:]]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Failure(f"prediction failed ({proc.returncode}): {proc.stderr.strip()}")
    reply = json.loads(proc.stdout)
    prediction = reply["predictions"][0]
    if "probability" not in prediction:
        raise Failure(f"no probability in the reply: {proc.stdout}")
    probability = float(prediction["probability"])
    model = reply.get("model", {})
    say(f"prediction: probability={probability:.6f} model={model.get('name')} "
        f"v{model.get('version')} @{model.get('alias')}")
    if not 0.0 < probability < 1.0:
        raise Failure(f"probability {probability} is not in (0, 1)")
    return probability


def stop(svc: str, name: str) -> None:
    started = time.monotonic()
    docker("stop", "--time", str(STOP_TIMEOUT_S), name, timeout=STOP_TIMEOUT_S + 30)
    took = time.monotonic() - started
    st = state(name)
    tail = logs(name, tail=200)
    drained = "draining" in tail and "stopped" in tail
    say(f"{svc}: docker stop (SIGTERM) -> exit code {st['ExitCode']} in {took:.1f}s"
        f"{', drained' if drained else ''}")
    if st["ExitCode"] != 0 or st.get("OOMKilled"):
        raise Failure(f"{svc} exited with code {st['ExitCode']} on SIGTERM:\n{logs(name)}")
    if took >= STOP_TIMEOUT_S - 1:
        raise Failure(f"{svc} took {took:.1f}s to stop: SIGTERM did not reach the server")
    if not drained:
        raise Failure(f"{svc} logged no drain on SIGTERM:\n{logs(name)}")


def main() -> int:
    if shutil.which(DOCKER) is None:
        print(f"error: {DOCKER} not found", file=sys.stderr)
        return 2
    home = Path(os.environ.get("MESHSERVE_HOME", REPO / ".meshserve")).resolve()
    run_id = uuid.uuid4().hex[:8]
    names = {svc: f"meshserve-test-{svc}-{run_id}" for svc in SERVICES}
    snap: Path | None = None
    # docker stop / Ctrl-C of this script still removes the containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if not (home / "mlflow.db").is_file() or not (home / "feast").is_dir():
            raise Failure(f"no trained state in {home}: run `make train` first")
        for svc in SERVICES:
            check_image(svc)
        for svc in SERVICES:
            check_port_free(grpc_port(svc))
            check_port_free(metrics_port(svc))
        snap = snapshot_state(home)
        say(f"state: snapshot of {home} in {snap}, mounted at {home}")
        for svc in SERVICES:
            start(svc, names[svc], home, snap, run_id)
            say(f"started {names[svc]} ({image(svc)}, gRPC {grpc_port(svc)}, metrics {metrics_port(svc)})")
        wait_ready(names)
        predict()
        for svc in ("gateway", "features", "preprocess", "model"):
            stop(svc, names[svc])
        say("PASSED")
        return 0
    except Failure as err:
        say(f"FAILED: {err}")
        return 1
    finally:
        for name in names.values():
            docker("rm", "--force", "--volumes", name, check=False)
        if snap is not None:
            remove_snapshot(snap)
        say("removed the test containers and the state snapshot")


if __name__ == "__main__":
    sys.exit(main())
