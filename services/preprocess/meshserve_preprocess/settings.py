"""Settings of the preprocess service (env prefix MESHSERVE_PREPROCESS_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.settings import RegistryClientSettings, ServerSettings, meshserve_home


def _default_tracking_uri() -> str:
    return f"sqlite:///{meshserve_home() / 'mlflow.db'}"


class PreprocessSettings(ServerSettings, RegistryClientSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_PREPROCESS_")

    port: int = 50053
    """gRPC port."""
    metrics_port: int = 9103
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    mlflow_tracking_uri: str = Field(default_factory=_default_tracking_uri)
    """MLflow tracking/registry URI the preprocessor is loaded from."""
    model_name: str = "driver_ranking_preprocessor"
    """Registered model name of the preprocessor."""
    alias: str = "production"
    """Registry alias to serve (e.g. production, or canary on canary pods)."""
    allow_unsigned_artifacts: bool = False
    """Load versions without a meshserve.sha256 digest tag (registered by other tools) unchecked; a tagged version is always checked."""
    skops_trusted_types: tuple[str, ...] = ("numpy.dtype",)
    """Types the preprocessor may hold beyond skops' defaults (scikit-learn estimators, numpy arrays); data types only, never code. This list, not the artifact's own, is used."""
    compile: Literal["onnx", "none"] = "onnx"
    """Serve an ONNX Runtime equivalent of the registered pipeline, checked against it at load
    (max abs difference 1e-6 on a probe set, else the service stays not-ready); none: scikit-learn itself."""
    max_rows: int = Field(default=4096, ge=1)
    """Most rows one Transform call may carry."""
    alias_poll_s: float = Field(default=10.0, ge=0)
    """How often to check whether the alias moved; a move loads, warms and switches to the new version (0: never)."""
