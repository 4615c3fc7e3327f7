"""Latency summaries and Prometheus histogram diffs."""

from __future__ import annotations

import urllib.request
from dataclasses import asdict, dataclass

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

STAGE_METRIC = "meshserve_gateway_stage_duration_seconds"


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
