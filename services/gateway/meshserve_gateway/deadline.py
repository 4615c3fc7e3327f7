"""The caller's deadline, carried to every hop of the pipeline."""

from __future__ import annotations

import time

from meshserve_runtime.errors import DeadlineExceeded


class Deadline:
    """Seconds left for the whole pipeline, shared by its hops."""

    __slots__ = ("_end",)

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    @property
    def end(self) -> float:
        """Monotonic time at which it passes (to pick a group's earliest deadline)."""
        return self._end

    def remaining(self, hop: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling {hop}")
        return left
