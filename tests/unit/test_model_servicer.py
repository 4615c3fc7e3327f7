"""The V2 servicer's validation and skew guard, over a small real torch module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import numpy as np
import pytest
import torch
from meshserve.inference.v2 import open_inference_pb2 as v2

from meshserve_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from meshserve_runtime.protocol import MODEL_RUN_ID_METADATA_KEY, MODEL_RUN_ID_PARAMETER, PREPROCESSOR_RUN_ID_PARAMETER
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


def _shared_memory_input(req: v2.ModelInferRequest) -> None:
    # What tritonclient's InferInput.set_shared_memory() sends: parameters, and no data.
    del req.raw_input_contents[:]
    req.inputs[0].parameters["shared_memory_region"].string_param = "in0"
    req.inputs[0].parameters["shared_memory_byte_size"].int64_param = 2 * N_FEATURES * 4


def _shared_memory_output(req: v2.ModelInferRequest) -> None:
    out = req.outputs.add(name="probability")  # InferRequestedOutput.set_shared_memory()
    out.parameters["shared_memory_region"].string_param = "out0"
    out.parameters["shared_memory_byte_size"].int64_param = 8


def _classification(req: v2.ModelInferRequest) -> None:
    req.outputs.add(name="probability").parameters["classification"].int64_param = 1  # class_count=1


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
        # Triton's extensions, refused, not ignored. Was refused as "contents.fp32_contents
        # has 0 values", which did not say why:
        (_shared_memory_input, "shared memory region 'in0'.*does not implement the shared-memory extension"),
        # Was answered inline while the caller would read its region:
        (_shared_memory_output, "shared memory region 'out0'.*does not implement the shared-memory extension"),
        # Was answered with the FP32 probabilities instead of the BYTES classes asked for:
        (_classification, r"classification \(class count 1\).*does not implement the classification extension"),
    ],
)
async def test_bad_requests_get_invalid_argument(servicer: InferenceServicer, mutate, message: str) -> None:
    req = _request(np.zeros((2, N_FEATURES), np.float32))
    mutate(req)
    with pytest.raises(InvalidArgument, match=message) as info:
        await servicer.ModelInfer(req, None)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_other_tensor_parameters_are_still_accepted(servicer: InferenceServicer) -> None:
    req = _request(np.zeros((2, N_FEATURES), np.float32))
    req.inputs[0].parameters["note"].string_param = "x"
    req.outputs.add(name="probability").parameters["binary_data"].bool_param = True  # HTTP's; no meaning on gRPC
    assert list((await servicer.ModelInfer(req, None)).outputs[0].shape) == [2, 1]


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
    assert servicer.install(_other_version("4", "run-b")) is old
    meta = await servicer.ModelMetadata(v2.ModelMetadataRequest(name="m"), None)
    assert list(meta.versions) == ["4"]
    for run_id, version in (("run-a", "3"), ("run-b", "4")):
        req = _request(np.zeros((1, N_FEATURES), np.float32))
        req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = run_id
        reply = await servicer.ModelInfer(req, None)
        assert reply.model_version == version and reply.parameters[MODEL_RUN_ID_PARAMETER].string_param == run_id
    servicer.previous = None  # retired (the service's job): the old release's inputs are refused
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-a"
    with pytest.raises(FailedPrecondition) as info:
        await servicer.ModelInfer(req, None)
    # The refusal names the run served now, for the gateway to pin its next Transform to.
    assert info.value.trailing_metadata == ((MODEL_RUN_ID_METADATA_KEY, "run-b"),)


def _infer_for(run_id: str) -> v2.ModelInferRequest:
    req = _request(np.zeros((1, N_FEATURES), np.float32))
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = run_id
    return req


async def test_previous_may_retire_once_unused_for_the_overlap_and_the_new_version_paired(servicer: InferenceServicer) -> None:
    servicer.install(_other_version("4", "run-b"))
    # The preprocess service still serves run-a (e.g. its new version was refused): the
    # old release keeps answering, however long, and is never due while current is unpaired.
    assert (await servicer.ModelInfer(_infer_for("run-a"), None)).model_version == "3"
    assert servicer.previous_retire_in(0.0) > 0
    servicer.previous_used -= 3600  # unused for an hour, but still the only whole pair
    assert servicer.previous_retire_in(60.0) > 0
    # The preprocessor of run-b answers now: previous is due once unused for the overlap.
    assert (await servicer.ModelInfer(_infer_for("run-b"), None)).model_version == "4"
    assert servicer.previous_retire_in(60.0) <= 0
    assert (await servicer.ModelInfer(_infer_for("run-a"), None)).model_version == "3"  # used again
    assert 59 < servicer.previous_retire_in(60.0) <= 60


async def test_a_switch_keeps_the_version_that_last_paired_as_previous(servicer: InferenceServicer) -> None:
    v3 = servicer.current
    assert (await servicer.ModelInfer(_infer_for("run-a"), None)).model_version == "3"
    v4 = _other_version("4", "run-b")
    servicer.install(v4)
    assert servicer.previous is v3
    # v4's preprocessor never answered (refused on the preprocess side): release 5 comes,
    # and v3, whose inputs still arrive, stays beside it; v4 is the one that goes.
    assert servicer.install(_other_version("5", "run-c")) is v4
    assert servicer.previous is v3
    assert (await servicer.ModelInfer(_infer_for("run-a"), None)).model_version == "3"
    # Once v5 paired, the next switch makes it previous (two versions at most).
    assert (await servicer.ModelInfer(_infer_for("run-c"), None)).model_version == "5"
    v5 = servicer.current
    servicer.install(_other_version("6", "run-d"))
    assert servicer.previous is v5
    # A refusal names both runs held, current first: the gateway tries their preprocessors.
    with pytest.raises(FailedPrecondition) as info:
        await servicer.ModelInfer(_infer_for("run-x"), None)
    assert info.value.trailing_metadata == ((MODEL_RUN_ID_METADATA_KEY, "run-d"), (MODEL_RUN_ID_METADATA_KEY, "run-c"))


async def test_input_from_a_newer_release_waits_for_the_reload(servicer: InferenceServicer) -> None:
    async def check_reload() -> bool:
        servicer.install(_other_version("4", "run-b"))
        return True

    req = _stray_input(servicer, check_reload)
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


class TinyLogit(Tiny):
    """Tiny without its sigmoid, which would turn an infinite logit into a finite 0 or 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _overflowing(dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A model whose first two weights cancel: inputs [v, v, 0] past the dtype's range give
    inf - inf = NaN, or +-inf where the CPU's kernel fuses a multiply into the sum (AVX-512
    GEMMs do for some batch sizes); either is non-finite, and no sigmoid hides it."""
    module = TinyLogit()
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([[2.0, -2.0, 0.0]]))
        module.linear.bias.zero_()
    artifact = ResolvedArtifact(name="m", version="3", run_id="run-a", alias="production", source="")
    return LoadedModel(artifact, module.eval().to(dtype), torch.device("cpu"), N_FEATURES, "pytorch", dtype=dtype)


@pytest.mark.parametrize(
    "dtype, huge",
    [
        (torch.float32, 3e38),  # finite FP32 near its limit: 2 * 3e38 overflows inside the model
        (torch.float16, 7e4),  # finite FP32 (and realistic-looking) but past float16's 65504
        (torch.bfloat16, 3e38),
    ],
)
async def test_an_output_that_overflows_to_nan_or_infinity_is_invalid_argument_naming_its_rows(
    servicer: InferenceServicer, dtype: torch.dtype, huge: float
) -> None:
    servicer.current = _overflowing(dtype)
    x = np.zeros((4, N_FEATURES), np.float32)
    x[[1, 3], :2] = huge
    for raw in (True, False):
        with pytest.raises(InvalidArgument, match=r"NaN or infinity for row\(s\) 1, 3 of input 'input'") as info:
            await servicer.ModelInfer(_request(x, raw=raw), None)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert str(dtype).removeprefix("torch.") in info.value.message
    # The same rows without the huge ones are answered.
    reply = await servicer.ModelInfer(_request(x[[0, 2]]), None)
    assert np.isfinite(np.frombuffer(reply.raw_output_contents[0], "<f4")).all()


async def test_an_overflowing_call_batched_with_others_fails_alone_with_its_own_rows(servicer: InferenceServicer) -> None:
    import asyncio

    from meshserve_model.batching import Batcher

    model = servicer.current = _overflowing()
    batches: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        return model.predict(x)

    model.batcher = Batcher(predict, max_batch_size=64, max_queue_delay_us=0, max_queue_size=16)
    good = np.ones((3, N_FEATURES), np.float32)
    bad = np.zeros((2, N_FEATURES), np.float32)
    bad[1, :2] = 3e38
    try:
        ok, refused = await asyncio.gather(
            servicer.ModelInfer(_request(good), None), servicer.ModelInfer(_request(bad), None), return_exceptions=True
        )
    finally:
        await model.batcher.close()
    assert batches == [5]  # one forward pass for both calls
    assert isinstance(ok, v2.ModelInferResponse) and list(ok.outputs[0].shape) == [3, 1]
    assert isinstance(refused, InvalidArgument) and "row(s) 1 of input" in refused.message, refused


def test_check_output_counts_rows_past_the_ones_it_names() -> None:
    from meshserve_model.codecs import check_output

    check_output(np.array([[0.0], [1.0]], np.float32), torch.float32)  # finite: no error
    out = np.full((30, 1), 0.5, np.float32)
    out[5:20] = np.inf
    out[25] = np.nan
    with pytest.raises(InvalidArgument, match=r"row\(s\) 5, 6, 7, 8, 9, 10, 11, 12, 13, 14 and 6 more of input"):
        check_output(out, torch.float32)


async def test_a_pinned_version_is_not_answered_by_the_one_the_skew_guard_picks(servicer: InferenceServicer) -> None:
    from meshserve_runtime.protocol import SKEW_GUARD_MESSAGE_PREFIX

    servicer.install(_other_version("4", "run-b"))  # v3 (run-a) stays for the overlap
    req = _request(np.zeros((1, N_FEATURES), np.float32), model_version="4")
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-a"
    with pytest.raises(FailedPrecondition, match=r"version '4' was requested.*run 'run-a', which pairs with version '3'") as info:
        await servicer.ModelInfer(req, None)
    # Not the skew guard's transient refusal (which the gateway retries): retrying can't help.
    assert not info.value.message.startswith(SKEW_GUARD_MESSAGE_PREFIX)
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-b"
    assert (await servicer.ModelInfer(req, None)).model_version == "4"
    req.model_version = ""
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-a"
    assert (await servicer.ModelInfer(req, None)).model_version == "3"


def _stray_input(servicer: InferenceServicer, check_reload: Callable[[], Awaitable[bool]], model_version: str = "") -> v2.ModelInferRequest:
    """A request whose input came from run-b's preprocessor (not the served run-a), with the
    servicer's alias check replaced by `check_reload`."""
    servicer.check_reload = check_reload
    servicer.reload_wait_s = 1.0
    req = _request(np.zeros((1, N_FEATURES), np.float32), model_version=model_version)
    req.parameters[PREPROCESSOR_RUN_ID_PARAMETER].string_param = "run-b"
    return req


