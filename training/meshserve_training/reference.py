"""The offline reference prediction: the zero-skew proof's other side.

Everything here is the offline path: historical features from Feast's point-in-time join
(not the online store), the REGISTERED preprocessor and model loaded from MLflow by alias.
The gateway's online predictions must equal these to 1e-6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from meshserve_feature_repo import ops
from meshserve_feature_repo.config import FeastSettings
from meshserve_runtime.registry import ResolvedArtifact, resolve_alias
from meshserve_training.dataset import entity_frame, feature_matrix, historical_features
from meshserve_training.settings import TrainingSettings


@dataclass
class OfflineReference:
    """The registered pair plus a FeatureStore, loaded once, for many offline predictions."""

    preprocessor: Any
    model: Any
    preprocessor_artifact: ResolvedArtifact
    model_artifact: ResolvedArtifact
    feast: FeastSettings

    def features(self, entity_rows: Sequence[Mapping[str, Any]], at: datetime | None = None) -> np.ndarray:
        """float64 [n, 6] historical features as of `at` (default now), NaN where missing."""
        store = ops.feature_store(self.feast)
        df = historical_features(store, entity_frame(entity_rows, at or datetime.now(UTC)))
        return feature_matrix(df)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """float64 feature matrix -> probabilities, exactly as the services compute them."""
        import torch

        xt = np.asarray(self.preprocessor.transform(np.asarray(x, dtype=np.float64)), dtype=np.float32)
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(xt)))
        return out.detach().cpu().numpy().astype(np.float32).reshape(len(x))

    def predict(self, entity_rows: Sequence[Mapping[str, Any]], at: datetime | None = None) -> np.ndarray:
        """float32 [n] probability of order success per entity row."""
        return self.predict_features(self.features(entity_rows, at))


def load_reference(
    alias: str = "production",
    *,
    tracking_uri: str | None = None,
    feast: FeastSettings | None = None,
    training: TrainingSettings | None = None,
) -> OfflineReference:
    """Resolve `alias` on both registered names and load those exact versions (seconds)."""
    import mlflow
    import mlflow.pytorch
    import mlflow.sklearn
    import torch

    training = training or TrainingSettings()
    uri = tracking_uri or training.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    torch.set_num_threads(1)
    pre_art = resolve_alias(uri, training.preprocessor_name, alias)
    model_art = resolve_alias(uri, training.model_name, alias)
    preprocessor = mlflow.sklearn.load_model(pre_art.uri)
    model = mlflow.pytorch.load_model(model_art.uri, map_location="cpu")
    if hasattr(model, "eval"):
        try:
            model.eval()  # MLflow's loader does not call it
        except NotImplementedError:
            pass  # a torch.export graph module has no train/eval mode (and our MLP has no dropout)
    return OfflineReference(preprocessor, model, pre_art, model_art, feast or FeastSettings())


def offline_predict(
    entity_rows: Sequence[Mapping[str, Any]],
    *,
    at: datetime | None = None,
    alias: str = "production",
    tracking_uri: str | None = None,
    feast: FeastSettings | None = None,
) -> np.ndarray:
    """Probabilities for entity rows ({"driver_id": .., "customer_id": ..}) computed offline.

    Loads the pair on every call (seconds); use load_reference() for repeated calls.
    """
    return load_reference(alias, tracking_uri=tracking_uri, feast=feast).predict(entity_rows, at)
