"""apply and materialize: put the definitions in the registry and the latest values online.

The registry is shared; online stores are per config. materialize() always uses an
explicit time window (never materialize_incremental), because the registry keeps ONE
"last materialized" time per feature view: an incremental run into a second online store
(e.g. Redis after SQLite) would skip everything the first run already covered.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meshserve_feature_repo.config import FeastSettings
from meshserve_feature_repo.definitions import CUSTOMER_PROFILE_TTL, DRIVER_STATS_TTL, build_objects

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("meshserve.feast")


def feature_store(settings: FeastSettings, *, registry_cache_ttl_s: int = 600) -> FeatureStore:
    """A FeatureStore on the configured registry and online store."""
    from feast import FeatureStore

    return FeatureStore(config=settings.repo_config(registry_cache_ttl_s=registry_cache_ttl_s))


def apply(settings: FeastSettings) -> FeatureStore:
    """Register the definitions (sources read settings.feast_data_dir) and create online tables."""
    start = time.perf_counter()
    store = feature_store(settings)
    store.apply(build_objects(settings.feast_data_dir))
    log.info("feast apply done in %.1fs (%s)", time.perf_counter() - start, settings.describe_online_store())
    return store


def materialize(settings: FeastSettings, *, end: datetime | None = None) -> None:
    """Load the latest value of every entity (within the TTLs) into settings' online store.

    Call once per online store; each call registers the definitions with that store's
    config first, which creates its tables (SQLite needs them; for Redis it is cheap).
    """
    start = time.perf_counter()
    end = end or datetime.now(UTC)
    store = apply(settings)
    # Values older than the longest TTL are never served, so they need not be loaded.
    window_start = end - max(DRIVER_STATS_TTL, CUSTOMER_PROFILE_TTL)
    store.materialize(start_date=window_start, end_date=end)
    log.info("feast materialize done in %.1fs (%s)", time.perf_counter() - start, settings.describe_online_store())
