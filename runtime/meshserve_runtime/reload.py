"""Hot reload: watch an MLflow alias and hand each new version to the service.

The watcher only notices moves; the service's `switch` callback loads and warms the
new version beside the old one, then swaps its servicer's `current` reference (one
assignment, so each call sees either version, never a mix). Requires the `mlflow` extra.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from meshserve_runtime.integrity import IntegrityError
from meshserve_runtime.registry import ResolvedArtifact, resolve_alias

log = logging.getLogger("meshserve.reload")

Switch = Callable[[ResolvedArtifact], Awaitable[None]]


class AliasWatcher:
    """Polls `name@alias` every `poll_s` seconds and awaits `switch(artifact)` when it moved.

    `served()` returns the version served now (None while nothing is loaded). A failed
    switch is logged and retried at the next poll (not at every check_now meanwhile); the
    old version keeps serving.
    `check_now()` lets a caller ask for a check at once (coalesced and rate limited),
    e.g. when a request shows the partner service already serves a newer release.
    """

    def __init__(
        self,
        tracking_uri: str,
        name: str,
        alias: str,
        poll_s: float,
        served: Callable[[], str | None],
        switch: Switch,
        min_check_interval_s: float = 0.5,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.poll_s = poll_s
        self.served = served
        self.switch = switch
        self.min_check_interval_s = min_check_interval_s
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_check = 0.0
        # The last check's registry error, raised again to callers within the rate limit:
        # "the registry failed" must not read as "the alias did not move".
        self._last_error: Exception | None = None
        # A version whose switch failed, and until when it is not tried again: requests that
        # ask for a check (check_now) must not re-download and re-verify it twice a second.
        self._refused: tuple[str, float] | None = None

    def start(self) -> None:
        """Start polling (no-op when poll_s is 0 or already started)."""
        if self.poll_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"watch {self.name}@{self.alias}")

    async def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._inflight = None

    async def check_now(self) -> bool:
        """Check the alias (joining a check already running); True if a switch happened."""
        if self._inflight is None or self._inflight.done():
            if time.monotonic() - self._last_check < self.min_check_interval_s:
                if self._last_error is not None:
                    raise self._last_error
                return False  # just checked: don't hammer the registry
            self._inflight = asyncio.get_running_loop().create_task(self._check())
        # shield: a caller giving up (deadline) must not cancel a half-done reload
        return await asyncio.shield(self._inflight)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check_now()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a registry hiccup kill the watcher
                log.exception("alias check failed", extra={"model": self.name, "alias": self.alias})

    def _refuse(self, version: str) -> None:
        # Until just before the next poll, which then tries it again (a fixed tag, a registry
        # back up); without polling, a minute.
        hold = 0.9 * self.poll_s if self.poll_s > 0 else 60.0
        self._refused = (version, time.monotonic() + hold)

    async def _check(self) -> bool:
        self._last_check = time.monotonic()
        self._last_error = None
        try:
            # The registry client blocks (SQLite or HTTP): keep the event loop serving.
            artifact = await asyncio.to_thread(resolve_alias, self.tracking_uri, self.name, self.alias)
        except Exception as err:
            self._last_error = err
            raise
        served = self.served()
        if artifact.version == served:
            return False
        if self._refused is not None and self._refused[0] == artifact.version and time.monotonic() < self._refused[1]:
            return False  # refused lately: tried again at the next poll, not per request
        log.info("alias moved; loading the new version", extra={**artifact.labels(), "previous_version": served})
        start = time.perf_counter()
        try:
            await self.switch(artifact)
        except IntegrityError as err:
            # Expected refusal (tampered or unsigned artifact), not a bug: the reason, no traceback.
            log.error("reload refused; still serving the previous version: %s", err, extra=artifact.labels())
            self._refuse(artifact.version)
            return False
        except Exception:
            log.exception("reload failed; still serving the previous version", extra=artifact.labels())
            self._refuse(artifact.version)
            return False
        finally:
            self._last_check = time.monotonic()
        log.info("switched", extra={**artifact.labels(), "seconds": round(time.perf_counter() - start, 2)})
        return True
