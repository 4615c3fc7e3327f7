"""The loaded model: the registered PyTorch module, its device and tensor signature.

Loading goes through meshserve_runtime.integrity: the version is downloaded once into a
private directory, its digest checked against the registry's `meshserve.sha256` tag, and
the signature and module are read from that same directory. Only MLflow's pt2
(torch.export) format is accepted, and it is loaded with pickle deserialization
disallowed, so MLflow first vets that no record of the archive needs the unrestricted
unpickler that torch.export.load would otherwise use (details in integrity.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshserve_runtime.integrity import UnsafeArtifact, contained, pickle_forbidden, verified_download
from meshserve_runtime.registry import ResolvedArtifact, resolve_alias

from meshserve_model.batching import Batcher
from meshserve_model.device import select_device

log = logging.getLogger("meshserve.model")

INPUT_NAME = "input"
OUTPUT_NAME = "probability"


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class LoadedModel:
    artifact: ResolvedArtifact
    module: Any
    device: torch.device
    num_features: int
    platform: str
    dtype: torch.dtype = torch.float32
    #: Set by the service: merges concurrent calls into one forward pass (None: call predict directly).
    batcher: Batcher | None = None

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, num_features] -> float32 [n, 1] probabilities."""
        # Wire buffers are read-only; torch wants writable memory (a copy of a few KB).
        t = torch.from_numpy(x if x.flags.writeable else x.copy())
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with other work.
            t = t.pin_memory().to(self.device, non_blocking=True)
        if self.dtype != torch.float32:
            t = t.to(self.dtype)
        out = self.module(t)
        if self.device.type != "cpu" or out.dtype != torch.float32:
            out = out.to("cpu", torch.float32)
        # Already a CPU float32 tensor: no conversion call (each torch call costs tens of
        # microseconds when it comes after the process sat idle, as at low load).
        return out.numpy().reshape(len(x), -1)

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """One forward pass of each size, checking the output shape (raises if it is off)."""
        for n in sorted(set(batch_sizes)):
            out = self.predict(np.zeros((n, self.num_features), dtype=np.float32))
            if out.shape != (n, 1):
                raise RuntimeError(f"model returned shape {out.shape} for a batch of {n}; expected ({n}, 1)")
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """Through the batcher when there is one, else one forward pass of its own."""
        if self.batcher is None:
            return self.predict(x)
        return await self.batcher.infer(x)


def configure_threads(num_threads: int) -> None:
    """Intra-op threads to match the pod's CPU limit; one inter-op thread.

    Call it on every thread that runs forward passes: the intra-op count is per thread
    (OpenMP), and a thread left at the default gets a pool of nproc threads whose idle
    workers spin between the tiny forward passes (measured here: a second thread spinning
    at a third of a core under load, because only the loading thread had been set).
    """
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # only settable before the first parallel work in this process


def _num_features(signature: Any) -> int:
    if signature is None:
        raise RuntimeError("the registered model has no signature; register it with a tensor input signature")
    spec = signature.inputs.inputs[0]
    shape = getattr(spec, "shape", None)
    if not shape or len(shape) != 2 or shape[1] <= 0:
        raise RuntimeError(f"expected a [-1, n] tensor input signature, got {shape}")
    return int(shape[1])


def _load_pt2(path: Path, mlmodel: Any) -> Any:
    """The torch.export module of a verified local MLflow model directory; refuse other formats."""
    import mlflow.pytorch

    flavor = mlmodel.flavors.get("pytorch")
    if flavor is None:
        raise UnsafeArtifact(f"not an MLflow pytorch model (flavors: {sorted(mlmodel.flavors)})")
    if flavor.get("code"):
        # MLflow would put these directories on sys.path: code shipped with the artifact.
        raise UnsafeArtifact("the pytorch model ships code paths; meshserve loads no code from artifacts")
    if not (contained(path, flavor["model_data"]) / "model.pt2").is_file():
        raise UnsafeArtifact(
            "the pytorch model is not in pt2 (torch.export) format; a pickled model runs code when loaded: "
            "re-register it with mlflow.pytorch.log_model(..., serialization_format='pt2')"
        )
    with pickle_forbidden():
        return mlflow.pytorch.load_model(str(path))


