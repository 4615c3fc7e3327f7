"""Latency summaries and Prometheus histogram diffs."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

STAGE_METRIC = "meshserve_gateway_stage_duration_seconds"
PROC_STAT = Path("/proc/stat")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class CellResult:
    name: str
    kind: str
    concurrency: int
    rows: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    error_sample: str = ""
    stages_ms: dict[str, float] | None = None
    """Mean time per request in each gateway stage (from the histogram sums/counts diff)."""
    machine_cpu: dict[str, float] | None = None
    """The whole machine's CPU during the measured window (cpu_share): how busy, and how
    much the hypervisor took away (steal), so a slow cell on a shared host shows why."""
    cpu_us_per_request: dict[str, float] | None = None
    """CPU time (user + system, all threads) each named server process used per answered
    request in the measured window (process_cpu_us): where a request's time goes."""

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, kind: str, concurrency: int, rows: int, seconds: float,
              latencies: list[float], errors: int, error_sample: str = "") -> CellResult:
    lat = np.asarray(latencies, dtype=np.float64) * 1e3
    q = np.percentile(lat, [50, 90, 99]) if lat.size else np.array([np.nan] * 3)
    return CellResult(
        name=name, kind=kind, concurrency=concurrency, rows=rows, seconds=round(seconds, 3),
        requests=int(lat.size), errors=errors, rps=lat.size / seconds if seconds else 0.0,
        p50_ms=float(q[0]), p90_ms=float(q[1]), p99_ms=float(q[2]),
        mean_ms=float(lat.mean()) if lat.size else float("nan"), error_sample=error_sample,
    )


def scrape_stages(url: str) -> dict[str, tuple[float, float]]:
    """{stage: (sum seconds, count)} of the gateway's stage histogram."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != STAGE_METRIC:
            continue
        for s in family.samples:
            stage = s.labels.get("stage")
            if stage is None:
                continue
            entry = out.setdefault(stage, [0.0, 0.0])
            if s.name.endswith("_sum"):
                entry[0] = s.value
            elif s.name.endswith("_count"):
                entry[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                   requests: int) -> dict[str, float]:
    """Stage time per client request in ms: diff of sums over the requests of the window.

    Per client request rather than per observation, so a gateway that coalesces or
    chunks (several or fewer observations per request) is still comparable.
    """
    if not requests:
        return {}
    out = {}
    for stage, (s1, _c1) in after.items():
        s0, _c0 = before.get(stage, (0.0, 0.0))
        out[stage] = (s1 - s0) / requests * 1e3
    return out


def cpu_times(path: Path = PROC_STAT) -> list[int] | None:
    """The machine's aggregate CPU counters from /proc/stat (user, nice, system, idle,
    iowait, irq, softirq, steal, in clock ticks), or None where there is no /proc/stat."""
    try:
        first = path.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(first) < 5 or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:9]]
    return values + [0] * (8 - len(values))  # old kernels have no steal column


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict[str, float] | None:
    """Percent of all cores' time between two cpu_times() readings: `busy` (user, system,
    interrupts), and `steal` (time a vCPU wanted to run but the host ran something else).
    Guest time is already inside user, so it is not added again."""
    if before is None or after is None:
        return None
    d = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(d)
    if total <= 0:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = d
    busy = user + nice + system + irq + softirq
    return {"busy_pct": round(100 * busy / total, 1), "steal_pct": round(100 * steal / total, 1)}


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (all its threads), or None when it is gone
    or there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def process_cpu_us(before: dict[str, float | None], after: dict[str, float | None], requests: int) -> dict[str, float] | None:
    """Microseconds of CPU per request for each process read both times."""
    if requests <= 0:
        return None
    out: dict[str, float] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is not None and b is not None:
            out[name] = round((a - b) / requests * 1e6, 1)
    return out or None
