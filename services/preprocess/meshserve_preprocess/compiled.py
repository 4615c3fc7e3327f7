"""A compiled equivalent of the registered scikit-learn pipeline (skl2onnx + ONNX Runtime).

scikit-learn's ColumnTransformer.transform costs milliseconds per call whatever the row
count (validation and dispatch overhead); ONNX Runtime runs the same fitted arithmetic in
tens of microseconds. The registered scikit-learn artifact stays the source of truth: the
compiled graph is checked against it at load on a probe set, and a difference above
MAX_ABS_DIFF refuses the load (the service stays not-ready) rather than serve skew.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_ABS_DIFF = 1e-6


class CompileMismatch(RuntimeError):
    """The compiled graph does not reproduce the registered pipeline closely enough."""


class CompiledTransform:
    """Callable float64 [n, k] -> float32 [n, m] through one ONNX Runtime session."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # ONNX-ML's Imputer has no double kernel: the graph computes in float32, the
        # precision the model consumes anyway; the load-time check bounds the difference.
        # A value past float32's range becomes inf here on purpose: the servicer refuses
        # non-finite outputs with INVALID_ARGUMENT, so numpy's warning is only noise.
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        return self._session.run(None, {self._input: x32})[0]


def compile_pipeline(pipeline: Any, num_columns: int) -> CompiledTransform:
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    graph = to_onnx(pipeline, initial_types=[("X", FloatTensorType([None, num_columns]))], target_opset={"": 18, "ai.onnx.ml": 3})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs: a thread pool only adds hand-off latency
    options.inter_op_num_threads = 1
    return CompiledTransform(ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"]))


def probe_set(pipeline: Any, num_columns: int, rows: int = 512, seed: int = 0) -> np.ndarray:
    """Inputs in the range the pipeline was fitted on (from its scalers' statistics when it
    has them), plus missing values in every column, so imputation is checked too."""
    rng = np.random.default_rng(seed)
    center = np.zeros(num_columns)
    spread = np.ones(num_columns)
    for _, est, cols in getattr(pipeline, "transformers_", []):
        steps = getattr(est, "steps", [("", est)])
        for _, step in steps:
            if hasattr(step, "mean_") and hasattr(step, "scale_") and step.mean_ is not None:
                center[cols] = step.mean_
                spread[cols] = step.scale_
    x = center + spread * rng.normal(scale=2.0, size=(rows, num_columns))
    for i in range(num_columns * 4):  # each column missing on its own, a few times
        x[i, i % num_columns] = np.nan
    x[-1] = np.nan  # and a row with nothing at all
    return x


def check(compiled: CompiledTransform, pipeline: Any, probe: np.ndarray) -> float:
    """Largest |compiled - registered| on the probe; CompileMismatch above MAX_ABS_DIFF."""
    expected = np.asarray(pipeline.transform(probe), dtype=np.float32)
    got = compiled(probe)
    if got.shape != expected.shape:
        raise CompileMismatch(f"compiled preprocessor returns shape {got.shape}, the registered one {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if expected.size else 0.0
    if not diff <= MAX_ABS_DIFF:
        raise CompileMismatch(
            f"compiled preprocessor differs from the registered pipeline by {diff:.3g} (> {MAX_ABS_DIFF}) on the probe set; "
            "refusing to serve it (set MESHSERVE_PREPROCESS_COMPILE=none to serve the scikit-learn pipeline itself)"
        )
    return diff
