"""Training on the real stack: one MLflow run registers the pair, reproducibly, from Feast features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshserve_feature_repo.definitions import MODEL_FEATURES
from tests.fixtures.trained import TrainedHome, feast_settings, online_feature_rows, training_settings

PAIRS = [(1001, 2001), (1004, 2007), (1010, 2010)]


def test_one_run_registers_both_as_production(trained: TrainedHome) -> None:
    import mlflow.models
    from mlflow import MlflowClient

    ts = training_settings(trained.home)
    client = MlflowClient(ts.mlflow_tracking_uri, ts.mlflow_tracking_uri)
    pre = client.get_model_version_by_alias("driver_ranking_preprocessor", "production")
    model = client.get_model_version_by_alias("driver_ranking", "production")
    assert pre.run_id == model.run_id == trained.run_id
    assert (str(pre.version), str(model.version)) == (trained.preprocessor_version, trained.model_version)
    assert pre.tags["meshserve.run_id"] == model.tags["meshserve.run_id"] == trained.run_id
    assert (pre.tags["meshserve.partner_name"], pre.tags["meshserve.partner_version"]) == ("driver_ranking", str(model.version))
    assert (model.tags["meshserve.partner_name"], model.tags["meshserve.partner_version"]) == ("driver_ranking_preprocessor", str(pre.version))

    run = client.get_run(trained.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("driver_ranking").experiment_id
    assert run.data.params["seed"] == "7" and run.data.params["features"] == ",".join(MODEL_FEATURES)
    assert {"train_loss", "val_loss", "val_auc"} <= set(run.data.metrics)
    assert run.data.metrics["val_auc"] > 0.6  # the labels depend on the features: there is something to learn
    # Artifacts live under the home's artifact root, not in the cwd.
    assert Path(client.get_experiment(run.info.experiment_id).artifact_location.removeprefix("file://")) == trained.home / "mlartifacts"

    # get_model_info resolves models:/ through MLflow's global URIs; other tests move them.
    from meshserve_training.registry import use_tracking

    use_tracking(ts)
    pre_sig = mlflow.models.get_model_info(f"models:/driver_ranking_preprocessor/{pre.version}").signature
    assert pre_sig.inputs.input_names() == list(MODEL_FEATURES)
    model_sig = mlflow.models.get_model_info(f"models:/driver_ranking/{model.version}").signature
    assert model_sig.inputs.inputs[0].shape == (-1, len(MODEL_FEATURES))
    assert model_sig.outputs.inputs[0].shape == (-1, 1)


def test_training_is_reproducible_and_matches_the_registered_pair(trained: TrainedHome, tmp_path: Path) -> None:
    """Re-running the pipeline (fresh Feast repo, same seeds) gives the registered weights;
    another seed gives another model."""
    from meshserve_training.model import fit
    from meshserve_training.reference import load_reference
    from meshserve_training.train import build_dataset, fit_preprocessor

    s = training_settings(trained.home)
    _, _, data = build_dataset(s, feast_settings(tmp_path))
    pre, xt, xv, y_train, y_val = fit_preprocessor(s, data)
    kw = dict(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, hidden=s.hidden)
    a = fit(xt, y_train, xv, y_val, seed=s.seed, **kw)
    b = fit(xt, y_train, xv, y_val, seed=s.seed, **kw)
    other = fit(xt, y_train, xv, y_val, seed=s.seed + 1, **kw)
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name

    ref = load_reference("production", feast=feast_settings(trained.home), training=s)
    sample = data.x[-64:]
    np.testing.assert_array_equal(ref.preprocessor.transform(sample), pre.transform(sample))
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(pre.transform(sample), dtype=np.float32))
        mine = a.model(x).numpy().ravel()
        theirs = other.model(x).numpy().ravel()
    np.testing.assert_allclose(ref.predict_features(sample), mine, rtol=0, atol=1e-6)
    assert np.abs(theirs - mine).max() > 1e-3


def test_offline_features_equal_online_store(trained: TrainedHome) -> None:
    """The reference's historical features at "now" are what the online store serves."""
    from meshserve_training.reference import load_reference

    ref = load_reference("production", feast=feast_settings(trained.home), training=training_settings(trained.home))
    pairs = [*PAIRS, (9999, 2001)]
    offline = ref.features([{"driver_id": d, "customer_id": c} for d, c in pairs])
    online = online_feature_rows(trained.home, pairs)
    for i, row in enumerate(online):
        for j, name in enumerate(MODEL_FEATURES):
            if row[name] is None:
                assert np.isnan(offline[i, j]), (pairs[i], name)
            else:
                assert offline[i, j] == row[name], (pairs[i], name)
    assert np.isnan(offline[-1, :3]).all() and not np.isnan(offline[-1, 3:]).any()


def test_if_empty_trains_nothing_when_both_aliases_resolve(trained: TrainedHome) -> None:
    from meshserve_training.registry import alias_version
    from meshserve_training.train import train

    s = training_settings(trained.home)
    result = train(s, feast_settings(trained.home), if_empty=True)
    assert result.pair is None
    assert result.materialized == []  # the online store is fresh: nothing refreshed
    assert alias_version(s, "driver_ranking", "production") == trained.model_version


@pytest.mark.parametrize("seed", [3])
def test_data_generation_is_reproducible(tmp_path: Path, seed: int) -> None:
    import pandas as pd

    from meshserve_feature_repo.data import current_anchor, generate

    anchor = current_anchor()
    a = generate(tmp_path / "a", seed=seed, days=3, order_count=200, anchor=anchor)
    b = generate(tmp_path / "b", seed=seed, days=3, order_count=200, anchor=anchor)
    for pa, pb in ((a.driver_stats, b.driver_stats), (a.customer_profile, b.customer_profile), (a.orders, b.orders)):
        pd.testing.assert_frame_equal(pd.read_parquet(pa), pd.read_parquet(pb))
    drivers = pd.read_parquet(a.driver_stats)
    assert drivers["event_timestamp"].max() == pd.Timestamp(anchor)  # freshest row at the current hour


def test_training_refuses_a_dead_redis_at_once_in_one_line(tmp_path: Path) -> None:
    """Before the fix this trained, registered and moved @production, then died materializing."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHSERVE_FEATURES_", "MESHSERVE_TRAINING_"))}
    env["MESHSERVE_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "meshserve_training", "train", "--online-store", "redis", "--redis-url", "127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot train:") and "MESHSERVE_FEATURES_REDIS_URL" in lines[0], lines
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing trained or registered


def test_the_alias_moves_only_after_materialization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A materialization that fails leaves the new pair registered but not aliased, so the
    services never load a @production pair whose features are not online."""
    import mlflow
    from mlflow import MlflowClient

    from meshserve_training import train as train_module
    from meshserve_training.registry import alias_version

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("online store went away")

    settings = training_settings(tmp_path, epochs=1, order_count=300, data_days=2)
    monkeypatch.setattr(train_module.ops, "materialize", fail)
    before = mlflow.get_tracking_uri()
    try:
        with pytest.raises(RuntimeError, match="went away"):
            train_module.train(settings, feast_settings(tmp_path))
    finally:
        mlflow.set_tracking_uri(before)  # other tests resolve models:/ through the global URI
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    assert [str(v.version) for v in client.search_model_versions("name='driver_ranking'")] == ["1"]  # registered...
    assert alias_version(settings, "driver_ranking", "production") is None  # ...but not aliased
    assert alias_version(settings, "driver_ranking_preprocessor", "production") is None
