"""Closed-loop async gRPC load generator, run in its own process.

`python -m bench.loadgen SPEC.json OUT.json`: SPEC lists cells
({name, kind, target, rows, concurrency, seconds, warmup, metrics_url, and optionally pids:
{label: pid} of server processes whose CPU per request it records}); each cell runs
`concurrency` workers that send a pre-serialized request as soon as the previous answer
arrives, first for `warmup` seconds (discarded), then for `seconds` (measured), then stop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

import grpc

from bench.requests import METHODS, bodies, check_reply
from bench.stats import cpu_share, cpu_times, process_cpu_seconds, process_cpu_us, scrape_stages, stage_means_ms, summarize

TIMEOUT_S = 10.0


async def _phase(call, kind: str, rows: int, reqs: list[bytes], concurrency: int, seconds: float,
                 latencies: list[float] | None) -> tuple[int, str]:
    """Run workers until `seconds` passed; return (errors, first error)."""
    end = time.perf_counter() + seconds
    errors = 0
    sample = ""
    cycle = itertools.cycle(reqs)

    async def worker() -> None:
        nonlocal errors, sample
        checked = False
        while time.perf_counter() < end:
            body = next(cycle)
            t0 = time.perf_counter()
            try:
                reply = await call(body, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as err:
                errors += 1
                sample = sample or f"{err.code().name}: {err.details()}"
                continue
            dt = time.perf_counter() - t0
            if not checked:  # decode one reply per worker: cheap proof the answers are real
                checked = True
                problem = check_reply(kind, reply, rows)
                if problem:
                    errors += 1
                    sample = sample or problem
                    continue
            if latencies is not None:
                latencies.append(dt)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors, sample


async def run_cell(cell: dict) -> dict:
    kind, rows, conc = cell["kind"], cell["rows"], cell["concurrency"]
    reqs = bodies(kind, rows)
    async with grpc.aio.insecure_channel(cell["target"], options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        call = ch.unary_unary(METHODS[kind])  # bytes in, bytes out: no client-side (de)serialization
        await ch.channel_ready()
        if cell.get("warmup"):
            await _phase(call, kind, rows, reqs, conc, cell["warmup"], None)
        before = scrape_stages(cell["metrics_url"]) if cell.get("metrics_url") else None
        latencies: list[float] = []
        pids: dict[str, int] = cell.get("pids") or {}
        proc0 = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        cpu0 = cpu_times()
        t0 = time.perf_counter()
        errors, sample = await _phase(call, kind, rows, reqs, conc, cell["seconds"], latencies)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_times()
        proc1 = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        after = scrape_stages(cell["metrics_url"]) if cell.get("metrics_url") else None
    res = summarize(cell["name"], kind, conc, rows, elapsed, latencies, errors, sample)
    if before is not None and after is not None:
        res.stages_ms = stage_means_ms(before, after, res.requests)
    res.machine_cpu = cpu_share(cpu0, cpu1)
    if pids:
        res.cpu_us_per_request = process_cpu_us(proc0, proc1, res.requests)
    return res.as_dict()


def _cpu_note(res: dict) -> str:
    cpu = res.get("machine_cpu")
    return f"  (machine busy {cpu['busy_pct']:.0f}%, steal {cpu['steal_pct']:.0f}%)" if cpu else ""


async def main_async(spec: list[dict], out: Path) -> None:
    results = []
    for cell in spec:
        res = await run_cell(cell)
        print(f"  {res['name']:<28} {res['rps']:8.0f} rps  p50 {res['p50_ms']:7.2f}  p99 {res['p99_ms']:7.2f} ms"
              f"  errors {res['errors']}{_cpu_note(res)}", flush=True)
        results.append(res)
        out.write_text(json.dumps(results, indent=1))  # partial results survive an interrupted run


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(main_async(spec, Path(sys.argv[2])))


if __name__ == "__main__":
    main()
