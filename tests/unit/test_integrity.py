"""The artifact digest and the verified download, on small real directory trees.

The download itself is MLflow's (covered by tests/integration/test_artifact_integrity.py);
here it is replaced by a plain copy so the checks around it can be driven directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest

from meshserve_runtime import integrity
from meshserve_runtime.integrity import (
    DigestMismatch,
    UnsafeArtifact,
    UnsignedArtifact,
    contained,
    pickle_forbidden,
    tree_digest,
    verified_download,
)
from meshserve_runtime.registry import ResolvedArtifact

FILES = {
    "MLmodel": b"flavors:\n  pytorch:\n    model_data: data\n",
    "requirements.txt": b"torch==2.13.0\n",
    "data/model.pt2": bytes(range(256)) * 3,
    "data/empty": b"",
}


def make_tree(root: Path, files: dict[str, bytes] = FILES, order: list[str] | None = None) -> Path:
    for rel in order or list(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "model")


def test_digest_is_stable_across_copies_and_creation_order(tree: Path, tmp_path: Path) -> None:
    first = tree_digest(tree)
    assert first == tree_digest(tree)
    assert len(first) == 64 and int(first, 16) >= 0
    other = make_tree(tmp_path / "elsewhere", order=list(reversed(FILES)))
    assert tree_digest(other) == first
    copy = shutil.copytree(tree, tmp_path / "copy")
    os.utime(copy / "MLmodel", (0, 0))  # timestamps and location are not content
    assert tree_digest(copy) == first


def test_digest_is_the_documented_manifest(tree: Path) -> None:
    """Pinned format: training and services of different releases must agree on it."""
    manifest = b"".join(
        rel.encode() + b"\0" + hashlib.sha256(FILES[rel]).hexdigest().encode() + b"\n" for rel in sorted(FILES)
    )
    assert tree_digest(tree) == hashlib.sha256(manifest).hexdigest()


def test_every_single_byte_counts(tree: Path) -> None:
    original = tree_digest(tree)
    seen = {original}
    for rel, content in FILES.items():
        path = tree / rel
        for i in range(len(content)):
            changed = bytearray(content)
            changed[i] ^= 0x01
            path.write_bytes(bytes(changed))
            seen.add(tree_digest(tree))
        path.write_bytes(content + b"\0")  # appending a byte, even to the empty file
        seen.add(tree_digest(tree))
        path.write_bytes(content)
    assert tree_digest(tree) == original
    assert len(seen) == 1 + sum(len(c) + 1 for c in FILES.values())


@pytest.mark.parametrize(
    "change",
    [
        "rename",
        "move_to_subdir",
        "add_file",
        "add_empty_file",
        "remove_file",
        "swap_contents",
    ],
)
def test_tree_changes_change_the_digest(tree: Path, change: str) -> None:
    before = tree_digest(tree)
    match change:
        case "rename":
            (tree / "requirements.txt").rename(tree / "requirements.in")
        case "move_to_subdir":
            (tree / "requirements.txt").rename(tree / "data" / "requirements.txt")
        case "add_file":
            (tree / "data" / "extra.pkl").write_bytes(b"\x80\x04N.")
        case "add_empty_file":
            (tree / "data" / "model.pth").touch()
        case "remove_file":
            (tree / "data" / "empty").unlink()
        case "swap_contents":
            (tree / "MLmodel").write_bytes(FILES["requirements.txt"])
            (tree / "requirements.txt").write_bytes(FILES["MLmodel"])
    assert tree_digest(tree) != before


def test_client_side_meta_file_is_ignored_only_at_the_top(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "registered_model_meta").write_text("model_name: m\nmodel_version: '3'\n")
    assert tree_digest(tree) == before
    (tree / "data" / "registered_model_meta").write_text("x")
    assert tree_digest(tree) != before


def test_empty_directories_do_not_count(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "data" / "nothing").mkdir()
    assert tree_digest(tree) == before


def test_symlinks_and_special_files_are_refused(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("not part of the model")
    (tree / "data" / "link").symlink_to(outside)
    with pytest.raises(UnsafeArtifact, match="symlink: data/link"):
        tree_digest(tree)
    (tree / "data" / "link").unlink()
    (tree / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafeArtifact, match="symlink: linked_dir"):
        tree_digest(tree)
    (tree / "linked_dir").unlink()
    os.mkfifo(tree / "fifo")
    with pytest.raises(UnsafeArtifact, match="special file: fifo"):
        tree_digest(tree)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(integrity.IntegrityError, match="does not exist"):
        tree_digest(tmp_path / "nope")


# --- verified_download, with MLflow's download replaced by a copy of a local tree -------------


def _artifact(sha256: str | None) -> ResolvedArtifact:
    return ResolvedArtifact(name="driver_ranking", version="7", run_id="r1", alias="production", source="", sha256=sha256)


DOWNLOADS: list[str] = []


@pytest.fixture
def store(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tree` plays the artifact store; each download copies it into the requested dir."""
    DOWNLOADS.clear()

    def fake_download(model_uri: str, tracking_uri: str, dst: str) -> Path:
        DOWNLOADS.append(model_uri)
        return Path(shutil.copytree(tree, Path(dst) / "model"))

    monkeypatch.setattr(integrity, "_download", fake_download)
    return tree


