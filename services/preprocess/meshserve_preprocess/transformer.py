"""The loaded preprocessor: the registered scikit-learn pipeline plus its input schema.

The pipeline was fitted on a float64 numpy array whose columns follow the model
signature's input names, so serving builds that array directly (no pandas per request)
and calls the very artifact training used: training and serving cannot skew.

Loading goes through meshserve_runtime.integrity: one download into a private directory,
its digest checked against the registry's `meshserve.sha256` tag, and the signature and
pipeline read from that same directory. Only the skops format is accepted, loaded with
skops itself and OUR trusted-type list: MLflow's sklearn loader would take the list from
the artifact's own MLmodel, which a crafted artifact could fill with anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshserve_runtime.codecs import KIND_DOUBLE, KIND_INT64, ColumnData
from meshserve_runtime.errors import InvalidArgument
from meshserve_runtime.integrity import UnsafeArtifact, contained, verified_download
from meshserve_runtime.registry import ResolvedArtifact, resolve_alias

from meshserve_preprocess.compiled import CompiledTransform, check, compile_pipeline, probe_set

log = logging.getLogger("meshserve.preprocess")

_NUMERIC_KINDS = (KIND_DOUBLE, KIND_INT64)


def row_error(row: int, detail: str) -> InvalidArgument:
    """A refusal about one row: "row N ..." with N counted from 0 in the frame received.
    Every row error starts so: the gateway, which may have sent a chunk of a caller's
    batch, rebases N to the caller's row (meshserve_gateway.rows.downstream_error)."""
    return InvalidArgument(f"row {row} {detail}")


@dataclass(slots=True)
class LoadedPreprocessor:
    artifact: ResolvedArtifact
    pipeline: Any
    input_columns: tuple[str, ...]
    num_outputs: int
    #: ONNX Runtime equivalent checked against `pipeline` at load (None: serve `pipeline`).
    compiled: CompiledTransform | None = None

    def to_matrix(self, columns: dict[str, ColumnData], num_rows: int) -> np.ndarray:
        """Validate the decoded columns and lay them out as the pipeline's float64 input."""
        expected = set(self.input_columns)
        missing = [c for c in self.input_columns if c not in columns]
        unknown = sorted(set(columns) - expected)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing columns {missing}")
            if unknown:
                parts.append(f"unknown columns {unknown}")
            raise InvalidArgument(f"wrong column set: {'; '.join(parts)}; expected exactly {list(self.input_columns)}")
        # Column by column only what must be (the type check and the copy in); the null and
        # finiteness work runs once on the whole matrix. Each numpy call costs tens of
        # microseconds when a call arrives after the process sat idle (measured on these
        # VMs: ~180 us for the per-column version of this method at 1 row, after 5 ms idle).
        x = np.empty((num_rows, len(self.input_columns)), dtype=np.float64)
        null: np.ndarray | None = None
        for j, name in enumerate(self.input_columns):
            col = columns[name]
            if col.kind not in _NUMERIC_KINDS:
                raise InvalidArgument(f"column {name!r} must be double or int64, got {col.kind.removesuffix('_values')}")
            x[:, j] = col.values
            if col.null is not None:
                if null is None:
                    null = np.zeros(x.shape, dtype=bool)
                null[:, j] = col.null
        finite = np.isfinite(x)
        if null is not None:
            x[null] = np.nan  # what the fitted imputers expect for a missing value
            finite |= null
        if not finite.all():
            j = int(np.argmax(~finite.all(axis=0)))  # the first offending column, then its first row
            row = int(np.argmin(finite[:, j]))
            raise row_error(
                row,
                f"column {self.input_columns[j]!r} is {x[row, j]!r}: NaN and infinity are not accepted; "
                "mark a missing value as null instead",
            )
        return x

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled(x)
        return np.asarray(self.pipeline.transform(x), dtype=np.float32)


DEFAULT_TRUSTED_TYPES = ("numpy.dtype",)
"""Types beyond skops' defaults the registered pipeline holds: SimpleImputer keeps a fitted numpy.dtype (data, not code)."""


def _load_skops(path: Path, mlmodel: Any, trusted_types: Sequence[str]) -> Any:
    """The scikit-learn object of a verified local MLflow model directory; refuse other formats."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise UnsafeArtifact(f"not an MLflow sklearn model (flavors: {sorted(mlmodel.flavors)})")
    fmt = flavor.get("serialization_format", "pickle")  # MLflow's default when the key is absent
    if fmt != "skops":
        raise UnsafeArtifact(
            f"the preprocessor is saved as {fmt!r}, which runs code when loaded; re-register it with "
            "mlflow.sklearn.log_model(..., serialization_format='skops')"
        )
    if flavor.get("code"):
        raise UnsafeArtifact("the sklearn model ships code paths; meshserve loads no code from artifacts")
    try:
        return skops.io.load(contained(path, flavor["pickled_model"]), trusted=list(trusted_types))
    except UntrustedTypesFoundException as err:
        raise UnsafeArtifact(
            f"the preprocessor holds types outside the trusted list {list(trusted_types)}: {err}; add a type to "
            "MESHSERVE_PREPROCESS_SKOPS_TRUSTED_TYPES only if it is data, never a function or a class that runs code"
        ) from err


def load_preprocessor(
    tracking_uri: str,
    name: str,
    alias: str,
    artifact: ResolvedArtifact | None = None,
    compile: str = "onnx",
    *,
    trusted_types: Sequence[str] = DEFAULT_TRUSTED_TYPES,
    allow_unsigned: bool = False,
) -> LoadedPreprocessor:
    """Load one version (by default the one the alias points at) and warm it up (blocking).

    Raises an IntegrityError for a version whose files don't match its registered digest,
    that has no digest (unless `allow_unsigned`), that is not skops, or that holds types
    outside `trusted_types` (beyond skops' own defaults).
    """
    from mlflow.models import Model

    start = time.perf_counter()
    if artifact is None:
        artifact = resolve_alias(tracking_uri, name, alias)
    # One download, verified, and everything (signature included) read from that copy.
    with verified_download(artifact, tracking_uri, allow_unsigned=allow_unsigned) as local:
        info = Model.load(str(local.path))
        pipeline = _load_skops(local.path, info, trusted_types)
    if info.signature is None or not info.signature.inputs.has_input_names():
        raise RuntimeError(f"{artifact.uri} has no input signature with column names; re-register it with one")
    columns = tuple(info.signature.inputs.input_names())
    probe = np.zeros((2, len(columns)), dtype=np.float64)
    num_outputs = int(np.asarray(pipeline.transform(probe)).shape[1])
    loaded = LoadedPreprocessor(artifact, pipeline, columns, num_outputs)
    max_diff = None
    if compile == "onnx":
        compiled = compile_pipeline(pipeline, len(columns))
        max_diff = check(compiled, pipeline, probe_set(pipeline, len(columns)))  # raises on mismatch
        loaded.compiled = compiled
    # Warm-up: the first transform of each batch shape pays one-off costs.
    for n in (1, 8, 64, 256):
        loaded.transform(np.zeros((n, len(columns)), dtype=np.float64))
    log.info(
        "preprocessor loaded",
        extra={
            **artifact.labels(),
            "sha256": local.sha256,
            "signed": local.signed,
            "columns": list(columns),
            "compiled": compile,
            "compiled_max_abs_diff": max_diff,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return loaded
