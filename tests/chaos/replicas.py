"""Two replicas of every service as real processes: the no-mesh configuration.

Replica set "a" and "b" are each a meshserve_local Stack (four processes, own ports, one
shared trained home). Both gateways reach the internal services through client-side
round_robin over both replicas' addresses (`ipv4:host:A,host:B`), as a caller does over
both gateways (tests.chaos.load.replicated_client_options).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve_local.stack import Stack, StackConfig
from tests.e2e.conftest import make_stack_config
from tests.fixtures.metrics import scrape_service, value

INTERNAL = ("features", "preprocess", "model")
#: The RPC each service's request counter is read for.
SERVED_METHOD = {"gateway": "PredictEntities", "features": "GetOnlineFeatures", "preprocess": "Transform", "model": "ModelInfer"}


def replica_configs(home: Path, online_store: str = "sqlite", grace_period_s: float = 5.0) -> list[StackConfig]:
    configs = [make_stack_config(home, online_store) for _ in range(2)]
    for dep in INTERNAL:
        target = "ipv4:" + ",".join(c.target(dep) for c in configs)
        for c in configs:
            c.extra_env.setdefault("gateway", {})[f"MESHSERVE_GATEWAY_{dep.upper()}_TARGET"] = target
    for c in configs:
        for svc in ("gateway", *INTERNAL):
            # A short drain keeps restarts quick; calls here take milliseconds.
            c.extra_env.setdefault(svc, {})[f"MESHSERVE_{svc.upper()}_GRACE_PERIOD_S"] = str(grace_period_s)
    return configs


class Replicas:
    """Replica sets a and b; `stacks[i]` owns the processes of replica i."""

    def __init__(self, configs: list[StackConfig]) -> None:
        self.stacks = [Stack(c) for c in configs]
        for i, stack in enumerate(self.stacks):
            stack.log_dir = stack.config.home / "logs" / f"replica-{'ab'[i]}"

    def gateway_target(self) -> str:
        return "ipv4:" + ",".join(s.config.target("gateway") for s in self.stacks)

    def start(self) -> None:
        for stack in self.stacks:
            stack.log_dir.mkdir(parents=True, exist_ok=True)
            for svc in INTERNAL:  # gateways last: they wait for the services they call
                stack.start_service(svc)
        for stack in self.stacks:
            stack.start_service("gateway")
        for stack in self.stacks:
            stack.wait_ready()

    def stop(self) -> None:
        for stack in self.stacks:
            stack.stop()

    def served(self, replica: int, service: str) -> float:
        """OK answers of `service` in replica `replica`'s current process."""
        stack = self.stacks[replica]
        try:
            samples = scrape_service(stack, service)
        except OSError:  # not listening (yet)
            return 0.0
        return value(samples, "meshserve_rpc_requests_total", method=SERVED_METHOD[service], code="OK")


@contextmanager
def running_replicas(home: Path, online_store: str = "sqlite") -> Iterator[Replicas]:
    replicas = Replicas(replica_configs(home, online_store))
    try:
        replicas.start()
        yield replicas
    finally:
        replicas.stop()


def health_status(target: str, name: str, timeout: float = 2.0) -> int | None:
    """The health status `target` reports for `name` ("" is liveness); None: no answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False