def test_matching_digest_yields_the_private_copy_then_deletes_it(store: Path) -> None:
    expected = tree_digest(store)
    with verified_download(_artifact(expected.upper()), "sqlite:///x.db") as local:
        assert local.signed and local.sha256 == expected
        assert local.path != store and (local.path / "data" / "model.pt2").read_bytes() == FILES["data/model.pt2"]
        # What is loaded is this copy: a write to the store now can't reach it.
        (store / "data" / "model.pt2").write_bytes(b"swapped after the check")
        assert (local.path / "data" / "model.pt2").read_bytes() == FILES["data/model.pt2"]
        copy = local.path
    assert DOWNLOADS == ["models:/driver_ranking/7"]  # exactly one download
    assert not copy.exists()


def test_mismatch_is_refused_naming_model_version_and_both_digests(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = tree_digest(store)
    (store / "data" / "model.pt2").write_bytes(b"tampered")
    actual = tree_digest(store)
    body_ran = False
    with caplog.at_level(logging.ERROR, "meshserve.integrity"), pytest.raises(DigestMismatch) as info:
        with verified_download(_artifact(expected), "sqlite:///x.db"):
            body_ran = True
    assert not body_ran
    message = str(info.value)
    assert "driver_ranking version 7" in message and expected in message and actual in message
    record = caplog.records[-1]
    assert (record.model, record.version, record.expected_sha256, record.actual_sha256) == ("driver_ranking", "7", expected, actual)


def test_unsigned_is_refused_unless_allowed(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UnsignedArtifact, match="no meshserve.sha256 tag"):
        with verified_download(_artifact(None), "sqlite:///x.db"):
            pytest.fail("an unsigned artifact was handed out")
    with caplog.at_level(logging.WARNING, "meshserve.integrity"):
        with verified_download(_artifact(None), "sqlite:///x.db", allow_unsigned=True) as local:
            assert not local.signed and local.sha256 == tree_digest(store)
    assert any(r.levelno == logging.WARNING and "unsigned" in r.getMessage() for r in caplog.records)


def test_a_wrong_tag_is_refused_even_when_unsigned_is_allowed(store: Path) -> None:
    with pytest.raises(DigestMismatch):
        with verified_download(_artifact("0" * 64), "sqlite:///x.db", allow_unsigned=True):
            pytest.fail("a mismatching artifact was handed out")


# --- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("before", [None, "true"])
def test_pickle_forbidden_sets_and_restores_mlflows_switch(monkeypatch: pytest.MonkeyPatch, before: str | None) -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    if before is None:
        monkeypatch.delenv(MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name, raising=False)
    else:
        monkeypatch.setenv(MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name, before)
    with pickle_forbidden():
        assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    assert os.environ.get(MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name) == before
    with pytest.raises(RuntimeError), pickle_forbidden():
        raise RuntimeError("load failed")
    assert os.environ.get(MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name) == before


def test_contained_refuses_paths_leaving_the_artifact(tree: Path) -> None:
    assert contained(tree, "data") == (tree / "data").resolve()
    for bad in ("../secret", "/etc/passwd", "data/../../x"):
        with pytest.raises(UnsafeArtifact, match="outside"):
            contained(tree, bad)
