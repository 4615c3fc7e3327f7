"""The Feast objects of meshserve: entities, sources, feature views, the model's FeatureService.

Built by a function (not at import) because the sources point at files under a data dir
that depends on settings, and because importing feast costs seconds.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

FEATURE_SERVICE = "driver_ranking_v1"
"""The FeatureService the demo model is trained on and served with."""
ENTITY_KEYS: tuple[str, ...] = ("driver_id", "customer_id")
"""Join keys of FEATURE_SERVICE, in request order."""
DRIVER_FEATURES: tuple[str, ...] = ("conv_rate", "acc_rate", "avg_daily_trips")
CUSTOMER_FEATURES: tuple[str, ...] = ("current_balance", "avg_passenger_count", "lifetime_trip_count")
MODEL_FEATURES: tuple[str, ...] = DRIVER_FEATURES + CUSTOMER_FEATURES
"""The model's input columns, in the order of FEATURE_SERVICE (and of the preprocessor's matrix)."""

DRIVER_STATS_TTL = timedelta(days=2)
"""Hourly stats older than this are treated as missing (offline and online alike)."""
CUSTOMER_PROFILE_TTL = timedelta(days=7)
"""Daily profiles older than this are treated as missing."""


def build_objects(data_dir: Path) -> list[Any]:
    """Entities, sources, feature views and the FeatureService, reading parquet under data_dir."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Int32, Int64

    from meshserve_feature_repo.data import CUSTOMER_PROFILE_FILE, DRIVER_STATS_FILE

    data_dir = Path(data_dir).resolve()
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64, description="A driver.")
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64, description="A customer.")

    driver_source = FileSource(
        name="driver_hourly_stats_source",
        path=str(data_dir / DRIVER_STATS_FILE),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
    customer_source = FileSource(
        name="customer_daily_profile_source",
        path=str(data_dir / CUSTOMER_PROFILE_FILE),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )

    driver_stats = FeatureView(
        name="driver_hourly_stats",
        entities=[driver],
        ttl=DRIVER_STATS_TTL,
        schema=[
            Field(name="driver_id", dtype=Int64),
            Field(name="conv_rate", dtype=Float32),
            Field(name="acc_rate", dtype=Float32),
            Field(name="avg_daily_trips", dtype=Int64),
        ],
        online=True,
        source=driver_source,
        tags={"team": "meshserve"},
    )
    customer_profile = FeatureView(
        name="customer_daily_profile",
        entities=[customer],
        ttl=CUSTOMER_PROFILE_TTL,
        schema=[
            Field(name="customer_id", dtype=Int64),
            Field(name="current_balance", dtype=Float32),
            Field(name="avg_passenger_count", dtype=Float32),
            Field(name="lifetime_trip_count", dtype=Int32),
        ],
        online=True,
        source=customer_source,
        tags={"team": "meshserve"},
    )
    # Order matters: the service answers features in this order, which is MODEL_FEATURES.
    ranking = FeatureService(
        name=FEATURE_SERVICE,
        features=[driver_stats, customer_profile],
        description="Features of the driver ranking model (order success probability).",
    )
    return [driver, customer, driver_source, customer_source, driver_stats, customer_profile, ranking]
