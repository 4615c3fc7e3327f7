"""`make fuzz`: every harness under atheris for a while, then a summary in fuzz/RESULTS.md.

    python -m fuzz.run [--seconds 60 | --runs N] [--only gateway,model] [--out fuzz/RESULTS.md]

Each harness runs in its own process (fuzz.run_one) on a corpus kept under
$MESHSERVE_HOME/fuzz/NAME/corpus (seeded with valid requests; it grows across runs), with
findings written to $MESHSERVE_HOME/fuzz/NAME/findings/. Exit status 1 if any harness
found something.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from fuzz.run_one import HARNESSES

RPCS = {
    "gateway": "PredictionService/PredictEntities, /Predict",
    "features": "FeatureService/GetOnlineFeatures",
    "preprocess": "PreprocessService/Transform",
    "model": "GRPCInferenceService/ModelInfer",
}

#: Found while these harnesses were built, each fixed in the parsing code with a regression
#: test (tests/unit/test_fuzz_harnesses.py, tests/e2e/test_hostile_wire.py).
FIXED = (
    "(fuzzer) preprocess: finite values past float32's range (1e308, or ones the scaler blows up) came out as "
    "infinity in the tensor sent to the model; Transform now refuses the row (INVALID_ARGUMENT).",
    "(fuzzer) every service: an error message quoting a huge caller-sent string (model name, run id, column name) "
    "went past the caller's metadata limit, so the caller got RESOURCE_EXHAUSTED instead of the real status; "
    "the interceptor now cuts messages to 1 KiB, keeping both ends.",
    "(probing what the fuzzers' inputs cost) gateway, features, preprocess: one 3 MB row of 100,000 keys, or a frame of 100,000 columns, cost seconds "
    "of CPU on the event loop before any refusal; rows are capped by the gateway's max_row_values (default 32) "
    "and frames at 1024 columns, checked before any per-value work.",
)

#: Past the fuzzing time, how long a harness may take to start (torch, sklearn, ONNX) and stop.
STARTUP_MARGIN_S = 180.0


@dataclass(slots=True)
class Result:
    name: str
    returncode: int
    wall_s: float
    execs: int = 0
    execs_per_s: int = 0
    coverage: int = 0
    corpus: int = 0
    peak_rss_mb: int = 0
    finding: str | None = None
    """Kind and first line (e.g. "crash: fuzz.harness.Finding: ..."), None when clean."""
    artifact: str | None = None
    log: str = ""


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def parse(name: str, output: str, returncode: int, wall_s: float) -> Result:
    """Read libFuzzer's status lines, final stats and any error report."""
    result = Result(name, returncode, wall_s, log=output)
    result.execs = _last_int(r"stat::number_of_executed_units: (\d+)", output) or _last_int(r"(?m)^#(\d+)\s", output)
    result.execs_per_s = _last_int(r"stat::average_exec_per_sec: (\d+)", output) or _last_int(r"exec/s: (\d+)", output)
    result.coverage = _last_int(r"\bcov: (\d+)", output)
    result.corpus = _last_int(r"\bcorp: (\d+)/", output)
    result.peak_rss_mb = _last_int(r"stat::peak_rss_mb: (\d+)", output) or _last_int(r"\brss: (\d+)Mb", output)
    artifact = re.findall(r"Test unit written to (\S+)", output)
    result.artifact = artifact[-1] if artifact else None
    error = re.search(r"ERROR: libFuzzer: ([^\n]+)", output)
    if "=== Uncaught Python exception: ===" in output:
        block = output.split("=== Uncaught Python exception: ===", 1)[1]
        lines = [line for line in block.splitlines() if line.strip()]
        result.finding = "crash: " + (lines[0].strip() if lines else "uncaught exception")  # the exception's first line
    elif error is not None:
        result.finding = error.group(1).strip()  # timeout, out-of-memory, ...
    elif returncode != 0:
        result.finding = f"exited with status {returncode}"
    return result


