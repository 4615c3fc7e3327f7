"""What one library call costs right after another, and after the process sat still.

`python -m bench.idle_cost [CALLS] [--json PATH]` prints a markdown table: the median time of each call
back to back, after 5 ms asleep (as every service is at c=1 while the others work), and
after 5 ms busy in a Python loop. The calls are the native work on the c=1 path, built
the way the services build it, from the demo's own classes, fitted on random data (no
registry needed): numpy, torch, the ONNX Runtime graph of the demo preprocessor
(compiled by the preprocess service's own `compile_pipeline`), and the demo MLP as the
model service serves it (jit trace, frozen, optimized for inference). A pure-Python loop
is the control. `make bench` runs it after the floors and puts the table in RESULTS.md,
so each run carries its VM's figures; bench/NOTES.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PAUSE_S = 0.005
WARM_CALLS = 50


def _calls() -> dict[str, Callable[[], object]]:
    import torch
    from meshserve_model.model import traced_for_inference
    from meshserve_preprocess.compiled import compile_pipeline
    from meshserve_training.model import RankingMLP
    from meshserve_training.preprocessor import build_preprocessor

    torch.set_num_threads(1)  # as the model service runs at a 1-CPU limit
    n = 6
    x64 = np.random.default_rng(0).normal(size=(500, n))
    transform = compile_pipeline(build_preprocessor().fit(x64), n)
    # The model service's own trace-freeze-optimize step (with its check against the module).
    served = traced_for_inference(RankingMLP(n).eval(), n, torch.device("cpu"), torch.float32)
    if served is None:
        raise RuntimeError("the demo MLP did not trace as the model service traces it (see the log above)")
    row64 = np.zeros((1, n))
    row32 = np.zeros((1, n), dtype=np.float32)
    tensor = torch.zeros(1, n)

    def forward() -> object:
        with torch.inference_mode():
            return served(torch.from_numpy(row32)).numpy()

    def python_loop() -> object:
        total = 0
        for i in range(2000):
            total += i
        return total

    return {
        "numpy `astype` of a 1x6 array": lambda: row64.astype(np.float32),
        "torch `x + 1` on a 1x6 tensor": lambda: tensor + 1,
        "ONNX Runtime, the demo preprocessor's graph, 1 row": lambda: transform(row64),
        "the demo MLP as the model service serves it, batch 1": forward,
        "a pure-Python 2,000-iteration loop (control)": python_loop,
    }


def _median_us(call: Callable[[], object], pause: str, calls: int) -> float:
    times = []
    for _ in range(calls):
        if pause == "sleep":
            time.sleep(PAUSE_S)
        elif pause == "spin":
            end = time.perf_counter() + PAUSE_S
            while time.perf_counter() < end:
                pass
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(calls: int) -> list[dict[str, float | str]]:
    """Each call's median time back to back, after PAUSE_S asleep, and after PAUSE_S busy."""
    rows: list[dict[str, float | str]] = []
    for name, call in _calls().items():
        for _ in range(WARM_CALLS):
            call()
        rows.append({"call": name, "hot_us": _median_us(call, "", calls), "asleep_us": _median_us(call, "sleep", calls),
                     "busy_us": _median_us(call, "spin", calls)})
    return rows


def table(rows: list[dict[str, float | str]], calls: int) -> list[str]:
    """Markdown rows: each median, and after a pause its multiple of the back-to-back one."""
    pause = f"{PAUSE_S * 1e3:g} ms"
    lines = [f"| call (median of {calls}) | back to back | after {pause} asleep | after {pause} busy in Python |",
             "|---|---|---|---|"]
    for r in rows:
        hot, asleep, busy = float(r["hot_us"]), float(r["asleep_us"]), float(r["busy_us"])
        lines.append(f"| {r['call']} | {hot:.1f} us | {asleep:.1f} us ({asleep / hot:.0f}x) | {busy:.1f} us ({busy / hot:.0f}x) |")
    return lines


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.idle_cost [CALLS] [--json PATH]`: print the table; with --json, also
    write the medians there (`make bench` keeps them in results.json)."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle_cost", description=__doc__.splitlines()[0])
    parser.add_argument("calls", nargs="?", type=int, default=300, help="timed calls per median (default 300)")
    parser.add_argument("--json", type=Path, help="also write the medians to this file")
    args = parser.parse_args(argv)
    rows = measure(args.calls)
    print("\n".join(table(rows, args.calls)))
    if args.json is not None:
        args.json.write_text(json.dumps({"calls": args.calls, "pause_ms": PAUSE_S * 1e3, "rows": rows}))


if __name__ == "__main__":
    main()
