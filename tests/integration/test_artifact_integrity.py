"""Artifact integrity on a real MLflow registry (SQLite + local artifact store) in a tmp home.

The pairs are fitted and registered by the real training code (build_preprocessor, fit,
registry.log_and_register) on a small synthetic matrix, skipping Feast: what matters here
is what registration records and what loading accepts. The session's shared trained home
is never touched. Then bytes of the stored artifacts are changed behind the registry's back
and the loaders (and, in the e2e test, the real model process) must refuse them.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
import numpy as np
import pytest
import torch

from meshserve_feature_repo.definitions import MODEL_FEATURES
from meshserve_runtime import integrity
from meshserve_runtime.integrity import DIGEST_TAG, DigestMismatch, UnsafeArtifact, UnsignedArtifact
from meshserve_runtime.registry import resolve_alias
from meshserve_training.registry import RegisteredPair, version_digest

from tests.fixtures.trained import training_settings

MODEL = "driver_ranking"
PREPROCESSOR = "driver_ranking_preprocessor"


@dataclass(frozen=True)
class Registry:
    home: Path
    uri: str
    first: RegisteredPair
    """Registered as @production (seed 7)."""
    second: RegisteredPair
    """Registered as @candidate (seed 8): same shapes, other weights."""


def _register(home: Path, alias: str, seed: int) -> RegisteredPair:
    import mlflow

    from meshserve_training import registry
    from meshserve_training.model import fit
    from meshserve_training.preprocessor import build_preprocessor

    settings = training_settings(home, alias=alias, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(MODEL_FEATURES)))
    x[rng.random(x.shape) < 0.05] = np.nan  # the imputers get something to do
    y = (np.nan_to_num(x[:, 0]) + rng.normal(scale=0.5, size=len(x)) > 0).astype(np.float64)
    pre = build_preprocessor().fit(x)
    xt = np.asarray(pre.transform(x), dtype=np.float32)
    result = fit(xt[:300], y[:300], xt[300:], y[300:], seed=seed, epochs=2, batch_size=64, lr=3e-3, hidden=8)
    registry.use_tracking(settings)
    with mlflow.start_run(experiment_id=registry.ensure_experiment(settings)):
        return registry.log_and_register(settings, pre, result.model, n_out=xt.shape[1], input_example=xt[:4])


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import mlflow

    before = mlflow.get_tracking_uri()
    home = tmp_path_factory.mktemp("integrity-home")
    try:
        first = _register(home, "production", seed=7)
        second = _register(home, "candidate", seed=8)
        yield Registry(home, training_settings(home).mlflow_tracking_uri, first, second)
    finally:
        mlflow.set_tracking_uri(before)


def stored_dir(reg: Registry, name: str, version: str) -> Path:
    """Where the artifact store keeps this version's files (the attacker's target)."""
    from mlflow import MlflowClient

    uri = MlflowClient(reg.uri, reg.uri).get_model_version_download_uri(name, version)
    path = Path(urlparse(uri).path)
    assert path.is_dir(), uri
    return path


@contextmanager
def replaced(path: Path, content: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


def flipped(path: Path) -> bytes:
    """The file with one byte, in the middle, changed."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def load_model(reg: Registry, name: str = MODEL, alias: str = "production", **kw: object):  # noqa: ANN201
    from meshserve_model.model import load_model as load

    return load(reg.uri, name, alias, "cpu", 1, (1, 4), **kw)


def load_preprocessor(reg: Registry, name: str = PREPROCESSOR, alias: str = "production", **kw: object):  # noqa: ANN201
    from meshserve_preprocess.transformer import load_preprocessor as load

    return load(reg.uri, name, alias, compile="none", **kw)


def probe() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, len(MODEL_FEATURES)))


# --- registration --------------------------------------------------------------------------------


def test_registration_records_the_digest_of_what_the_store_holds(reg: Registry) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(reg.uri, reg.uri)
    run = client.get_run(reg.first.run_id)
    for name, version, digest in (
        (MODEL, reg.first.model_version, reg.first.model_sha256),
        (PREPROCESSOR, reg.first.preprocessor_version, reg.first.preprocessor_sha256),
    ):
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert client.get_model_version(name, version).tags[DIGEST_TAG] == digest
        assert version_digest(training_settings(reg.home), name, version) == digest
        assert run.data.tags[integrity.run_digest_tag(name)] == digest
        assert resolve_alias(reg.uri, name, "production").sha256 == digest
        # The stored tree itself (no download) has that digest.
        assert integrity.tree_digest(stored_dir(reg, name, version)) == digest
    assert reg.first.model_sha256 != reg.second.model_sha256


# --- untampered: loads ---------------------------------------------------------------------------


