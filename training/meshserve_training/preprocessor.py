"""The scikit-learn preprocessor: impute + scale, on a float64 numpy matrix.

Columns are addressed by INTEGER index in MODEL_FEATURES order, so the preprocess
service can call transform() on a numpy array it builds from the wire, without pandas.
"""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from meshserve_feature_repo.definitions import CUSTOMER_FEATURES, DRIVER_FEATURES, MODEL_FEATURES


def build_preprocessor() -> ColumnTransformer:
    """Driver stats: mean-impute (hourly values, roughly uniform); customer profile:
    median-impute (counts and balances, robust to skew); then standardize both."""
    driver_idx = [MODEL_FEATURES.index(f) for f in DRIVER_FEATURES]
    customer_idx = [MODEL_FEATURES.index(f) for f in CUSTOMER_FEATURES]
    return ColumnTransformer(
        [
            # keep_empty_features: a column that is all-missing at fit time still yields a
            # column, so the output width never depends on the data.
            ("driver", Pipeline([("impute", SimpleImputer(strategy="mean", keep_empty_features=True)), ("scale", StandardScaler())]), driver_idx),
            ("customer", Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler())]), customer_idx),
        ],
        remainder="drop",
        sparse_threshold=0.0,  # always a dense array
    )
