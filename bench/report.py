"""bench/results.json and bench/RESULTS.md: tables, machine, versions, date, targets."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

NOTES = Path(__file__).resolve().parent / "NOTES.md"
"""Hand-written analysis, appended to RESULTS.md verbatim (the rest is generated)."""

PACKAGES = ("grpcio", "protobuf", "feast", "torch", "scikit-learn", "mlflow", "redis", "numpy", "pandas", "opentelemetry-sdk")


def machine() -> dict[str, str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    redis_version = "unknown"
    try:
        out = subprocess.run(["redis-cli", "INFO", "server"], capture_output=True, text=True, timeout=5).stdout
        redis_version = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("redis_version"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem, "os": platform.platform(),
            "python": platform.python_version(), "redis_server": redis_version,
            "python_loop_1e7_s": f"{python_loop_seconds():.2f} (pure-Python 10^7-addition loop in a function, best of 3)",
            "pipe_round_trip_us": f"{pipe_round_trip_us():.1f} (one byte to a child process and back: a cross-process wake-up pair)"}


def python_loop_seconds(n: int = 10_000_000) -> float:
    """Seconds for a fixed pure-Python loop (best of 3): a yardstick for comparing runs made on
    different machines, since most of a request's CPU here is interpreter time."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - t0)
    return best