def run_harness(
    name: str,
    work: Path,
    *,
    seconds: float | None = None,
    runs: int | None = None,
    timeout_s: int = 10,
    rss_limit_mb: int = 2048,
    max_len: int = 4096,
    extra: list[str] | None = None,
    python: str = sys.executable,
) -> Result:
    """One harness in its own process; returns what it did and found."""
    corpus = work / name / "corpus"
    findings = work / name / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    cmd = [
        python, "-m", "fuzz.run_one", name, "--seeds", str(corpus),
        f"-timeout={timeout_s}", f"-rss_limit_mb={rss_limit_mb}", f"-max_len={max_len}",
        f"-artifact_prefix={findings}/", "-print_final_stats=1",
    ]
    if seconds is not None:
        cmd.append(f"-max_total_time={int(seconds)}")
    if runs is not None:
        cmd.append(f"-runs={runs}")
    cmd += extra or []
    limit = (seconds or 0) + STARTUP_MARGIN_S + (runs or 0) * 0.05
    start = time.monotonic()
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        result = parse(name, output, -9, time.monotonic() - start)
        result.finding = f"no exit after {limit:.0f} s (a hang outside libFuzzer's per-input timeout)"
        return result
    (work / name / "last-run.log").write_text(output)
    return parse(name, output, proc.returncode, time.monotonic() - start)


def render(results: list[Result], seconds: float | None, runs: int | None) -> str:
    budget = f"{int(seconds)} s per harness" if seconds is not None else f"{runs} inputs per harness"
    lines = [
        "# Fuzzing results",
        "",
        f"Last `make fuzz`: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {budget}, atheris {version('atheris')}, "
        f"Python {sys.version.split()[0]}, protobuf {version('protobuf')}, grpcio {version('grpcio')}.",
        "",
        "Each harness sends fuzzer bytes through the service's request deserializer, the shared",
        "ServerInterceptor and the real servicer, as serialized protobuf and as structured hostile",
        "requests (see `fuzz/__init__.py`); a finding is any outcome other than a valid response or",
        "a refusal with an allowed status and a message, an input slower than libFuzzer's",
        "-timeout, or memory past -rss_limit_mb. Replay one input with",
        "`.venv/bin/python -m fuzz.run_one NAME FILE`.",
        "",
        "| harness | RPCs | seconds | inputs run | inputs/s | coverage (edges) | corpus | peak RSS | findings |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        found = "none" if r.finding is None else f"1: {r.finding}"
        lines.append(
            f"| {r.name} | {RPCS[r.name]} | {r.wall_s:.0f} | {r.execs} | {r.execs_per_s} | {r.coverage} | {r.corpus} "
            f"| {r.peak_rss_mb} MB | {found} |"
        )
    crashed = [r for r in results if r.finding is not None]
    if crashed:
        lines += ["", "## Findings of this run", ""]
        for r in crashed:
            where = f" (input: `{r.artifact}`)" if r.artifact else ""
            lines.append(f"- {r.name}: {r.finding}{where}")
    lines += ["", "## Found while building the harnesses, fixed", "", *(f"- {item}" for item in FIXED)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    home = Path(os.environ.get("MESHSERVE_HOME", ".meshserve"))
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None, help="fuzzing time per harness (default: $FUZZ_SECONDS or 60)")
    budget.add_argument("--runs", type=int, default=None, help="a fixed number of inputs per harness instead of a time")
    parser.add_argument("--only", default=",".join(HARNESSES), help="comma-separated harnesses (default: all)")
    parser.add_argument("--out", default="fuzz/RESULTS.md", help="summary file ('-': print only)")
    parser.add_argument("--work", type=Path, default=home / "fuzz", help="corpora, findings and logs")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a finding")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory past which the run is a finding")
    parser.add_argument("--max-len", type=int, default=4096, help="longest fuzzer input in bytes")
    args = parser.parse_args(argv)
    seconds = args.seconds
    if seconds is None and args.runs is None:
        seconds = float(os.environ.get("FUZZ_SECONDS", "60"))
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        parser.error(f"unknown harness(es) {unknown}; choose from {list(HARNESSES)}")
    results = []
    for name in names:
        print(f"fuzzing {name} ({RPCS[name]})...", flush=True)
        r = run_harness(
            name, args.work, seconds=seconds, runs=args.runs,
            timeout_s=args.timeout, rss_limit_mb=args.rss_limit_mb, max_len=args.max_len,
        )
        print(f"  {r.execs} inputs in {r.wall_s:.0f} s, coverage {r.coverage}, finding: {r.finding or 'none'}", flush=True)
        results.append(r)
    summary = render(results, seconds, args.runs)
    if args.out != "-":
        Path(args.out).write_text(summary)
        print(f"wrote {args.out}")
    else:
        print(summary)
    return 1 if any(r.finding for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