def test_untampered_pair_loads_and_is_the_registered_one(reg: Registry) -> None:
    import mlflow.pytorch
    import mlflow.sklearn

    use(reg)
    pre = load_preprocessor(reg)
    model = load_model(reg)
    assert (pre.artifact.version, model.artifact.version) == (reg.first.preprocessor_version, reg.first.model_version)
    x = probe()
    xt = pre.transform(x)
    got = model.predict(xt)
    # The same numbers as MLflow's own (unchecked) loaders give on the same versions.
    ref_pre = mlflow.sklearn.load_model(f"models:/{PREPROCESSOR}/{reg.first.preprocessor_version}")
    ref_model = mlflow.pytorch.load_model(f"models:/{MODEL}/{reg.first.model_version}")
    np.testing.assert_allclose(xt, np.asarray(ref_pre.transform(x), dtype=np.float32), rtol=0, atol=1e-7)
    with torch.no_grad():
        np.testing.assert_allclose(got, ref_model(torch.from_numpy(xt)).numpy(), rtol=0, atol=1e-6)


# --- tampered: refused ---------------------------------------------------------------------------


def _assert_refused(err: DigestMismatch, name: str, version: str, expected: str, actual: str) -> None:
    message = str(err)
    assert f"{name} version {version}" in message
    assert expected in message and actual in message and expected != actual


def test_a_flipped_byte_in_the_stored_model_is_refused(reg: Registry) -> None:
    path = stored_dir(reg, MODEL, reg.first.model_version) / "data" / "model.pt2"
    with replaced(path, flipped(path)):
        actual = integrity.download_digest(f"models:/{MODEL}/{reg.first.model_version}", reg.uri)
        with pytest.raises(DigestMismatch) as info:
            load_model(reg)
    _assert_refused(info.value, MODEL, reg.first.model_version, reg.first.model_sha256, actual)
    load_model(reg)  # restored: loads again


def test_a_swapped_but_valid_model_is_refused(reg: Registry) -> None:
    """Another release's weights: a perfectly loadable archive, only the digest notices."""
    import mlflow.pytorch

    target = stored_dir(reg, MODEL, reg.first.model_version) / "data" / "model.pt2"
    other = stored_dir(reg, MODEL, reg.second.model_version) / "data" / "model.pt2"
    xt = torch.from_numpy(np.random.default_rng(1).normal(size=(3, len(MODEL_FEATURES))).astype(np.float32))
    with replaced(target, other.read_bytes()):
        with pytest.raises(DigestMismatch):
            load_model(reg)
        unchecked = mlflow.pytorch.load_model(str(target.parent.parent))  # what loading without the check serves
        original = load_model(reg, alias="candidate")
        with torch.no_grad():
            np.testing.assert_allclose(unchecked(xt).numpy(), original.predict(xt.numpy()), atol=1e-6)


def test_a_flipped_byte_in_the_stored_preprocessor_is_refused(reg: Registry) -> None:
    path = stored_dir(reg, PREPROCESSOR, reg.first.preprocessor_version) / "model.skops"
    with replaced(path, flipped(path)):
        actual = integrity.download_digest(f"models:/{PREPROCESSOR}/{reg.first.preprocessor_version}", reg.uri)
        with pytest.raises(DigestMismatch) as info:
            load_preprocessor(reg)
    _assert_refused(info.value, PREPROCESSOR, reg.first.preprocessor_version, reg.first.preprocessor_sha256, actual)
    load_preprocessor(reg)


def test_edited_metadata_is_refused_too(reg: Registry) -> None:
    """MLmodel decides how the rest is loaded (format, trusted types): it is signed like the rest."""
    path = stored_dir(reg, PREPROCESSOR, reg.first.preprocessor_version) / "MLmodel"
    text = path.read_text()
    assert "numpy.dtype" in text
    with replaced(path, text.replace("- numpy.dtype", "- numpy.dtype\n    - builtins.eval").encode()):
        with pytest.raises(DigestMismatch):
            load_preprocessor(reg)


def test_an_added_file_is_refused(reg: Registry) -> None:
    extra = stored_dir(reg, MODEL, reg.first.model_version) / "data" / "model.pth"
    extra.write_bytes(b"\x80\x04N.")
    try:
        with pytest.raises(DigestMismatch):
            load_model(reg)
    finally:
        extra.unlink()


