"""Settings of the model service (env prefix MESHSERVE_MODEL_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.settings import RegistryClientSettings, ServerSettings, meshserve_home


def _default_tracking_uri() -> str:
    return f"sqlite:///{meshserve_home() / 'mlflow.db'}"


class ModelSettings(ServerSettings, RegistryClientSettings):
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
    allow_unsigned_artifacts: bool = False
    """Load versions without a meshserve.sha256 digest tag (registered by other tools) unchecked; a tagged version is always checked."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where inference runs: auto picks cuda when the pod has a GPU, else cpu."""
    num_threads: int = Field(default=1, ge=1)
    """torch intra-op threads; match the pod's CPU limit (a second thread did not help a small MLP)."""
    max_batch_rows: int = Field(default=4096, ge=1)
    """Most rows one ModelInfer call may carry."""
    warmup_batch_sizes: tuple[int, ...] = (1, 2, 8, 32, 64, 256)
    """Extra batch sizes warmed up before ready (every batcher bucket, powers of two up to max_batch_size, always is)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Inference precision; float16/bfloat16 halve memory traffic on a GPU (outputs are still FP32)."""
    optimize: Literal["none", "jit_trace"] = "jit_trace"
    """jit_trace: serve a torch.jit.trace of the loaded pt2 module, frozen and optimized for inference on CPU (checked equal at load; ~8x faster measured); none: as loaded."""
    max_batch_size: int = Field(default=256, ge=1)
    """Most rows the batcher merges into one forward pass (a larger single call runs alone)."""
    max_queue_delay_us: int = Field(default=500, ge=0)
    """Longest a call waits for company under load, in microseconds (an idle model never waits)."""
    max_queue_size: int = Field(default=1024, ge=1)
    """Calls that may wait for a forward pass; past it ModelInfer answers RESOURCE_EXHAUSTED at once."""
    alias_poll_s: float = Field(default=10.0, ge=0)
    """How often to check whether the alias moved; a move loads, warms and switches to the new version (0: never)."""
    reload_overlap_s: float = Field(default=30.0, ge=0)
    """After a switch, the previous version keeps serving calls whose preprocessor run id is its own until none came for this long (and the new version has answered its own preprocessor's input)."""
    reload_wait_s: float = Field(default=10.0, ge=0)
    """A call whose preprocessor run id is newer than the served model waits this long (within its deadline) for the reload."""
