"""The local stack refuses to start over ports something else holds (instead of reporting a
stale stack's services as its own)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meshserve_local.stack import HEALTH_NAMES, Stack, StackConfig, StackError, free_ports


def test_a_taken_port_stops_the_start_before_any_process(tmp_path: Path) -> None:
    ports = free_ports(2 * len(HEALTH_NAMES))
    names = list(HEALTH_NAMES)
    config = StackConfig(home=tmp_path, ports=dict(zip(names, ports)), metrics_ports=dict(zip(names, ports[len(names):])))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.ports["model"]))
        holder.listen()
        stack = Stack(config)
        with pytest.raises(StackError, match=f"model gRPC 127.0.0.1:{config.ports['model']}"):
            stack.start()
        assert stack.procs == {}  # nothing was started


def test_free_ports_pass_the_check(tmp_path: Path) -> None:
    names = list(HEALTH_NAMES)
    ports = free_ports(len(names))
    Stack(StackConfig(home=tmp_path, ports=dict(zip(names, ports)), metrics_ports={n: 0 for n in names})).check_ports_free()
