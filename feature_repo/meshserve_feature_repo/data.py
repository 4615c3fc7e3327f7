"""The demo data, generated with the generators Feast itself ships.

Reproducible by construction: numpy's global RNG (which `feast.driver_test_data` uses) is
seeded, and every timestamp is relative to an anchor (the current UTC hour), so two runs in
the same hour write identical files and two runs in different hours write the same values
at shifted times. The newest row of every entity sits at the anchor, so materialized
online values are fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

DRIVERS: tuple[int, ...] = tuple(range(1001, 1011))
"""Demo driver ids (join key driver_id)."""
CUSTOMERS: tuple[int, ...] = tuple(range(2001, 2011))
"""Demo customer ids (join key customer_id)."""

DRIVER_STATS_FILE = "driver_hourly_stats.parquet"
CUSTOMER_PROFILE_FILE = "customer_daily_profile.parquet"
ORDERS_FILE = "orders.parquet"

# Columns the Feast generator adds for its Map/Json/Struct examples; we serve scalars only.
_DRIVER_EXTRA_COLUMNS = ("driver_metadata", "driver_config", "driver_profile")


@dataclass(frozen=True, slots=True)
class DemoData:
    """Paths of the generated files and the time window they cover."""

    data_dir: Path
    anchor: datetime
    start: datetime

    @property
    def driver_stats(self) -> Path:
        return self.data_dir / DRIVER_STATS_FILE

    @property
    def customer_profile(self) -> Path:
        return self.data_dir / CUSTOMER_PROFILE_FILE

    @property
    def orders(self) -> Path:
        return self.data_dir / ORDERS_FILE


def current_anchor(now: datetime | None = None) -> datetime:
    """The current UTC hour: every generated timestamp is relative to it."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def generate(
    data_dir: Path,
    *,
    seed: int = 42,
    days: int = 14,
    order_count: int = 5000,
    anchor: datetime | None = None,
) -> DemoData:
    """Write driver stats, customer profiles and orders as parquet files under data_dir."""
    anchor = current_anchor(anchor)
    start = anchor - timedelta(days=days)
    # The Feast generators draw from numpy's global RNG: seed it, and give the caller's
    # RNG state back afterwards.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        drivers, customers, orders = _draw(start, anchor, order_count)
    finally:
        np.random.set_state(saved)

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = DemoData(data_dir, anchor, start)
    # Write to a temp name then rename: a reader never sees a half-written file.
    for df, path in ((drivers, out.driver_stats), (customers, out.customer_profile), (orders, out.orders)):
        tmp = path.with_suffix(".parquet.tmp")
        df.reset_index(drop=True).to_parquet(tmp, index=False)
        tmp.replace(path)
    return out


def _draw(start: datetime, anchor: datetime, order_count: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables, drawn from the (seeded) global RNG in a fixed order."""
    # Imported here: importing feast costs seconds and pulls in torch.
    from feast.driver_test_data import (
        create_customer_daily_profile_df,
        create_driver_hourly_stats_df,
        create_orders_df,
    )

    # Hourly rows at start+1h .. anchor (the generator excludes its end).
    drivers = create_driver_hourly_stats_df(list(DRIVERS), start + timedelta(hours=1), anchor + timedelta(hours=1))
    drivers = drivers.drop(columns=[c for c in _DRIVER_EXTRA_COLUMNS if c in drivers.columns])
    # Daily rows at start+1d .. anchor.
    customers = create_customer_daily_profile_df(list(CUSTOMERS), start + timedelta(days=1), anchor + timedelta(days=1))
    # Orders spread over the window, after the first day so each has features to join.
    orders = create_orders_df(list(CUSTOMERS), list(DRIVERS), start + timedelta(days=1), anchor, order_count)

    # The generators stamp `created` with the wall clock; pin it so files are reproducible.
    created = pd.Timestamp(anchor)
    drivers["created"] = created
    customers["created"] = created
    drivers["event_timestamp"] = pd.to_datetime(drivers["event_timestamp"], utc=True)
    customers["event_timestamp"] = pd.to_datetime(customers["event_timestamp"], utc=True)
    # The generator cycles four timezone flavours through the orders (an object column);
    # one UTC dtype keeps the point-in-time join and parquet simple.
    orders["event_timestamp"] = pd.to_datetime(orders["event_timestamp"], utc=True)
    orders = orders.sort_values(["event_timestamp", "order_id"]).reset_index(drop=True)
    orders["order_is_success"] = _learnable_labels(orders, drivers, customers)

    return drivers, customers, orders


def _learnable_labels(orders: pd.DataFrame, drivers: pd.DataFrame, customers: pd.DataFrame) -> np.ndarray:
    """Redraw order_is_success so it depends on the features known at order time.

    Feast's generator draws the label independently of every feature, which leaves the
    model nothing to learn (AUC 0.5). Here success is a Bernoulli draw whose odds rise
    with the driver's conversion and acceptance rates and fall with the customer's
    balance, seeded through the same global RNG.
    """
    o = orders[["event_timestamp", "driver_id", "customer_id"]].copy()
    o["_row"] = np.arange(len(o))
    d = drivers[["event_timestamp", "driver_id", "conv_rate", "acc_rate", "avg_daily_trips"]].sort_values("event_timestamp")
    c = customers[["event_timestamp", "customer_id", "current_balance"]].sort_values("event_timestamp")
    o = pd.merge_asof(o.sort_values("event_timestamp"), d, on="event_timestamp", by="driver_id", direction="backward")
    o = pd.merge_asof(o, c, on="event_timestamp", by="customer_id", direction="backward")
    o = o.sort_values("_row")
    logit = (
        4.0 * (o["conv_rate"].fillna(0.5) - 0.5)
        + 3.0 * (o["acc_rate"].fillna(0.5) - 0.5)
        + 1.0 * (o["avg_daily_trips"].fillna(500) / 1000.0 - 0.5)
        - 2.0 * (o["current_balance"].fillna(0.5) - 0.5)
    ).to_numpy(dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-logit))
    return (np.random.random(len(p)) < p).astype(np.int32)
