"""The atheris harnesses in fuzz/: they answer their seeds, refuse known-bad input with
the right status, report a parsing bug as a finding, and run clean under atheris for a
fixed number of inputs (and a finding there is reported and replayable)."""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest

from meshserve_runtime.errors import ServiceError

from fuzz.harness import Finding
from fuzz.run import parse, run_harness
from fuzz.run_one import HARNESSES

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module", params=HARNESSES)
def harness(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"fuzz.{request.param}")


def test_every_seed_is_a_valid_request_that_gets_an_answer(harness: ModuleType) -> None:
    assert harness.SEEDS
    for label, data in harness.SEEDS:
        outcome = harness.HARNESS.run(data)
        assert outcome.code == grpc.StatusCode.OK, (label, outcome)


def test_known_bad_inputs_are_refused_with_their_status(harness: ModuleType) -> None:
    for label, data, code, needle in harness.KNOWN_BAD:
        outcome = harness.HARNESS.run(data)
        assert outcome.code == code, (label, outcome)
        assert needle in outcome.details, (label, outcome.details)


def test_structured_mode_makes_both_valid_and_refused_requests(harness: ModuleType) -> None:
    """The FuzzedDataProvider builders are not degenerate: from random bytes they reach
    both the answer and the refusal paths, and every outcome is a clean one."""
    rng = random.Random(1)
    codes = set()
    for _ in range(300):
        selector = rng.randrange(0, 256) | 1  # structured mode, any method
        outcome = harness.HARNESS.run(bytes([selector]) + rng.randbytes(rng.randrange(0, 200)))
        codes.add(outcome.code)
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes, codes


@pytest.mark.parametrize("value", [1e308, -3.5e38, 3.4e38 * 1e5])
def test_regression_finite_values_beyond_float32_are_refused_by_preprocess(value: float) -> None:
    """Found by fuzz/preprocess.py: a finite float64 past float32's range (or one the
    scaler blows past it) became infinity in the tensor handed to the model."""
    from fuzz import preprocess

    row: list[float | None] = [0.5, 0.9, 12.0, 0.4, 1.5, 200.0]
    request = preprocess.frame([row, [*row[:3], value, *row[4:]]])
    outcome = preprocess.HARNESS.run(bytes([0]) + request.SerializeToString())
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "row 1" in outcome.details and "overflows float32" in outcome.details, outcome.details


@pytest.mark.parametrize("name", ["model_name", "preprocessor_run_id"])
def test_regression_a_huge_echoed_name_keeps_its_status(name: str) -> None:
    """Found by fuzz/model.py: an error message quoting a huge caller-sent string went past
    the caller's metadata limit, so the caller got RESOURCE_EXHAUSTED instead of the real
    status. Messages are now cut in the middle, keeping what was wrong and what is expected."""
    from fuzz import model
    from fuzz.harness import encoded_message_bytes
    from meshserve_runtime.interceptors import MAX_STATUS_MESSAGE_BYTES

    request = model.infer_request(model._X)
    if name == "model_name":
        request.model_name, code, tail = "ü" * 200_000, grpc.StatusCode.NOT_FOUND, "this server serves 'driver_ranking'"
    else:
        request.parameters["meshserve.preprocessor_run_id"].string_param = "r" * 200_000
        code, tail = grpc.StatusCode.FAILED_PRECONDITION, "retry so both come from the same release"
    outcome = model.HARNESS.run(bytes([0]) + request.SerializeToString())
    assert outcome.code == code, outcome.code
    assert outcome.details.endswith(tail) and "bytes cut" in outcome.details, outcome.details
    assert len(outcome.details.encode()) <= MAX_STATUS_MESSAGE_BYTES + 64
    assert encoded_message_bytes(outcome.details) < 8192


