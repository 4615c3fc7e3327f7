"""The gateway Service: channels to the three internal services, created once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.inference.v2 import open_inference_pb2_grpc as v2_grpc
from meshserve.v1 import features_pb2_grpc, prediction_pb2_grpc, preprocess_pb2_grpc

from meshserve_runtime.channels import create_channel
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME, GATEWAY_HEALTH_NAME, MODEL_HEALTH_NAME, PREPROCESS_HEALTH_NAME
from meshserve_runtime.server import Service
from meshserve_runtime.tls import client_tls_from_settings

from meshserve_gateway.auth import auth_interceptors
from meshserve_gateway.pipeline import Pipeline
from meshserve_gateway.servicer import PredictionServicer
from meshserve_gateway.settings import GatewaySettings

log = logging.getLogger("meshserve.gateway")


class GatewayService(Service):
    name = GATEWAY_HEALTH_NAME

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.servicer: PredictionServicer | None = None
        # Built here, so a missing or bad keys/JWKS file stops the gateway before it listens.
        self._interceptors = auth_interceptors(settings)

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return self._interceptors

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        s = self.settings
        # TLS (mutual with a client certificate) when a CA is set; plaintext only where allowed.
        upstream = client_tls_from_settings(s, "upstream_tls", ("features_target", "preprocess_target", "model_target"))
        tls = {} if upstream is None else {"credentials": upstream.credentials(), "server_name": upstream.server_name}
        # health_service: round_robin skips replicas that are loading, draining or lost a dependency.
        self.channels = {
            FEATURES_HEALTH_NAME: create_channel(s.features_target, s.max_message_bytes, s.retry_attempts, health_service=FEATURES_HEALTH_NAME, **tls),
            PREPROCESS_HEALTH_NAME: create_channel(s.preprocess_target, s.max_message_bytes, s.retry_attempts, health_service=PREPROCESS_HEALTH_NAME, **tls),
            MODEL_HEALTH_NAME: create_channel(s.model_target, s.max_message_bytes, s.retry_attempts, health_service=MODEL_HEALTH_NAME, **tls),
        }
        pipeline = Pipeline(
            features_pb2_grpc.FeatureServiceStub(self.channels[FEATURES_HEALTH_NAME]),
            preprocess_pb2_grpc.PreprocessServiceStub(self.channels[PREPROCESS_HEALTH_NAME]),
            v2_grpc.GRPCInferenceServiceStub(self.channels[MODEL_HEALTH_NAME]),
            s.model_name,
            s.max_batch_rows,
            chunk_rows=s.chunk_rows,
            coalesce_max_delay_us=s.coalesce_max_delay_us,
            coalesce_max_rows=s.coalesce_max_rows,
            coalesce_max_in_flight=s.coalesce_max_in_flight,
            skew_retry_s=s.skew_retry_s,
            max_row_values=s.max_row_values,
            max_message_bytes=s.max_message_bytes,
        )
        self.servicer = PredictionServicer(pipeline, s.default_timeout_s)
        prediction_pb2_grpc.add_PredictionServiceServicer_to_server(self.servicer, server)
        return [GATEWAY_HEALTH_NAME]

    async def load(self) -> bool:
        """The gateway has no artifacts: it is ready once every service it calls is ready."""
        waiting: set[str] = set(self.channels)
        last_report = time.monotonic()
        while waiting:
            for name in list(waiting):
                stub = health_pb2_grpc.HealthStub(self.channels[name])
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=1.0)
                except grpc.aio.AioRpcError:
                    continue
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    waiting.discard(name)
            if waiting:
                if time.monotonic() - last_report > 5:
                    log.info("waiting for dependencies", extra={"not_ready": sorted(waiting)})
                    last_report = time.monotonic()
                await asyncio.sleep(0.2)
        return True

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self.channels.values()))
