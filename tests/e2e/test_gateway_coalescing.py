"""Concurrent callers through the real stack get the answers sequential callers get.

The gateway coalesces concurrent requests into shared internal calls and cuts big
batches into chunks; neither may change a single probability or move a row error.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc

from tests.e2e.test_pipeline import entity_row

pytestmark = pytest.mark.e2e

DRIVERS = range(1001, 1011)
CUSTOMERS = range(2001, 2011)


def _answers(reply: prediction_pb2.PredictResponse) -> list[float | str]:
    return [p.probability if p.WhichOneof("result") == "probability" else p.error.status for p in reply.predictions]


def _call(stub: prediction_pb2_grpc.PredictionServiceStub, pairs: list[tuple[int, int]]) -> list[float | str] | str:
    req = prediction_pb2.PredictEntitiesRequest(entities=[entity_row(d, c) for d, c in pairs])
    try:
        return _answers(stub.PredictEntities(req, timeout=30))
    except grpc.RpcError as err:
        return err.code().name


def test_concurrent_callers_get_the_sequential_answers(gateway_channel: grpc.Channel) -> None:
    stub = prediction_pb2_grpc.PredictionServiceStub(gateway_channel)
    # Singles, small batches, a batch with an unknown entity (per-row NOT_FOUND), an
    # unknown single entity (NOT_FOUND status) and a batch big enough to be chunked.
    requests: list[list[tuple[int, int]]] = [[(d, c)] for d in DRIVERS for c in CUSTOMERS[:3]]
    requests += [[(d, 2001), (d, 2002), (d, 2003)] for d in DRIVERS]
    requests += [[(1001, 2001), (999999, 2001)], [(999999, 2002)]]
    requests += [[(DRIVERS[i % 10], CUSTOMERS[i % 7]) for i in range(600)]]
    requests = requests * 3

    sequential = [_call(stub, r) for r in requests]
    with ThreadPoolExecutor(max_workers=32) as pool:
        concurrent = list(pool.map(lambda r: _call(stub, r), requests))

    for req, seq, conc in zip(requests, sequential, concurrent, strict=True):
        if isinstance(seq, str):
            assert conc == seq, (req[:3], seq, conc)
            continue
        assert not isinstance(conc, str) and len(conc) == len(seq), (req[:3], conc)
        # Row errors stay on the same rows; probabilities agree to 1e-6 (float32 sums
        # may differ in the last bit with the batch a row was scored in).
        assert [x for x in conc if isinstance(x, str)] == [x for x in seq if isinstance(x, str)], (req[:3], seq, conc)
        for a, b in zip(conc, seq, strict=True):
            assert a == b if isinstance(b, str) else abs(a - b) <= 1e-6, (req[:3], seq, conc)
    assert "NOT_FOUND" in sequential[len(requests) // 3 - 3] and sequential[len(requests) // 3 - 2] == "NOT_FOUND"


def test_concurrent_callers_that_each_fit_the_message_limit_are_never_refused_together(gateway_channel: grpc.Channel) -> None:
    """A 9 MB caller fits the internal hop's 16 MB limit alone; two of them coalesced would not.
    Each must get its own answer (here: its string key refused by the features service), never
    a RESOURCE_EXHAUSTED for a group it did not choose (it did, before groups had a byte bound)."""
    stub = prediction_pb2_grpc.PredictionServiceStub(gateway_channel)

    def call(i: int) -> tuple[str, str]:
        req = prediction_pb2.PredictEntitiesRequest()
        row = req.entities.add()
        row.values["driver_id"].string_value = str(i) * 9_000_000
        row.values["customer_id"].int64_value = 2001
        try:
            stub.PredictEntities(req, timeout=60)
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
        return "OK", ""

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(call, range(1, 7)))
    for code, details in answers:
        assert code == "INVALID_ARGUMENT" and "driver_id" in details, answers
