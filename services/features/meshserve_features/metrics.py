"""Metrics of the features service (labels bounded: feature service and status, never an entity)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from meshserve_runtime.metrics import LATENCY_BUCKETS

FEATURE_VALUES = Counter(
    "meshserve_feature_values_total",
    "Feature values returned, by feature service and status (PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE).",
    ["feature_service", "status"],
)
STORE_READ_DURATION = Histogram(
    "meshserve_feature_store_read_seconds",
    "Time of one online-store read for a whole batch, including the wait for a read thread.",
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "meshserve_feature_cache_lookups_total",
    "Entity cache lookups (one per feature view and entity) by result: hit or miss; hit rate = hit / total.",
    ["result"],
)
ENTITIES_PER_REQUEST = Histogram(
    "meshserve_feature_entities_per_request",
    "Entity rows per GetOnlineFeatures call (a coalesced gateway call carries several callers' rows).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
