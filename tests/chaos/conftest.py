"""Fault scenarios on the real processes; each records a row of bench/RELIABILITY.md.

`make chaos` runs them and rewrites the scenario table, `make soak` runs the soak and
rewrites its section (both with MESHSERVE_RELIABILITY_REPORT=1); a plain pytest run of
them leaves the file alone.
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


HEADER = [
    "# meshserve reliability",
    "",
    "Fault scenarios (`make chaos`) and a soak (`make soak`): each is an automated test in tests/chaos/ "
    "on the real processes on loopback; each run rewrites only its own section below.",
    "",
]


SECTIONS = ("chaos", "soak")  # in the order the file lists them


def read_sections(text: str) -> dict[str, list[str]]:
    """The body lines of each marked section of `text` (none from the old one-table layout)."""
    found: dict[str, list[str]] = {}
    for name in SECTIONS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text and end in text:
            found[name] = text.partition(begin)[2].partition(end)[0].strip("\n").split("\n")
    return found


def render(sections: dict[str, list[str]]) -> str:
    lines = list(HEADER)
    for name in SECTIONS:
        if name in sections:
            lines += [f"<!-- {name}:begin -->", *sections[name], f"<!-- {name}:end -->", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def run_line(what: str) -> str:
    return f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores){what}."


def chaos_section(rows: list[tuple[str, LoadResult, str]]) -> list[str]:
    lines = [
        "## Fault scenarios (`make chaos`)",
        "",
        run_line(""),
        "Gateways call the internal services, and the replica scenarios' callers call the gateways, with "
        "client-side round_robin, grpc.health.v1 health checking (only SERVING replicas get calls) and "
        "throttled retries of UNAVAILABLE and CANCELLED (meshserve_runtime.channels.service_config). "
        "\"lost\" counts calls that never got an answer.",
        "",
        "| scenario | requests sent | answered OK | answered with another status | lost | note |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, r, note in rows:
        others = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()) if k != "OK") or "none"
        lines.append(f"| {scenario} | {r.sent} | {r.statuses.get('OK', 0)} | {others} | {r.lost} | {note} |")
    return lines


SOAK: list[list[str]] = []


@pytest.fixture
def record_soak():
    """Hand the soak's section (markdown lines) to the report."""
    return SOAK.append


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MESHSERVE_RELIABILITY_REPORT") != "1" or not (ROWS or SOAK):
        return
    out = ROOT / "bench" / "RELIABILITY.md"
    out.parent.mkdir(exist_ok=True)
    sections = read_sections(out.read_text()) if out.exists() else {}
    if ROWS:
        sections["chaos"] = chaos_section(ROWS)
    if SOAK:
        sections["soak"] = SOAK[-1]
    out.write_text(render(sections))
