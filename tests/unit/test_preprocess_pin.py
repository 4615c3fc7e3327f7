"""Preprocess keeps the previous version after a switch and answers a call pinned to its run
(TransformRequest.run_id), so the model's release can be matched when only one side switched."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from meshserve.v1 import preprocess_pb2

from meshserve_runtime.codecs import decode_tensor, encode_frame, float_column
from meshserve_runtime.errors import FailedPrecondition
from meshserve_runtime.protocol import SKEW_GUARD_MESSAGE_PREFIX
from meshserve_runtime.registry import ResolvedArtifact

from meshserve_preprocess.servicer import PreprocessServicer
from meshserve_preprocess.transformer import LoadedPreprocessor


def version(v: str, scale: float) -> LoadedPreprocessor:
    """A stand-in version whose transform multiplies by `scale` (to tell versions apart)."""
    artifact = ResolvedArtifact(name="pre", version=v, run_id=f"run-{v}", alias="production", source="")
    pipeline = SimpleNamespace(transform=lambda x: x * scale)
    return LoadedPreprocessor(artifact=artifact, pipeline=pipeline, input_columns=("a",), num_outputs=1)


def request(run_id: str = "") -> preprocess_pb2.TransformRequest:
    return preprocess_pb2.TransformRequest(frame=encode_frame({"a": float_column(np.array([1.0]))}, 1), run_id=run_id)


async def transform(servicer: PreprocessServicer, run_id: str = "") -> tuple[str, float]:
    reply = await servicer.Transform(request(run_id), None)
    return reply.preprocessor.version, float(decode_tensor(reply.tensor)[0, 0])


@pytest.fixture
def servicer() -> PreprocessServicer:
    s = PreprocessServicer(max_rows=8)
    assert s.install(version("1", 10.0)) is None
    assert s.install(version("2", 20.0)) is None  # v1 stays as previous
    return s


async def test_empty_run_id_or_the_current_run_gets_the_current_version(servicer: PreprocessServicer) -> None:
    assert await transform(servicer) == ("2", 20.0)
    assert await transform(servicer, "run-2") == ("2", 20.0)


async def test_the_previous_run_gets_the_previous_version(servicer: PreprocessServicer) -> None:
    assert await transform(servicer, "run-1") == ("1", 10.0)


async def test_an_unknown_run_is_a_skew_guard_refusal_naming_the_loaded_runs(servicer: PreprocessServicer) -> None:
    with pytest.raises(FailedPrecondition) as info:
        await transform(servicer, "run-9")
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.message.startswith(SKEW_GUARD_MESSAGE_PREFIX)  # the gateway retries it, like the model's
    assert "'run-9'" in err.message and "'run-2' (version 2, current)" in err.message
    assert "'run-1' (version 1, previous)" in err.message


async def test_the_previous_version_is_kept_until_the_next_switch_only(servicer: PreprocessServicer) -> None:
    v1 = servicer.previous
    assert servicer.install(version("3", 30.0)) is v1  # two versions at most: v1 drops out
    assert await transform(servicer, "run-2") == ("2", 20.0)
    with pytest.raises(FailedPrecondition, match=r"'run-3' \(version 3, current\) and run 'run-2'"):
        await transform(servicer, "run-1")


async def test_a_pin_before_any_switch_names_only_the_current_run() -> None:
    s = PreprocessServicer(max_rows=8)
    s.install(version("1", 10.0))
    assert await transform(s, "run-1") == ("1", 10.0)
    with pytest.raises(FailedPrecondition) as info:
        await transform(s, "run-0")
    assert "previous" not in info.value.message
