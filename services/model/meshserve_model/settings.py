"""Settings of the model service (env prefix MESHSERVE_MODEL_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.settings import ServerSettings, meshserve_home


def _default_tracking_uri() -> str:
    return f"sqlite:///{meshserve_home() / 'mlflow.db'}"


class ModelSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_MODEL_")

    port: int = 50054
    """gRPC port."""
    metrics_port: int = 9104
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    mlflow_tracking_uri: str = Field(default_factory=_default_tracking_uri)
    """MLflow tracking/registry URI the model is loaded from."""
    model_name: str = "driver_ranking"
    """Registered model name to serve; also the V2 model name clients ask for."""
    alias: str = "production"
    """Registry alias to serve (e.g. production, or canary on canary pods)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where inference runs: auto picks cuda when the pod has a GPU, else cpu."""
    num_threads: int = Field(default=1, ge=1)
    """torch intra-op threads; match the pod's CPU limit (a second thread did not help a small MLP)."""
    max_batch_rows: int = Field(default=4096, ge=1)
    """Most rows one ModelInfer call may carry."""
    warmup_batch_sizes: tuple[int, ...] = (1, 2, 8, 32, 64, 256)
    """Batch sizes run once before reporting ready, so no real request pays a first-call cost."""
