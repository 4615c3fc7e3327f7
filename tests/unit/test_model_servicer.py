"""The V2 servicer's validation and skew guard, over a small real torch module."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from meshserve.inference.v2 import open_inference_pb2 as v2

from meshserve_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from meshserve_runtime.protocol import MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER
from meshserve_runtime.registry import ResolvedArtifact

from meshserve_model.model import LoadedModel
from meshserve_model.servicer import InferenceServicer

N_FEATURES = 3


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(N_FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


@pytest.fixture
def servicer() -> InferenceServicer:
    torch.manual_seed(0)
    s = InferenceServicer("m", max_batch_rows=8)
    artifact = ResolvedArtifact(name="m", version="3", run_id="run-a", alias="production", source="")
    s.current = LoadedModel(artifact, Tiny().eval(), torch.device("cpu"), N_FEATURES, "pytorch")
    return s


def _request(x: np.ndarray, raw: bool = True, **kw: object) -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name="m", **kw)
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    return req


async def test_raw_and_typed_give_the_same_answer_in_the_same_form(servicer: InferenceServicer) -> None:
    x = np.random.default_rng(0).normal(size=(4, N_FEATURES)).astype(np.float32)
    raw = await servicer.ModelInfer(_request(x, raw=True, id="r1"), None)
    typed = await servicer.ModelInfer(_request(x, raw=False), None)
    assert raw.id == "r1" and raw.model_version == "3"
    assert raw.parameters[MODEL_RUN_ID_PARAMETER].string_param == "run-a"
    assert len(raw.raw_output_contents) == 1 and not typed.raw_output_contents
    from_raw = np.frombuffer(raw.raw_output_contents[0], dtype="<f4")
    np.testing.assert_allclose(from_raw, typed.outputs[0].contents.fp32_contents, rtol=0, atol=0)
    with torch.no_grad():
        expected = servicer.current.module(torch.from_numpy(x)).numpy().ravel()
    np.testing.assert_allclose(from_raw, expected, atol=1e-7)
    assert list(raw.outputs[0].shape) == [4, 1]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.inputs[0].__setattr__("datatype", "FP64"), "FP32"),
        (lambda r: r.inputs[0].__setattr__("name", "x"), "unknown input"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 5), "needs 24"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 4), r"shape \[n, 3\]"),
        (lambda r: r.outputs.add(name="logits"), "unknown output"),
        (lambda r: r.inputs.add(name="input2", datatype="FP32", shape=[1, 3]), "exactly one input"),
        (lambda r: r.inputs[0].contents.int64_contents.append(1), "not both"),
    ],
)
async def test_bad_requests_get_invalid_argument(servicer: InferenceServicer, mutate, message: str) -> None:
    req = _request(np.zeros((2, N_FEATURES), np.float32))
    mutate(req)
    with pytest.raises(InvalidArgument, match=message) as info:
        await servicer.ModelInfer(req, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_nan_and_batch_limit(servicer: InferenceServicer) -> None:
    with pytest.raises(InvalidArgument, match="NaN"):
        await servicer.ModelInfer(_request(np.full((1, N_FEATURES), np.nan, np.float32)), None)
    with pytest.raises(InvalidArgument, match="at most 8"):
        await servicer.ModelInfer(_request(np.zeros((9, N_FEATURES), np.float32)), None)


async def test_unknown_model_and_version_are_not_found(servicer: InferenceServicer) -> None:
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.model_name = "other"
    with pytest.raises(NotFound, match="serves 'm'"):
        await servicer.ModelInfer(req, None)
    req = _request(np.zeros((1, N_FEATURES), np.float32), model_version="9")
    with pytest.raises(NotFound, match="serving version '3'"):
        await servicer.ModelInfer(req, None)


async def test_skew_guard(servicer: InferenceServicer) -> None:
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-b"
    with pytest.raises(FailedPrecondition, match="run-b.*run-a"):
        await servicer.ModelInfer(req, None)
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-a"
    assert (await servicer.ModelInfer(req, None)).outputs


async def test_not_ready_is_unavailable_and_metadata_reports_version(servicer: InferenceServicer) -> None:
    meta = await servicer.ModelMetadata(v2.ModelMetadataRequest(name="m"), None)
    assert list(meta.versions) == ["3"] and list(meta.inputs[0].shape) == [-1, N_FEATURES]
    assert (await servicer.ModelReady(v2.ModelReadyRequest(name="m"), None)).ready
    servicer.current = None
    assert not (await servicer.ModelReady(v2.ModelReadyRequest(name="m"), None)).ready
    assert not (await servicer.ServerReady(v2.ServerReadyRequest(), None)).ready
    with pytest.raises(Unavailable):
        await servicer.ModelInfer(_request(np.zeros((1, N_FEATURES), np.float32)), None)


def _other_version(version: str, run_id: str) -> LoadedModel:
    artifact = ResolvedArtifact(name="m", version=version, run_id=run_id, alias="production", source="")
    return LoadedModel(artifact, Tiny().eval(), torch.device("cpu"), N_FEATURES, "pytorch")


async def test_reload_overlap_serves_each_input_with_its_own_release(servicer: InferenceServicer) -> None:
    old = servicer.current
    assert servicer.install(_other_version("4", "run-b"), overlap_s=60) is old
    meta = await servicer.ModelMetadata(v2.ModelMetadataRequest(name="m"), None)
    assert list(meta.versions) == ["4"]
    for run_id, version in (("run-a", "3"), ("run-b", "4")):
        req = _request(np.zeros((1, N_FEATURES), np.float32))
        req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = run_id
        reply = await servicer.ModelInfer(req, None)
        assert reply.model_version == version and reply.parameters[MODEL_RUN_ID_PARAMETER].string_param == run_id
    servicer.previous_until = 0  # overlap over: the old release's inputs are refused
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-a"
    with pytest.raises(FailedPrecondition):
        await servicer.ModelInfer(req, None)


async def test_input_from_a_newer_release_waits_for_the_reload(servicer: InferenceServicer) -> None:
    async def check_reload() -> bool:
        servicer.install(_other_version("4", "run-b"), overlap_s=60)
        return True

    servicer.check_reload = check_reload
    servicer.reload_wait_s = 1.0
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-b"
    assert (await servicer.ModelInfer(req, None)).model_version == "4"


@pytest.mark.parametrize(
    "probabilities",
    [
        np.array([[0.25], [0.5]], dtype=np.float32),
        np.array([[0.25], [0.5]], dtype=np.float64),  # a model answering in double
        np.array([[0.25, 9.0], [0.5, 9.0]], dtype=np.float32)[:, :1],  # a strided view
        np.array([[0.25], [0.5]], dtype=">f4"),  # big-endian memory
    ],
)
def test_raw_output_is_little_endian_fp32_row_major_whatever_the_array(probabilities: np.ndarray) -> None:
    from meshserve_model.codecs import encode_output

    response = v2.ModelInferResponse()
    encode_output(response, probabilities, raw=True)
    assert list(response.outputs[0].shape) == [2, 1]
    assert response.raw_output_contents[0] == np.array([0.25, 0.5], dtype="<f4").tobytes()


def test_a_cpu_float32_forward_pass_comes_back_as_float32_rows() -> None:
    loaded = LoadedModel(
        ResolvedArtifact("m", "1", "run", "production", "uri"), Tiny().eval(), torch.device("cpu"), N_FEATURES, "pytorch"
    )
    out = loaded.predict(np.ones((4, N_FEATURES), dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (4, 1)