def test_regression_a_row_or_frame_too_wide_is_refused_before_any_work() -> None:
    """Found probing the harnesses' inputs for cost: one 3 MB row of 100,000 keys (or a
    frame of 100,000 columns) took seconds of CPU before anything refused it."""
    from meshserve.v1 import prediction_pb2, types_pb2

    from fuzz import features, gateway, preprocess
    from meshserve_runtime.codecs import MAX_FRAME_COLUMNS

    row = types_pb2.Row(values={f"feature_{i}": types_pb2.Value(double_value=0.5) for i in range(100_000)})
    outcome = gateway.HARNESS.run(bytes([2]) + prediction_pb2.PredictRequest(rows=[row]).SerializeToString())
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"rows[0] has 100000 values; at most {gateway.MAX_ROW_VALUES} per row" in outcome.details, outcome.details

    frame = types_pb2.Frame(num_rows=1)
    for i in range(100_000):
        frame.columns.add(name=f"c{i}").int64_values.values.append(1)
    wide = features.features_pb2.GetOnlineFeaturesRequest(entities=frame)
    for harness in (features.HARNESS, preprocess.HARNESS):
        request = wide if harness is features.HARNESS else preprocess.preprocess_pb2.TransformRequest(frame=frame)
        outcome = harness.run(bytes([0]) + request.SerializeToString())
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"frame has 100000 columns; at most {MAX_FRAME_COLUMNS}" in outcome.details, outcome.details


# Where each service's parsing lives, as its servicer module sees it.
PARSERS = {
    "gateway": ("meshserve_gateway.pipeline", "rows_to_frame"),
    "features": ("meshserve_features.servicer", "frame_columns"),
    "preprocess": ("meshserve_preprocess.servicer", "decode_frame"),
    "model": ("meshserve_model.servicer", "decode_input"),
}


@pytest.mark.parametrize(
    "bug, expected",
    [
        (IndexError("injected parsing bug"), "injected parsing bug"),
        (ServiceError("injected", grpc.StatusCode.UNKNOWN), "refused with UNKNOWN"),
        (ServiceError(" ", grpc.StatusCode.INVALID_ARGUMENT), "without a message"),
    ],
    ids=["unexpected-exception", "wrong-status", "no-message"],
)
def test_a_parsing_bug_is_a_finding(harness: ModuleType, monkeypatch: pytest.MonkeyPatch, bug: Exception, expected: str) -> None:
    module, name = PARSERS[harness.__name__.rsplit(".", 1)[1]]

    def broken(*args: object, **kwargs: object) -> None:
        raise bug

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    with pytest.raises(Finding) as info:
        harness.HARNESS.run(harness.SEEDS[0][1])
    assert expected in str(info.value) + repr(info.value.__cause__)


def test_a_wrong_answer_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepting input but answering for the wrong number of rows is caught too."""
    import meshserve_model.servicer as servicer

    from fuzz import model

    real = servicer.decode_input
    monkeypatch.setattr(servicer, "decode_input", lambda *a: (lambda x, raw: (x[:1], raw))(*real(*a)))
    with pytest.raises(Finding, match="2 rows in"):
        model.HARNESS.run(model.SEEDS[0][1])  # a two-row seed


@pytest.mark.parametrize("name", HARNESSES)
def test_atheris_runs_the_harness_clean_from_its_seeds(name: str, tmp_path: Path) -> None:
    result = run_harness(name, tmp_path, runs=300, timeout_s=30, extra=["-seed=1"])  # reproducible in CI
    assert result.finding is None and result.returncode == 0, result.log[-3000:]
    assert result.execs >= 300 and result.coverage > 0, result.log[-3000:]
    assert {p.name for p in (tmp_path / name / "corpus").iterdir()} >= {f"seed-{label}" for label, _ in importlib.import_module(f"fuzz.{name}").SEEDS}


def test_atheris_reports_a_finding_that_replays(tmp_path: Path) -> None:
    """A parsing bug injected into the model service: atheris stops on it, the runner
    reports it with the input it saved, and that input replays against the real code."""
    corpus, findings = tmp_path / "corpus", tmp_path / "findings"
    findings.mkdir()
    script = (
        "import meshserve_model.servicer as s\n"
        "def broken(*a, **k):\n"
        "    raise IndexError('injected parsing bug')\n"
        "s.decode_input = broken\n"
        "from fuzz.run_one import main\n"
        f"main(['run_one', 'model', '--seeds', {str(corpus)!r}, '-runs=200', '-artifact_prefix={findings}/', '-print_final_stats=1'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    result = parse("model", proc.stdout + proc.stderr, proc.returncode, 0.0)
    assert proc.returncode != 0 and result.finding is not None, result.log[-3000:]
    assert result.finding.startswith("crash:") and "Finding" in result.finding, result.finding
    assert result.artifact is not None and Path(result.artifact).is_file(), result.log[-3000:]
    replay = subprocess.run(
        [sys.executable, "-m", "fuzz.run_one", "model", result.artifact], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
