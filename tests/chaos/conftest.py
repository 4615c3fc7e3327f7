"""Fault scenarios on the real processes; each records a row of bench/RELIABILITY.md.

`make chaos` runs only these and writes the table (MESHSERVE_RELIABILITY_REPORT=1);
`make test` runs them too, without rewriting the file.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from meshserve_local.stack import Stack
from tests.chaos.load import LoadResult
from tests.e2e.conftest import make_stack_config
from tests.fixtures.trained import TrainedHome

ROOT = Path(__file__).resolve().parents[2]
ROWS: list[tuple[str, LoadResult, str]] = []


@pytest.fixture
def record():
    def _record(scenario: str, result: LoadResult, note: str = "") -> None:
        ROWS.append((scenario, result, note))

    return _record


@pytest.fixture(scope="module")
def chaos_stack(trained: TrainedHome) -> Iterator[Stack]:
    """One stack on SQLite for the process-fault scenarios (services get restarted)."""
    config = make_stack_config(trained.home, "sqlite")
    # Short drain so restarts are quick; connection age off so results are not muddied.
    for svc in ("gateway", "features", "preprocess", "model"):
        config.extra_env.setdefault(svc, {})[f"MESHSERVE_{svc.upper()}_GRACE_PERIOD_S"] = "5"
    with Stack(config) as stack:
        yield stack


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MESHSERVE_RELIABILITY_REPORT") != "1" or not ROWS:
        return
    lines = [
        "# meshserve reliability (`make chaos`)",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores), "
        "real processes on loopback. Each scenario is an automated test in tests/chaos/.",
        "",
        "| scenario | requests sent | answered OK | answered with another status | lost | note |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, r, note in ROWS:
        others = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()) if k != "OK") or "none"
        lines.append(f"| {scenario} | {r.sent} | {r.statuses.get('OK', 0)} | {others} | {r.lost} | {note} |")
    out = ROOT / "bench" / "RELIABILITY.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
