"""Device selection: cuda when the pod has a GPU (and it was not ruled out), else cpu."""

from __future__ import annotations

import torch


def select_device(preference: str) -> torch.device:
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("MESHSERVE_MODEL_DEVICE=cuda but torch sees no CUDA device")
        return torch.device("cuda")
    if preference == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
