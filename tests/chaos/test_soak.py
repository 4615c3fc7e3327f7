"""Soak: mixed load for MESHSERVE_SOAK_S seconds (default 600) on the four real processes,
with no error and no memory growth past a stated bound.

Each service's resident set size (RSS) is sampled every few seconds. After a warm-up
(caches, allocator pools, lazily built code paths), the median RSS of the last window may
exceed the median of the first window by at most SOAK_RSS_GROWTH_BOUND_MIB per process.
`make soak` runs it and writes its section of bench/RELIABILITY.md.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from meshserve_local.stack import Stack
from tests.chaos.conftest import run_line
from tests.chaos.load import Load, entities_call, rows_call
from tests.e2e.conftest import make_stack_config
from tests.fixtures.trained import TrainedHome

DURATION_S = float(os.environ.get("MESHSERVE_SOAK_S", "600"))
#: Memory a process may gain between the first and last window after warm-up. Measured
#: growth here is about 0.1 MiB; at the ~120 calls/s this machine reaches, 16 MiB over the
#: ~8 minutes between the windows of a 10-minute soak is a leak of ~300 bytes per call.
SOAK_RSS_GROWTH_BOUND_MIB = 16.0
SAMPLE_EVERY_S = 2.0
WARMUP_S = min(60.0, DURATION_S / 5)
WINDOW_S = min(60.0, (DURATION_S - WARMUP_S) / 3)
SERVICES = ("gateway", "features", "preprocess", "model")

pytestmark = [pytest.mark.chaos, pytest.mark.soak, pytest.mark.timeout(DURATION_S + 900)]

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")

#: A realistic mix: one entity, a batch with unknown entities (per-row NOT_FOUND inside an OK
#: answer), and raw feature rows.
ROW = {"conv_rate": 0.5, "acc_rate": 0.9, "avg_daily_trips": 12.0, "current_balance": 0.4,
       "avg_passenger_count": 1.5, "lifetime_trip_count": 200.0}
CALLS = (
    entities_call(),
    entities_call(tuple(range(1001, 1011)) + (9001, 9002), tuple(range(2001, 2011)) + (2001, 9002)),
    rows_call([ROW, {**ROW, "conv_rate": 0.1}, {**ROW, "acc_rate": 0.2}, {**ROW, "avg_daily_trips": 3.0}, ROW]),
)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


@dataclass
class RssSampler:
    pids: dict[str, int]
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    start: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self.start
            for svc, pid in self.pids.items():
                self.samples.setdefault(svc, []).append((now, rss_bytes(pid)))
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()

    def window(self, svc: str, lo: float, hi: float) -> float:
        values = [rss for t, rss in self.samples[svc] if lo <= t < hi]
        assert values, f"no RSS sample of {svc} in [{lo:.0f}s, {hi:.0f}s)"
        return statistics.median(values)


@pytest.fixture(scope="module")
def soak_stack(trained: TrainedHome) -> Iterator[tuple[Stack, str]]:
    store = "redis" if trained.redis_url else "sqlite"
    with Stack(make_stack_config(trained.home, store)) as stack:
        yield stack, store


def test_soak_mixed_load_no_error_no_memory_growth(soak_stack, record_soak) -> None:
    stack, store = soak_stack
    sampler = RssSampler({svc: stack.procs[svc].pid for svc in SERVICES})
    thread = threading.Thread(target=sampler.run, daemon=True)
    with Load(stack.config.target("gateway"), concurrency=4, timeout=20, max_seconds=DURATION_S + 60, calls=CALLS) as load:
        thread.start()
        time.sleep(DURATION_S)
    sampler.stop()
    thread.join(10)
    elapsed = time.monotonic() - sampler.start
    alive = {svc: stack.procs[svc].poll() is None for svc in SERVICES}

    rows = []
    growth: dict[str, float] = {}
    for svc in SERVICES:
        first = sampler.window(svc, WARMUP_S, WARMUP_S + WINDOW_S)
        last = sampler.window(svc, elapsed - WINDOW_S, elapsed + 1)
        peak = max(rss for _, rss in sampler.samples[svc])
        growth[svc] = (last - first) / MIB
        rows.append(f"| {svc} | {first / MIB:.0f} | {last / MIB:.0f} | {growth[svc]:+.1f} | {peak / MIB:.0f} |")

    r = load.result
    others = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()) if k != "OK") or "none"
    section = [
        "## Soak (`make soak`)",
        "",
        run_line(f": {DURATION_S / 60:.1f} min of mixed load on one process per service, Feast online store {store}"),
        "Mix, cycled by 4 closed-loop callers: PredictEntities with 1 entity; PredictEntities with 12 entities, 2 "
        "unknown (per-row NOT_FOUND in an OK answer); Predict with 5 raw feature rows.",
        f"RSS sampled every {SAMPLE_EVERY_S:.0f} s; growth is the median of the last {WINDOW_S:.0f} s minus the median "
        f"of the first {WINDOW_S:.0f} s after a {WARMUP_S:.0f} s warm-up. Bound: {SOAK_RSS_GROWTH_BOUND_MIB:.0f} MiB "
        "per process.",
        "",
        "| service | RSS after warm-up (MiB) | RSS at the end (MiB) | growth (MiB) | peak (MiB) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Requests: {r.sent} sent, {r.statuses.get('OK', 0)} answered OK ({r.statuses.get('OK', 0) / elapsed:.0f}/s), "
        f"other statuses: {others}, lost {r.lost}; p99 of OK {r.p99_ok() * 1e3:.1f} ms; "
        f"model versions seen {sorted(v for v, _ in r.versions)}.",
    ]
    record_soak(section)
    print("\n".join(section))  # shown with -rP (make soak) even when the report is off
    assert all(alive.values()), alive
    assert r.lost == 0
    assert set(r.statuses) == {"OK"}, (r.statuses, r.examples)
    assert r.mixed == 0 and len(r.versions) == 1, r.versions
    over = {s: round(g, 1) for s, g in growth.items() if g > SOAK_RSS_GROWTH_BOUND_MIB}
    assert not over, f"RSS grew past {SOAK_RSS_GROWTH_BOUND_MIB} MiB after warm-up: {over}"
