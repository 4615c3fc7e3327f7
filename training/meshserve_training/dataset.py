"""The training set: Feast's point-in-time join of the orders with the feature service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from meshserve_feature_repo.definitions import ENTITY_KEYS, FEATURE_SERVICE, MODEL_FEATURES

if TYPE_CHECKING:
    from feast import FeatureStore

_ROW = "__meshserve_row"
_TS = "event_timestamp"


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Features as float64 [n, len(MODEL_FEATURES)] (NaN = missing) and labels in time order."""

    x: np.ndarray
    y: np.ndarray
    timestamps: np.ndarray


def historical_features(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    *,
    feature_service: str = FEATURE_SERVICE,
) -> pd.DataFrame:
    """get_historical_features for entity_df (join keys + event_timestamp), in entity_df's row order.

    Feast's file offline store does not keep the entity rows' order, so a row index rides
    along and the result is sorted back by it.
    """
    df = entity_df.reset_index(drop=True).copy()
    df[_ROW] = np.arange(len(df))
    job = store.get_historical_features(entity_df=df, features=store.get_feature_service(feature_service))
    out = job.to_df().sort_values(_ROW).reset_index(drop=True)
    if len(out) != len(df):
        raise RuntimeError(f"get_historical_features returned {len(out)} rows for {len(df)} entity rows")
    return out.drop(columns=[_ROW])


def feature_matrix(df: pd.DataFrame) -> np.ndarray:
    """MODEL_FEATURES columns as the float64 matrix the preprocessor takes (NaN where missing)."""
    return df[list(MODEL_FEATURES)].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def build_training_set(store: FeatureStore, orders: pd.DataFrame) -> TrainingSet:
    """Join every order with the features known at its event time."""
    entity_df = orders[[*ENTITY_KEYS, _TS, "order_is_success"]].sort_values(_TS, kind="stable")
    df = historical_features(store, entity_df)
    return TrainingSet(
        x=feature_matrix(df),
        y=df["order_is_success"].to_numpy(dtype=np.float32),
        timestamps=df[_TS].to_numpy(),
    )


def entity_frame(entity_rows: Sequence[Mapping[str, Any]], at: datetime) -> pd.DataFrame:
    """Entity rows (driver_id, customer_id) as an entity_df observed at time `at`."""
    missing = [k for k in ENTITY_KEYS if any(k not in r for r in entity_rows)]
    if missing:
        raise ValueError(f"every entity row needs {list(ENTITY_KEYS)}; missing {missing}")
    df = pd.DataFrame({k: np.asarray([r[k] for r in entity_rows], dtype=np.int64) for k in ENTITY_KEYS})
    ts = pd.Timestamp(at)
    df[_TS] = ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")  # naive means UTC
    return df
