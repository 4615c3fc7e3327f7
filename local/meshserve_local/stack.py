"""Start the four services as separate processes on 127.0.0.1, wait until each is
ready (its own grpc.health.v1 name SERVING), and stop them all cleanly.

Used by `make run` and by the end-to-end tests, so both exercise the same start-up.
"""

from __future__ import annotations

import argparse
import codecs
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve_runtime.grpc_env import with_grpc_defaults
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME, GATEWAY_HEALTH_NAME, MODEL_HEALTH_NAME, PREPROCESS_HEALTH_NAME

HEALTH_NAMES = {
    "features": FEATURES_HEALTH_NAME,
    "preprocess": PREPROCESS_HEALTH_NAME,
    "model": MODEL_HEALTH_NAME,
    "gateway": GATEWAY_HEALTH_NAME,
}
DEFAULT_PORTS = {"gateway": 50051, "features": 50052, "preprocess": 50053, "model": 50054}
DEFAULT_METRICS_PORTS = {"gateway": 9101, "features": 9102, "preprocess": 9103, "model": 9104}
#: Default of `meshserve up --port-offset` (and `meshserve health --port-offset`), so `make run` can take it too.
PORT_OFFSET_ENV = "MESHSERVE_LOCAL_PORT_OFFSET"
#: Bind-all addresses: a service bound there is called on loopback.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class StackTLS:
    """TLS of a local stack, laid out like a Kubernetes TLS Secret: ca.crt signed tls.crt,
    which every service serves (its SANs must hold the stack's host) and, with `mutual`,
    also presents as its client certificate (the gateway to features/preprocess/model, and
    the stack's own health checks); `mutual`: every service requires a client certificate."""

    ca: Path
    cert: Path
    key: Path
    mutual: bool = True

    @classmethod
    def from_dir(cls, directory: Path, mutual: bool = True) -> StackTLS:
        directory = Path(directory).resolve()
        return cls(directory / "ca.crt", directory / "tls.crt", directory / "tls.key", mutual)

    def env(self, prefix: str, gateway: bool) -> dict[str, str]:
        env = {prefix + "TLS_CERT_FILE": str(self.cert), prefix + "TLS_KEY_FILE": str(self.key)}
        if self.mutual:
            env[prefix + "TLS_CLIENT_CA_FILE"] = str(self.ca)
        if gateway:
            env[prefix + "UPSTREAM_TLS_CA_FILE"] = str(self.ca)
            if self.mutual:
                env[prefix + "UPSTREAM_TLS_CERT_FILE"] = str(self.cert)
                env[prefix + "UPSTREAM_TLS_KEY_FILE"] = str(self.key)
        return env

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials of a caller (with the client certificate when mutual)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.mutual else None,
            certificate_chain=self.cert.read_bytes() if self.mutual else None,
        )


