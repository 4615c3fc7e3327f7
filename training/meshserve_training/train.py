"""The training pipeline: demo data -> Feast -> point-in-time training set -> fit -> MLflow -> online store."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from meshserve_feature_repo import data as demo_data
from meshserve_feature_repo import ops
from meshserve_feature_repo.config import FeastSettings
from meshserve_feature_repo.definitions import (
    CUSTOMER_PROFILE_TTL,
    DRIVER_STATS_TTL,
    FEATURE_SERVICE,
    MODEL_FEATURES,
)
from meshserve_training import registry
from meshserve_training.dataset import TrainingSet, build_training_set
from meshserve_training.model import fit
from meshserve_training.preflight import preflight
from meshserve_training.preprocessor import build_preprocessor
from meshserve_training.settings import TrainingSettings

if TYPE_CHECKING:
    from feast import FeatureStore
    from sklearn.compose import ColumnTransformer

log = logging.getLogger("meshserve.training")


@dataclass
class TrainResult:
    """What a train() call did; `pair` is None when --if-empty found both aliases set."""

    pair: registry.RegisteredPair | None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    materialized: list[str] = field(default_factory=list)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 2)
        self._t = now


def refresh_features(feast: FeastSettings, settings: TrainingSettings, extra_stores: Sequence[FeastSettings] = ()) -> list[str]:
    """Regenerate the demo data up to now and materialize it into every given online store.

    The same data_seed gives the same values at times shifted to the current hour, so the
    registered model stays valid; only the freshness changes.
    """
    demo_data.generate(feast.feast_data_dir, seed=settings.data_seed, days=settings.data_days, order_count=settings.order_count)
    done = []
    for store in (feast, *extra_stores):
        ops.materialize(store)
        done.append(store.describe_online_store())
    return done


def online_features_fresh(feast: FeastSettings) -> bool:
    """True when the online store serves fresh values for a demo driver and customer."""
    try:
        store = ops.feature_store(feast)
        resp = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE),
            entity_rows={"driver_id": [demo_data.DRIVERS[0]], "customer_id": [demo_data.CUSTOMERS[0]]},
        )
    except Exception as err:  # no registry, no table, store down: all mean "not ready"
        log.info("online store not ready (%s): %s", feast.describe_online_store(), err)
        return False
    names = list(resp.proto.metadata.feature_names.val)
    now = time.time()
    max_age = min(DRIVER_STATS_TTL, CUSTOMER_PROFILE_TTL).total_seconds()
    for name in MODEL_FEATURES:
        vec = resp.proto.results[names.index(name)]
        value, ts = vec.values[0], vec.event_timestamps[0]
        if value.WhichOneof("val") is None or now - ts.seconds > max_age:
            return False
    return True


def build_dataset(settings: TrainingSettings, feast: FeastSettings) -> tuple[demo_data.DemoData, FeatureStore, TrainingSet]:
    """Demo data up to now, the Feast registry, and the point-in-time training set."""
    files = demo_data.generate(feast.feast_data_dir, seed=settings.data_seed, days=settings.data_days, order_count=settings.order_count)
    store = ops.apply(feast)
    orders = pd.read_parquet(files.orders)
    return files, store, build_training_set(store, orders)


def fit_preprocessor(
    settings: TrainingSettings, ts: TrainingSet
) -> tuple[ColumnTransformer, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split by time (validation = the latest orders), fit the preprocessor on training rows
    only, and return it with the float32 model inputs it produces."""
    n_val = max(1, int(round(len(ts.y) * settings.val_fraction)))
    x_train, y_train = ts.x[:-n_val], ts.y[:-n_val]
    x_val, y_val = ts.x[-n_val:], ts.y[-n_val:]
    pre = build_preprocessor().fit(x_train)
    xt = np.asarray(pre.transform(x_train), dtype=np.float32)
    xv = np.asarray(pre.transform(x_val), dtype=np.float32)
    return pre, xt, xv, y_train, y_val


