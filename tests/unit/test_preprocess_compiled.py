"""The ONNX Runtime fast path reproduces the registered scikit-learn pipeline, or is refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from meshserve_preprocess.compiled import CompileMismatch, check, compile_pipeline, probe_set


def fitted() -> ColumnTransformer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)) * [1, 10, 1000, 0.1] + [0, 5, 2000, 1]
    x[::7, 1] = np.nan
    return ColumnTransformer(
        [
            ("a", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), [0, 1]),
            ("b", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), [2, 3]),
        ]
    ).fit(x)


def test_compiled_matches_registered_pipeline_on_probe_and_missing_values() -> None:
    ct = fitted()
    compiled = compile_pipeline(ct, 4)
    probe = probe_set(ct, 4)
    assert np.isnan(probe).any(axis=0).all()  # imputation of every column is exercised
    assert check(compiled, ct, probe) <= 1e-6
    x = probe_set(ct, 4, rows=64, seed=9)
    np.testing.assert_allclose(compiled(x), ct.transform(x).astype(np.float32), rtol=0, atol=1e-6)


def test_a_graph_that_differs_is_refused() -> None:
    ct = fitted()
    compiled = compile_pipeline(ct, 4)

    class Drifted:
        def transform(self, x: np.ndarray) -> np.ndarray:
            return ct.transform(x) + 1e-4

    with pytest.raises(CompileMismatch, match="refusing"):
        check(compiled, Drifted(), probe_set(ct, 4))
