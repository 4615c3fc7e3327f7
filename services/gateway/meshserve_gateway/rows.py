"""Row-oriented request messages -> the columnar Frame the internal services take."""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
import numpy as np
from meshserve.v1 import types_pb2

from meshserve_runtime.codecs import KIND_BOOL, KIND_DOUBLE, KIND_INT64, KIND_STRING
from meshserve_runtime.errors import InvalidArgument, ServiceError, from_rpc_error

_KIND_OF_VALUE = {
    "int64_value": KIND_INT64,
    "double_value": KIND_DOUBLE,
    "string_value": KIND_STRING,
    "bool_value": KIND_BOOL,
}
_PLACEHOLDER = {KIND_INT64: 0, KIND_DOUBLE: 0.0, KIND_STRING: "", KIND_BOOL: False}


def rows_to_frame(rows: Sequence[types_pb2.Row], field: str, *, allow_null: bool, max_values: int | None = None) -> types_pb2.Frame:
    """Every row must have the same keys; a column's type is its values' common type
    (int64 and double mix to double); null is allowed only where the caller says."""
    first = rows[0].values
    if not first:
        raise InvalidArgument(f"{field}[0] has no values")
    # Checked before any per-key work, which costs microseconds per cell; later rows
    # must match row 0's key count, so this bounds the whole batch.
    if max_values is not None and len(first) > max_values:
        raise InvalidArgument(f"{field}[0] has {len(first)} values; at most {max_values} per row are accepted (gateway max_row_values)")
    names = sorted(first.keys())
    if "" in first:
        raise InvalidArgument(f"{field}[0] has a value with an empty name")
    name_set = set(names)
    cells: dict[str, list] = {name: [] for name in names}
    for i, row in enumerate(rows):
        values = row.values
        if len(values) != len(names) or set(values.keys()) != name_set:
            missing = sorted(name_set - set(values.keys()))
            extra = sorted(set(values.keys()) - name_set)
            detail = f"missing {missing}" if missing else f"unexpected {extra}"
            raise InvalidArgument(f"{field}[{i}] has a different key set than {field}[0]: {detail}")
        for name in names:
            cells[name].append(values[name])
    frame = types_pb2.Frame(num_rows=len(rows))
    for name in names:
        _fill_column(frame.columns.add(name=name), cells[name], f"{field}[*].{name}", allow_null)
    return frame


def _fill_column(column: types_pb2.Column, values: list[types_pb2.Value], where: str, allow_null: bool) -> None:
    """Type the column from its values and write them straight into the proto: no numpy
    round trip, which cost more than the rest of a one-row request's conversion."""
    kinds = [v.WhichOneof("kind") for v in values]
    present = set(kinds)
    if None in present:
        raise InvalidArgument(f"{where} row {kinds.index(None)} has no value set")
    nulls = "null_value" in present
    if nulls:
        if not allow_null:
            raise InvalidArgument(f"{where} row {kinds.index('null_value')} is null; a value is required here")
        present.discard("null_value")
    col_kinds = {_KIND_OF_VALUE[k] for k in present}
    if not col_kinds:
        kind = KIND_DOUBLE
    elif col_kinds == {KIND_INT64, KIND_DOUBLE}:
        kind = KIND_DOUBLE
    elif len(col_kinds) == 1:
        kind = next(iter(col_kinds))
    else:
        raise InvalidArgument(f"{where} mixes types {sorted(k.removesuffix('_values') for k in col_kinds)}")
    if not nulls and len(present) == 1:  # the common case: one oneof field throughout
        attr = next(iter(present))
        data = [getattr(v, attr) for v in values]
    else:
        placeholder = _PLACEHOLDER[kind]
        data = [placeholder if k == "null_value" else getattr(v, k) for v, k in zip(values, kinds)]
    if kind == KIND_DOUBLE and "int64_value" in present:
        data = [float(x) for x in data]  # int64 cells of a double column: round to nearest, as numpy does
    getattr(column, kind).values.extend(data)
    if nulls:
        column.null_mask.extend([k == "null_value" for k in kinds])


