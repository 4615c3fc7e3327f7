"""Floors through the same runtime: an echo server and a relay that makes three chained calls.

`python -m bench.echo echo PORT` serves grpc.health.v1 Check through meshserve_runtime.server
(same interceptors, options and health servicer as every meshserve service): one hop.
`python -m bench.echo relay PORT ECHO_TARGET` serves /bench.Relay/Call, which makes three
sequential Check calls to the echo server over a runtime channel: client -> relay -> 3 hops,
the exact shape of client -> gateway -> features, preprocess, model with empty handlers.
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

    def __init__(self, echo_target: str) -> None:
        self.echo_target = echo_target
        self.stub: health_pb2_grpc.HealthStub | None = None

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self.stub is not None
        req = health_pb2.HealthCheckRequest()
        for _ in range(3):
            await self.stub.Check(req, timeout=5.0)
        return b""

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        self.channel = create_channel(self.echo_target)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        handler = grpc.method_handlers_generic_handler(
            self.name, {"Call": grpc.unary_unary_rpc_method_handler(self._call)}
        )
        server.add_generic_rpc_handlers((handler,))
        return [self.name]

    async def close(self) -> None:
        await self.channel.close()


def main() -> None:
    role, port = sys.argv[1], int(sys.argv[2])
    settings = ServerSettings(port=port, metrics_port=0, log_json=False, log_level="WARNING")
    service: Service = EchoService() if role == "echo" else RelayService(sys.argv[3])
    serve(service, settings)


if __name__ == "__main__":
    main()