def pipe_round_trip_us(n: int = 20_000) -> float:
    """Microseconds for one byte over a pipe to a child process and back: the cost of the
    cross-process wake-ups every gRPC hop is made of, on this machine."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: echo n bytes back, then leave without running any cleanup
        try:
            for _ in range(n):
                os.read(r1, 1)
                os.write(w2, b"x")
        finally:
            os._exit(0)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    elapsed = time.perf_counter() - t0
    os.waitpid(pid, 0)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return elapsed / n * 1e6


def versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "-"
    return out


def _by_name(results: dict) -> dict[str, dict]:
    return {c["name"]: c for c in results["cells"]}


def interleaved_sides(results: dict) -> dict[str, list[dict]]:
    """The interleaved c=1 cells (`interleaved_<side>_c1_<n>`) by side, in the order they ran."""
    sides: dict[str, list[dict]] = {}
    for cell in results.get("e2e_vs_echo") or []:
        sides.setdefault(cell["name"].split("_")[1], []).append(cell)
    return sides


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the measured value and pass/fail (None: not measured)."""
    c = _by_name(results)
    obs = {o["name"]: o for o in results.get("observability") or []}
    inter = {o["name"]: o for o in results.get("e2e_vs_echo") or []}
    every = {**c, **obs, **inter}

    def get(name: str, key: str) -> float | None:
        return c[name][key] if name in c else None

    def versus(ours: list[str], theirs: list[str]) -> tuple[float, float, str] | None:
        """Each side's mean p50 and the measured text of a ratio verdict (None: a side missing)."""
        if not ours or not theirs:
            return None
        a = sum(every[k]["p50_ms"] for k in ours) / len(ours)
        b = sum(every[k]["p50_ms"] for k in theirs) / len(theirs)
        measured = f"{a:.2f} ms vs {b:.2f} ms ({a / b:.2f}x)"
        if len(ours) > 1 or len(theirs) > 1:
            measured += f", mean p50 of {len(ours)} / {len(theirs)} interleaved cells"
        return a, b, measured

    sides = interleaved_sides(results)

    def interleaved(side: str) -> list[str]:
        return [cell["name"] for cell in sides.get(side, [])]

    rows: list[dict] = []

    def add(what: str, measured: str, ok: bool | None, *cells: str) -> None:
        # The most CPU the host stole in any cell the verdict rests on: a verdict taken
        # while other guests held our vCPUs says more about the host than about us.
        steals = [cell["machine_cpu"]["steal_pct"] for name in cells
                  if (cell := every.get(name)) and cell.get("machine_cpu")]
        rows.append({"target": what, "measured": measured, "pass": ok, "max_steal_pct": max(steals) if steals else None})

    p = get("entities_1_c1", "p50_ms")
    measured = f"{p:.2f} ms" if p else "-"
    later = [inter[k]["p50_ms"] for k in interleaved("e2e")]
    if p and later:  # the verdict stays the matrix cell's; the same call later in the run, for context
        measured += f" (the {len(later)} interleaved end-to-end cells later in the run: {min(later):.2f}-{max(later):.2f} ms)"
    add("PredictEntities 1 entity, c=1: p50 <= 4 ms", measured, None if p is None else p <= 4, "entities_1_c1")
    if "entities_1_c64" in c:
        x = c["entities_1_c64"]
        add("PredictEntities 1 entity, c=64: >= 1,000 RPS, p99 <= 100 ms, no errors",
            f"{x['rps']:.0f} RPS, p99 {x['p99_ms']:.1f} ms, {x['errors']} errors",
            x["rps"] >= 1000 and x["p99_ms"] <= 100 and x["errors"] == 0, "entities_1_c64")
    else:
        add("PredictEntities 1 entity, c=64: >= 1,000 RPS, p99 <= 100 ms, no errors", "-", None)
    p = get("entities_100_c1", "p50_ms")
    add("PredictEntities 100 entities, c=1: p50 <= 12 ms", f"{p:.2f} ms" if p else "-", None if p is None else p <= 12, "entities_100_c1")
    for n in (1, 100):
        # Each side: the mean p50 of its interleaved cells (ABBA; older runs had one each).
        ours_cells = [k for k in (f"features_{n}_c1", f"features_{n}_c1_2") if k in c]
        feast_cells = [k for k in (f"feast_listen_{n}_c1", f"feast_listen_{n}_c1_2") if k in c]
        ok, measured = None, "-"
        if (v := versus(ours_cells, feast_cells)) is not None:
            ours, feast, measured = v
            ok = ours <= feast / 2
        add(f"features service p50 <= 1/2 of `feast listen`, {n} entit{'y' if n == 1 else 'ies'}", measured, ok,
            *ours_cells, *feast_cells)
    # Judged against both chains: the pipeline-shaped one (three echo servers, the same five
    # processes as the stack) and the single-echo one of earlier runs (cheaper: one warm server).
    # Each side: the mean p50 of its interleaved cells; runs before 2026-12-07 had one cell
    # each, minutes apart (the matrix cell and the floor cell).
    e2e_cells = interleaved("e2e")
    for chain_side, floor_cell, shape in (("pipeline", "echo4_pipeline_c1", "pipeline-shaped: relay + 3 echo servers"),
                                          ("chain", "echo4_chain_c1", "all 3 hops to one echo server")):
        if e2e_cells:
            e2e_names, chain_names = e2e_cells, interleaved(chain_side)
        else:
            e2e_names, chain_names = [k for k in ("entities_1_c1",) if k in c], [k for k in (floor_cell,) if k in c]
        ok, measured = None, "-"
        if (v := versus(e2e_names, chain_names)) is not None:
            e2e, chain, measured = v
            ok = e2e <= 1.5 * chain
        add(f"end-to-end p50 at c=1 <= 1.5x four chained echo RPCs ({shape})", measured, ok, *e2e_names, *chain_names)
    for conc in (64, 1):
        on_cells = [k for k in obs if k.startswith(f"obs_on_c{conc}_")]
        off_cells = [k for k in obs if k.startswith(f"obs_off_c{conc}_")]
        on = [obs[k]["rps"] for k in on_cells]
        off = [obs[k]["rps"] for k in off_cells]
        if on and off:
            ratio = (sum(on) / len(on)) / (sum(off) / len(off))
            measured = f"{sum(on) / len(on):.0f} vs {sum(off) / len(off):.0f} RPS ({ratio:.2f}x, mean of {len(on)} / {len(off)} cells)"
            cpu = [[us for k in names if (us := _servers_cpu(obs[k])) is not None] for names in (on_cells, off_cells)]
            if all(cpu):  # for context: a cell slow in every process is the host, not tracing
                measured += "; servers' CPU per request " + " vs ".join(f"{sum(v) / len(v):,.0f}" for v in cpu) + " us"
            add(f"observability on costs <= 10% of throughput, c={conc}", measured, ratio >= 0.9, *on_cells, *off_cells)
    return rows