def test_unsigned_versions_are_refused_unless_allowed(reg: Registry) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(reg.uri, reg.uri)
    client.delete_model_version_tag(MODEL, reg.first.model_version, DIGEST_TAG)
    try:
        # What `train --if-empty` checks to retrain a pair registered before signing.
        assert version_digest(training_settings(reg.home), MODEL, reg.first.model_version) is None
        with pytest.raises(UnsignedArtifact, match=f"{MODEL} version {reg.first.model_version}: it has no {DIGEST_TAG} tag"):
            load_model(reg)
        assert load_model(reg, allow_unsigned=True).artifact.version == reg.first.model_version
    finally:
        client.set_model_version_tag(MODEL, reg.first.model_version, DIGEST_TAG, reg.first.model_sha256)


# --- safe formats, even for unsigned versions ------------------------------------------------------


class Payload:
    """Unpickling this touches `marker`: stands for any code a crafted artifact runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def use(reg: Registry) -> None:
    """Point MLflow's fluent API (global state) at this module's registry."""
    import mlflow

    mlflow.set_tracking_uri(reg.uri)
    mlflow.set_registry_uri(reg.uri)


def _download(reg: Registry, name: str, version: str, dst: Path) -> Path:
    """A copy of a registered version to edit (without MLflow's client-side meta file)."""
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=reg.uri, registry_uri=reg.uri))
    (local / "registered_model_meta").unlink(missing_ok=True)
    return local


def _register_dir(reg: Registry, local: Path, name: str) -> str:
    """Log a prepared MLflow model directory as-is and register it (unsigned, like another tool would)."""
    import mlflow

    from meshserve_training.registry import ensure_experiment

    use(reg)
    with mlflow.start_run(experiment_id=ensure_experiment(training_settings(reg.home))) as run:
        mlflow.log_artifacts(str(local), artifact_path="crafted")
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/crafted", name)
    mlflow.MlflowClient(reg.uri, reg.uri).set_registered_model_alias(name, "production", mv.version)
    return str(mv.version)


def _pickled_weight_archive(good: bytes, payload: bytes) -> bytes:
    """The pt2 archive with its first weight stored as a pickle (use_pickle: true) carrying `payload`."""
    src = zipfile.ZipFile(io.BytesIO(good))
    names = src.namelist()
    config_name = next(n for n in names if re.search(r"data/weights/[^/]+_config\.json$", n))
    config = json.loads(src.read(config_name))
    entry = next(iter(config["config"].values()))
    record = f"{config_name.rsplit('/', 1)[0]}/{entry['path_name']}"
    entry["use_pickle"] = True
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename == record:
                data = payload
            dst.writestr(info, data)
    return out.getvalue()


