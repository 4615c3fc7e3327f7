"""Artifact integrity: a digest of what training registered, checked on exactly what a service loads.

Threat: someone who can write the artifact store (a bucket, a shared volume) but not the
registry database swaps or edits a registered model's files. Training therefore records a
digest of each registered version's artifact tree in the registry itself, as the model
version tag `meshserve.sha256` (and on the run, `meshserve.sha256.<registered name>`), before
any alias points at the version. A service downloads the version into a private temporary
directory, digests exactly those files, compares, and loads from that same directory: no
second download, so nothing can change between the check and the use. A mismatch, or a
version without the tag, is refused (the service stays not-ready; a reload keeps the old
version), unless the operator allows unsigned versions for registries other tools populate.

The digest alone is not enough where a tag is missing or the registry itself is written by
an attacker, so the loaders also refuse formats that run code when deserialized:

- torch: MLflow's pt2 loader calls `torch.export.load`, which unpickles pickled weight and
  constant records with `weights_only=False` (torch/export/pt2_archive/_package.py) and can
  load bundled AOTInductor libraries: a crafted archive runs code. MLflow 3.17 can vet the
  archive first (every record must be JSON/text metadata, raw tensor bytes, or pass torch's
  restricted `weights_only` unpickler) and refuses the pickle format (`model.pth`), but only
  while MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false, and it defaults to true.
  `pickle_forbidden()` turns it off around the load.
- scikit-learn: MLflow's sklearn loader takes skops' trusted-type list from the artifact's
  own MLmodel file, so a crafted artifact can trust anything. The preprocess service checks
  the format is skops and calls `skops.io.load` with the service's own list instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshserve_runtime.registry import ResolvedArtifact

log = logging.getLogger("meshserve.integrity")

DIGEST_TAG = "meshserve.sha256"
"""Model version tag holding the sha256 digest of the version's artifact tree."""

CLIENT_SIDE_FILES = frozenset({"registered_model_meta"})
"""Top-level files MLflow writes on the downloader's side (name and version of a registered
model), not part of what was logged; always rewritten by MLflow after a download."""

_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
_pickle_lock = threading.RLock()


class IntegrityError(RuntimeError):
    """A registered version that must not be loaded."""


class DigestMismatch(IntegrityError):
    """The downloaded files are not the ones registered."""


class UnsignedArtifact(IntegrityError):
    """The version carries no digest tag (and unsigned versions are not allowed)."""


class UnsafeArtifact(IntegrityError):
    """The artifact is in a format (or has content) that could run code when loaded."""


def run_digest_tag(registered_name: str) -> str:
    """Run tag holding the digest of the version of `registered_name` the run registered."""
    return f"{DIGEST_TAG}.{registered_name}"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_digest(root: Path | str) -> str:
    """sha256 over the sorted manifest of (relative path, sha256 of the file) of every file under `root`.

    Each manifest entry is `<posix relative path> NUL <hex sha256> LF`: a path cannot contain
    NUL, so the manifest is unambiguous. Any changed byte, renamed, added or removed file
    changes the digest; empty directories and CLIENT_SIDE_FILES do not count. Symlinks and
    special files are refused (UnsafeArtifact): a logged model never has them, and a link could
    point outside the tree.
    """
    root = Path(root)
    if not root.is_dir():
        raise IntegrityError(f"artifact directory {root} does not exist")
    entries: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise UnsafeArtifact(f"artifact tree {root} contains a symlink: {rel}")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise UnsafeArtifact(f"artifact tree {root} contains a special file: {rel}")
            if rel in CLIENT_SIDE_FILES:
                continue
            entries.append((rel, file_sha256(path)))
    entries.sort()
    h = hashlib.sha256()
    for rel, digest in entries:
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode("ascii") + b"\n")
    return h.hexdigest()


