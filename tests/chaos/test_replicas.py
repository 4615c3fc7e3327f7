"""Two replicas of every service (the no-mesh configuration): a model replica crashes, and
every process is restarted in turn, under steady load, and no request fails.

The gateways spread internal calls with client-side round_robin over both replicas and
health-check them (a starting, draining or crashed replica gets no calls); the load
generator does the same over the two gateways. Assertions are about outcomes only.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from grpc_health.v1 import health_pb2

from meshserve_local.stack import HEALTH_NAMES
from tests.chaos.load import Load, entities_call, replicated_client_options
from tests.chaos.replicas import Replicas, health_status, running_replicas, wait_until
from tests.fixtures.trained import TrainedHome

pytestmark = pytest.mark.chaos

SERVING = health_pb2.HealthCheckResponse.SERVING
#: Generous: the machine is shared, and a failed call is what these tests look for, not speed.
CALL_TIMEOUT_S = 20.0
#: The chart's rollingUpdate.minReadySeconds.
MIN_READY_S = 5.0


@pytest.fixture(scope="module")
def replicas(trained: TrainedHome) -> Iterator[Replicas]:
    with running_replicas(trained.home, "sqlite") as r:
        yield r


def load_on(replicas: Replicas) -> Load:
    return Load(
        replicas.gateway_target(),
        concurrency=4,
        timeout=CALL_TIMEOUT_S,
        max_seconds=1800,  # a bound, not a target: the rolling restart takes ~9 min here
        calls=(entities_call(), entities_call((1001, 1002, 1003), (2001, 2002, 2003))),
        options=replicated_client_options(),
    )


def test_model_replica_killed_twice_mid_load_no_request_fails(replicas: Replicas, record) -> None:
    a = replicas.stacks[0]
    model_target = a.config.target("model")
    with load_on(replicas) as load:
        assert load.wait_for(lambda r: r.statuses["OK"] >= 20, 120), load.result.statuses
        a.stop_service("model", signal.SIGKILL)  # crash under load
        b_before = replicas.served(1, "model")
        mark = load.result.statuses["OK"]
        assert load.wait_for(lambda r: r.statuses["OK"] >= mark + 20, 120), "replica b did not take over"
        assert replicas.served(1, "model") > b_before

        # Restarted, then killed again while it loads its model (alive, not yet ready).
        a.start_service("model")
        caught_loading = wait_until(lambda: health_status(model_target, "") == SERVING, 240)
        loading = health_status(model_target, HEALTH_NAMES["model"]) != SERVING
        a.stop_service("model", signal.SIGKILL)
        mark = load.result.statuses["OK"]
        assert load.wait_for(lambda r: r.statuses["OK"] >= mark + 20, 120)

        a.start_service("model")
        a.wait_service_ready("model")
        # The new process takes its share again (round_robin resumes once it is SERVING).
        assert wait_until(lambda: replicas.served(0, "model") >= 5, 120, interval=0.5), "restarted replica got no calls"
    r = load.result
    record(
        "model replica SIGKILL under load, restarted, SIGKILL again while loading (2 replicas)",
        r,
        f"p99 of OK {r.p99_ok() * 1e3:.1f} ms; restarted replica served {replicas.served(0, 'model'):.0f} calls",
    )
    assert caught_loading and loading, "the second kill did not hit a loading process"
    assert r.lost == 0
    assert set(r.statuses) == {"OK"}, (r.statuses, r.examples)
    assert r.mixed == 0


def test_rolling_restart_of_every_replica_loses_nothing(replicas: Replicas, record) -> None:
    order = [(i, svc) for svc in ("features", "preprocess", "model", "gateway") for i in (0, 1)]
    codes: dict[str, int] = {}
    restarted: dict[str, tuple[int, int]] = {}
    with load_on(replicas) as load:
        assert load.wait_for(lambda r: r.statuses["OK"] >= 20, 120), load.result.statuses
        for i, svc in order:
            stack = replicas.stacks[i]
            key = f"{svc}-{'ab'[i]}"
            old_pid = stack.procs[svc].pid
            codes[key] = stack.stop_service(svc, signal.SIGTERM)
            stack.start_service(svc)
            stack.wait_service_ready(svc)
            restarted[key] = (old_pid, stack.procs[svc].pid)
            # Before the next one goes down, this one serves again (else the next restart
            # would leave no replica, which no rolling update does) ...
            assert wait_until(lambda: replicas.served(i, svc) >= 3, 120, interval=0.5), f"{key} got no calls after its restart"
            # ... and has been for the chart's minReadySeconds: one gateway sending it calls
            # does not mean the other has reconnected (its backoff reaches 2 s while the
            # replica is down); a Deployment waits minReadySeconds for exactly that.
            time.sleep(MIN_READY_S)
        mark = load.result.statuses["OK"]
        assert load.wait_for(lambda r: r.statuses["OK"] >= mark + 20, 120)
    r = load.result
    record(
        "rolling restart: SIGTERM, restart, ready, next; 2 replicas of all four services (8 processes)",
        r,
        f"exit codes {sorted(set(codes.values()))}; p99 of OK {r.p99_ok() * 1e3:.1f} ms",
    )
    assert codes == dict.fromkeys(codes, 0), codes
    assert len(restarted) == 8 and all(old != new for old, new in restarted.values()), restarted
    assert r.lost == 0
    assert set(r.statuses) == {"OK"}, (r.statuses, r.examples)
    assert r.mixed == 0