@dataclass
class StackConfig:
    home: Path
    online_store: str = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    metrics_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    log_json: bool = True
    #: Extra env per service, e.g. {"model": {"MESHSERVE_MODEL_ALIAS": "canary"}}.
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: TLS (mutual by default) on every hop; None: plaintext (on loopback only).
    tls: StackTLS | None = None
    #: Plaintext grpc.health.v1-only port per service (settings.health_port); missing: none.
    health_ports: dict[str, int] = field(default_factory=dict)
    #: Bind address per service, where it differs from `host`.
    hosts: dict[str, str] = field(default_factory=dict)
    #: What a service's process runs after the interpreter, where it is not `-m meshserve_<service>`
    #: (the bench's cost split runs `-m bench.replay <service>`).
    commands: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, home: Path, environ: Mapping[str, str] | None = None, *, port_offset: int = 0, **overrides: Any
    ) -> StackConfig:
        """The config `make run` / `meshserve up` start (and `meshserve health` checks).

        Each service's MESHSERVE_<SVC>_PORT, _METRICS_PORT, _HEALTH_PORT, _HOST and _LOG_JSON
        come from the environment where set; unset ports are the defaults plus port_offset.
        A StackConfig built directly (the tests) ignores these variables: its values win.
        StackError names a variable or offset that cannot work.
        """
        env = os.environ if environ is None else environ
        for service in HEALTH_NAMES:
            if not (0 < DEFAULT_PORTS[service] + port_offset <= 65535 and 0 < DEFAULT_METRICS_PORTS[service] + port_offset <= 65535):
                raise StackError(f"port offset {port_offset}: the default ports (50051-50054, 9101-9104) plus it must stay within 1-65535")
        ports, metrics_ports, health_ports, hosts = {}, {}, {}, {}
        extra_env: dict[str, dict[str, str]] = {}
        for service in HEALTH_NAMES:
            prefix = f"MESHSERVE_{service.upper()}_"
            # gRPC port 0 would bind a random port the stack could not call.
            ports[service] = _env_port(env, prefix + "PORT", DEFAULT_PORTS[service] + port_offset, lowest=1)
            metrics_ports[service] = _env_port(env, prefix + "METRICS_PORT", DEFAULT_METRICS_PORTS[service] + port_offset, lowest=0)
            if env.get(prefix + "HEALTH_PORT", "").strip():
                health_ports[service] = _env_port(env, prefix + "HEALTH_PORT", 0, lowest=0)
            if env.get(prefix + "HOST", "").strip():
                hosts[service] = env[prefix + "HOST"].strip()
            if env.get(prefix + "LOG_JSON", "").strip():
                # Passed through as given: the service parses (and, if bad, names) it itself.
                extra_env[service] = {prefix + "LOG_JSON": env[prefix + "LOG_JSON"]}
        values: dict[str, Any] = {"ports": ports, "metrics_ports": metrics_ports, "health_ports": health_ports,
                                  "hosts": hosts, "extra_env": extra_env}
        return cls(home=home, **{**values, **overrides})

    def host_of(self, service: str) -> str:
        """The address a service binds to."""
        return self.hosts.get(service, self.host)

    def target(self, service: str) -> str:
        host = self.host_of(service)
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        return f"{host}:{self.ports[service]}"

    def channel(self, service: str, **options: object) -> grpc.Channel:
        """A blocking channel to a service, over TLS when the stack has it."""
        opts = list(options.items())
        if self.tls is not None:
            return grpc.secure_channel(self.target(service), self.tls.credentials(), options=opts)
        return grpc.insecure_channel(self.target(service), options=opts)


class StackError(RuntimeError):
    pass


