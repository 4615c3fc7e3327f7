"""Wire <-> numpy conversion and its validation."""

from __future__ import annotations

import numpy as np
import pytest
from meshserve.v1 import types_pb2

from meshserve_runtime.codecs import decode_frame, decode_tensor, encode_frame, encode_tensor, float_column, int_column
from meshserve_runtime.errors import InvalidArgument


def test_frame_round_trip_keeps_types_and_nulls() -> None:
    cols = {"a": float_column(np.array([1.5, 0.0, 3.0]), np.array([False, True, False])), "k": int_column([7, 8, 9])}
    back = decode_frame(encode_frame(cols, 3))
    assert back["a"].kind == "double_values" and back["k"].kind == "int64_values"
    np.testing.assert_array_equal(back["a"].values, [1.5, 0.0, 3.0])
    np.testing.assert_array_equal(back["a"].null, [False, True, False])
    assert back["k"].null is None
    np.testing.assert_array_equal(back["k"].values, [7, 8, 9])


@pytest.mark.parametrize(
    "frame, message",
    [
        (types_pb2.Frame(num_rows=2, columns=[types_pb2.Column(name="a", double_values=types_pb2.DoubleValues(values=[1.0]))]), "has 1 values"),
        (types_pb2.Frame(num_rows=1, columns=[types_pb2.Column(name="a")]), "has no values"),
        (types_pb2.Frame(num_rows=1, columns=[types_pb2.Column(double_values=types_pb2.DoubleValues(values=[1.0]))]), "needs a name"),
        (
            types_pb2.Frame(num_rows=1, columns=[types_pb2.Column(name="a", double_values=types_pb2.DoubleValues(values=[1.0]), null_mask=[True, False])]),
            "null_mask has 2",
        ),
        (
            types_pb2.Frame(num_rows=1, columns=[types_pb2.Column(name="a", int64_values=types_pb2.Int64Values(values=[1]))] * 2),
            "appears twice",
        ),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: types_pb2.Frame, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_frame(frame)


def test_frame_row_limit() -> None:
    frame = encode_frame({"a": int_column(range(5))}, 5)
    with pytest.raises(InvalidArgument, match="at most 4"):
        decode_frame(frame, max_rows=4)


def test_tensor_round_trip_is_little_endian() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = encode_tensor(x)
    assert t.dtype == types_pb2.DTYPE_FLOAT32 and list(t.shape) == [2, 3]
    assert t.data == x.astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_tensor(t), x)


def test_tensor_byte_length_must_match_shape() -> None:
    t = types_pb2.Tensor(shape=[2, 3], dtype=types_pb2.DTYPE_FLOAT32, data=b"\0" * 20)
    with pytest.raises(InvalidArgument, match="needs 24"):
        decode_tensor(t)
    with pytest.raises(InvalidArgument, match="not supported"):
        decode_tensor(types_pb2.Tensor(shape=[1], dtype=types_pb2.DTYPE_UNSPECIFIED, data=b""))


def test_frame_columns_checks_like_decode_frame_and_keeps_plain_values() -> None:
    from meshserve_runtime.codecs import frame_columns

    f = types_pb2.Frame(num_rows=3)
    f.columns.add(name="a").int64_values.values.extend([1, 2, 3])
    b = f.columns.add(name="b")
    b.double_values.values.extend([0.5, 0.0, 2.0])
    b.null_mask.extend([False, True, False])
    c = f.columns.add(name="c")
    c.string_values.values.extend(["x", "y", "z"])
    c.null_mask.extend([False, False, False])  # an all-False mask means no nulls
    raw = frame_columns(f)
    assert [(n, col.kind, list(col.values)) for n, col in raw.items()] == [
        ("a", "int64_values", [1, 2, 3]), ("b", "double_values", [0.5, 0.0, 2.0]), ("c", "string_values", ["x", "y", "z"])]
    assert list(raw["b"].null or []) == [False, True, False] and raw["a"].null is None and raw["c"].null is None
    decoded = decode_frame(f)
    assert {n: d.values.tolist() for n, d in decoded.items()} == {n: list(col.values) for n, col in raw.items()}
    assert decoded["b"].null is not None and decoded["b"].null.tolist() == [False, True, False] and decoded["c"].null is None
    f.columns[0].int64_values.values.append(4)
    with pytest.raises(InvalidArgument, match="column 'a' has 4 values but frame.num_rows is 3"):
        frame_columns(f)
