"""Run one meshserve service: the start-up and shutdown every service shares.

Lifecycle:
1. The gRPC server starts with health, reflection and the metrics endpoint; health ""
   is SERVING as soon as the process accepts calls (liveness), the service's own name
   is NOT_SERVING.
2. Service.load() loads and warms the artifacts (retried until it succeeds); only then
   is the service's own health name SERVING (readiness).
3. On SIGTERM/SIGINT: every health name goes NOT_SERVING first, the server stops taking
   new calls, in-flight calls get `grace_period_s` to finish, then Service.close().
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshserve_runtime import heap
from meshserve_runtime.grpc_env import active_experiments
from meshserve_runtime.interceptors import ServerInterceptor
from meshserve_runtime.logging import configure_logging
from meshserve_runtime.metrics import READY, start_metrics_server
from meshserve_runtime.protocol import FEATURES_HEALTH_NAME, GATEWAY_HEALTH_NAME, MODEL_HEALTH_NAME, PREPROCESS_HEALTH_NAME
from meshserve_runtime.settings import ServerSettings, setting_name
from meshserve_runtime.tls import TLSConfigError, check_plaintext_server, server_tls_from_settings
from meshserve_runtime.tracing import configure_tracing, flush_tracing

log = logging.getLogger("meshserve.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: OpenTelemetry service.name of each service (OTEL_SERVICE_NAME overrides it).
TRACE_SERVICE_NAMES = {
    GATEWAY_HEALTH_NAME: "meshserve-gateway",
    FEATURES_HEALTH_NAME: "meshserve-features",
    PREPROCESS_HEALTH_NAME: "meshserve-preprocess",
    MODEL_HEALTH_NAME: "meshserve-model",
}


class StartupError(RuntimeError):
    """The service cannot start as configured (e.g. its port is taken): a one-line reason, exit 2."""


#: Flips the service's own health name (True: SERVING); see ServiceRunner.set_ready.
ReadinessCallback = Callable[[bool], Awaitable[None]]


class Service(abc.ABC):
    """One meshserve service: its servicers plus its artifacts' lifecycle."""

    #: Fully qualified gRPC service name; also the health name that gates readiness.
    name: str

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Add this service's servicers to the server; return the full service names."""

    async def load(self) -> bool:
        """Load and warm up artifacts; return True when ready to serve.

        Runs after the server has started, so health and liveness answer meanwhile.
        Raising or returning False keeps the service not-ready and is retried.
        """
        return True

    async def close(self) -> None:
        """Release resources after the server has stopped."""

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Extra server interceptors of this service (e.g. the gateway's authentication).

        They run inside the shared ServerInterceptor, so what they refuse still gets its
        status mapping, RED metrics, span and access-log line. Default: none.
        """
        return ()

    def bind_readiness(self, set_ready: ReadinessCallback) -> None:
        """Receive the runner's readiness switch once, before the first load().

        A service whose serving depends on something outside it (e.g. an online store that
        can go away) keeps it to flip its own health name after load; the default ignores it.
        """


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Server channel arguments, chosen deliberately (see comments)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Accept client keepalive pings every 10 s without calling them abusive.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_s > 0:
        # Clients reconnect (and re-resolve DNS) so new pods behind an HPA get traffic.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(settings.grace_period_s, 1) * 1000)),
        ]
    return options


class ServiceRunner:
    """Owns the grpc.aio server, health state and shutdown of one Service."""

    def __init__(self, service: Service, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        #: Plaintext server of grpc.health.v1 only (settings.health_port), for kubelet probes.
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        # TLS material is checked before anything binds: a bad file fails the start-up.
        tls = server_tls_from_settings(s)
        if tls is None:
            check_plaintext_server(
                s.host, s.port, setting_name(s, "plaintext"), setting_name(s, "tls_cert_file"), setting_name(s, "tls_key_file"), s.plaintext
            )
        credentials = tls.credentials() if tls is not None else None
        # Before any handler runs, so every span goes to the configured exporter.
        configure_tracing(TRACE_SERVICE_NAMES.get(self.service.name, self.service.name))
        self.server = server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.service.name, access_log=s.access_log), *self.service.interceptors()],
            options=server_options(s),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        names = list(self.service.register(server))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        address = f"{s.host}:{s.port}"
        self.port = _bind(
            lambda: server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address),
            "gRPC", address, setting_name(s, "port"),
        )
        if s.health_port:
            # The same HealthServicer, so both ports always report the same status.
            self.health_server = health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=64)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            health_address = f"{s.host}:{s.health_port}"
            self.health_port = _bind(lambda: health_server.add_insecure_port(health_address), "health", health_address, setting_name(s, "health_port"))
        await self.health.set(self.service.name, NOT_SERVING)
        READY.labels(self.service.name).set(0)
        # Bound before the gRPC server starts, so a taken port stops a process with nothing running.
        try:
            start_metrics_server(s.host, s.metrics_port)
        except OSError as err:
            raise StartupError(
                f"could not bind the metrics port {s.host}:{s.metrics_port} ({err.strerror or err}); "
                f"is another process using it? (setting {setting_name(s, 'metrics_port')})"
            ) from None
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        log.info(
            "listening",
            extra={
                "service": self.service.name, "address": f"{s.host}:{self.port}", "metrics_port": s.metrics_port,
                "tls": "mutual" if tls and tls.mutual else "server" if tls else "off", "health_port": self.health_port,
                "grpc_experiments": active_experiments(),
            },
        )

    async def load_until_ready(self) -> None:
        """Load artifacts, retrying on failure, then report SERVING."""
        self.service.bind_readiness(self.set_ready)
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                ok = await self.service.load()
            except Exception as err:
                # The whole traceback once; after that one line per attempt.
                log.error(
                    "loading artifacts failed (attempt %d): %s; retrying in %.1fs",
                    attempt, err, self.settings.load_retry_s, exc_info=attempt == 1,
                )
                ok = False
            if ok:
                if not self._stop.is_set():
                    if self.settings.gc_freeze:
                        heap.freeze()  # after warm-up, before the first real call (see heap.py)
                    await self.health.set(self.service.name, SERVING)
                    READY.labels(self.service.name).set(1)
                    self._ready.set()
                    log.info("ready", extra={"service": self.service.name})
                return
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.load_retry_s)
            except TimeoutError:
                pass

    def request_stop(self) -> None:
        self._stop.set()

    async def set_ready(self, ready: bool) -> None:
        """Flip the service's own health name, e.g. when a dependency goes away.

        Ignored until load() has succeeded (the loader owns readiness until then) and once
        draining has begun (everything stays NOT_SERVING).
        """
        if self._stop.is_set() or not self._ready.is_set():
            return
        await self.health.set(self.service.name, SERVING if ready else NOT_SERVING)
        READY.labels(self.service.name).set(1 if ready else 0)

    async def drain(self) -> None:
        """NOT_SERVING everywhere, then stop taking calls and let in-flight ones finish."""
        assert self.server is not None
        log.info("draining", extra={"service": self.service.name, "grace_period_s": self.settings.grace_period_s})
        READY.labels(self.service.name).set(0)
        await self.health.enter_graceful_shutdown()
        stops = [self.server.stop(self.settings.grace_period_s)]
        if self.health_server is not None:
            stops.append(self.health_server.stop(self.settings.grace_period_s))
        await asyncio.gather(*stops)
        await self.service.close()
        flush_tracing()  # flush the spans of the last calls
        log.info("stopped", extra={"service": self.service.name})

    async def run(self) -> None:
        """Start, load, serve until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        loader = asyncio.create_task(self.load_until_ready(), name="load")
        await self._stop.wait()
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        await self.drain()


def _bind(add_port: Callable[[], int], what: str, address: str, setting: str) -> int:
    """Bind one gRPC port; a port in use (or an unusable address) is a StartupError naming it."""
    try:
        port = add_port()
    except RuntimeError as err:  # grpc raises "Failed to bind to address ..."
        raise StartupError(f"could not bind the {what} port {address}; is another process using it? (setting {setting}): {err}") from None
    if port == 0:
        raise StartupError(f"could not bind the {what} port {address} (setting {setting})")
    return port


def serve(service: Service, settings: ServerSettings) -> None:
    """Process entry point: configure logging and run the service until signalled."""
    configure_logging(settings.log_level, settings.log_json)
    runner = asyncio.Runner()
    try:
        runner.run(ServiceRunner(service, settings).run())
    except (TLSConfigError, StartupError) as err:
        # A configuration mistake, not a crash: one line that names the setting, exit 2.
        log.critical("cannot start: %s", err)
        raise SystemExit(2) from None
    # Drained: calls finished, service closed, spans flushed. Exit now, without the join of
    # worker threads that closing the loop (its default executor) and interpreter exit both
    # do: a registry call or an artifact load still running in one (a hung MLflow server,
    # SIGTERM during start-up) would hold the pod past its grace period, to a SIGKILL.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
