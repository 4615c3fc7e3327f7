"""MLflow: the experiment, logging the pair from ONE run, registering it and moving the alias."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from meshserve_feature_repo.definitions import MODEL_FEATURES
from meshserve_runtime import integrity
from meshserve_training.settings import TrainingSettings

log = logging.getLogger("meshserve.training")

RUN_ID_TAG = "meshserve.run_id"
PARTNER_NAME_TAG = "meshserve.partner_name"
PARTNER_VERSION_TAG = "meshserve.partner_version"


@dataclass(frozen=True, slots=True)
class RegisteredPair:
    """The preprocessor and model versions one training run registered."""

    run_id: str
    preprocessor_name: str
    preprocessor_version: str
    model_name: str
    model_version: str
    alias: str
    #: Digests of the two versions' artifact trees, as recorded in the registry (integrity.DIGEST_TAG).
    preprocessor_sha256: str = ""
    model_sha256: str = ""


def use_tracking(settings: TrainingSettings) -> None:
    """Point MLflow at our backend explicitly (its default is ./mlflow.db in the cwd)."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def ensure_experiment(settings: TrainingSettings) -> str:
    """The experiment id, creating it with our artifact root the first time (or, against an
    MLflow server with no artifact root set, the server's default location)."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    root = settings.experiment_artifact_root()
    if root is None:
        return client.create_experiment(settings.experiment)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(settings.experiment, artifact_location=root.as_uri())


def alias_version(settings: TrainingSettings, name: str, alias: str) -> str | None:
    """The version `alias` points at, or None if the model or the alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_digest(settings: TrainingSettings, name: str, version: str) -> str | None:
    """The digest tag of a registered version (None: registered unsigned, e.g. before signing existed)."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    return (client.get_model_version(name, version).tags or {}).get(integrity.DIGEST_TAG)


def _signatures(n_out: int) -> tuple[Any, Any]:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema, TensorSpec

    # Named double columns in MODEL_FEATURES order: the preprocess service reads its
    # expected input columns from this signature.
    pre = ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in MODEL_FEATURES]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_out))]),
    )
    # The model's input is the preprocessor's output, cast to float32.
    model = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_out))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1))]),
    )
    return pre, model


def log_and_register(
    settings: TrainingSettings,
    preprocessor: Any,
    model: Any,
    *,
    n_out: int,
    input_example: np.ndarray,
    move_alias: bool = True,
) -> RegisteredPair:
    """Inside the active run: log both artifacts, register both, tag them as partners, and
    (move_alias) point the alias at them; else the caller does so later with set_pair_alias()."""
    import mlflow
    import mlflow.pytorch
    import mlflow.sklearn
    from mlflow import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register must run inside mlflow.start_run()")
    run_id = run.info.run_id
    pre_sig, model_sig = _signatures(n_out)
    # Explicit requirements: MLflow would otherwise infer them by loading the model in a
    # subprocess (slow, and importing feast there through its MLflow plugin).
    pre_info = mlflow.sklearn.log_model(
        preprocessor,
        name="preprocessor",
        signature=pre_sig,
        registered_model_name=settings.preprocessor_name,
        # SimpleImputer keeps the fitted numpy.dtype, which skops does not trust by default;
        # a dtype is data, not code. MLflow stores this list with the model for loading.
        skops_trusted_types=["numpy.dtype"],
        pip_requirements=[f"scikit-learn=={version('scikit-learn')}", f"skops=={version('skops')}", f"numpy=={version('numpy')}"],
    )
    model_info = mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=np.ascontiguousarray(input_example, dtype=np.float32),
        signature=model_sig,
        registered_model_name=settings.model_name,
        pip_requirements=[f"torch=={version('torch')}", f"numpy=={version('numpy')}"],
    )
    pre_version, model_version = str(pre_info.registered_model_version), str(model_info.registered_model_version)
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    # Sign what the store now holds, before any alias points at it: services refuse a
    # version whose downloaded files don't match this digest (meshserve_runtime.integrity).
    digests: dict[str, str] = {}
    for name, ver in ((settings.preprocessor_name, pre_version), (settings.model_name, model_version)):
        digests[name] = integrity.download_digest(f"models:/{name}/{ver}", settings.mlflow_tracking_uri)
        client.set_model_version_tag(name, ver, integrity.DIGEST_TAG, digests[name])
        client.set_tag(run_id, integrity.run_digest_tag(name), digests[name])
    pair = RegisteredPair(
        run_id=run_id,
        preprocessor_name=settings.preprocessor_name,
        preprocessor_version=pre_version,
        model_name=settings.model_name,
        model_version=model_version,
        alias=settings.alias,
        preprocessor_sha256=digests[settings.preprocessor_name],
        model_sha256=digests[settings.model_name],
    )
    for name, ver, partner, partner_ver in (
        (pair.preprocessor_name, pair.preprocessor_version, pair.model_name, pair.model_version),
        (pair.model_name, pair.model_version, pair.preprocessor_name, pair.preprocessor_version),
    ):
        client.set_model_version_tag(name, ver, RUN_ID_TAG, run_id)
        client.set_model_version_tag(name, ver, PARTNER_NAME_TAG, partner)
        client.set_model_version_tag(name, ver, PARTNER_VERSION_TAG, partner_ver)
    log.info(
        "registered",
        extra={"run_id": run_id, "preprocessor": f"{pair.preprocessor_name}/{pair.preprocessor_version}",
               "model": f"{pair.model_name}/{pair.model_version}"},
    )
    if move_alias:
        set_pair_alias(settings, pair)
    return pair


def set_pair_alias(settings: TrainingSettings, pair: RegisteredPair) -> None:
    """Point pair.alias at both versions of a registered pair."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    # The model's alias moves last: a reader that resolves both aliases between the two
    # calls sees the new preprocessor with the old model, and the skew guard refuses that
    # pair until the second alias lands, rather than serving a mismatch.
    client.set_registered_model_alias(pair.preprocessor_name, pair.alias, pair.preprocessor_version)
    client.set_registered_model_alias(pair.model_name, pair.alias, pair.model_version)
    log.info("alias moved", extra={"alias": pair.alias, "preprocessor": f"{pair.preprocessor_name}/{pair.preprocessor_version}",
                                   "model": f"{pair.model_name}/{pair.model_version}"})
