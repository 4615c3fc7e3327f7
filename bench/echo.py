"""Floors through the same runtime: an echo server and a relay that makes three chained calls.

`python -m bench.echo echo PORT` serves grpc.health.v1 Check through meshserve_runtime.server
(same interceptors, options and health servicer as every meshserve service): one hop.
`python -m bench.echo relay PORT ECHO_TARGET...` serves /bench.Relay/Call, which makes three
sequential Check calls over runtime channels, hop i to ECHO_TARGET[i % n]. With three echo
servers it has the exact shape of client -> gateway -> features, preprocess, model with empty
handlers (five processes, each idle between its turns); with one, the three hops hit the
same warm process back to back, which is cheaper (see bench/HISTORY.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve_runtime.channels import create_channel
from meshserve_runtime.server import Service, serve
from meshserve_runtime.settings import ServerSettings


class EchoService(Service):
    name = "bench.Echo"

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        return [self.name]  # health Check (registered by the runtime) is the echo


class RelayService(Service):
    name = "bench.Relay"

    def __init__(self, echo_targets: Sequence[str]) -> None:
        self.echo_targets = list(echo_targets)
        self.stubs: list[health_pb2_grpc.HealthStub] = []
        self.channels: list[grpc.aio.Channel] = []

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = health_pb2.HealthCheckRequest()
        for i in range(3):
            await self.stubs[i % len(self.stubs)].Check(req, timeout=5.0)
        return b""

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        self.channels = [create_channel(t) for t in self.echo_targets]
        self.stubs = [health_pb2_grpc.HealthStub(ch) for ch in self.channels]
        handler = grpc.method_handlers_generic_handler(
            self.name, {"Call": grpc.unary_unary_rpc_method_handler(self._call)}
        )
        server.add_generic_rpc_handlers((handler,))
        return [self.name]

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def main() -> None:
    role, port = sys.argv[1], int(sys.argv[2])
    settings = ServerSettings(port=port, metrics_port=0, log_json=False, log_level="WARNING")
    service: Service = EchoService() if role == "echo" else RelayService(sys.argv[3:])
    serve(service, settings)


if __name__ == "__main__":
    main()
