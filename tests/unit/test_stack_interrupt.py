"""Ctrl-C while `make run` / `meshserve up` waits for the services to load stops them at once
(README: "stops all four services cleanly on Ctrl-C"), rather than once all are ready."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserve_local import stack as stack_module
from meshserve_local.stack import PORT_OFFSET_ENV, Stack


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """main() installs its own SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_ctrl_c_while_loading_stops_every_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_signals: None) -> None:
    monkeypatch.setenv("MESHSERVE_HOME", str(tmp_path))
    monkeypatch.delenv(PORT_OFFSET_ENV, raising=False)
    started: list[subprocess.Popen] = []

    def start_service(self: Stack, service: str) -> None:  # a service that never gets ready
        self.procs[service] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(self.procs[service])

    checks = 0

    def is_serving(self: Stack, service: str, timeout: float = 1.0) -> bool:
        nonlocal checks
        checks += 1
        if checks == 3:
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, mid-wait
        assert checks < 40, "Ctrl-C was ignored while the services were loading"
        return False

    monkeypatch.setattr(Stack, "check_ports_free", lambda self: None)
    monkeypatch.setattr(Stack, "start_service", start_service)
    monkeypatch.setattr(Stack, "is_serving", is_serving)
    try:
        assert stack_module.main(["--port-offset", "1000"]) == 130
        assert len(started) == 4
        assert all(p.poll() is not None for p in started)  # stopped, not left running
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
