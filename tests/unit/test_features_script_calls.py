"""The plan's Redis read script: keys in order, per-view key counts, size bound, and the hash
fields written into the Lua source byte for byte (they are binary: Feast's mmh3 hashes)."""

from __future__ import annotations

import re

from meshserve_features.direct import plan_script, script_calls


def test_one_call_holds_every_view_in_order() -> None:
    assert script_calls([[b"k1", b"k2"], [b"k3"]], 64) == [([b"k1", b"k2", b"k3"], [2, 1])]


def test_a_big_read_is_cut_at_max_keys_even_inside_a_view() -> None:
    keys_by_view = [[b"k1", b"k2", b"k3"], [b"k4", b"k5"]]
    calls = script_calls(keys_by_view, 2)
    assert calls == [([b"k1", b"k2"], [2, 0]), ([b"k3", b"k4"], [1, 1]), ([b"k5"], [0, 1])]
    assert [k for keys, _ in calls for k in keys] == [b"k1", b"k2", b"k3", b"k4", b"k5"]  # replies concatenate in order


def test_a_view_with_no_keys_counts_zero() -> None:
    assert script_calls([[], [b"k1"]], 64) == [([b"k1"], [0, 1])]


def test_no_keys_no_calls() -> None:
    assert script_calls([[], []], 64) == []


def _lua_strings(source: str) -> list[bytes]:
    """The string literals of the script's field table, decoded as Lua reads them."""
    table = source[source.index("local F = {"):source.index("\n}")]
    return [bytes(int(d) for d in re.findall(r"\\(\d{1,3})", lit)) for lit in re.findall(r'"((?:\\\d{1,3})*)"', table)]


def test_plan_script_writes_every_field_byte_for_byte() -> None:
    binary = bytes(range(256))  # quotes, backslashes, NUL, newlines, non-UTF-8: all must survive
    fields = [(b"\x8a\x01\x00\x22", "_ts:driver_hourly_stats"), (binary, b'"\\\n')]
    source = plan_script(fields)
    assert _lua_strings(source) == [b"\x8a\x01\x00\x22", b"_ts:driver_hourly_stats", binary, b'"\\\n']
    assert len(re.findall(r"^  \{", source, re.M)) == 2  # one entry per view, in order
