"""bench.idle_cost builds the demo's preprocessor graph and served MLP and times them (smoke)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idle_cost_prints_a_row_of_three_timings_per_call() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.idle_cost", "3"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and " us" in line]
    assert len(rows) == 5, result.stdout
    for row in rows:
        times = [float(t) for t in re.findall(r"([0-9.]+) us", row)]
        assert len(times) == 3 and all(t > 0 for t in times), row
