"""bench.idle_cost builds the demo's preprocessor graph and served MLP and times them (smoke)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idle_cost_prints_a_row_of_three_timings_per_call(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.idle_cost", "3", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and " us" in line]
    assert len(rows) == 5, result.stdout
    for row in rows:
        times = [float(t) for t in re.findall(r"([0-9.]+) us", row)]
        assert len(times) == 3 and all(t > 0 for t in times), row
    # The same medians, for results.json.
    saved = json.loads(out.read_text())
    assert saved["calls"] == 3 and saved["pause_ms"] == 5.0 and len(saved["rows"]) == 5
    for row, line in zip(saved["rows"], rows, strict=True):
        assert line.startswith(f"| {row['call']} | {row['hot_us']:.1f} us | {row['asleep_us']:.1f} us")
