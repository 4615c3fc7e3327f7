"""`meshserve predict` / `predict-rows`: a malformed --row is a usage error (exit 2), as the
README says, and without --target they call the gateway where `meshserve up` put it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from meshserve_local import cli
from meshserve_local.stack import PORT_OFFSET_ENV, free_ports


@pytest.mark.parametrize("row", ["conv_rate", "conv_rate=0.5,acc_rate", "=0.5", "conv_rate=0.5,,acc_rate=0.9", ""])
def test_a_pair_that_is_not_name_value_is_a_usage_error(row: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on the target: a usage error must be found before any call
    # (it used to be sent as a null or empty-named value, then fail as exit 1).
    port = free_ports(1)[0]
    assert cli.main(["predict-rows", "--target", f"127.0.0.1:{port}", "--timeout", "0.5", "--row", row]) == 2
    assert "is not name=value" in capsys.readouterr().err


def test_name_null_and_name_empty_stay_a_missing_value(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_ports(1)[0]
    # Well-formed (null values are allowed): sent, and so refused as unreachable (exit 1), not a usage error.
    row = "conv_rate=null,acc_rate="
    assert cli.main(["predict-rows", "--target", f"127.0.0.1:{port}", "--timeout", "0.5", "--row", row]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


class _Gateway(prediction_pb2_grpc.PredictionServiceServicer):
    def PredictEntities(self, request: prediction_pb2.PredictEntitiesRequest, context: object) -> prediction_pb2.PredictResponse:
        return prediction_pb2.PredictResponse(predictions=[prediction_pb2.RowPrediction(probability=0.5)] * len(request.entities))

    def Predict(self, request: prediction_pb2.PredictRequest, context: object) -> prediction_pb2.PredictResponse:
        return prediction_pb2.PredictResponse(predictions=[prediction_pb2.RowPrediction(probability=0.5)] * len(request.rows))


@pytest.fixture
def gateway_port() -> Iterator[int]:
    server = grpc.server(ThreadPoolExecutor(2))
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(_Gateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    "command", [["predict", "--driver", "1001", "--customer", "2001"], ["predict-rows", "--row", "conv_rate=0.5"]]
)
def test_predict_finds_the_gateway_where_meshserve_up_put_it(
    command: list[str], gateway_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `meshserve health` does: MESHSERVE_GATEWAY_PORT (or the port offset) moves the gateway,
    # so predict without --target must call it there, not at 50051.
    monkeypatch.setenv("MESHSERVE_GATEWAY_PORT", str(gateway_port))
    assert cli.main([*command, "--timeout", "2"]) == 0
    assert '"probability": 0.5' in capsys.readouterr().out


def test_the_port_offset_moves_predicts_default_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHSERVE_GATEWAY_PORT", raising=False)
    monkeypatch.delenv("MESHSERVE_GATEWAY_HOST", raising=False)
    monkeypatch.setenv(PORT_OFFSET_ENV, "100")
    assert cli.gateway_target(argparse.Namespace(target=None)) == "127.0.0.1:50151"
    assert cli.gateway_target(argparse.Namespace(target="10.0.0.7:443")) == "10.0.0.7:443"  # --target wins
    monkeypatch.setenv(PORT_OFFSET_ENV, "lots")
    with pytest.raises(SystemExit) as exc:
        cli.gateway_target(argparse.Namespace(target=None))
    assert exc.value.code == 2
