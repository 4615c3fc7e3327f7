"""Structured hostile requests from a FuzzedDataProvider.

Everything leans towards what breaks parsers: special floats, int64 extremes, odd and
huge strings, counts at, just past and far past a limit (huge repeated fields are built
by repeating one fuzzed template, so they cost the fuzzer no input bytes), lengths that
disagree with a declared count. Half the time the shape is the canonical one, so the
fuzzer also explores the paths behind the first checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import atheris
from meshserve.v1 import types_pb2

from meshserve_runtime.codecs import MAX_FRAME_COLUMNS

T = TypeVar("T")

SPECIAL_DOUBLES = (0.0, -0.0, 0.5, 1.0, -1.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, 1001.0, 2.0**63)
SPECIAL_INTS = (0, 1, -1, 1001, 2001, 2**31 - 1, 2**31, -(2**31), 2**63 - 1, -(2**63))
ODD_STRINGS = ("", " ", "\x00", "ü" * 3, "driver_id ", "DRIVER_ID", "\u202e", "a" * 300)

KINDS = ("int64_value", "double_value", "string_value", "bool_value", "null_value", None)
COLUMN_KINDS = ("double_values", "int64_values", "string_values", "bool_values", None)


def pick(fdp: atheris.FuzzedDataProvider, options: Sequence[T]) -> T:
    return options[fdp.ConsumeIntInRange(0, len(options) - 1)]


def hostile_double(fdp: atheris.FuzzedDataProvider) -> float:
    """Half the time an ordinary value, else a special one or any double at all."""
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 2:
        return pick(fdp, SPECIAL_DOUBLES)
    if choice == 3:
        return fdp.ConsumeFloat()  # NaN, infinities and extremes included
    return fdp.ConsumeFloatInRange(-1e6, 1e6)


def hostile_int(fdp: atheris.FuzzedDataProvider) -> int:
    return pick(fdp, SPECIAL_INTS) if fdp.ConsumeBool() else fdp.ConsumeInt(8)


def hostile_text(fdp: atheris.FuzzedDataProvider, names: Sequence[str], *, allow_huge: bool = True) -> str:
    """A known name, an odd one, fuzzer text, or (rarely) a huge string (up to 512 KiB)."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice <= 4:
        return pick(fdp, names)
    if choice <= 6:
        return pick(fdp, ODD_STRINGS)
    if choice == 9 and allow_huge:
        return (fdp.ConsumeUnicodeNoSurrogates(8) or "x") * fdp.ConsumeIntInRange(1, 1 << 16)
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 32))