async def test_a_pinned_version_is_not_answered_by_the_version_a_reload_installs(servicer: InferenceServicer) -> None:
    async def check_reload() -> bool:
        servicer.install(_other_version("4", "run-b"))
        return True

    req = _stray_input(servicer, check_reload, model_version="3")
    with pytest.raises(FailedPrecondition, match="pairs with version '4'"):
        await servicer.ModelInfer(req, None)


async def test_a_registry_that_cannot_be_reached_during_the_skew_guard_is_unavailable(servicer: InferenceServicer) -> None:
    async def check_reload() -> bool:
        raise ConnectionError("registry down")

    req = _stray_input(servicer, check_reload)
    with pytest.raises(Unavailable, match=r"run 'run-b'.*checking the model registry.*failed \(ConnectionError\); retry") as info:
        await servicer.ModelInfer(req, None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_an_alias_that_points_nowhere_during_the_skew_guard_keeps_its_refusal(servicer: InferenceServicer) -> None:
    from meshserve_runtime.protocol import SKEW_GUARD_MESSAGE_PREFIX
    from meshserve_runtime.registry import ArtifactNotFound

    async def check_reload() -> bool:
        raise ArtifactNotFound("no version of registered model 'm' has alias 'production'")

    req = _stray_input(servicer, check_reload)
    with pytest.raises(FailedPrecondition, match="run-b.*run-a") as info:
        await servicer.ModelInfer(req, None)
    assert info.value.message.startswith(SKEW_GUARD_MESSAGE_PREFIX)
