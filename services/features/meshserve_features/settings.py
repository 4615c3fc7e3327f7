"""Settings of the features service (env prefix MESHSERVE_FEATURES_).

The Feast fields (feast_registry, feast_project, online_store, sqlite_path, redis_url)
come from meshserve_feature_repo.config.FeastSettings, which training reads too: one
setting (MESHSERVE_FEATURES_ONLINE_STORE=redis) moves both to Redis.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve_feature_repo.config import FeastSettings
from meshserve_feature_repo.definitions import FEATURE_SERVICE
from meshserve_runtime.settings import ServerSettings


class FeaturesSettings(ServerSettings, FeastSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_FEATURES_")

    port: int = 50052
    """gRPC port."""
    metrics_port: int = 9102
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    feature_service: str = FEATURE_SERVICE
    """Feast FeatureService served when a request names none."""
    max_entities: int = Field(default=1000, ge=1)
    """Most entity rows one GetOnlineFeatures call may carry."""
    enforce_ttl: bool = True
    """Report values older than their feature view's TTL as OUTSIDE_MAX_AGE (null), as the
    offline point-in-time join does; Feast's online read itself does not check the TTL."""
    read_threads: int = Field(default=1, ge=1, le=64)
    """Threads that run blocking online-store reads (SQLite has no async path in Feast)."""
    read_path: Literal["direct", "feast"] = "direct"
    """How a batch is read: direct (Feast's online-store API with everything resolvable resolved
    at load; one round trip; measured faster, same values) or feast (get_online_features)."""
    redis_read: Literal["script", "pipeline"] = "script"
    """How the direct path reads Redis in its one round trip: script (EVALSHAs of a script running the
    HMGETs inside Redis, redis_script_max_keys keys each; plain Redis only, and a server that refuses
    scripts falls back by itself) or pipeline (one HMGET per entity and feature view, as Feast sends them)."""
    redis_script_max_keys: int = Field(default=64, ge=1)
    """With redis_read=script, the most Redis keys (entities x feature views) one script call reads;
    a bigger read is cut into several calls sent in one pipeline (still one round trip). Why: Redis
    runs a script atomically, so one call holds it for its whole run (2,000 keys in one call held
    it for 13 ms here); between calls it serves other clients."""
    redis_lane: bool = True
    """With redis_read=script, a read that finds no other read in flight goes on a Redis connection
    the service keeps for it, past redis-py's pool, retry and observability wrappers (one more
    connection per replica). Measured here: one 1-key read 243 -> 67 us in a hot loop, 308 -> 205 us
    with pauses between reads; overlapping reads use the pool as before."""
    cache_ttl_s: float = Field(default=0.0, ge=0)
    """Keep rows of hot entities this long in memory (0: no cache; a hit can be this much staler
    than the store). Only with read_path=direct; hit rate in meshserve_feature_cache_lookups_total."""
    cache_max_entries: int = Field(default=100_000, ge=1)
    """Most (feature view, entity) rows the cache holds (least recently used evicted first)."""
    store_probe_interval_s: float = Field(default=2.0, ge=0)
    """How often a ready service probes the online store: while the store is unreachable (a probe
    or a request read failed) the service reports NOT_SERVING, until a probe succeeds (0: readiness
    does not follow the store)."""