def _env_port(env: Mapping[str, str], name: str, default: int, *, lowest: int) -> int:
    """The port in env[name] (default when unset or empty); StackError naming a bad value."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise StackError(f"{name}={text!r}: expected a port number from {lowest} to 65535")
    return int(text)


class Stack:
    """The four processes. Use as a context manager, or start()/wait_ready()/stop()."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = config.home / "logs"

    def env_for(self, service: str) -> dict[str, str]:
        c = self.config
        prefix = f"MESHSERVE_{service.upper()}_"
        env = with_grpc_defaults(os.environ)  # gRPC's process-wide switches (meshserve_runtime.grpc_env)
        env.update(
            {
                "MESHSERVE_HOME": str(c.home),
                prefix + "HOST": c.host_of(service),
                prefix + "PORT": str(c.ports[service]),
                prefix + "METRICS_PORT": str(c.metrics_ports[service]),
                prefix + "LOG_JSON": "true" if c.log_json else "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if service == "gateway":
            for dep in ("features", "preprocess", "model"):
                env[f"MESHSERVE_GATEWAY_{dep.upper()}_TARGET"] = c.target(dep)
        if c.tls is not None:
            env.update(c.tls.env(prefix, gateway=service == "gateway"))
        if service in c.health_ports:
            env[prefix + "HEALTH_PORT"] = str(c.health_ports[service])
        if service == "features":
            env["MESHSERVE_FEATURES_ONLINE_STORE"] = c.online_store
            env["MESHSERVE_FEATURES_REDIS_URL"] = c.redis_url
        env.update(c.extra_env.get(service, {}))
        return env

    def start(self) -> None:
        self.check_ports_free()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StackError(f"cannot create the log directory {self.log_dir} ({err.strerror or err}); "
                             "set MESHSERVE_HOME to a writable directory") from None
        for service in HEALTH_NAMES:
            self.start_service(service)

    def check_ports_free(self) -> None:
        """StackError naming every port already taken (e.g. by a stack still running).

        Checked before anything starts: otherwise a service that cannot bind exits, while the
        readiness check may already have been answered by whatever holds its port.
        """
        c = self.config
        wanted = [(s, "gRPC", c.ports.get(s, 0)) for s in HEALTH_NAMES]
        wanted += [(s, "metrics", c.metrics_ports.get(s, 0)) for s in HEALTH_NAMES]
        wanted += [(s, "health", c.health_ports.get(s, 0)) for s in HEALTH_NAMES]
        taken = []
        for service, what, port in wanted:
            if not port:
                continue
            host = c.host_of(service).strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                try:
                    probe.bind((host, port))
                except OSError:
                    taken.append(f"{service} {what} {c.host_of(service)}:{port}")
        if taken:
            raise StackError(
                f"port(s) already in use: {', '.join(taken)}; stop what holds them (another `make run`?) "
                f"or choose other ports: `meshserve up --port-offset N` ({PORT_OFFSET_ENV}=N for `make run`), "
                "or MESHSERVE_<SVC>_PORT / MESHSERVE_<SVC>_METRICS_PORT"
            )

    def start_service(self, service: str) -> None:
        """Start (or restart) one service's process."""
        log = open(self.log_dir / f"{service}.log", "ab")
        self.procs[service] = subprocess.Popen(
            [sys.executable, *self.config.commands.get(service, ["-m", f"meshserve_{service}"])],
            env=self.env_for(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        log.close()

    def stop_service(self, service: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal one service (SIGTERM drains; SIGKILL crashes it) and wait for its exit code."""
        proc = self.procs[service]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def wait_service_ready(self, service: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_serving(service):
            proc = self.procs[service]
            if proc.poll() is not None:
                raise StackError(f"{service} exited with code {proc.returncode}:\n{self.log_tail(service)}")
            if time.monotonic() > deadline:
                raise StackError(f"{service} not ready after {timeout:.0f}s:\n{self.log_tail(service)}")
            time.sleep(0.2)

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.log_dir / f"{service}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def is_serving(self, service: str, timeout: float = 1.0) -> bool:
        with self.config.channel(service) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=timeout
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 240.0, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every process is SERVING (True), or should_stop() says to give up (False:
        Ctrl-C while a service is still loading, which may take minutes or never end)."""
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting:
            for service in sorted(waiting):
                if should_stop():
                    return False
                proc = self.procs[service]
                if proc.poll() is not None:
                    raise StackError(f"{service} exited with code {proc.returncode}:\n{self.log_tail(service)}")
                if self.is_serving(service):
                    waiting.discard(service)
            if not waiting:
                return True
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s}\n{self.log_tail(s)}" for s in sorted(waiting))
                raise StackError(f"not ready after {timeout:.0f}s: {sorted(waiting)}\n{tails}")
            time.sleep(0.25)
        return True

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every process (gateway first, so it stops taking calls), then wait."""
        order = ["gateway", "features", "preprocess", "model"]
        for service in order:
            proc = self.procs.get(service)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for service in order:
            proc = self.procs.get(service)
            if not proc:
                continue
            try:
                codes[service] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[service] = proc.wait()
        return codes

    def __enter__(self) -> Stack:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


EXAMPLE = """
meshserve is up{tls_note}:
  gateway     {gateway}   (meshserve.v1.PredictionService)
  features    {features}
  preprocess  {preprocess}
  model       {model}   (KServe V2: inference.GRPCInferenceService)
  logs        {logs}

Try it:
  {venv}meshserve predict {predict_args}--driver 1001 --customer 2001
  grpcurl {grpcurl_tls} -d '{{"entities":[{{"values":{{"driver_id":{{"int64Value":"1001"}},"customer_id":{{"int64Value":"2001"}}}}}}]}}' \\
      {gateway} meshserve.v1.PredictionService/PredictEntities

Ctrl-C stops all four.
"""


def training_command(online_store: str, redis_url: str) -> list[str]:
    """The process that trains and registers the demo model when the registry is empty."""
    cmd = [sys.executable, "-m", "meshserve_training", "train", "--if-empty"]
    if online_store == "redis":
        cmd += ["--online-store", "redis", "--redis-url", redis_url]
    return cmd


def run_training(cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run the training process with its output shown as it comes; its exit code and the
    last line it wrote to stderr (its one-line reason when it fails)."""
    proc = subprocess.Popen(cmd, env=dict(env), stderr=subprocess.PIPE)
    stream = proc.stderr
    assert stream is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    for chunk in iter(lambda: os.read(stream.fileno(), 8192), b""):  # what is there, as it comes
        text = decoder.decode(chunk)
        sys.stderr.write(text)
        sys.stderr.flush()
        tail = (tail + text)[-4096:]
    code = proc.wait()
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in tail.splitlines()]  # \r: progress bars redraw a line
    return code, next((ln for ln in reversed(lines) if ln), "")


def main(argv: list[str] | None = None) -> int:
    from meshserve_runtime.settings import meshserve_home

    parser = argparse.ArgumentParser(prog="meshserve up", description="Run the four meshserve services locally.")
    parser.add_argument("--train-if-empty", action="store_true", help="train and register the demo model first if the registry has none")
    parser.add_argument("--online-store", choices=["sqlite", "redis"], default=os.environ.get("MESHSERVE_FEATURES_ONLINE_STORE", "sqlite"))
    parser.add_argument("--redis-url", default=os.environ.get("MESHSERVE_FEATURES_REDIS_URL", "127.0.0.1:6379"))
    parser.add_argument(
        "--tls-dir", type=Path, default=None,
        help="mutual TLS on every hop with DIR/ca.crt, DIR/tls.crt, DIR/tls.key (e.g. from `meshserve dev-certs DIR`)",
    )
    parser.add_argument("--tls-server-only", action="store_true", help="with --tls-dir: TLS without client certificates")
    parser.add_argument(
        "--port-offset", type=int, metavar="N", default=os.environ.get(PORT_OFFSET_ENV, "0"),
        help=f"add N to every default port (gRPC 50051-50054, metrics 9101-9104), e.g. for a second stack (default: ${PORT_OFFSET_ENV} or 0); "
        "MESHSERVE_<SVC>_PORT, _METRICS_PORT, _HEALTH_PORT, _HOST and _LOG_JSON, where set, are used as given",
    )
    args = parser.parse_args(argv)
    tls = StackTLS.from_dir(args.tls_dir, mutual=not args.tls_server_only) if args.tls_dir else None
    if tls is not None:
        missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
        if missing:
            print(f"--tls-dir {args.tls_dir}: missing {', '.join(missing)} (create them with `meshserve dev-certs {args.tls_dir}`)", file=sys.stderr)
            return 2

    home = meshserve_home()
    try:  # before training: a bad port variable should not cost a training run
        config = StackConfig.from_env(home, port_offset=args.port_offset, online_store=args.online_store,
                                      redis_url=args.redis_url, tls=tls)
    except StackError as err:
        print(f"meshserve up: {err}", file=sys.stderr)
        return 2
    if args.train_if_empty:
        print(f"checking the registry in {home} (training the demo model if it is empty)...", flush=True)
        try:
            code, reason = run_training(training_command(args.online_store, args.redis_url), {**os.environ, "MESHSERVE_HOME": str(home)})
        except KeyboardInterrupt:
            return 130
        if code != 0:
            # 2 is the training's "fix this setting" exit; anything else is a failure.
            print(f"meshserve up: training the demo model failed (exit {code}): {reason}", file=sys.stderr)
            return 2 if code == 2 else 1

    stack = Stack(config)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting gateway, features, preprocess and model...", flush=True)
    try:
        stack.start()
    except StackError as err:  # nothing is running yet (or, past the port check, is stopped here)
        stack.stop()
        print(f"meshserve up: {err}", file=sys.stderr)
        return 1
    try:
        if not stack.wait_ready(should_stop=lambda: stop):
            return 130  # Ctrl-C before every service was ready: the finally stops them
        venv = str(Path(sys.executable).parent) + "/"
        if tls is None:
            tls_note, predict_args, grpcurl_tls = "", "", "-plaintext"
        else:
            tls_note, predict_args = ", TLS on every hop", f"--tls-dir {args.tls_dir} "
            grpcurl_tls = f"-cacert {tls.ca}" + (f" -cert {tls.cert} -key {tls.key}" if tls.mutual else "")
        if config.target("gateway") != f"127.0.0.1:{DEFAULT_PORTS['gateway']}":  # predict's default
            predict_args = f"--target {config.target('gateway')} " + predict_args
        print(
            EXAMPLE.format(**{s: config.target(s) for s in DEFAULT_PORTS}, logs=stack.log_dir, venv=venv,
                           tls_note=tls_note, predict_args=predict_args, grpcurl_tls=grpcurl_tls),
            flush=True,
        )
        while not stop:
            for service, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{service} exited with code {proc.returncode}:\n{stack.log_tail(service)}", flush=True)
                    stop = True
            time.sleep(0.5)
    except StackError as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        codes = stack.stop()
        print("stopped: " + ", ".join(f"{s} exit {c}" for s, c in codes.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
