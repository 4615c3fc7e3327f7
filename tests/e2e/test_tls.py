"""Mutual TLS on every hop, on the real four processes: the caller -> gateway, and the
gateway -> features, preprocess and model, with certificates generated for the test.

The answer must equal the offline reference (historical features + the registered
preprocessor and model), the same reference the plaintext stack is held to in
test_pipeline.py, so TLS changes nothing in the answer. Plaintext callers and callers
without a certificate from the CA are refused on every service; the plaintext health
port answers grpc.health.v1 and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_local.devcerts import CertificateAuthority, Issued
from meshserve_local.stack import HEALTH_NAMES, Stack, StackConfig, StackTLS, free_ports

from tests.e2e.conftest import make_stack_config

pytestmark = pytest.mark.e2e

ENTITIES = [(1001, 2001), (1002, 2002), (1005, 2007)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    root = tmp_path_factory.mktemp("tls-pki")
    ca, rogue = CertificateAuthority("meshserve e2e CA"), CertificateAuthority("another CA")
    return {
        # One certificate every service serves and the gateway presents upstream (server+client use).
        "services": ca.issue(root / "services", "meshserve"),
        "caller": ca.issue(root / "caller", "backend-caller", dns=(), ips=(), server=False),
        "rogue": rogue.issue(root / "rogue", "rogue-caller", dns=(), ips=(), server=False),
    }


@pytest.fixture(scope="module")
def tls_stack(trained_home: Path, pki: dict[str, Issued]) -> Iterator[Stack]:
    base = make_stack_config(trained_home, "sqlite")
    config = StackConfig(
        home=base.home,
        online_store="sqlite",
        ports=base.ports,
        metrics_ports=base.metrics_ports,
        tls=StackTLS(pki["services"].ca, pki["services"].cert, pki["services"].key, mutual=True),
        health_ports=dict(zip(HEALTH_NAMES, free_ports(4))),
    )
    with Stack(config) as stack:
        yield stack


def caller_channel(stack: Stack, service: str, issued: Issued | None, ca: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=issued.key.read_bytes() if issued else None,
        certificate_chain=issued.cert.read_bytes() if issued else None,
    )
    return grpc.secure_channel(stack.config.target(service), creds)


def predict(channel: grpc.Channel, pairs: list[tuple[int, int]]) -> prediction_pb2.PredictResponse:
    request = prediction_pb2.PredictEntitiesRequest()
    for d, c in pairs:
        row = request.entities.add()
        row.values["driver_id"].int64_value = d
        row.values["customer_id"].int64_value = c
    return prediction_pb2_grpc.PredictionServiceStub(channel).PredictEntities(request, timeout=30)


def health_error(channel: grpc.Channel, service: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service]), timeout=5)
    return info.value


def test_mutual_tls_on_every_hop_gives_the_reference_answer(tls_stack: Stack, pki: dict[str, Issued], trained_home: Path) -> None:
    from tests.fixtures.trained import offline_reference

    with caller_channel(tls_stack, "gateway", pki["caller"], pki["services"].ca) as ch:
        reply = predict(ch, ENTITIES)
    assert [p.WhichOneof("result") for p in reply.predictions] == ["probability"] * len(ENTITIES)
    expected, model_version = offline_reference(trained_home, ENTITIES)
    np.testing.assert_allclose([p.probability for p in reply.predictions], expected, rtol=0, atol=1e-6)
    assert reply.model.version == model_version and reply.preprocessor.run_id == reply.model.run_id != ""


def test_every_service_refuses_plaintext(tls_stack: Stack) -> None:
    """Also proves the gateway's upstream hops are TLS: it got answers from these services."""
    for service in HEALTH_NAMES:
        with grpc.insecure_channel(tls_stack.config.target(service)) as ch:
            assert health_error(ch, service).code() == grpc.StatusCode.UNAVAILABLE, service


def test_every_service_refuses_callers_without_a_certificate_from_the_ca(tls_stack: Stack, pki: dict[str, Issued]) -> None:
    ca = pki["services"].ca
    for service in HEALTH_NAMES:
        for issued in (None, pki["rogue"]):
            with caller_channel(tls_stack, service, issued, ca) as ch:
                assert health_error(ch, service).code() == grpc.StatusCode.UNAVAILABLE, (service, issued)
    # Not by way of an error before the handshake: the same call with the caller's certificate works.
    with caller_channel(tls_stack, "model", pki["caller"], ca) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=HEALTH_NAMES["model"]), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_plaintext_health_port_serves_probes_only(tls_stack: Stack) -> None:
    for service, name in HEALTH_NAMES.items():
        with grpc.insecure_channel(f"127.0.0.1:{tls_stack.config.health_ports[service]}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for health_name in ("", name):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, health_name)
    with grpc.insecure_channel(f"127.0.0.1:{tls_stack.config.health_ports['gateway']}") as ch:
        with pytest.raises(grpc.RpcError) as info:
            predict(ch, ENTITIES[:1])
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_cli_calls_the_tls_gateway(tls_stack: Stack, pki: dict[str, Issued], capsys: pytest.CaptureFixture[str]) -> None:
    from meshserve_local.cli import main

    target = tls_stack.config.target("gateway")
    caller = pki["caller"]
    args = ["predict", "--target", target, "--driver", "1001", "--customer", "2001"]
    assert main([*args, "--tls-ca", str(caller.ca), "--tls-cert", str(caller.cert), "--tls-key", str(caller.key)]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert 0 < reply["predictions"][0]["probability"] < 1
    assert main(args) == 1  # plaintext
    assert "UNAVAILABLE" in capsys.readouterr().err
