"""Cutting a Redis read into script calls: keys in order, ARGV runs per field list, size bound."""

from __future__ import annotations

from meshserve_features.direct import script_calls


def test_one_call_holds_every_view_in_order() -> None:
    a, b = [b"_ts:v1", b"f1"], [b"_ts:v2", b"g1", b"g2"]
    commands = [(b"k1", a), (b"k2", a), (b"k3", b)]
    assert script_calls(commands, 64) == [([b"k1", b"k2", b"k3"], [2, 2, *a, 1, 3, *b])]


def test_a_big_read_is_cut_at_max_keys_even_inside_a_view() -> None:
    a, b = [b"fa"], [b"fb"]
    commands = [(b"k1", a), (b"k2", a), (b"k3", a), (b"k4", b), (b"k5", b)]
    calls = script_calls(commands, 2)
    assert calls == [([b"k1", b"k2"], [2, 1, b"fa"]), ([b"k3", b"k4"], [1, 1, b"fa", 1, 1, b"fb"]), ([b"k5"], [1, 1, b"fb"])]
    assert [k for keys, _ in calls for k in keys] == [k for k, _ in commands]  # replies concatenate in order


def test_no_commands_no_calls() -> None:
    assert script_calls([], 64) == []
