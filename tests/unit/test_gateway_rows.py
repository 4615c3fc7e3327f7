"""Row-oriented requests -> columnar frames, and the gateway's input checks."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from meshserve.v1 import types_pb2

from meshserve_runtime.codecs import decode_frame
from meshserve_runtime.errors import InvalidArgument

from meshserve_gateway.rows import RowError, describe_row, downstream_error, rows_to_frame


def row(**values: object) -> types_pb2.Row:
    r = types_pb2.Row()
    for k, v in values.items():
        if v is None:
            r.values[k].null_value = 0
        elif isinstance(v, bool):
            r.values[k].bool_value = v
        elif isinstance(v, int):
            r.values[k].int64_value = v
        elif isinstance(v, float):
            r.values[k].double_value = v
        else:
            r.values[k].string_value = str(v)
    return r


def test_entity_rows_become_int64_columns() -> None:
    frame = rows_to_frame([row(driver_id=1001, customer_id=2001), row(driver_id=1002, customer_id=2002)], "entities", allow_null=False)
    cols = decode_frame(frame)
    assert cols["driver_id"].kind == "int64_values"
    np.testing.assert_array_equal(cols["customer_id"].values, [2001, 2002])


def test_int_and_double_mix_to_double_and_null_is_masked() -> None:
    cols = decode_frame(rows_to_frame([row(a=1, b=None), row(a=2.5, b=3.0)], "rows", allow_null=True))
    assert cols["a"].kind == "double_values"
    np.testing.assert_array_equal(cols["a"].values, [1.0, 2.5])
    np.testing.assert_array_equal(cols["b"].null, [True, False])


@pytest.mark.parametrize(
    "rows, message",
    [
        ([row(driver_id=1, customer_id=2), row(driver_id=1)], r"entities\[1\].*missing \['customer_id'\]"),
        ([row(driver_id=1), row(driver_id=1, customer_id=2)], r"unexpected \['customer_id'\]"),
        ([row(driver_id=1), row(driver_id="x")], "mixes types"),
        ([row(driver_id=None)], "is null"),
        ([types_pb2.Row()], "has no values"),
    ],
)
def test_bad_entity_rows(rows: list[types_pb2.Row], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        rows_to_frame(rows, "entities", allow_null=False)


def test_unset_value_is_rejected() -> None:
    r = types_pb2.Row()
    r.values["a"]  # present key with no kind set
    with pytest.raises(InvalidArgument, match="no value set"):
        rows_to_frame([r], "rows", allow_null=True)


def test_describe_row() -> None:
    assert describe_row(row(driver_id=1001, customer_id=2001)) == "customer_id=2001, driver_id=1001"


def test_null_among_values_is_refused_where_values_are_required() -> None:
    with pytest.raises(InvalidArgument, match=r"entities\[\*\]\.a row 1 is null"):
        rows_to_frame([row(a=1), row(a=None), row(a=3)], "entities", allow_null=False)


def test_all_null_column_is_a_masked_double_column() -> None:
    frame = rows_to_frame([row(a=None), row(a=None)], "rows", allow_null=True)
    assert list(frame.columns[0].double_values.values) == [0.0, 0.0]
    assert list(frame.columns[0].null_mask) == [True, True]


def test_column_values_keep_their_type_and_int64_in_a_double_column_rounds_as_numpy_does() -> None:
    big = 2**53 + 1  # not representable as a double: rounds to nearest
    cols = decode_frame(rows_to_frame(
        [row(x=big, s="é", b=True), row(x=0.5, s="", b=False)], "rows", allow_null=False
    ))
    assert cols["x"].values.tolist() == np.array([big, 0.5], dtype=np.float64).tolist()
    assert cols["s"].kind == "string_values" and cols["s"].values.tolist() == ["é", ""]
    assert cols["b"].kind == "bool_values" and cols["b"].values.tolist() == [True, False]
    assert all(c.null is None for c in cols.values())  # no mask written without a null


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_downstream_row_error_keeps_its_row_apart_to_be_rebased() -> None:
    err = downstream_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "row 88 {'a': 1e+300} overflows float32"), "preprocess")
    assert isinstance(err, RowError) and isinstance(err, InvalidArgument)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.row == 88
    assert err.message == "preprocess: row 88 {'a': 1e+300} overflows float32"
    moved = err.at(600)
    assert moved.message == "preprocess: row 600 {'a': 1e+300} overflows float32" and moved.row == 600
    assert err.message.endswith("row 88 {'a': 1e+300} overflows float32")  # the original is untouched


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "column 'a' must be double or int64, got bool"),  # not about a row
        (grpc.StatusCode.INVALID_ARGUMENT, "rows 3 and 4 disagree"),  # "row" must be followed by a number
        (grpc.StatusCode.INVALID_ARGUMENT, "row abc"),
        (grpc.StatusCode.UNAVAILABLE, "row 3 is fine; the service is not"),  # only INVALID_ARGUMENT names a bad row
    ],
)
def test_other_downstream_errors_pass_through_as_from_rpc_error(code: grpc.StatusCode, details: str) -> None:
    err = downstream_error(_rpc_error(code, details), "preprocess")
    assert not isinstance(err, RowError)
    assert err.code == code and err.message == f"preprocess: {details}"


@pytest.mark.parametrize("details", ["CLIENT: Sent message larger than max (18000067 vs. 16777216)",
                                     "Received message larger than max (20000000 vs. 16777216)"])
def test_a_hops_size_limit_refusal_says_which_limit_and_what_helps(details: str) -> None:
    err = downstream_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details), "features")
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.message.startswith("features: a message to or from it is bigger than the internal message limit (max_message_bytes)")
    assert "send fewer rows or smaller values" in err.message and err.message.endswith(details)
