"""An optional bounded TTL cache of decoded online-store rows, per (feature view, entity).

Off by default: a cached value can be up to `ttl_s` older than the store's. Worth it when
a few hot entities dominate the traffic; the hit rate is exported so that is measurable.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from meshserve_features.metrics import CACHE_LOOKUPS


class EntityCache:
    """LRU with a per-entry expiry; thread-safe (reads run on a read-thread pool)."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        now = self.clock()
        with self._lock:
            hit = self._data.get(key)
            if hit is None or hit[0] < now:
                if hit is not None:
                    del self._data[key]
                CACHE_LOOKUPS.labels("miss").inc()
                return None
            self._data.move_to_end(key)
        CACHE_LOOKUPS.labels("hit").inc()
        return hit[1]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = (self.clock() + self.ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
