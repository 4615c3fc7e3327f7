"""`python -m bench` (`make bench`): train if needed, start the stack on Redis, run the matrix
and the floors, write bench/RESULTS.md and bench/results.json.

Every process it starts (four services, echo/relay servers, feast listen, the load
generator) is its own OS process and is stopped by pid when the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import write_report
from bench.settings import BenchSettings
from meshserve_local.stack import HEALTH_NAMES, Stack, StackConfig, free_ports
from meshserve_runtime.grpc_env import with_grpc_defaults

REPO = Path(__file__).resolve().parent.parent

#: The order of the interleaved c=1 cells: each side four times, every side at the same mean
#: position (7.5), so a steady drift of the machine's speed weighs on all sides alike.
INTERLEAVED_ORDER = ("e2e", "replay", "pipeline", "chain", "chain", "pipeline", "replay", "e2e",
                     "replay", "e2e", "chain", "pipeline", "pipeline", "chain", "e2e", "replay")


def wait_serving(target: str, service: str = "", timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise RuntimeError(f"{target} ({service or 'liveness'}) not serving after {timeout:.0f}s")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env or with_grpc_defaults(os.environ), start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_loadgen(cells: list[dict], tmp: Path, tag: str) -> list[dict]:
    if not cells:
        return []
    spec, out = tmp / f"spec-{tag}.json", tmp / f"out-{tag}.json"
    spec.write_text(json.dumps(cells))
    subprocess.run([sys.executable, "-m", "bench.loadgen", str(spec), str(out)], cwd=REPO, check=True)
    return json.loads(out.read_text())


def train_if_needed(s: BenchSettings) -> None:
    s.home.mkdir(parents=True, exist_ok=True)
    print(f"checking the registry in {s.home} (training first if empty)...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "meshserve_training", "train", "--if-empty", "--online-store", "redis", "--redis-url", s.redis_url],
        check=True, cwd=REPO, env={**os.environ, "MESHSERVE_HOME": str(s.home), "MESHSERVE_FEATURES_ONLINE_STORE": "redis",
                                   "MESHSERVE_FEATURES_REDIS_URL": s.redis_url},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    for name, field in BenchSettings.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=field.description)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    s = BenchSettings(**args)
    only = {c for c in s.only.split(",") if c}
    tmp = s.home.parent
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_if_needed(s)

    ports = free_ports(32)
    names = list(HEALTH_NAMES)
    collector_port = ports[12]
    # Observability ON as a cluster runs it with `tracing.enabled=true`: metrics, trace ids,
    # and spans exported over OTLP/gRPC (batch processor) at the chart's 1% sampling, to a
    # collector stand-in. The OFF stack (OTEL_SDK_DISABLED) is the baseline it is compared to.
    tracing_on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
                  "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                  "OTEL_TRACES_SAMPLER_ARG": str(s.trace_sample_ratio)}

    def stack_config(grpc_ports: list[int], metrics_ports: list[int], env: dict[str, str], **kw: Any) -> StackConfig:
        return StackConfig(home=s.home, online_store="redis", redis_url=s.redis_url,
                           ports=dict(zip(names, grpc_ports, strict=True)),
                           metrics_ports=dict(zip(names, metrics_ports, strict=True)),
                           extra_env={n: {f"MESHSERVE_{n.upper()}_LOG_LEVEL": "WARNING", **env} for n in names}, **kw)

    config = stack_config(ports[:4], ports[4:8], tracing_on)
    off_config = stack_config(ports[13:17], ports[17:21], {"OTEL_SDK_DISABLED": "true"})
    # The cost split: the main stack's twin (tracing on too) whose features, preprocess and
    # model answer every call with their first answer (bench/replay.py), behind the real gateway.
    replay_config = stack_config(ports[24:28], ports[28:32], tracing_on,
                                 commands={n: ["-m", "bench.replay", n] for n in ("features", "preprocess", "model")})
    gw, metrics = config.target("gateway"), f"http://127.0.0.1:{config.metrics_ports['gateway']}/metrics"
    echo_t, relay_t, listen_port = f"127.0.0.1:{ports[8]}", f"127.0.0.1:{ports[9]}", ports[10]
    # The pipeline-shaped chain: a relay whose three hops go to three distinct echo servers
    # (the first one and two more), as the gateway's go to features, preprocess and model.
    echo3_t = [f"127.0.0.1:{p}" for p in ports[21:23]]
    relay3_t = f"127.0.0.1:{ports[23]}"

    def cell(name: str, kind: str, target: str, rows: int, conc: int, matrix: bool) -> dict:
        return {"name": name, "kind": kind, "target": target, "rows": rows, "concurrency": conc,
                "seconds": s.seconds if matrix else s.floor_seconds, "warmup": s.warmup_seconds if matrix else min(2.0, s.warmup_seconds),
                "metrics_url": metrics if kind.startswith("predict") else None}

    matrix = [
        cell("entities_1_c1", "predict_entities", gw, 1, 1, True),
        cell("entities_1_c16", "predict_entities", gw, 1, 16, True),
        cell("entities_1_c64", "predict_entities", gw, 1, 64, True),
        cell("entities_100_c1", "predict_entities", gw, 100, 1, True),
        cell("entities_100_c8", "predict_entities", gw, 100, 8, True),
        cell("rows_1_c16", "predict_rows", gw, 1, 16, True),
    ]
    # Ours vs `feast listen` in ABBA order per size (ours, feast, feast, ours): the verdict
    # takes each side's mean p50, so a burst of noise in one cell no longer decides it alone
    # (single cells flipped this verdict between runs when the host stole 15-23%).
    features_cells = []
    ours, feast = ("features", config.target("features")), ("feast_listen", f"127.0.0.1:{listen_port}")
    for n in (1, 100):
        for (kind, target), rep in ((ours, ""), (feast, ""), (feast, "_2"), (ours, "_2")):
            features_cells.append(cell(f"{kind}_{n}_c1{rep}", kind, target, n, 1, False))
    echo_cells = [
        cell("echo_c1", "echo", echo_t, 1, 1, False),
        cell("echo4_chain_c1", "relay", relay_t, 1, 1, False),
        cell("echo4_pipeline_c1", "relay", relay3_t, 1, 1, False),
        cell("echo_c64", "echo", echo_t, 1, 64, False),
        cell("echo4_chain_c64", "relay", relay_t, 1, 64, False),
        cell("echo4_pipeline_c64", "relay", relay3_t, 1, 64, False),
    ]
    # On/off cells with both stacks up, four of each in ABBA BAAB order (on, off, off, on, off,
    # on, on, off) so a steady drift in the machine's load hits both alike and neither side
    # always goes first, each with the matrix's warm-up. Four, not two: on this shared machine
    # two cells of the same stack a minute apart differed by a third (1,001 vs 1,364 RPS), far
    # more than the 10% being judged (run of 2026-12-03 16:02: on/off pairs 0.79x and 0.91x).
    off_gw = off_config.target("gateway")
    obs_cells = []
    for conc in (64, 1):
        for i, mode in enumerate(("on", "off", "off", "on", "off", "on", "on", "off")):
            obs_cells.append(cell(f"obs_{mode}_c{conc}_{i // 2 + 1}", "predict_entities", gw if mode == "on" else off_gw, 1, conc, False))
    for c in obs_cells:
        c["metrics_url"] = None
        c["warmup"] = s.warmup_seconds

    # End to end against the empty chains, interleaved (the 1.5x target). Run apart, the two
    # sides of that ratio were minutes apart on a machine whose speed drifts by a third
    # within minutes (bench/HISTORY.md, 2026-12-07); here the sides alternate, four cells each,
    # in an order that gives each side the same mean position, with all servers up. The
    # replay side (the stack with the handlers' work taken out) splits the difference: the
    # handlers' own work, and what the runtime and protocols add to bare hops. Each cell
    # records the CPU its side's server processes (and Redis) used per request.
    e2e_cells = []
    sides = {"e2e": ("predict_entities", gw), "replay": ("predict_entities", replay_config.target("gateway")),
             "pipeline": ("relay", relay3_t), "chain": ("relay", relay_t)}
    for i, side in enumerate(INTERLEAVED_ORDER):
        kind, target = sides[side]
        e2e_cells.append(cell(f"interleaved_{side}_c1_{i // len(sides) + 1}", kind, target, 1, 1, False))
    for c in e2e_cells:
        c["metrics_url"] = None

    def pick(cs: list[dict]) -> list[dict]:
        return [c for c in cs if not only or c["name"] in only]

    results: dict = {"cells": [], "floors": {}}

    with ExitStack() as stack:
        collector = spawn(["-m", "bench.collector", str(collector_port), str(tmp / "spans.txt")], logs / "collector.log")
        stack.callback(stop, collector)
        print("starting the stack (Redis online store, tracing exported at "
              f"{s.trace_sample_ratio:g} sampling)...", flush=True)
        main_stack = stack.enter_context(Stack(config))
        from bench.floors import redis_pid

        # Cells on a stack record its processes' CPU per request, and Redis's: it serves them all.
        redis = {"redis": pid} if (pid := redis_pid(s.redis_url)) else {}

        def stack_pids(st: Stack) -> dict[str, int]:
            return {n: p.pid for n, p in st.procs.items()} | redis

        server_procs: dict[str, subprocess.Popen] = {}
        if pick(echo_cells) or pick(e2e_cells):
            # Idle until their cells: a server waiting on epoll costs the others nothing.
            echoes = [echo_t, *echo3_t]
            servers = [(f"echo-{i + 1}", ["echo", t]) for i, t in enumerate(echoes)]
            servers += [("relay", ["relay", relay_t, echo_t]), ("relay3", ["relay", relay3_t, *echoes])]
            for log_name, (role, target, *downstream) in servers:
                port = target.rsplit(":", 1)[1]
                server_procs[log_name] = spawn(["-m", "bench.echo", role, port, *downstream], logs / f"{log_name}.log")
                stack.callback(stop, server_procs[log_name])
            for t in echoes:
                wait_serving(t, "bench.Echo")
            for t in (relay_t, relay3_t):
                wait_serving(t, "bench.Relay")
        print("matrix:", flush=True)
        results["cells"] += run_loadgen(pick(matrix), tmp, "matrix")

        if pick(obs_cells):
            print("observability on vs off (a second stack with OTEL_SDK_DISABLED=true):", flush=True)
            off_stack = stack.enter_context(Stack(off_config))
            # Each cell records its stack's CPU per request, so a cell far off its side's others
            # can be told apart: every process slower (the host) or one (the code).
            for c in obs_cells:
                c["pids"] = stack_pids(main_stack if c["name"].startswith("obs_on_") else off_stack)
            results["observability"] = run_loadgen(pick(obs_cells), tmp, "observability")

        if pick(features_cells):
            from bench.floors import start_feast_listen

            listen = start_feast_listen(s.home, s.redis_url, listen_port, logs / "feast-listen.log")
            stack.callback(stop, listen)
            wait_serving(f"127.0.0.1:{listen_port}")
            print("features service vs feast listen:", flush=True)
            results["cells"] += run_loadgen(pick(features_cells), tmp, "features")

        if pick(e2e_cells):
            print("end to end vs the replay stack and the empty echo chains at c=1, interleaved:", flush=True)
            replay_stack = stack.enter_context(Stack(replay_config))
            side_pids = {
                "e2e": stack_pids(main_stack),
                "replay": stack_pids(replay_stack),
                "pipeline": {n: server_procs[n].pid for n in ("relay3", "echo-1", "echo-2", "echo-3")},
                "chain": {n: server_procs[n].pid for n in ("relay", "echo-1")},
            }
            for c, side in zip(e2e_cells, INTERLEAVED_ORDER, strict=True):
                c["pids"] = side_pids[side]
            results["e2e_vs_echo"] = run_loadgen(pick(e2e_cells), tmp, "e2e")

        if pick(echo_cells):
            print("gRPC floors through meshserve_runtime:", flush=True)
            results["cells"] += run_loadgen(pick(echo_cells), tmp, "echo")

    if not only or "floors" in only:
        print("Redis, in-process Feast and forward-pass floors, native calls after idle...", flush=True)
        from bench.floors import feast_store, inprocess_feast, inprocess_meshserve, redis_floor

        store = feast_store(s.home, s.redis_url)
        results["floors"]["redis"] = [redis_floor(store, s.redis_url, n, s.floor_seconds / 2) for n in (1, 100)]
        results["floors"]["feast_inprocess"] = [inprocess_feast(store, n, s.floor_seconds / 2) for n in (1, 100)]
        for path in ("feast", "direct"):
            results["floors"][f"store_{path}"] = [inprocess_meshserve(s.home, s.redis_url, n, s.floor_seconds / 2, path) for n in (1, 100)]
        fwd = tmp / "forward.json"
        subprocess.run([sys.executable, "-m", "bench.forward", str(fwd), str(s.floor_seconds)], cwd=REPO, check=True,
                       env={**os.environ, "MESHSERVE_HOME": str(s.home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
        results["floors"]["forward"] = json.loads(fwd.read_text())
        # What the handlers' native calls cost after an idle spell on this VM (it differs
        # between VMs by several times, and c=1 moves with it): in a process of its own.
        idle = tmp / "idle_cost.json"
        subprocess.run([sys.executable, "-m", "bench.idle_cost", "--json", str(idle)], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        results["floors"]["idle_cost"] = json.loads(idle.read_text())

    spans = tmp / "spans.txt"
    if spans.exists():
        results["spans_exported"] = int(spans.read_text() or 0)
        spans.unlink()
    results["settings"] = {"trace_sample_ratio": s.trace_sample_ratio, "seconds": s.seconds, "warmup_seconds": s.warmup_seconds, "floor_seconds": s.floor_seconds,
                           "redis_url": s.redis_url,
                           # What every server of the run (the stacks, echo/relay, feast listen) got; the
                           # load generator keeps gRPC's defaults, as a stock client would.
                           "server_grpc_experiments": with_grpc_defaults(os.environ)["GRPC_EXPERIMENTS"],
                           "loadgen_grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", "")}
    results["wall_seconds"] = round(time.time() - started, 1)
    md = write_report(results, s.out_dir)
    print(f"wrote {md} and {s.out_dir / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
