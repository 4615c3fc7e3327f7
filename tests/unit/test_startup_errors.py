"""A service that cannot start as configured says why in one log line and exits 2; it does
not crash with a traceback (here: its gRPC or metrics port is taken)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from meshserve_local.stack import free_ports


@pytest.mark.parametrize("which", ["port", "metrics_port"])
def test_a_taken_port_is_a_clean_exit_2_naming_it(which: str) -> None:
    port, metrics = free_ports(2)
    taken = port if which == "port" else metrics
    env = {**os.environ, "MESHSERVE_GATEWAY_PORT": str(port), "MESHSERVE_GATEWAY_METRICS_PORT": str(metrics)}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        proc = subprocess.run([sys.executable, "-m", "meshserve_gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    records = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    critical = [r for r in records if r["level"] == "CRITICAL"]
    assert len(critical) == 1, records
    message = critical[0]["message"]
    assert f"127.0.0.1:{taken}" in message and f"MESHSERVE_GATEWAY_{which.upper()}" in message, message