def traced_for_inference(module: Any, num_features: int, device: torch.device, dtype: torch.dtype) -> Any:
    """torch.jit.trace of the loaded module, frozen and optimized for inference on the CPU,
    or None when no such form matches the module exactly.

    Measured (bench_forward.py): MLflow's torch.export module runs ~0.3 ms a call, its
    trace ~0.03-0.05 ms. Freezing the trace and `torch.jit.optimize_for_inference` (the
    weights become constants, the export guard call goes) took a further 20-30% off, hot
    (batch 1: 26 vs 36 us) and cold (after 5 ms idle: about 300 vs 370-400 us, which is
    what a call at low load pays). Tracing happens in memory at load, so the stored
    artifact stays MLflow's pickle-free pt2. Each candidate is checked against the
    original on several batch sizes; the first that matches is served.
    """
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices
        example = torch.zeros(8, num_features, device=device, dtype=dtype)
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as err:  # noqa: BLE001
            log.warning("torch.jit.trace failed; serving the module as loaded", extra={"error": str(err)})
            return None
        candidates = [("jit trace", traced)]
        if device.type == "cpu":  # optimize_for_inference's rewrites target the CPU
            try:
                candidates.insert(0, ("frozen jit trace", torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))))
            except Exception as err:  # noqa: BLE001
                log.info("could not freeze the trace; serving it unfrozen", extra={"error": str(err)})
        for name, candidate in candidates:
            diff, n = _max_abs_diff(candidate, module, num_features, device, dtype)
            if diff <= 1e-6:
                return candidate
            log.warning(f"{name} differs from the module as loaded", extra={"max_abs_diff": diff, "batch": n})
    log.warning("serving the module as loaded")
    return None


def _max_abs_diff(candidate: Any, module: Any, num_features: int, device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Largest output difference on seeded random batches of 1, 3 and 64 rows (and that size)."""
    gen = torch.Generator().manual_seed(0)
    worst, at = 0.0, 0
    for n in (1, 3, 64):
        probe = torch.randn(n, num_features, generator=gen).to(device=device, dtype=dtype)
        diff = (candidate(probe).float() - module(probe).float()).abs().max().item()
        if not diff <= worst:  # NaN counts as worst
            worst, at = diff, n
    return worst, at


def load_model(
    tracking_uri: str,
    name: str,
    alias: str,
    device_preference: str,
    num_threads: int,
    warmup_batch_sizes: tuple[int, ...],
    dtype: str = "float32",
    artifact: ResolvedArtifact | None = None,
    optimize: str = "none",
    allow_unsigned: bool = False,
) -> LoadedModel:
    """Load one version onto the device and warm it up (blocking).

    `artifact` is the version to load (a reload resolved it already); by default the
    alias is resolved here. Warm-up runs every size in `warmup_batch_sizes`. Raises an
    IntegrityError for a version whose files don't match its registered digest, that has
    no digest (unless `allow_unsigned`), or that is not in the pt2 format.
    """
    from mlflow.models import Model

    start = time.perf_counter()
    configure_threads(num_threads)
    device = select_device(device_preference)
    if artifact is None:
        artifact = resolve_alias(tracking_uri, name, alias)
    # One download, verified, and everything (signature included) read from that copy.
    with verified_download(artifact, tracking_uri, allow_unsigned=allow_unsigned) as local:
        mlmodel = Model.load(str(local.path))
        num_features = _num_features(mlmodel.signature)
        module = _load_pt2(local.path, mlmodel)
    try:
        module.eval()  # MLflow's loader does not: dropout/batch-norm must be in inference mode
    except NotImplementedError:
        pass  # a torch.export graph was captured in eval mode at training time and cannot switch
    torch_dtype = DTYPES[dtype]
    module = module.to(device=device, dtype=torch_dtype) if torch_dtype != torch.float32 else module.to(device)
    if optimize == "jit_trace":
        module = traced_for_inference(module, num_features, device, torch_dtype) or module
    loaded = LoadedModel(artifact, module, device, num_features, platform=f"pytorch_{torch.__version__}", dtype=torch_dtype)
    loaded.warm_up(warmup_batch_sizes)
    log.info(
        "model loaded",
        extra={**artifact.labels(), "sha256": local.sha256, "signed": local.signed, "device": str(device), "dtype": dtype, "torch_module": type(module).__name__, "warmup_batch_sizes": sorted(set(warmup_batch_sizes)), "features": num_features, "seconds": round(time.perf_counter() - start, 2)},
    )
    return loaded
