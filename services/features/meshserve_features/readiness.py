"""Readiness that follows the online store: NOT_SERVING while it is unreachable.

After load, a background task probes the store every `interval_s` (one read of a key that
does not exist, on the read threads requests use, so it proves the path they take). A
request read that finds the store unreachable flips readiness at once, without waiting for
the next probe. Only a probe declares recovery: clients that health-check the service stop
calling it while it is NOT_SERVING, so no request read would ever see the store return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from meshserve_runtime.errors import Unavailable
from meshserve_runtime.server import ReadinessCallback

log = logging.getLogger("meshserve.features")

Probe = Callable[[], Awaitable[object]]


class StoreReadiness:
    """Keeps the service's own health name in step with the online store."""

    def __init__(self, interval_s: float, where: str = "the online store") -> None:
        self.interval_s = interval_s
        self.where = where
        self.ready = True
        self._set_ready: ReadinessCallback | None = None
        self._probe: Probe | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def bind(self, set_ready: ReadinessCallback) -> None:
        self._set_ready = set_ready

    def start(self, probe: Probe, where: str) -> None:
        """Begin probing (once the store is loaded; the runner reports SERVING after load)."""
        self._probe, self.where, self.ready = probe, where, True
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="store-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def report(self, ok: bool, reason: str) -> None:
        """Record what a probe or a read found; flips readiness only on a change."""
        if not self.enabled:
            return
        if ok != self.ready:
            if ok:
                log.info("online store %s answers again; reporting SERVING", self.where)
            else:
                log.warning("%s; reporting NOT_SERVING until a probe of the online store succeeds", reason)
        self.ready = ok
        # Re-asserted on every probe, not only on a change: set_ready is ignored until the
        # runner has finished load(), so an early flip must not be lost.
        if self._set_ready is not None:
            await self._set_ready(ok)

    async def _run(self) -> None:
        assert self._probe is not None
        # A probe stuck behind a hung store read counts as a failure, but only after 5 s: a
        # read queue on a busy machine must not look like an outage (NOT_SERVING sheds all
        # traffic from health-checking clients).
        timeout = max(self.interval_s, 5.0)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.wait_for(self._probe(), timeout)
            except TimeoutError:
                await self.report(False, f"a probe read of online store {self.where} took over {timeout:.1f}s")
            except Exception as err:  # any failure means requests would fail the same way
                reason = str(err) if isinstance(err, Unavailable) else f"a probe read of online store {self.where} failed: {type(err).__name__}: {err}"
                await self.report(False, reason)
            else:
                await self.report(True, "a probe read succeeded")
