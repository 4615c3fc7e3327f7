"""Training refuses, before any work and in one line naming the variable to fix, an online
store that does not answer or a MESHSERVE_HOME it cannot write (no Redis data is touched:
the dead Redis is 127.0.0.1:1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshserve_training.preflight import PreflightError, check_local_dirs, check_online_stores, preflight
from tests.fixtures.trained import feast_settings, training_settings

DEAD_REDIS = "127.0.0.1:1"


def test_a_dead_redis_is_refused_fast_naming_its_variable() -> None:
    import feast.infra.online_stores.redis  # noqa: F401  (imported first: not part of the time below)

    check_online_stores(feast_settings(Path("/nonexistent"), "sqlite", DEAD_REDIS))  # SQLite: nothing to reach
    store = feast_settings(Path("/nonexistent"), "redis", DEAD_REDIS)
    start = time.monotonic()
    with pytest.raises(PreflightError, match="MESHSERVE_FEATURES_REDIS_URL") as err:
        check_online_stores(store)
    assert time.monotonic() - start < 3  # no backoff between retries
    assert "\n" not in str(err.value) and "127.0.0.1:1" in str(err.value)


def test_an_extra_store_names_its_flag_and_hides_the_password(tmp_path: Path) -> None:
    main = feast_settings(tmp_path, "sqlite")
    extra = feast_settings(tmp_path, "redis", f"{DEAD_REDIS},db=3,password=hunter2")
    with pytest.raises(PreflightError, match="--materialize-redis") as err:
        check_online_stores(main, [extra])
    assert "hunter2" not in str(err.value) and "password=***" in str(err.value)


def test_a_home_that_is_a_file_names_meshserve_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "afile" / "home"
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("MESHSERVE_HOME", str(home))
    with pytest.raises(PreflightError, match=r"^MESHSERVE_HOME=.*not a writable directory.*set MESHSERVE_HOME") as err:
        check_local_dirs(training_settings(home), [feast_settings(home)])
    assert "\n" not in str(err.value)


def test_a_path_set_by_its_own_variable_names_that_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshserve_feature_repo.config import FeastSettings

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("MESHSERVE_FEATURES_FEAST_DATA_DIR", str(blocker / "data"))
    feast = FeastSettings.for_home(tmp_path).model_copy(update={"feast_data_dir": FeastSettings().feast_data_dir})
    with pytest.raises(PreflightError, match="^MESHSERVE_FEATURES_FEAST_DATA_DIR: "):
        check_local_dirs(training_settings(tmp_path), [feast])
    monkeypatch.delenv("MESHSERVE_FEATURES_FEAST_DATA_DIR")
    check_local_dirs(training_settings(tmp_path / "ok"), [feast_settings(tmp_path / "ok")])  # a fresh home is fine


def test_train_refuses_a_dead_redis_before_registering_anything(tmp_path: Path) -> None:
    from meshserve_training.train import train

    with pytest.raises(PreflightError):
        train(training_settings(tmp_path), feast_settings(tmp_path, "redis", DEAD_REDIS))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "feast" / "registry.db").exists()
    preflight(training_settings(tmp_path), feast_settings(tmp_path, "sqlite"))  # the same home on SQLite passes


def test_artifacts_go_where_the_registry_kind_says(tmp_path: Path) -> None:
    """Local registry: under the home. MLflow server and no artifact_root: the server's own
    default (its proxy), and training checks no local artifact directory. Set: as set."""
    home = tmp_path.resolve()
    assert training_settings(home).experiment_artifact_root() == home / "mlartifacts"
    server = training_settings(home, mlflow_tracking_uri="https://mlflow.example:5000")
    assert server.experiment_artifact_root() is None
    check_local_dirs(server, [feast_settings(home, "sqlite")])
    assert not (home / "mlartifacts").exists()
    pinned = training_settings(home, mlflow_tracking_uri="http://mlflow:5000", artifact_root=tmp_path / "elsewhere")
    assert pinned.experiment_artifact_root() == tmp_path / "elsewhere"
