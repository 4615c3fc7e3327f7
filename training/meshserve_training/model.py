"""The PyTorch classifier and its seeded, reproducible training loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn


class RankingMLP(nn.Module):
    """n_in -> hidden -> hidden -> 1; forward returns the PROBABILITY of order success."""

    def __init__(self, n_in: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The sigmoid lives in the graph so the served output needs no post-processing.
        return torch.sigmoid(self.body(x))


@dataclass
class FitResult:
    model: RankingMLP
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def seed_everything(seed: int) -> None:
    """Same seed, same weights: seeded RNGs, deterministic kernels, one thread."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # One thread: no reduction-order nondeterminism, and FINDINGS measured no gain from more.
    torch.set_num_threads(1)


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    hidden: int,
    on_epoch: Callable[[int, dict[str, float]], object] | None = None,
) -> FitResult:
    """Train on float32 inputs (the preprocessor's output cast to float32)."""
    seed_everything(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.float32)).reshape(-1, 1)
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
    yv = torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.float32)).reshape(-1, 1)

    model = RankingMLP(xt.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()  # on logits: numerically safer than BCE on probabilities
    order_rng = torch.Generator().manual_seed(seed)
    result = FitResult(model)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        perm = torch.randperm(len(xt), generator=order_rng)
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_logits = model.logits(xv)
            val_loss = float(loss_fn(val_logits, yv))
            val_prob = torch.sigmoid(val_logits).numpy().ravel()
        auc = float(roc_auc_score(y_val, val_prob)) if len(np.unique(y_val)) > 1 else float("nan")
        metrics = {"train_loss": total / len(xt), "val_loss": val_loss, "val_auc": auc}
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    model.eval()
    return result
