"""TLS and mutual TLS on the shared runtime: a real grpc.aio server started by ServiceRunner
with certificates generated in the test (a CA, server and client certificates, and an
unrelated CA), real TLS handshakes, the plaintext policy and start-up errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic_settings import SettingsConfigDict

from meshserve_runtime.channels import create_channel
from meshserve_runtime.server import Service, ServiceRunner
from meshserve_runtime.settings import ServerSettings
from meshserve_runtime.tls import (
    ClientTLS,
    PemSetting,
    TLSConfigError,
    client_tls,
    client_tls_from_settings,
    is_loopback_host,
    is_loopback_target,
    server_tls_from_settings,
)

from meshserve_gateway.settings import GatewaySettings

from meshserve_local.devcerts import CertificateAuthority, Issued

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "meshserve.test.Nothing"


class TLSTestSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_TLSTEST_")


class Nothing(Service):
    """No servicer of its own: health and reflection are what a call can reach."""

    name = SERVICE

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        return [SERVICE]


# ---------------------------------------------------------------- certificates

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = CertificateAuthority("meshserve test CA"), CertificateAuthority("someone else's CA")
    return {
        "server": ca.issue(root / "server", "server", server=True, client=False),
        "client": ca.issue(root / "client", "client", dns=(), ips=(), server=False, client=True),
        "rogue-client": rogue.issue(root / "rogue-client", "rogue", dns=(), ips=(), server=False, client=True),
        "rogue-server": rogue.issue(root / "rogue-server", "rogue server", server=True, client=False),
    }


def settings(**kw: object) -> TLSTestSettings:
    return TLSTestSettings(host="127.0.0.1", port=0, metrics_port=0, **kw)


def tls_settings(pki: dict[str, Issued], mutual: bool, **kw: object) -> TLSTestSettings:
    server = pki["server"]
    return settings(tls_cert_file=server.cert, tls_key_file=server.key, tls_client_ca_file=server.ca if mutual else None, **kw)


async def started(s: TLSTestSettings) -> ServiceRunner:
    runner = ServiceRunner(Nothing(), s)
    await runner.start()
    return runner


@asynccontextmanager
async def serving(s: TLSTestSettings) -> AsyncIterator[ServiceRunner]:
    """A started runner in the test's own event loop (an async fixture would run in another)."""
    runner = await started(s)
    try:
        yield runner
    finally:
        await runner.drain()


def tls_server(pki: dict[str, Issued]) -> AbstractAsyncContextManager[ServiceRunner]:
    return serving(tls_settings(pki, mutual=False, health_port=_free_port()))


def mtls_server(pki: dict[str, Issued]) -> AbstractAsyncContextManager[ServiceRunner]:
    return serving(tls_settings(pki, mutual=True))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def credentials(ca: Path | None, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def check_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(channel)
    return info.value


# ---------------------------------------------------------------- server TLS

async def test_a_tls_server_answers_a_tls_client(pki: dict[str, Issued]) -> None:
    async with tls_server(pki) as tls_runner:
        target = f"127.0.0.1:{tls_runner.port}"
        async with grpc.aio.secure_channel(target, credentials(pki["server"].ca)) as ch:
            assert await check(ch) == SERVING
            assert await check(ch, SERVICE) == NOT_SERVING  # nothing loaded yet
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            listed = {s.name async for r in replies for s in r.list_services_response.service}
        assert SERVICE in listed and "grpc.health.v1.Health" in listed


async def test_the_runtime_channel_speaks_tls_with_a_server_name_override(pki: dict[str, Issued]) -> None:
    async with tls_server(pki) as tls_runner:
        tls = ClientTLS(PemSetting("CA", pki["server"].ca), server_name="localhost")
        channel = create_channel(f"127.0.0.1:{tls_runner.port}", credentials=tls.credentials(), server_name=tls.server_name)
        try:
            assert await check(channel) == SERVING
        finally:
            await channel.close()
        # A name the certificate does not hold fails the handshake: the override is really used.
        channel = create_channel(f"127.0.0.1:{tls_runner.port}", retry_attempts=1, credentials=tls.credentials(), server_name="features.example")
        try:
            assert (await check_error(channel)).code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()


async def test_a_tls_server_refuses_plaintext(pki: dict[str, Issued]) -> None:
    async with tls_server(pki) as tls_runner:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_runner.port}") as ch:
            assert (await check_error(ch)).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_server_ca_is_refused(pki: dict[str, Issued]) -> None:
    async with tls_server(pki) as tls_runner:
        async with grpc.aio.secure_channel(f"127.0.0.1:{tls_runner.port}", credentials(pki["rogue-server"].ca)) as ch:
            assert (await check_error(ch)).code() == grpc.StatusCode.UNAVAILABLE