def hostile_count(fdp: atheris.FuzzedDataProvider, limit: int) -> int:
    """Mostly small; else at the limit, just past it, or far past it (a huge repeated field)."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice <= 5:
        return fdp.ConsumeIntInRange(1, 4) if choice else 0
    if choice <= 7:
        return limit + fdp.ConsumeIntInRange(-1, 1)
    return fdp.ConsumeIntInRange(limit, 4 * limit)


def hostile_value(fdp: atheris.FuzzedDataProvider, preferred: str | None = None, *, allow_huge: bool = True) -> types_pb2.Value:
    """A Value of the preferred kind most of the time, else any kind (or none set)."""
    kind = preferred if preferred is not None and fdp.ConsumeIntInRange(0, 3) else pick(fdp, KINDS)
    value = types_pb2.Value()
    if kind == "int64_value":
        value.int64_value = hostile_int(fdp)
    elif kind == "double_value":
        value.double_value = hostile_double(fdp)
    elif kind == "string_value":
        value.string_value = hostile_text(fdp, ("1001", "nan", ""), allow_huge=allow_huge)
    elif kind == "bool_value":
        value.bool_value = fdp.ConsumeBool()
    elif kind == "null_value":
        value.null_value = 0
    return value


def wide_names(fdp: atheris.FuzzedDataProvider, limit: int) -> list[str]:
    """Many distinct names (a row or frame as wide as `limit`, or far wider)."""
    prefix = fdp.ConsumeUnicodeNoSurrogates(4)
    return [f"{prefix}{i}" for i in range(hostile_count(fdp, limit))]


def hostile_row(
    fdp: atheris.FuzzedDataProvider, names: Sequence[str], preferred: str, *, allow_huge: bool = True, max_values: int = 64
) -> types_pb2.Row:
    """Exactly `names` (values mostly of the preferred kind), a fuzzed key set, or (rarely)
    a row around `max_values` keys wide (never when max_values is 0)."""
    row = types_pb2.Row()
    choice = fdp.ConsumeIntInRange(0, 15)
    if choice < 8:
        keys: Sequence[str] = names
    elif choice == 15 and max_values:
        keys = [*names, *wide_names(fdp, max_values)]
    else:
        keys = [hostile_text(fdp, names, allow_huge=False) for _ in range(fdp.ConsumeIntInRange(0, len(names) + 2))]
    for key in keys:
        row.values[key].CopyFrom(hostile_value(fdp, preferred, allow_huge=allow_huge))
    return row


def hostile_rows(fdp: atheris.FuzzedDataProvider, names: Sequence[str], preferred: str, limit: int, max_values: int) -> list[types_pb2.Row]:
    """hostile_count rows: one template repeated, a few rows replaced by others."""
    n = hostile_count(fdp, limit)
    # Huge strings or wide rows only in batches that can pass the batch check (huge x many
    # would not fit a message; wide x over the limit only costs the harness time).
    template = hostile_row(fdp, names, preferred, allow_huge=n <= 4, max_values=max_values if n <= limit + 1 else 0)
    rows = [template] * n
    for _ in range(fdp.ConsumeIntInRange(0, 3) if n else 0):
        rows[fdp.ConsumeIntInRange(0, n - 1)] = hostile_row(fdp, names, preferred, allow_huge=False, max_values=max_values)
    return rows


def _column_values(fdp: atheris.FuzzedDataProvider, kind: str, length: int) -> list:
    def one() -> object:
        if kind == "double_values":
            return hostile_double(fdp)
        if kind == "int64_values":
            return hostile_int(fdp)
        if kind == "string_values":
            return hostile_text(fdp, ("1001", ""), allow_huge=length <= 4)
        return fdp.ConsumeBool()

    values = [one()] * length
    for _ in range(fdp.ConsumeIntInRange(0, 3) if length else 0):
        values[fdp.ConsumeIntInRange(0, length - 1)] = one()
    return values


def hostile_frame(fdp: atheris.FuzzedDataProvider, names: Sequence[str], preferred: str, limit: int) -> types_pb2.Frame:
    """A Frame whose num_rows, column set, kinds, value counts and null masks may all lie
    (each column only in a lying frame, a quarter of them, so honest frames are common)."""
    lie = fdp.ConsumeIntInRange(0, 3) == 3
    if lie and fdp.ConsumeBool():
        n = hostile_int(fdp)  # negative, or far beyond anything sendable
        length = fdp.ConsumeIntInRange(0, 4)
    else:
        n = hostile_count(fdp, limit)
        length = n
    frame = types_pb2.Frame(num_rows=n)
    shape = fdp.ConsumeIntInRange(0, 15)
    columns: list[tuple[str, str | None]]
    if shape < 8:
        columns = [(name, preferred) for name in names]
    elif shape == 15:  # as wide as the decoder's column limit, or far wider
        columns = [(name, preferred) for name in (*names, *wide_names(fdp, MAX_FRAME_COLUMNS))]
        if length > 4:  # wide x long would not fit a message
            frame.num_rows = length = 4
    else:
        columns = [
            (hostile_text(fdp, names, allow_huge=False), pick(fdp, COLUMN_KINDS))
            for _ in range(fdp.ConsumeIntInRange(0, len(names) + 2))
        ]
    for name, kind in columns:
        col = frame.columns.add(name=name)
        if kind is None:
            continue
        if lie and fdp.ConsumeIntInRange(0, 3) == 3:
            kind = pick(fdp, COLUMN_KINDS[:-1])
        count = max(0, length + fdp.ConsumeIntInRange(-2, 2)) if lie and fdp.ConsumeIntInRange(0, 3) == 3 else length
        getattr(col, kind).values.extend(_column_values(fdp, kind, count))
        mask = fdp.ConsumeIntInRange(0, 7)
        if mask == 7 and lie:
            col.null_mask.extend([fdp.ConsumeBool()] * max(0, count + fdp.ConsumeIntInRange(-1, 1)))
        elif mask == 6 and count:
            null = [False] * count
            null[fdp.ConsumeIntInRange(0, count - 1)] = True
            col.null_mask.extend(null)
    return frame
