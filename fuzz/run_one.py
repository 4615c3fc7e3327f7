"""Run one harness under atheris (libFuzzer).

    python -m fuzz.run_one NAME [--seeds DIR] [libFuzzer flags and corpus dirs or files...]

--seeds DIR writes the harness's seed inputs (valid requests) into DIR and fuzzes with DIR
as the first corpus directory (new inputs are added there). A file instead of a
directory replays that one input, e.g. a crash file from fuzz/RESULTS.md.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import atheris

if TYPE_CHECKING:
    from fuzz.harness import Harness

HARNESSES = ("gateway", "features", "preprocess", "model")

#: Packages whose Python code gets coverage instrumentation (the parsing under test, and
#: the harness's builders so the fuzzer learns to reach their branches).
INSTRUMENTED = ("meshserve_runtime", "meshserve_gateway", "meshserve_features", "meshserve_preprocess", "meshserve_model", "fuzz")


def load(name: str) -> Harness:
    if name not in HARNESSES:
        raise SystemExit(f"unknown harness {name!r}; one of {', '.join(HARNESSES)}")
    return importlib.import_module(f"fuzz.{name}").HARNESS


def write_seeds(harness: Harness, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for label, data in harness.seeds:
        (directory / f"seed-{label}").write_bytes(data)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv if argv is None else argv)
    if len(args) < 2 or args[1].startswith("-"):
        raise SystemExit(__doc__)
    name = args.pop(1)
    seeds: Path | None = None
    if "--seeds" in args:
        i = args.index("--seeds")
        seeds = Path(args[i + 1])
        del args[i : i + 2]
    # Instrument while importing: only modules imported inside this block get coverage.
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        harness = load(name)
    if seeds is not None:
        write_seeds(harness, seeds)
        args.insert(1, str(seeds))

    def one_input(data: bytes) -> None:
        harness.run(data)

    atheris.Setup(args, one_input)
    atheris.Fuzz()  # exits the process: 0 when done, non-zero on a finding


if __name__ == "__main__":
    main()
