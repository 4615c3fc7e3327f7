"""After a hot reload retires a version, the model and preprocess services collect and
refreeze the heap (meshserve_runtime.heap), so a retired version's reference cycles are
not kept forever; and not before the old version is really out of use. Unit level: the
loaded artifacts are stand-ins, the services' own switch/retire code runs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from meshserve_runtime import heap

import meshserve_model.service as model_service
import meshserve_preprocess.service as preprocess_service
from meshserve_model.settings import ModelSettings
from meshserve_preprocess.settings import PreprocessSettings


def artifact(version: str) -> Any:
    return SimpleNamespace(version=version, run_id=f"run-{version}", alias="production", labels=lambda: {"version": version})


@pytest.fixture
def refreezes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(heap, "refreeze", lambda reason="": calls.append(reason))
    return calls


async def switched_model_service(overlap_s: float) -> tuple[Any, Any, Any]:
    """A model service serving stand-in version 1, then switched to version 2: (service, old, new)."""
    service = model_service.ModelService(ModelSettings(alias_poll_s=0, reload_overlap_s=overlap_s))
    old, new = (SimpleNamespace(artifact=artifact(v), batcher=None, device="cpu") for v in ("1", "2"))
    service.servicer.install(old)

    async def load(_: Any) -> Any:
        return new

    service._load = load  # type: ignore[method-assign]
    await service._switch(artifact("2"))
    return service, old, new


async def test_model_refreezes_after_the_overlap_not_at_the_switch(refreezes: list[str]) -> None:
    service, _, new = await switched_model_service(0.05)
    assert service.servicer.current is new and refreezes == []  # the old one still serves its callers
    assert service.servicer._for_run("run-2") is new  # the new release's preprocessor answers too
    await asyncio.wait_for(asyncio.gather(*service._retiring), 5)
    assert service.servicer.previous is None
    assert refreezes == ["previous model version retired"]


async def test_model_keeps_the_previous_version_while_its_inputs_arrive_and_retires_it_when_idle(
    refreezes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preprocess service's new version was refused: it keeps sending inputs of the old
    release, so the old model version must outlive any fixed overlap; once its inputs stop
    (preprocess switched) for reload_overlap_s, it goes."""
    monkeypatch.setattr(model_service, "RETIRE_RECHECK_S", 0.02)
    service, old, new = await switched_model_service(0.1)
    servicer = service.servicer
    for _ in range(15):  # 0.45 s of old-release inputs: over four overlaps
        assert servicer._for_run("run-1") is old
        await asyncio.sleep(0.03)
    assert servicer._for_run("run-2") is new  # the preprocess service switched at last
    for _ in range(10):  # the new pair answers; old-release stragglers still find their version
        assert servicer._for_run("run-2") is new
        await asyncio.sleep(0.005)
    assert servicer.previous is old and refreezes == []
    await asyncio.wait_for(asyncio.gather(*service._retiring), 5)  # idle for the overlap: retired
    assert servicer.previous is None and servicer._for_run("run-1") is None
    assert refreezes == ["previous model version retired"]


async def test_model_memory_stays_at_two_versions(refreezes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_service, "RETIRE_RECHECK_S", 0.01)
    service = model_service.ModelService(ModelSettings(alias_poll_s=0, reload_overlap_s=3600))
    versions = [SimpleNamespace(artifact=artifact(v), batcher=None, device="cpu") for v in ("1", "2", "3")]
    service.servicer.install(versions[0])
    loads = iter(versions[1:])

    async def load(_: Any) -> Any:
        return next(loads)

    service._load = load  # type: ignore[method-assign]
    await service._switch(artifact("2"))
    assert service.servicer._for_run("run-2") is versions[1]
    await service._switch(artifact("3"))  # replaces previous (v1), whatever the overlap
    await asyncio.sleep(0.05)  # its retire task notices at its next check and frees it
    assert (service.servicer.current, service.servicer.previous) == (versions[2], versions[1])
    assert refreezes == ["previous model version retired"] and len(service._retiring) == 1
    await service.close()


async def test_preprocess_refreezes_after_a_switch_but_not_after_the_first_load(
    refreezes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preprocess_service, "RETIRED_VERSION_COLLECT_AFTER_S", 0.05)
    versions = iter(["1", "2", "3"])
    monkeypatch.setattr(preprocess_service, "load_preprocessor", lambda *a, **kw: SimpleNamespace(artifact=artifact(next(versions))))
    service = preprocess_service.PreprocessService(PreprocessSettings(alias_poll_s=0))
    await service._switch(None)  # the first load: nothing retired
    assert not service._refreezes
    await service._switch(None)  # v1 stays as previous (calls may pin its run): nothing retired
    assert service.servicer.previous.artifact.version == "1" and not service._refreezes
    await service._switch(None)
    assert service.servicer.current.artifact.version == "3" and refreezes == []
    assert service.servicer.previous.artifact.version == "2"
    await asyncio.wait_for(asyncio.gather(*service._refreezes), 5)
    assert refreezes == ["previous preprocessor version retired"]


async def test_a_failed_alias_check_is_not_reported_as_no_move_within_the_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry error reaches every caller of check_now until the next real check, also the
    ones the rate limit answers without asking the registry (the model then answers
    UNAVAILABLE, not the skew guard's "no newer version")."""
    import meshserve_runtime.reload as reload

    answers: list[Any] = [ConnectionError("registry down"), artifact("1")]
    asked: list[int] = []

    def resolve(*_: Any) -> Any:
        asked.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def switch(_: Any) -> None:
        raise AssertionError("the served version did not move")

    monkeypatch.setattr(reload, "resolve_alias", resolve)
    watcher = reload.AliasWatcher("sqlite://", "m", "production", 0, served=lambda: "1", switch=switch, min_check_interval_s=0.2)
    for _ in range(2):  # the second call is inside the rate limit: the same error, no second lookup
        with pytest.raises(ConnectionError, match="registry down"):
            await watcher.check_now()
    assert len(asked) == 1
    await asyncio.sleep(0.25)
    assert await watcher.check_now() is False  # the registry answers again: no move, no error
    assert await watcher.check_now() is False and len(asked) == 2


async def test_a_refused_version_is_not_reloaded_at_every_check_only_at_the_next_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests whose input needs a newer version call check_now often: a version whose load
    just failed must not be fetched and loaded again for each of them."""
    import meshserve_runtime.reload as reload

    monkeypatch.setattr(reload, "resolve_alias", lambda *_: artifact("2"))
    switches: list[str] = []

    async def switch(a: Any) -> None:
        switches.append(a.version)
        raise RuntimeError("the new version does not load")

    watcher = reload.AliasWatcher("sqlite://", "m", "production", poll_s=0.3, served=lambda: "1", switch=switch,
                                  min_check_interval_s=0)
    for _ in range(5):
        assert await watcher.check_now() is False
    assert switches == ["2"]  # refused once, then held back
    await asyncio.sleep(0.3)  # the next poll's time: tried again
    assert await watcher.check_now() is False
    assert switches == ["2", "2"]
