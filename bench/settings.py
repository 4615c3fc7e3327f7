"""Knobs of `make bench` (env prefix BENCH_, or the same names as CLI flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BENCH_DIR = Path(__file__).resolve().parent


class BenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BENCH_", use_attribute_docstrings=True, extra="ignore")

    seconds: float = Field(default=20.0, gt=0)
    """Measured window of each matrix cell."""
    warmup_seconds: float = Field(default=5.0, ge=0)
    """Load before each cell's measured window (discarded)."""
    floor_seconds: float = Field(default=10.0, gt=0)
    """Measured window of each floor and features-vs-feast-listen cell."""
    home: Path = BENCH_DIR / "tmp" / "home"
    """MESHSERVE_HOME of the benchmark (git-ignored; trained on first run)."""
    redis_url: str = "127.0.0.1:6379,db=14"
    """Redis the online store uses: its own db index, never a developer's db 0 nor the tests' 15."""
    out_dir: Path = BENCH_DIR
    """Where RESULTS.md and results.json are written."""
    trace_sample_ratio: float = Field(default=0.01, ge=0, le=1)
    """Trace sampling of the main stack (spans exported over OTLP to a collector stand-in): the chart's default."""
    only: str = ""
    """Comma-separated cell names to run (empty: all); for a quick look at one cell."""