async def test_the_health_port_is_plaintext_and_serves_health_only(pki: dict[str, Issued]) -> None:
    async with tls_server(pki) as tls_runner:
        assert tls_runner.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_runner.health_port}") as ch:
            assert await check(ch) == SERVING
            assert await check(ch, SERVICE) == NOT_SERVING
            # The same HealthServicer as the TLS port: readiness flips on both at once.
            await tls_runner.health.set(SERVICE, SERVING)
            assert await check(ch, SERVICE) == SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                    pass
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- mutual TLS

async def test_mtls_serves_a_client_with_a_certificate_from_the_ca(pki: dict[str, Issued]) -> None:
    async with mtls_server(pki) as mtls_runner:
        async with grpc.aio.secure_channel(f"127.0.0.1:{mtls_runner.port}", credentials(pki["server"].ca, pki["client"])) as ch:
            assert await check(ch) == SERVING


async def test_mtls_refuses_a_client_without_a_certificate(pki: dict[str, Issued]) -> None:
    async with mtls_server(pki) as mtls_runner:
        async with grpc.aio.secure_channel(f"127.0.0.1:{mtls_runner.port}", credentials(pki["server"].ca)) as ch:
            assert (await check_error(ch)).code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_certificate_from_another_ca(pki: dict[str, Issued]) -> None:
    async with mtls_server(pki) as mtls_runner:
        async with grpc.aio.secure_channel(f"127.0.0.1:{mtls_runner.port}", credentials(pki["server"].ca, pki["rogue-client"])) as ch:
            assert (await check_error(ch)).code() == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_serve_new_connections(pki: dict[str, Issued], tmp_path: Path) -> None:
    """Files replaced on disk (a renewed Secret) apply to the next handshake, no restart."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    runner = await started(settings(tls_cert_file=cert, tls_key_file=key))
    target = f"127.0.0.1:{runner.port}"
    try:
        async with grpc.aio.secure_channel(target, credentials(pki["server"].ca)) as ch:
            assert await check(ch) == SERVING
        # Replace both files the way the kubelet does: new files renamed into place.
        for src, dst in ((pki["rogue-server"].cert, cert), (pki["rogue-server"].key, key)):
            shutil.copy(src, dst.with_suffix(".new"))
            os.replace(dst.with_suffix(".new"), dst)
        async with grpc.aio.secure_channel(target, credentials(pki["rogue-server"].ca)) as ch:
            assert await check(ch) == SERVING
        async with grpc.aio.secure_channel(target, credentials(pki["server"].ca)) as ch:
            assert (await check_error(ch)).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await runner.drain()


async def test_a_half_written_rotation_keeps_the_previous_certificate(pki: dict[str, Issued], tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    runner = await started(settings(tls_cert_file=cert, tls_key_file=key))
    try:
        os.replace(shutil.copy(pki["rogue-server"].cert, tmp_path / "new.crt"), cert)  # the key is not renewed yet
        async with grpc.aio.secure_channel(f"127.0.0.1:{runner.port}", credentials(pki["server"].ca)) as ch:
            assert await check(ch) == SERVING
    finally:
        await runner.drain()


# ---------------------------------------------------------------- the plaintext policy

async def test_plaintext_off_loopback_needs_the_explicit_choice() -> None:
    runner = ServiceRunner(Nothing(), TLSTestSettings(host="0.0.0.0", port=0, metrics_port=0))
    with pytest.raises(TLSConfigError) as info:
        await runner.start()
    message = str(info.value)
    assert "0.0.0.0" in message and "MESHSERVE_TLSTEST_PLAINTEXT=true" in message
    assert "MESHSERVE_TLSTEST_TLS_CERT_FILE" in message and "MESHSERVE_TLSTEST_TLS_KEY_FILE" in message
    assert runner.server is None  # refused before anything was bound

    runner = ServiceRunner(Nothing(), TLSTestSettings(host="0.0.0.0", port=0, metrics_port=0, plaintext=True))
    await runner.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
            assert await check(ch) == SERVING
    finally:
        await runner.drain()


async def test_loopback_stays_plaintext_by_default() -> None:
    runner = await started(settings())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
            assert await check(ch) == SERVING
    finally:
        await runner.drain()


async def test_tls_off_loopback_needs_no_plaintext_choice(pki: dict[str, Issued]) -> None:
    server = pki["server"]
    runner = await started(TLSTestSettings(host="0.0.0.0", port=0, metrics_port=0, tls_cert_file=server.cert, tls_key_file=server.key))
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{runner.port}", credentials(server.ca)) as ch:
            assert await check(ch) == SERVING
    finally:
        await runner.drain()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("[::]", False), ("", False), ("10.0.0.5", False), ("gateway", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50052", True), ("localhost:50052", True), ("[::1]:50052", True), ("dns:///localhost:50052", True),
        ("dns:127.0.0.1:50052", True), ("ipv4:127.0.0.1:1,127.0.0.2:2", True), ("unix:/run/meshserve.sock", True),
        ("dns:///meshserve-features-headless.ml.svc.cluster.local:50052", False), ("features:50052", False),
        ("dns://8.8.8.8/localhost:50052", True), ("ipv4:127.0.0.1:1,10.0.0.1:2", False), ("xds:///features", False),
        ("10.1.2.3:50052", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_the_gateway_refuses_plaintext_upstream_calls_off_loopback_unless_chosen(pki: dict[str, Issued]) -> None:
    remote = {"features_target": "dns:///features-headless.ml.svc.cluster.local:50052"}
    with pytest.raises(TLSConfigError) as info:
        client_tls_from_settings(GatewaySettings(**remote), "upstream_tls", ("features_target", "preprocess_target", "model_target"))
    message = str(info.value)
    assert "MESHSERVE_GATEWAY_FEATURES_TARGET=dns:///features-headless" in message
    assert "MESHSERVE_GATEWAY_PREPROCESS_TARGET" not in message  # loopback by default
    assert "MESHSERVE_GATEWAY_UPSTREAM_TLS_CA_FILE" in message and "MESHSERVE_GATEWAY_PLAINTEXT=true" in message
    fields = ("features_target",)
    assert client_tls_from_settings(GatewaySettings(**remote, plaintext=True), "upstream_tls", fields) is None
    client = pki["client"]
    tls = client_tls_from_settings(
        GatewaySettings(**remote, upstream_tls_ca_file=client.ca, upstream_tls_cert_file=client.cert, upstream_tls_key_file=client.key),
        "upstream_tls", fields,
    )
    assert tls is not None and tls.cert is not None and tls.cert.setting == "MESHSERVE_GATEWAY_UPSTREAM_TLS_CERT_FILE"
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)


# ---------------------------------------------------------------- start-up errors name the setting

def _server_error(**kw: object) -> str:
    with pytest.raises(TLSConfigError) as info:
        tls = server_tls_from_settings(settings(**kw))
        assert tls is not None
        tls.credentials()
    return str(info.value)


def test_a_missing_file_names_its_setting(pki: dict[str, Issued], tmp_path: Path) -> None:
    message = _server_error(tls_cert_file=tmp_path / "nope.crt", tls_key_file=pki["server"].key)
    assert message == f"MESHSERVE_TLSTEST_TLS_CERT_FILE={tmp_path / 'nope.crt'}: no such file"
    message = _server_error(tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].key, tls_client_ca_file=tmp_path)
    assert message.startswith(f"MESHSERVE_TLSTEST_TLS_CLIENT_CA_FILE={tmp_path}: cannot read it")


def test_files_that_are_not_pem_are_refused(pki: dict[str, Issued], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    message = _server_error(tls_cert_file=junk, tls_key_file=pki["server"].key)
    assert message.startswith("MESHSERVE_TLSTEST_TLS_CERT_FILE=") and "not a PEM certificate" in message
    message = _server_error(tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].cert)
    assert message.startswith("MESHSERVE_TLSTEST_TLS_KEY_FILE=") and "not a PEM private key" in message
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    message = _server_error(tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].key, tls_client_ca_file=broken)
    assert message.startswith("MESHSERVE_TLSTEST_TLS_CLIENT_CA_FILE=") and "does not parse" in message
    empty = tmp_path / "empty.key"
    empty.write_text("")
    assert "is empty" in _server_error(tls_cert_file=pki["server"].cert, tls_key_file=empty)


def test_a_key_of_another_certificate_is_refused(pki: dict[str, Issued]) -> None:
    message = _server_error(tls_cert_file=pki["server"].cert, tls_key_file=pki["client"].key)
    assert message == f"MESHSERVE_TLSTEST_TLS_KEY_FILE={pki['client'].key} is not the private key of MESHSERVE_TLSTEST_TLS_CERT_FILE={pki['server'].cert}"


def test_an_encrypted_key_is_refused(pki: dict[str, Issued], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["server"].key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    )
    assert "encrypted" in _server_error(tls_cert_file=pki["server"].cert, tls_key_file=encrypted)


def test_half_configured_tls_is_refused(pki: dict[str, Issued]) -> None:
    s = pki["server"]
    assert "MESHSERVE_TLSTEST_TLS_CERT_FILE is set but MESHSERVE_TLSTEST_TLS_KEY_FILE is not" in _server_error(tls_cert_file=s.cert)
    assert "MESHSERVE_TLSTEST_TLS_KEY_FILE is set but MESHSERVE_TLSTEST_TLS_CERT_FILE is not" in _server_error(tls_key_file=s.key)
    assert "MESHSERVE_TLSTEST_TLS_CLIENT_CA_FILE is set but" in _server_error(tls_client_ca_file=s.ca)
    with pytest.raises(TLSConfigError, match="without its pair"):
        client_tls(PemSetting("CA", s.ca), cert=PemSetting("CERT", s.cert))
    with pytest.raises(TLSConfigError, match="CERT is set but CA is not"):
        client_tls(None, cert=PemSetting("CERT", s.cert), key=PemSetting("KEY", s.key))
    with pytest.raises(TLSConfigError, match="server name"):
        client_tls(None, server_name="features.internal")


def test_a_service_process_refuses_a_plaintext_public_bind_with_one_clear_line() -> None:
    """The real gateway process: exit code 2 and a message naming the settings, no traceback."""
    env = {
        **os.environ, "MESHSERVE_GATEWAY_HOST": "0.0.0.0", "MESHSERVE_GATEWAY_PORT": "0", "MESHSERVE_GATEWAY_METRICS_PORT": "0",
        "MESHSERVE_GATEWAY_LOG_JSON": "false",
    }
    env.pop("MESHSERVE_GATEWAY_PLAINTEXT", None)
    proc = subprocess.run([sys.executable, "-m", "meshserve_gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve plaintext gRPC on 0.0.0.0:0" in proc.stderr
    assert "MESHSERVE_GATEWAY_PLAINTEXT=true" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_dev_certs_give_mutual_tls_on_loopback(tmp_path: Path) -> None:
    """`meshserve dev-certs DIR` writes what `meshserve up --tls-dir DIR` serves and calls with."""
    from meshserve_local.cli import main

    assert main(["dev-certs", str(tmp_path), "--days", "2", "--host", "meshserve-gateway"]) == 0
    ca, cert, key = tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key"
    async with serving(settings(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca)) as runner:
        issued = Issued(cert, key, ca)
        async with grpc.aio.secure_channel(f"127.0.0.1:{runner.port}", credentials(ca, issued)) as ch:
            assert await check(ch) == SERVING
        # The extra --host is a SAN too.
        options = [("grpc.ssl_target_name_override", "meshserve-gateway")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{runner.port}", credentials(ca, issued), options=options) as ch:
            assert await check(ch) == SERVING