def _download(model_uri: str, tracking_uri: str, dst: str) -> Path:
    """A private copy of the artifacts of `model_uri` in `dst` (MLflow's public API).

    With dst_path set MLflow always copies, even from a local store, so later writes to the
    store can't reach the files we verify and load.
    """
    import mlflow.artifacts
    from mlflow import MlflowClient

    from meshserve_runtime.registry import restate_registry_error  # here: registry imports this module

    what = f"the artifacts of {model_uri}"
    try:
        if model_uri.startswith("models:/"):
            # Resolved through our own client: MLflow 3.17's download_artifacts drops registry_uri
            # for models:/ URIs and asks the default registry (sqlite:///mlflow.db in the cwd).
            name, _, version = model_uri.removeprefix("models:/").partition("/")
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            model_uri = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst, tracking_uri=tracking_uri)
    except Exception as err:
        restated = restate_registry_error(err, tracking_uri, what)
        if restated is not None:
            raise restated from err
        raise
    return Path(local)


def download_digest(model_uri: str, tracking_uri: str) -> str:
    """Digest of the artifacts `model_uri` (e.g. models:/name/3) downloads to; for registration.

    Computed from a download, as a service will see it, so whatever the store keeps (local
    files, a bucket, an MLflow server) is what is signed.
    """
    with tempfile.TemporaryDirectory(prefix="meshserve-digest-") as tmp:
        return tree_digest(_download(model_uri, tracking_uri, tmp))


@dataclass(frozen=True, slots=True)
class VerifiedArtifact:
    """A downloaded version whose files matched the registered digest (or were allowed unsigned)."""

    path: Path
    """Private local copy; valid inside the `verified_download` block only."""
    sha256: str
    """Digest of the files in `path`."""
    signed: bool
    """False when the version had no digest tag and unsigned versions were allowed."""


@contextmanager
def verified_download(artifact: ResolvedArtifact, tracking_uri: str, *, allow_unsigned: bool = False) -> Iterator[VerifiedArtifact]:
    """Download `artifact` to a private temporary dir, check its digest, yield it; delete it after.

    Load from the yielded path and nothing else. Raises DigestMismatch, or UnsignedArtifact
    when the version has no `meshserve.sha256` tag and `allow_unsigned` is False.
    """
    labels = artifact.labels()
    with tempfile.TemporaryDirectory(prefix="meshserve-artifact-") as tmp:
        local = _download(artifact.uri, tracking_uri, tmp)
        actual = tree_digest(local)
        expected = artifact.sha256
        if not expected:
            if not allow_unsigned:
                log.error("refusing an unsigned artifact", extra={**labels, "actual_sha256": actual})
                raise UnsignedArtifact(
                    f"refusing {artifact.name} version {artifact.version}: it has no {DIGEST_TAG} tag, so what was "
                    f"downloaded (sha256 {actual}) can't be checked against what was registered; register it with "
                    f"meshserve training, or tag the version {DIGEST_TAG}={actual} after checking the files, or allow "
                    "unsigned artifacts (MESHSERVE_<SERVICE>_ALLOW_UNSIGNED_ARTIFACTS=true) for a registry other tools populate"
                )
            log.warning("loading an unsigned artifact (allowed by settings)", extra={**labels, "actual_sha256": actual})
        elif actual != expected.strip().lower():
            log.error("refusing an artifact whose digest does not match the registry", extra={**labels, "expected_sha256": expected, "actual_sha256": actual})
            raise DigestMismatch(
                f"refusing {artifact.name} version {artifact.version}: the downloaded artifacts (sha256 {actual}) are "
                f"not the ones registered ({DIGEST_TAG} {expected}); the artifact store was changed after registration"
            )
        yield VerifiedArtifact(local, actual, signed=bool(expected))


@contextmanager
def pickle_forbidden() -> Iterator[None]:
    """Run MLflow loaders with pickle deserialization disallowed (see the module docstring).

    Process-wide while active (an environment variable MLflow reads at load time), so loads
    inside it are serialized; a concurrent unrelated load elsewhere can only be refused more.
    """
    with _pickle_lock:
        before = os.environ.get(_PICKLE_ENV)
        os.environ[_PICKLE_ENV] = "false"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_PICKLE_ENV, None)
            else:
                os.environ[_PICKLE_ENV] = before


def contained(root: Path, relative: str) -> Path:
    """`root / relative`, refusing a path (from an artifact's MLmodel) that leaves `root`."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UnsafeArtifact(f"artifact path {relative!r} points outside the artifact directory")
    return path