#: The server processes of a request's path, each with the pipeline chain's process in the
#: same place (the relay for the gateway, an echo server for each service; none for Redis).
SPLIT_PROCESSES = (("gateway", "relay3"), ("features", "echo-1"), ("preprocess", "echo-2"), ("model", "echo-3"), ("redis", ""))


def cost_split(results: dict) -> dict | None:
    """What the c=1 time is made of, from the interleaved cells: each side's mean p50 and
    mean CPU per request by process, and the differences between the sides. None when the
    run had no replay cells (runs before 2026-12-07 12:00)."""
    sides = interleaved_sides(results)
    if not {"e2e", "replay", "pipeline"} <= set(sides):
        return None
    p50 = {side: sum(c["p50_ms"] for c in cs) / len(cs) for side, cs in sides.items()}
    cpu: dict[str, dict[str, float]] = {}
    for side, cs in sides.items():
        per = [c.get("cpu_us_per_request") or {} for c in cs]
        names = {n for p in per for n in p}
        # Mean over the cells that read the process (a process gone mid-run drops out).
        cpu[side] = {n: sum(p[n] for p in per if n in p) / sum(1 for p in per if n in p) for n in sorted(names)}
    e2e, replay, pipe = p50["e2e"], p50["replay"], p50["pipeline"]
    return {
        "p50_ms": p50,
        "cpu_us_per_request": cpu,
        # The handlers' own work (Redis read, transform, forward pass, their checks and encoding).
        "handlers_ms": e2e - replay,
        # What meshserve's runtime and protocols (interceptor, tracing, the real messages, the
        # gateway's pipeline) add to four bare gRPC hops.
        "runtime_ms": replay - pipe,
        "bare_hops_ms": pipe,
    }


def _split_lines(split: dict) -> list[str]:
    p50, cpu = split["p50_ms"], split["cpu_us_per_request"]
    e2e = p50["e2e"]
    lines = ["", "## What the c=1 time is made of", "",
             "From the interleaved cells above (each side's mean). The replay stack is the main stack's twin, tracing "
             "on too, whose features, preprocess and model answer every call with their first answer "
             "(`bench/replay.py`): gRPC, the runtime's interceptor, tracing, request parsing and reply encoding "
             "all still run, the handlers' own work does not.", "",
             "| part of a request | ms | share of end to end |", "|---|---|---|",
             f"| the handlers' own work (end to end - replay) | {split['handlers_ms']:.2f} | {split['handlers_ms'] / e2e:.0%} |",
             f"| meshserve's runtime and protocols on top of bare hops (replay - pipeline chain) | {split['runtime_ms']:.2f} | "
             f"{split['runtime_ms'] / e2e:.0%} |",
             f"| four bare gRPC hops through the same runtime (pipeline chain) | {split['bare_hops_ms']:.2f} | "
             f"{split['bare_hops_ms'] / e2e:.0%} |",
             f"| end to end (PredictEntities, 1 entity) | {e2e:.2f} | 100% |", "",
             "CPU per request by server process (user + system, all threads, /proc/PID/stat), microseconds; "
             "a request's processes run one after the other, so at c=1 these add up to most of its time. "
             "The pipeline chain's column shows its process in the same place (the relay for the gateway, "
             "an echo server for each service).", "",
             "| process | end to end | replay | pipeline chain |", "|---|---|---|---|"]

    def us(side: str, name: str) -> str:
        v = cpu.get(side, {}).get(name)
        return "" if v is None else f"{v:.0f}"

    for name, pipe_name in SPLIT_PROCESSES:
        if us("e2e", name) or us("replay", name):
            lines.append(f"| {name} | {us('e2e', name)} | {us('replay', name)} | {us('pipeline', pipe_name) if pipe_name else ''} |")
    totals = [sum(cpu.get(side, {}).values()) for side in ("e2e", "replay", "pipeline")]
    lines.append("| all | " + " | ".join(f"{t:.0f}" for t in totals) + " |")
    return lines


