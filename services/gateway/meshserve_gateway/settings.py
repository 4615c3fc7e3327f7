"""Settings of the gateway (env prefix MESHSERVE_GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.settings import ServerSettings


class GatewaySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_")

    port: int = 50051
    """gRPC port."""
    metrics_port: int = 9101
    """Prometheus metrics HTTP port (0 disables the endpoint)."""
    features_target: str = "127.0.0.1:50052"
    """gRPC target of the features service (dns:///name:port spreads calls over every address)."""
    preprocess_target: str = "127.0.0.1:50053"
    """gRPC target of the preprocess service."""
    model_target: str = "127.0.0.1:50054"
    """gRPC target of the model service (KServe V2)."""
    model_name: str = "driver_ranking"
    """V2 model name the gateway asks the model service for."""
    max_batch_rows: int = Field(default=1000, ge=1)
    """Most rows (entities or raw rows) one Predict/PredictEntities call may carry."""
    default_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline for the whole pipeline when the caller sets none (a caller's shorter deadline wins)."""
    retry_attempts: int = Field(default=3, ge=1, le=5)
    """Attempts per internal call on UNAVAILABLE (gRPC service-config retries, throttled)."""
    chunk_rows: int = Field(default=256, ge=0)
    """Rows per preprocess+model call: a bigger batch is cut into chunks scored concurrently (0: never cut)."""
    coalesce_max_delay_us: int = Field(default=1000, ge=0)
    """Longest a request waits (microseconds) to share an internal call with concurrent ones; only waits while a call is in flight (0: no coalescing)."""
    coalesce_max_rows: int = Field(default=256, ge=0)
    """Most rows one coalesced internal call carries; keep it at most the features service's max_entities (0: no coalescing)."""
