"""Preprocess harness: Transform requests -> frame decoding, column checks, the float64
matrix, through the real PreprocessServicer.

The preprocessor is the training code's own ColumnTransformer (impute + scale), fitted on
synthetic rows at start-up and served compiled to ONNX Runtime as the service does by
default (checked against scikit-learn first), so accepted input really is transformed.
"""

from __future__ import annotations

import grpc
import numpy as np
from meshserve.v1 import preprocess_pb2, types_pb2

from meshserve_feature_repo.definitions import MODEL_FEATURES
from meshserve_preprocess.compiled import check, compile_pipeline, probe_set
from meshserve_preprocess.servicer import PreprocessServicer
from meshserve_preprocess.settings import PreprocessSettings
from meshserve_preprocess.transformer import LoadedPreprocessor
from meshserve_runtime.codecs import decode_tensor
from meshserve_runtime.protocol import PREPROCESS_HEALTH_NAME
from meshserve_runtime.registry import ResolvedArtifact
from meshserve_training.preprocessor import build_preprocessor

from fuzz.harness import Harness, Method, Rpc, require, wire_input
from fuzz.values import hostile_frame

MAX_ROWS: int = PreprocessSettings.model_fields["max_rows"].default
ARTIFACT = ResolvedArtifact(name="driver_ranking_preprocessor", version="1", run_id="fuzz-run", alias="production", source="")


def _loaded() -> LoadedPreprocessor:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, len(MODEL_FEATURES)))
    x[rng.random(x.shape) < 0.05] = np.nan  # the imputers see missing values, as in training
    pipeline = build_preprocessor().fit(x)
    num_outputs = int(np.asarray(pipeline.transform(x[:2])).shape[1])
    compiled = compile_pipeline(pipeline, len(MODEL_FEATURES))
    check(compiled, pipeline, probe_set(pipeline, len(MODEL_FEATURES)))
    return LoadedPreprocessor(ARTIFACT, pipeline, MODEL_FEATURES, num_outputs, compiled)


def _servicer() -> PreprocessServicer:
    servicer = PreprocessServicer(MAX_ROWS)
    servicer.current = _loaded()
    return servicer


_SERVICER = _servicer()
NUM_OUTPUTS = _SERVICER.current.num_outputs


def _check_response(request: preprocess_pb2.TransformRequest, response: preprocess_pb2.TransformResponse) -> None:
    n = request.frame.num_rows
    require(1 <= n <= MAX_ROWS, f"accepted a frame of {n} rows")
    x = decode_tensor(response.tensor)
    require(x.shape == (n, NUM_OUTPUTS), f"{n} rows in, tensor {x.shape} out")
    require(bool(np.isfinite(x).all()), "the tensor carries NaN or infinity (nulls must be imputed)")
    require(response.preprocessor.run_id == ARTIFACT.run_id, "the response does not name the preprocessor")


METHODS = (
    Method(
        Rpc(PREPROCESS_HEALTH_NAME, f"/{PREPROCESS_HEALTH_NAME}/Transform", _SERVICER.Transform,
            preprocess_pb2.TransformRequest, preprocess_pb2.TransformResponse),
        lambda fdp: preprocess_pb2.TransformRequest(frame=hostile_frame(fdp, MODEL_FEATURES, "double_values", MAX_ROWS)),
        _check_response,
        # FAILED_PRECONDITION: a run_id that is neither the current nor the previous version's.
        frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}),
    ),
)


def frame(rows: list[list[float | None]]) -> preprocess_pb2.TransformRequest:
    f = types_pb2.Frame(num_rows=len(rows))
    for j, name in enumerate(MODEL_FEATURES):
        col = f.columns.add(name=name)
        col.double_values.values.extend(0.0 if r[j] is None else r[j] for r in rows)
        if any(r[j] is None for r in rows):
            col.null_mask.extend(r[j] is None for r in rows)
    return preprocess_pb2.TransformRequest(frame=f)


_ROW: list[float | None] = [0.5, 0.9, 12.0, 0.4, 1.5, 200.0]
_int_column = frame([_ROW, _ROW])
_int_column.frame.columns[2].ClearField("double_values")
_int_column.frame.columns[2].int64_values.values.extend([12, 13])
_string_column = frame([_ROW])
_string_column.frame.columns[0].ClearField("double_values")
_string_column.frame.columns[0].string_values.values.append("0.5")


def _pinned(run_id: str) -> preprocess_pb2.TransformRequest:
    request = frame([_ROW])
    request.run_id = run_id
    return request


SEEDS = (
    ("one-row", wire_input(0, frame([_ROW]))),
    ("nulls", wire_input(0, frame([_ROW, [None, 0.1, None, 0.2, None, 3.0]]))),
    ("int64-column", wire_input(0, _int_column)),
    ("pinned-current-run", wire_input(0, _pinned(ARTIFACT.run_id))),
)

KNOWN_BAD = (
    ("empty-frame", wire_input(0, preprocess_pb2.TransformRequest()), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("over-the-limit", wire_input(0, frame([_ROW] * (MAX_ROWS + 1))), grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ROWS}"),
    ("infinity", wire_input(0, frame([[float("inf"), *_ROW[1:]]])), grpc.StatusCode.INVALID_ARGUMENT, "infinity"),
    # Found by this harness: finite float64 beyond float32's range came out as infinity.
    ("beyond-float32", wire_input(0, frame([_ROW, [1e308, *_ROW[1:]]])), grpc.StatusCode.INVALID_ARGUMENT, "row 1"),
    ("string-column", wire_input(0, _string_column), grpc.StatusCode.INVALID_ARGUMENT, "must be double or int64"),
    ("truncated", wire_input(0, frame([_ROW]))[:-5], grpc.StatusCode.INVALID_ARGUMENT, "not a valid meshserve.v1.TransformRequest"),
    ("unknown-run", wire_input(0, _pinned("other-run")), grpc.StatusCode.FAILED_PRECONDITION, "other-run"),
)

HARNESS = Harness(METHODS, SEEDS)