def _fmt(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _cpu(cell: dict) -> str:
    """The machine's CPU in the cell's window (all cores): busy / stolen by the hypervisor."""
    cpu = cell.get("machine_cpu")
    return f"{cpu['busy_pct']:.0f} / {cpu['steal_pct']:.0f}" if cpu else ""


def _servers_cpu(cell: dict) -> float | None:
    """The CPU per request of the cell's server processes together (None: not recorded)."""
    per = cell.get("cpu_us_per_request")
    return sum(per.values()) if per else None


def _short_table(cells: list[dict]) -> list[str]:
    """Rows of cells without stage columns (the observability and interleaved cells), with the
    CPU per request of the cell's own server processes when the run recorded it."""
    with_cpu = any(_servers_cpu(c) is not None for c in cells)
    head = ["cell", "RPS", "p50", "p99", "errors", *(["servers' CPU per request, us"] if with_cpu else []), "CPU busy / steal %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        row = [c["name"], f"{c['rps']:.0f}", _fmt(c["p50_ms"]), _fmt(c["p99_ms"]), str(c["errors"])]
        if with_cpu:
            row.append("" if (cpu := _servers_cpu(c)) is None else f"{cpu:.0f}")
        lines.append("| " + " | ".join([*row, _cpu(c)]) + " |")
    return lines


def render(results: dict) -> str:
    r = results
    lines = ["# meshserve benchmark", "",
             f"Generated by `make bench` on {r['date']} (wall time {r['wall_seconds']:.0f} s). "
             f"Each matrix cell: {r['settings']['warmup_seconds']:.0f} s warm-up + {r['settings']['seconds']:.0f} s measured; "
             f"floors and features cells: {r['settings']['floor_seconds']:.0f} s. Closed loop, one async gRPC client process, "
             "one channel, pre-serialized requests. Latencies in ms; stage columns are the mean time per request "
             "in each gateway stage (diff of `meshserve_gateway_stage_duration_seconds` sums over the window). "
             "CPU busy / steal: the whole machine's CPU over the cell's measured window, from /proc/stat; "
             "steal is time the host gave our vCPUs to someone else (a shared machine's noise, made visible). "
             "Load generator, services and Redis share the same cores. "
             f"Every server of the run (both stacks, the echo/relay servers, `feast listen`) ran with "
             f"GRPC_EXPERIMENTS={r['settings'].get('server_grpc_experiments', '')!r} (meshserve_runtime.grpc_env); "
             f"the load generator with {r['settings'].get('loadgen_grpc_experiments', '') or 'gRPC defaults'}.", "",
             "## Targets", "", "Last column: the most CPU time the host stole (/proc/stat) in any cell the verdict rests on.", "",
             "| target | measured | result | max steal % |", "|---|---|---|---|"]
    for t in r["targets"]:
        verdict = "not measured" if t["pass"] is None else ("**pass**" if t["pass"] else "**FAIL**")
        steal = t.get("max_steal_pct")
        lines.append(f"| {t['target']} | {t['measured']} | {verdict} | {'' if steal is None else f'{steal:.0f}'} |")
    lines += ["", "## Matrix and gRPC cells", "",
              "| cell | rows | concurrency | RPS | p50 | p90 | p99 | errors | features | preprocess | model | CPU busy / steal % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        st = c.get("stages_ms") or {}
        stages = [_fmt(st[k]) if k in st else "" for k in ("features", "preprocess", "model")]
        lines.append(f"| {c['name']} | {c['rows']} | {c['concurrency']} | {c['rps']:.0f} | {_fmt(c['p50_ms'])} | "
                     f"{_fmt(c['p90_ms'])} | {_fmt(c['p99_ms'])} | {c['errors']} | " + " | ".join(stages) + f" | {_cpu(c)} |")
    errs = [c for c in r["cells"] if c["errors"]]
    for c in errs:
        lines.append(f"\n{c['name']}: {c['errors']} errors, first: `{c['error_sample']}`")
    obs = r.get("observability") or []
    if obs:
        lines += ["", "## Observability on vs off", "",
                  f"ON: metrics, trace ids, spans exported over OTLP/gRPC at {r['settings'].get('trace_sample_ratio', 0.01):g} sampling "
                  f"({r.get('spans_exported', '?')} spans reached the collector stand-in in the whole run). OFF: a second stack "
                  "with `OTEL_SDK_DISABLED=true` (no tracing SDK, no trace ids; Prometheus metrics stay, they are not optional). "
                  "Cells ran in the order " + "; then ".join(
                      f"{', '.join(c['name'].split('_')[1] for c in obs if c['concurrency'] == conc)} at c={conc}"
                      for conc in dict.fromkeys(c["concurrency"] for c in obs)) + ", both stacks up. "
                  "Servers' CPU per request: user + system CPU of the cell's stack (its four processes) and Redis, "
                  "from /proc/PID/stat.", "",
                  *_short_table(obs)]
    inter = r.get("e2e_vs_echo") or []
    if inter:
        lines += ["", "## End to end vs the echo chains, interleaved", "",
                  "PredictEntities, 1 entity, c=1, on the main stack (e2e) and on the replay stack (replay: see below), "
                  "against the relay with three echo servers "
                  "(pipeline) and the relay with one (chain), all servers up, cells in the order they ran. "
                  "The 1.5x verdicts take each side's mean p50. Servers' CPU per request: the side's server "
                  "processes (and Redis, for the two stacks), as in the process table below.", "",
                  *_short_table(inter)]
        if (split := cost_split(r)) is not None:
            lines += _split_lines(split)
    f = r.get("floors", {})
    if f:
        lines += ["", "## Floors", "", "| floor | 1 entity / batch 1 | 100 entities / batch 64 |", "|---|---|---|"]
        if "redis" in f:
            a, b = f["redis"]
            lines.append(f"| Redis: Feast's HMGETs for our FeatureService, one pipeline, raw redis-py ({a['keys']} / {b['keys']} keys) "
                         f"| {a['p50_ms']:.3f} | {b['p50_ms']:.3f} |")
        if "feast_inprocess" in f:
            a, b = f["feast_inprocess"]
            lines.append(f"| Feast `get_online_features` in-process, Redis | {a['p50_ms']:.3f} | {b['p50_ms']:.3f} |")
        for path, what in (("feast", "get_online_features"), ("direct", "Feast's online-store API, plan resolved at load")):
            if f"store_{path}" in f:
                a, b = f[f"store_{path}"]
                lines.append(f"| features store wrapper, read_path={path} ({what}), in-process | {a['p50_ms']:.3f} | {b['p50_ms']:.3f} |")
        if "forward" in f:
            fw = f["forward"]
            lines.append(f"| forward pass of the registered model ({fw.get('module')}, v{fw.get('model_version')}, 1 thread) "
                         f"| {fw['batch_1_p50_ms']:.3f} | {fw['batch_64_p50_ms']:.3f} |")
            sv = fw.get("served")
            if sv:
                lines.append(f"| forward pass as the model service serves it (optimize={sv['optimize']}: {sv['module']}, 1 thread) "
                             f"| {sv['batch_1_p50_ms']:.3f} | {sv['batch_64_p50_ms']:.3f} |")
        lines += ["", "The Redis floor sends exactly the commands Feast's Redis store sends for `driver_ranking_v1` "
                  "(one HMGET per unique entity per feature view, built with Feast's own key/field helpers), "
                  "in one non-transactional pipeline, without decoding: the network + Redis share of a read."]
    if (idle := f.get("idle_cost")) is not None:
        from bench.idle_cost import table

        lines += ["", "## Native calls after an idle spell", "",
                  "`python -m bench.idle_cost`, after the floors, in a process of its own: the native calls of a c=1 "
                  "request (built as the services build them) timed back to back, after the process slept, and after it "
                  f"ran a Python loop, {idle['pause_ms']:g} ms each time, as every service sits still at c=1 while the "
                  "others work. How much slower the calls run cold differs between VMs by several times, and the c=1 "
                  "cells move with it.", "", *table(idle["rows"], idle["calls"])]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in r["machine"].items()]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in r["versions"].items()]
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: Path) -> Path:
    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["machine"] = machine()
    results["versions"] = versions()
    results["targets"] = targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = out_dir / "RESULTS.md"
    md.write_text(render(results))
    return md
