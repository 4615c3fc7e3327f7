"""The model's forward passes run on the event loop's thread: its torch thread count must be
the configured one too, not only the loading thread's (OpenMP counts are per thread)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from meshserve_runtime.registry import ResolvedArtifact

from meshserve_model import service as model_service
from meshserve_model.model import LoadedModel, configure_threads
from meshserve_model.settings import ModelSettings


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def _threads_in_new_thread(fn: Any = None) -> int:
    seen: list[int] = []

    def run() -> None:
        if fn is not None:
            fn()
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return seen[0]


def test_thread_counts_are_per_thread_which_is_why_the_serving_thread_is_set() -> None:
    here = torch.get_num_threads()
    wanted = 1 if here != 1 else 2
    try:
        assert _threads_in_new_thread(lambda: configure_threads(wanted)) == wanted
        assert torch.get_num_threads() == here  # setting it on another thread left this one as it was
    finally:
        torch.set_num_threads(here)


async def test_load_sets_and_warms_the_serving_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    loader_threads: list[str] = []
    predict_threads: list[str] = []

    def fake_load_model(*args: Any, **kwargs: Any) -> LoadedModel:
        num_threads = args[4]
        configure_threads(num_threads)  # as load_model does, on the loader's thread
        loader_threads.append(threading.current_thread().name)
        artifact = ResolvedArtifact(name="m", version="1", run_id="r", alias="production", source="")
        return LoadedModel(artifact, Tiny().eval(), torch.device("cpu"), 3, "pytorch")

    monkeypatch.setattr(model_service, "load_model", fake_load_model)
    original_predict = LoadedModel.predict

    def spy_predict(self: LoadedModel, x: Any) -> Any:
        predict_threads.append(threading.current_thread().name)
        return original_predict(self, x)

    monkeypatch.setattr(LoadedModel, "predict", spy_predict)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        settings = ModelSettings(num_threads=wanted, max_batch_size=4, alias_poll_s=0, metrics_port=0,
                                 mlflow_tracking_uri=f"sqlite:///{tmp_path}/unused.db")
        loaded = await model_service.ModelService(settings)._load(None)
        here = threading.current_thread().name
        assert loader_threads and loader_threads[0] != here  # loading ran off the loop
        assert torch.get_num_threads() == wanted  # ... and the serving thread is set as well
        assert here in predict_threads  # warmed on the thread that will serve
        assert loaded.batcher is not None
    finally:
        torch.set_num_threads(before)


def test_the_cuda_memory_gauge_exists_only_on_a_gpu() -> None:
    """A CPU pod exports no CUDA series (a 0 would read as "a GPU with nothing allocated");
    a GPU model exports it, read at scrape time, and a reload registers it only once."""
    import subprocess
    import sys

    code = """
import torch
from prometheus_client import REGISTRY, generate_latest
from meshserve_model import metrics
metrics.export_device(torch.device("cpu"), "float32", 1)
assert b"meshserve_model_cuda_memory_allocated_bytes" not in generate_latest(REGISTRY)
torch.cuda.memory_allocated = lambda device=None: 1234.0  # no GPU here: stand in for the driver
metrics.export_device(torch.device("cuda", 0), "float32", 1)
metrics.export_device(torch.device("cuda", 0), "float16", 1)  # a hot reload: same gauge
assert REGISTRY.get_sample_value("meshserve_model_cuda_memory_allocated_bytes") == 1234.0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
