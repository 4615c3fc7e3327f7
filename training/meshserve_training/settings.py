"""Training settings (env prefix MESHSERVE_TRAINING_).

Where the Feast repo and online store are is not here: training reads the features
service's own variables (meshserve_feature_repo.config.FeastSettings, MESHSERVE_FEATURES_*)
so it always materializes into the store the service reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve_runtime.settings import meshserve_home


def default_tracking_uri(home: Path | None = None) -> str:
    """sqlite:///$MESHSERVE_HOME/mlflow.db (MLflow's own default is a file in the cwd)."""
    root = Path(home).resolve() if home is not None else meshserve_home()
    return f"sqlite:///{root / 'mlflow.db'}"


class TrainingSettings(BaseSettings):
    """How the demo model is trained and where it is registered."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_TRAINING_", use_attribute_docstrings=True, extra="ignore", frozen=True
    )

    mlflow_tracking_uri: str = Field(default_factory=default_tracking_uri)
    """MLflow tracking and registry URI (default sqlite:///$MESHSERVE_HOME/mlflow.db)."""
    artifact_root: Path | None = None
    """Artifact root of the experiment, used when the experiment is created. Unset: $MESHSERVE_HOME/mlartifacts with a local registry; with an MLflow server (http/https) the server's own default (with --serve-artifacts, uploads go through the server, so pods elsewhere can download them)."""
    experiment: str = "driver_ranking"
    """MLflow experiment of the training runs."""
    model_name: str = "driver_ranking"
    """Registered model name of the PyTorch classifier."""
    preprocessor_name: str = "driver_ranking_preprocessor"
    """Registered model name of the scikit-learn preprocessor (the model's partner)."""
    alias: str = "production"
    """Alias set on both new versions (e.g. canary to stage a release without touching production)."""
    seed: int = 7
    """Seed of weight init, batch order and the validation split: a different seed gives a different model."""
    data_seed: int = 42
    """Seed of the demo data; kept apart from `seed` so retraining never changes the served features."""
    data_days: int = Field(default=14, ge=2)
    """Days of demo history generated up to the current hour."""
    order_count: int = Field(default=5000, ge=100)
    """Orders generated as training examples."""
    epochs: int = Field(default=15, ge=1)
    """Training epochs."""
    batch_size: int = Field(default=128, ge=1)
    """Mini-batch size."""
    lr: float = Field(default=3e-3, gt=0)
    """Adam learning rate."""
    hidden: int = Field(default=64, ge=1)
    """Width of the MLP's two hidden layers."""
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Latest fraction of orders (by time) held out for validation."""

    @classmethod
    def for_home(cls, home: Path, **overrides: Any) -> TrainingSettings:
        """The default MLflow layout under an explicit MESHSERVE_HOME (an MLflow server given
        as mlflow_tracking_uri keeps its own artifact default, as from the environment)."""
        root = Path(home).resolve()
        paths: dict[str, Any] = {"mlflow_tracking_uri": default_tracking_uri(root)}
        if not is_server_uri(str(overrides.get("mlflow_tracking_uri", ""))):
            paths["artifact_root"] = root / "mlartifacts"
        return cls(**{**paths, **overrides})

    def experiment_artifact_root(self) -> Path | None:
        """Where a new experiment keeps its artifacts; None: wherever the MLflow server puts them."""
        if self.artifact_root is not None:
            return self.artifact_root
        if is_server_uri(self.mlflow_tracking_uri):
            return None
        return meshserve_home() / "mlartifacts"


def is_server_uri(uri: str) -> bool:
    """An MLflow tracking server (REST over http/https), not a database or a local path."""
    return uri.split(":", 1)[0].lower() in ("http", "https")