def train(
    settings: TrainingSettings | None = None,
    feast: FeastSettings | None = None,
    *,
    extra_stores: Sequence[FeastSettings] = (),
    if_empty: bool = False,
) -> TrainResult:
    """Train, register both artifacts from one run, materialize features, then move settings.alias.

    Raises preflight.PreflightError, before any work, when a store or directory is unusable.
    extra_stores: further online stores (same registry) to materialize into, e.g. Redis
    next to SQLite for tests. if_empty: when both aliases already resolve to signed
    versions, train nothing and only refresh the online store(s) if their values are
    missing or stale (an unsigned version, registered before signing, is retrained).
    """
    settings = settings or TrainingSettings()
    feast = feast or FeastSettings()
    preflight(settings, feast, extra_stores)
    timer = _Timer()
    registry.use_tracking(settings)

    if if_empty:
        pre_v = registry.alias_version(settings, settings.preprocessor_name, settings.alias)
        model_v = registry.alias_version(settings, settings.model_name, settings.alias)
        timer.lap("alias_lookup")
        unsigned = [
            f"{name} v{ver}"
            for name, ver in ((settings.preprocessor_name, pre_v), (settings.model_name, model_v))
            if ver is not None and registry.version_digest(settings, name, ver) is None
        ]
        if unsigned:
            # Registered before artifact signing: the services refuse them, so train a signed pair.
            log.info("aliased versions without a digest tag (%s); training a signed pair", ", ".join(unsigned))
        elif pre_v is not None and model_v is not None:
            stale = [s for s in (feast, *extra_stores) if not online_features_fresh(s)]
            log.info("aliases set (%s v%s, %s v%s); %d online store(s) to refresh",
                     settings.preprocessor_name, pre_v, settings.model_name, model_v, len(stale))
            done = refresh_features(stale[0], settings, stale[1:]) if stale else []
            timer.lap("refresh_features")
            return TrainResult(None, seconds=timer.seconds, materialized=done)

    files, _store, ts = build_dataset(settings, feast)
    timer.lap("data_feast_training_set")
    pre, xt, xv, y_train, y_val = fit_preprocessor(settings, ts)

    import mlflow

    experiment_id = registry.ensure_experiment(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{settings.alias}-seed{settings.seed}") as run:
        mlflow.log_params({
            "seed": settings.seed,
            "data_seed": settings.data_seed,
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "hidden": settings.hidden,
            "features": ",".join(MODEL_FEATURES),
            "feature_service": FEATURE_SERVICE,
            "train_rows": len(y_train),
            "val_fraction": settings.val_fraction,
            "val_rows": len(y_val),
        })
        mlflow.set_tags({"meshserve.data_anchor": files.anchor.isoformat(), "meshserve.alias": settings.alias})
        mlflow.log_metric("val_positive_rate", float(np.mean(y_val)))
        result = fit(
            xt, y_train, xv, y_val,
            seed=settings.seed, epochs=settings.epochs, batch_size=settings.batch_size,
            lr=settings.lr, hidden=settings.hidden,
            on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch),
        )
        timer.lap("fit")
        # Batch > 1 so torch.export keeps the batch dimension dynamic.
        pair = registry.log_and_register(settings, pre, result.model, n_out=xt.shape[1], input_example=xt[:4], move_alias=False)
        timer.lap("mlflow_log_register")
    log.info("run %s done: %s", run.info.run_id, result.final)

    # Latest values into the online store(s), then the alias: the services must never load
    # an aliased pair whose features are not online (a failure here leaves the old alias).
    done = []
    for s in (feast, *extra_stores):
        ops.materialize(s, end=datetime.now(UTC))
        done.append(s.describe_online_store())
    timer.lap("materialize")
    registry.set_pair_alias(settings, pair)
    return TrainResult(pair, metrics=dict(result.final), seconds=timer.seconds, materialized=done)
