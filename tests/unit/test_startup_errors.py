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


_HUNG_LOAD_SERVICE = """
import asyncio, sys, threading
from meshserve_runtime.server import Service, serve
from meshserve_runtime.settings import ServerSettings

class Hung(Service):
    name = "test.Hung"
    def register(self, server):
        return [self.name]
    async def load(self):
        # A registry call or an artifact load that does not come back (a hung MLflow server).
        print("loading", flush=True)
        await asyncio.to_thread(threading.Event().wait, 600)
        return True

serve(Hung(), ServerSettings(port=int(sys.argv[1]), metrics_port=int(sys.argv[2]), grace_period_s=0.5))
"""


def test_sigterm_during_a_hung_load_exits_0_without_waiting_for_the_load() -> None:
    """The load's worker thread never finishes: the drained process must still exit (0), not
    wait for that thread until the kubelet's SIGKILL."""
    import signal

    port, metrics = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-c", _HUNG_LOAD_SERVICE, str(port), str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "loading"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)  # the load itself would take 600 s
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, err[-2000:]
    assert '"stopped"' in err or "stopped" in err