def test_a_pt2_archive_carrying_a_pickle_is_refused_without_running_it(reg: Registry, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    local = _download(reg, MODEL, reg.first.model_version, tmp_path / "m")
    pt2 = local / "data" / "model.pt2"
    pt2.write_bytes(_pickled_weight_archive(pt2.read_bytes(), buf.getvalue()))

    # The threat is real: torch.export.load unpickles that record and runs the payload.
    with pytest.raises(Exception):  # noqa: B017 - whatever it fails with after running it
        torch.export.load(str(pt2))
    assert marker.exists()
    marker.unlink()

    _register_dir(reg, local, "crafted_pt2")
    with pytest.raises(Exception, match="not a pickle-free payload"):
        load_model(reg, "crafted_pt2", allow_unsigned=True)
    assert not marker.exists()


def test_a_pickled_torch_model_is_refused_without_running_it(reg: Registry, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    local = _download(reg, MODEL, reg.first.model_version, tmp_path / "m")
    (local / "data" / "model.pt2").unlink()
    torch.save(Payload(marker), local / "data" / "model.pth")
    (local / "data" / "pickle_module_info.txt").write_text("pickle")
    _register_dir(reg, local, "crafted_pickle")
    with pytest.raises(UnsafeArtifact, match="not in pt2"):
        load_model(reg, "crafted_pickle", allow_unsigned=True)
    assert not marker.exists()


def test_a_cloudpickled_preprocessor_is_refused_without_running_it(reg: Registry, tmp_path: Path) -> None:
    import pickle

    import yaml

    marker = tmp_path / "ran"
    local = _download(reg, PREPROCESSOR, reg.first.preprocessor_version, tmp_path / "p")
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(serialization_format="cloudpickle", pickled_model="model.pkl")
    (local / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (local / "model.skops").unlink()
    (local / "model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    _register_dir(reg, local, "crafted_sklearn")
    with pytest.raises(UnsafeArtifact, match="saved as 'cloudpickle'"):
        load_preprocessor(reg, "crafted_sklearn", allow_unsigned=True)
    assert not marker.exists()


def test_the_services_trusted_types_count_not_the_artifacts(reg: Registry) -> None:
    """The artifact's MLmodel trusts numpy.dtype; a service that doesn't refuses it."""
    with pytest.raises(UnsafeArtifact, match="numpy.dtype"):
        load_preprocessor(reg, trusted_types=())
    assert load_preprocessor(reg, trusted_types=("numpy.dtype",)).num_outputs == len(MODEL_FEATURES)


# --- the real model process ----------------------------------------------------------------------


def _wait_for(log_path: Path, proc: subprocess.Popen[bytes], needle: bytes, after: int = 0, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log_path.read_bytes()[after:]:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never logged {needle!r}:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.e2e
def test_model_process_refuses_tampered_artifacts_at_start_and_on_reload(reg: Registry, tmp_path: Path) -> None:
    """Start-up on a tampered model: alive, NOT_SERVING, ModelInfer UNAVAILABLE; restored: ready.
    Then @production moves to a tampered version: refused, the old version keeps answering."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from meshserve.inference.v2 import open_inference_pb2 as v2
    from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
    from mlflow import MlflowClient

    from meshserve_local.stack import free_ports

    client = MlflowClient(reg.uri, reg.uri)
    first, second = reg.first.model_version, reg.second.model_version
    client.set_registered_model_alias(MODEL, "production", first)
    port, metrics = free_ports(2)
    env = {
        **os.environ,
        "MESHSERVE_HOME": str(reg.home),
        "MESHSERVE_MODEL_PORT": str(port),
        "MESHSERVE_MODEL_METRICS_PORT": str(metrics),
        "MESHSERVE_MODEL_LOAD_RETRY_S": "0.5",
        "MESHSERVE_MODEL_ALIAS_POLL_S": "0.5",
        "MESHSERVE_MODEL_WARMUP_BATCH_SIZES": "[1]",
        "MESHSERVE_MODEL_MAX_BATCH_SIZE": "4",
    }
    log_path = tmp_path / "model.log"
    first_pt2 = stored_dir(reg, MODEL, first) / "data" / "model.pt2"
    second_pt2 = stored_dir(reg, MODEL, second) / "data" / "model.pt2"
    request = v2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, len(MODEL_FEATURES)])
    request.raw_input_contents.append(np.zeros((1, len(MODEL_FEATURES)), "<f4").tobytes())
    own = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")

    with open(log_path, "wb") as log, replaced(first_pt2, flipped(first_pt2)):
        proc = subprocess.Popen([sys.executable, "-m", "meshserve_model"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                stub = v2_grpc.GRPCInferenceServiceStub(ch)
                _wait_for(log_path, proc, reg.first.model_sha256.encode())  # refused, naming the expected digest
                # The runner's line with the error's message comes right after: wait for it too.
                _wait_for(log_path, proc, f"{MODEL} version {first}".encode())
                text = log_path.read_text()
                assert "refusing an artifact whose digest does not match the registry" in text
                assert health.Check(own, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE

                # The store is repaired: the next attempt loads, and the service becomes ready.
                first_pt2.write_bytes(flipped(first_pt2))  # flip back = the original bytes
                deadline = time.monotonic() + 120
                while health.Check(own, timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.2)
                assert stub.ModelInfer(request, timeout=5).model_version == first

                # Hot reload onto a tampered version: refused, the old one keeps serving.
                offset = log_path.stat().st_size
                with replaced(second_pt2, flipped(second_pt2)):
                    client.set_registered_model_alias(MODEL, "production", second)
                    _wait_for(log_path, proc, b"reload refused; still serving the previous version", after=offset)
                    assert reg.second.model_sha256 in log_path.read_text()[offset:]
                    assert health.Check(own, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
                    assert stub.ModelInfer(request, timeout=5).model_version == first
                # Repaired: the next poll switches.
                deadline = time.monotonic() + 120
                while stub.ModelInfer(request, timeout=5).model_version != second:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            client.set_registered_model_alias(MODEL, "production", first)
    assert proc.returncode == 0, log_path.read_text()[-2000:]


def test_a_fresh_process_loads_from_the_configured_registry_only(reg: Registry, tmp_path: Path) -> None:
    """Regression: MLflow's download_artifacts drops registry_uri for models:/ URIs and falls
    back to the default registry, sqlite:///mlflow.db in the working directory. A service
    process (no MLFLOW_TRACKING_URI in its env, no global set_tracking_uri) must still load
    from the registry its settings name, and leave no mlflow.db behind."""
    code = (
        "import sys\n"
        "from meshserve_model.model import load_model\n"
        "from meshserve_preprocess.transformer import load_preprocessor\n"
        f"m = load_model({reg.uri!r}, {MODEL!r}, 'production', 'cpu', 1, (1,))\n"
        f"p = load_preprocessor({reg.uri!r}, {PREPROCESSOR!r}, 'production', compile='none')\n"
        "print('loaded', m.artifact.version, p.artifact.version)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()
