"""Hot reload on the real four processes: the alias moves under steady load, nothing fails.

A fresh home (this test moves @production): train seed 7, start the stack with a short
alias poll interval, drive load through the gateway, retrain with another seed into
@production, and wait until the gateway's answers come from the new version. And a release
only one side can load (the other's artifact fails its integrity check): the old release
keeps answering, and the next good release switches both.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_local.stack import Stack

from tests.e2e.conftest import make_stack_config
from tests.fixtures.trained import train_into

pytestmark = pytest.mark.e2e

PAIRS = [(1001, 2001), (1002, 2002), (1003, 2005)]


@dataclass
class Load:
    """Closed-loop callers against the gateway, recording every outcome."""

    target: str
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (model version, model run, preprocessor run)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        request = prediction_pb2.PredictEntitiesRequest()
        for d, c in PAIRS:
            row = request.entities.add()
            row.values["driver_id"].CopyFrom(types_pb2.Value(int64_value=d))
            row.values["customer_id"].CopyFrom(types_pb2.Value(int64_value=c))
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                try:
                    reply = stub.PredictEntities(request, timeout=20)
                except grpc.RpcError as err:
                    self.errors.append(f"{err.code().name}: {err.details()}")
                    continue
                bad = [p.error.message for p in reply.predictions if p.WhichOneof("result") != "probability"]
                if bad:
                    self.errors.append(f"row errors: {bad}")
                self.answers.append((reply.model.version, reply.model.run_id, reply.preprocessor.run_id))
                time.sleep(0.005)

    def versions(self) -> set[str]:
        return {v for v, _, _ in list(self.answers)}


@contextmanager
def steady_load(stack: Stack, version: str) -> Iterator[Load]:
    """Two closed-loop callers on the gateway, running once `version` answers; stopped on exit."""
    load = Load(stack.config.target("gateway"))
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while not load.answers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert load.versions() == {version}
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=30)


def test_alias_moved_under_load_gives_zero_failed_requests(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = Path(tmp_path_factory.mktemp("reload-home"))
    first = train_into(home, None, seed=7)
    config = make_stack_config(home, "sqlite")
    poll = {"model": "MESHSERVE_MODEL_ALIAS_POLL_S", "preprocess": "MESHSERVE_PREPROCESS_ALIAS_POLL_S"}
    config.extra_env = {service: {var: "0.5"} for service, var in poll.items()}
    config.extra_env["gateway"] = {"MESHSERVE_GATEWAY_DEFAULT_TIMEOUT_S": "20"}
    with Stack(config) as stack:
        with steady_load(stack, first.model_version) as load:
            second = train_into(home, None, seed=8)  # registers v2 of both, moves @production
            assert second.model_version != first.model_version and second.run_id != first.run_id
            deadline = time.monotonic() + 90
            while second.model_version not in load.versions() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # keep the load on after the switch
        served = load.versions()
        assert not load.errors, (load.errors[:5], stack.log_tail("model"))
        assert second.model_version in served, (served, stack.log_tail("model"), stack.log_tail("preprocess"))
        assert all(model_run == pre_run for _, model_run, pre_run in load.answers)
        # The load really spanned the switch: old answers before, new answers after.
        last_old = max(i for i, (v, _, _) in enumerate(load.answers) if v == first.model_version)
        first_new = min(i for i, (v, _, _) in enumerate(load.answers) if v == second.model_version)
        assert len(load.answers) > 50 and first_new > 0 and last_old < len(load.answers) - 1


def _logged(stack: Stack, service: str, message: str, version: str | None = None) -> bool:
    """True once `service` logged `message` (a JSON log line's "message" start), for `version`
    when one is given."""
    for line in stack.log_tail(service, 400).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("message", "")).startswith(message) and version in (None, record.get("version")):
            return True
    return False


@pytest.mark.parametrize("bad", ["model", "preprocessor"])
def test_a_release_one_side_refuses_keeps_the_old_release_serving(bad: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Release 2's model (or preprocessor) fails its integrity check while the other side
    switches to release 2: release 1 keeps answering every request (before, every request
    became a skew-guard refusal), past the model's reload overlap; then a good release 3
    switches both with no failed request either."""
    from mlflow import MlflowClient

    from meshserve_runtime.integrity import DIGEST_TAG

    home = Path(tmp_path_factory.mktemp(f"one-sided-{bad}"))
    first = train_into(home, None, seed=7)
    config = make_stack_config(home, "sqlite")
    config.extra_env = {
        "model": {"MESHSERVE_MODEL_ALIAS_POLL_S": "0.5", "MESHSERVE_MODEL_RELOAD_OVERLAP_S": "1"},
        "preprocess": {"MESHSERVE_PREPROCESS_ALIAS_POLL_S": "0.5"},
        # A lasting skew would fail requests after 2 s: well within the phase below.
        "gateway": {"MESHSERVE_GATEWAY_SKEW_RETRY_S": "2", "MESHSERVE_GATEWAY_DEFAULT_TIMEOUT_S": "20"},
    }
    uri = f"sqlite:///{home}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with Stack(config) as stack:
        with steady_load(stack, first.model_version) as load:
            second = train_into(home, None, seed=8, alias="staging")  # release 2, @production untouched
            names = {"preprocessor": "driver_ranking_preprocessor", "model": "driver_ranking"}
            versions = {"preprocessor": second.preprocessor_version, "model": second.model_version}
            client.set_model_version_tag(names[bad], versions[bad], DIGEST_TAG, "0" * 64)  # not what was registered
            for side in ("preprocessor", "model"):
                client.set_registered_model_alias(names[side], "production", versions[side])
            good_service, bad_service = ("preprocess", "model") if bad == "model" else ("model", "preprocess")
            deadline = time.monotonic() + 20
            while not (_logged(stack, good_service, "switched", "2") and _logged(stack, bad_service, "reload refused", "2")):
                assert time.monotonic() < deadline, (stack.log_tail(good_service), stack.log_tail(bad_service))
                time.sleep(0.2)
            one_sided_from = len(load.answers)
            time.sleep(4)  # past the overlap (1 s) and the gateway's skew retry (2 s) several times
            one_sided = load.answers[one_sided_from:]

            third = train_into(home, None, seed=9)  # a good release 3, @production moves to it
            deadline = time.monotonic() + 30
            while third.model_version not in load.versions() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)
        assert not load.errors, (load.errors[:5], stack.log_tail("model"), stack.log_tail("preprocess"))
        assert len(one_sided) > 20
        assert set(one_sided) == {(first.model_version, first.run_id, first.run_id)}  # release 1, whole
        assert third.model_version in load.versions(), (stack.log_tail("model"), stack.log_tail("preprocess"))
        assert all(model_run == pre_run for _, model_run, pre_run in load.answers)
