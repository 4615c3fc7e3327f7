"""The loaded model: the registered PyTorch module, its device and tensor signature."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meshserve_runtime.registry import ResolvedArtifact, resolve_alias

from meshserve_model.device import select_device

log = logging.getLogger("meshserve.model")

INPUT_NAME = "input"
OUTPUT_NAME = "probability"


@dataclass(slots=True)
class LoadedModel:
    artifact: ResolvedArtifact
    module: Any
    device: torch.device
    num_features: int
    platform: str

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, num_features] -> float32 [n, 1] probabilities."""
        # Wire buffers are read-only; torch wants writable memory (a copy of a few KB).
        t = torch.from_numpy(x if x.flags.writeable else x.copy())
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with other work.
            t = t.pin_memory().to(self.device, non_blocking=True)
        out = self.module(t)
        return out.detach().to("cpu").numpy().astype(np.float32, copy=False).reshape(len(x), -1)


def _num_features(signature: Any) -> int:
    if signature is None:
        raise RuntimeError("the registered model has no signature; register it with a tensor input signature")
    spec = signature.inputs.inputs[0]
    shape = getattr(spec, "shape", None)
    if not shape or len(shape) != 2 or shape[1] <= 0:
        raise RuntimeError(f"expected a [-1, n] tensor input signature, got {shape}")
    return int(shape[1])


def load_model(tracking_uri: str, name: str, alias: str, device_preference: str, num_threads: int, warmup_batch_sizes: tuple[int, ...]) -> LoadedModel:
    """Resolve the alias, load that exact version onto the device and warm it up (blocking)."""
    import mlflow.models
    import mlflow.pytorch

    start = time.perf_counter()
    torch.set_num_threads(num_threads)
    device = select_device(device_preference)
    artifact = resolve_alias(tracking_uri, name, alias)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    info = mlflow.models.get_model_info(artifact.uri)
    num_features = _num_features(info.signature)
    module = mlflow.pytorch.load_model(artifact.uri, map_location=device)
    try:
        module.eval()  # MLflow's loader does not: dropout/batch-norm must be in inference mode
    except NotImplementedError:
        pass  # a torch.export graph was captured in eval mode at training time and cannot switch
    module = module.to(device)
    loaded = LoadedModel(artifact, module, device, num_features, platform=f"pytorch_{torch.__version__}")
    for n in warmup_batch_sizes:
        out = loaded.predict(np.zeros((n, num_features), dtype=np.float32))
        if out.shape != (n, 1):
            raise RuntimeError(f"model returned shape {out.shape} for a batch of {n}; expected ({n}, 1)")
    if device.type == "cuda":
        torch.cuda.synchronize()
    log.info(
        "model loaded",
        extra={**artifact.labels(), "device": str(device), "features": num_features, "seconds": round(time.perf_counter() - start, 2)},
    )
    return loaded
