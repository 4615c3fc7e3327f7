"""Decoded columns -> the pipeline's float64 input matrix, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from meshserve_runtime.codecs import KIND_DOUBLE, KIND_INT64, KIND_STRING, ColumnData
from meshserve_runtime.errors import InvalidArgument

from meshserve_preprocess.transformer import LoadedPreprocessor

COLUMNS = ("a", "b", "c")


def loaded() -> LoadedPreprocessor:
    return LoadedPreprocessor(artifact=None, pipeline=None, input_columns=COLUMNS, num_outputs=3)  # type: ignore[arg-type]


def test_columns_land_in_signature_order_with_ints_cast_and_nulls_as_nan() -> None:
    cols = {
        "c": ColumnData(KIND_DOUBLE, np.array([0.5, 0.0]), np.array([False, True])),
        "a": ColumnData(KIND_INT64, np.array([3, -(2**53) - 1], dtype=np.int64)),
        "b": ColumnData(KIND_DOUBLE, np.array([1.25, 2.5])),
    }
    x = loaded().to_matrix(cols, 2)
    assert x.dtype == np.float64 and x.shape == (2, 3)
    np.testing.assert_array_equal(x[:, 0], np.array([3, -(2**53) - 1], dtype=np.int64).astype(np.float64))
    np.testing.assert_array_equal(x[:, 1], [1.25, 2.5])
    assert x[0, 2] == 0.5 and np.isnan(x[1, 2])  # the null, whatever its placeholder was


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_first_non_finite_cell_by_column_then_row_is_named(bad: float) -> None:
    cols = {
        "a": ColumnData(KIND_DOUBLE, np.array([1.0, 2.0, 3.0])),
        "b": ColumnData(KIND_DOUBLE, np.array([1.0, 2.0, bad]), np.array([True, False, False])),  # row 0 null: fine
        "c": ColumnData(KIND_DOUBLE, np.array([bad, 1.0, 1.0])),
    }
    with pytest.raises(InvalidArgument) as err:
        loaded().to_matrix(cols, 3)
    # "row N" first: the gateway rebases it to the caller's row when it sent a chunk.
    assert err.value.message.startswith("row 2 column 'b' is ") and "mark a missing value as null" in err.value.message


def test_a_non_numeric_column_is_refused_by_name() -> None:
    cols = {
        "a": ColumnData(KIND_DOUBLE, np.array([1.0])),
        "b": ColumnData(KIND_STRING, np.array(["x"], dtype=object)),
        "c": ColumnData(KIND_DOUBLE, np.array([1.0])),
    }
    with pytest.raises(InvalidArgument, match="column 'b' must be double or int64, got string"):
        loaded().to_matrix(cols, 1)