def describe_row(row: types_pb2.Row) -> str:
    """driver_id=1001, customer_id=2001 — for error messages."""
    parts = []
    for name in sorted(row.values):
        v = row.values[name]
        kind = v.WhichOneof("kind")
        parts.append(f"{name}={getattr(v, kind) if kind and kind != 'null_value' else 'null'}")
    return ", ".join(parts)


# --- Frame slicing and concatenation, straight on the proto (no numpy round trip):
# used to cut a big batch into chunks and to merge coalesced callers into one call.

FrameSchema = tuple[tuple[str, str], ...]


def frame_schema(frame: types_pb2.Frame) -> FrameSchema:
    """(name, kind) per column: only frames with the same schema may be concatenated."""
    return tuple((col.name, col.WhichOneof("values") or "") for col in frame.columns)


def slice_frame(frame: types_pb2.Frame, start: int, stop: int) -> types_pb2.Frame:
    """Rows [start, stop) of a frame."""
    out = types_pb2.Frame(num_rows=stop - start)
    for col in frame.columns:
        kind = col.WhichOneof("values")
        new = out.columns.add(name=col.name)
        if kind is not None:
            getattr(new, kind).values.extend(getattr(col, kind).values[start:stop])
        if len(col.null_mask):
            mask = col.null_mask[start:stop]
            if any(mask):
                new.null_mask.extend(mask)
    return out


def concat_frames(frames: Sequence[types_pb2.Frame]) -> types_pb2.Frame:
    """Frames of one schema, one after the other (null masks padded where absent)."""
    if len(frames) == 1:
        return frames[0]
    out = types_pb2.Frame(num_rows=sum(f.num_rows for f in frames))
    for c, first in enumerate(frames[0].columns):
        kind = first.WhichOneof("values")
        new = out.columns.add(name=first.name)
        any_null = any(len(f.columns[c].null_mask) for f in frames)
        for f in frames:
            col = f.columns[c]
            if kind is not None:
                getattr(new, kind).values.extend(getattr(col, kind).values)
            if any_null:
                new.null_mask.extend(col.null_mask if len(col.null_mask) else [False] * f.num_rows)
    return out


def check_finite(frame: types_pb2.Frame, field: str) -> None:
    """NaN/infinity in raw rows is the caller's error: refuse it here, before the rows can
    share a coalesced preprocess call with other callers' rows."""
    for col in frame.columns:
        if col.WhichOneof("values") != KIND_DOUBLE:
            continue
        values = np.asarray(col.double_values.values, dtype=np.float64)
        finite = np.isfinite(values)
        if len(col.null_mask):
            finite |= np.asarray(col.null_mask, dtype=bool)
        if not finite.all():
            i = int(np.argmin(finite))
            what = "NaN" if np.isnan(values[i]) else "infinity"
            raise InvalidArgument(f"{field}[{i}].{col.name} is {what}; raw feature values must be finite (use null for a missing value)")


# --- Row errors from downstream: the row named must be the caller's row.

_ROW_PREFIX = re.compile(r"row (\d+)\b")


class RowError(InvalidArgument):
    """A hop's INVALID_ARGUMENT about one row of the frame it was sent. That frame may be
    a chunk of the caller's batch, or only the caller's entities that had features, so
    the row is kept apart from the text and rebased (`at`) to the caller's own row."""

    def __init__(self, hop: str, row: int, rest: str) -> None:
        super().__init__(f"{hop}: row {row}{rest}")
        self.hop = hop
        self.row = row
        self.rest = rest

    def at(self, row: int) -> RowError:
        return RowError(self.hop, row, self.rest)


def downstream_error(err: grpc.aio.AioRpcError, hop: str) -> ServiceError:
    """from_rpc_error, but a row error (preprocess starts those with "row N", N counted
    from 0 in the frame it got; see meshserve_preprocess.transformer.row_error) becomes a
    RowError the gateway can rebase. Only on the error path: nothing on the success path."""
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        details = err.details() or ""
        match = _ROW_PREFIX.match(details)
        if match is not None:
            return RowError(hop, int(match[1]), details[match.end():])
    return from_rpc_error(err, hop)
