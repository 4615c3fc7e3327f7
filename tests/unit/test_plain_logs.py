"""Plain-text logs (MESHSERVE_<SVC>_LOG_JSON=false) keep the fields a line carries in `extra=`."""

from __future__ import annotations

import logging
import sys

from meshserve_runtime.logging import _PlainFormatter


def _record(message: str, extra: dict[str, object], exc_info: object = None) -> logging.LogRecord:
    return logging.getLogger("meshserve.test").makeRecord(
        "meshserve.test", logging.INFO, __file__, 1, message, None, exc_info, extra=extra
    )


def test_extra_fields_are_written_as_key_value() -> None:
    # An access-log line: without its fields it would read only "rpc".
    record = _record("rpc", {"method": "/meshserve.v1.PredictionService/PredictEntities", "code": "OK", "duration_ms": 3.2})
    line = _PlainFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "INFO meshserve.test: rpc method=/meshserve.v1.PredictionService/PredictEntities code=OK duration_ms=3.2"


def test_strings_with_spaces_are_quoted_and_context_stays_last() -> None:
    record = _record("listening", {"address": "127.0.0.1:50051", "sampler": "ParentBased{ALWAYS_OFF} x", "tls": ""})
    record.trace_id = "ab" * 16
    record.caller = "checkout"
    line = _PlainFormatter("%(message)s").format(record)
    expected = "listening address=127.0.0.1:50051 sampler='ParentBased{ALWAYS_OFF} x' tls=''"
    assert line == f"{expected} caller=checkout trace_id={'ab' * 16}"


def test_extras_stay_on_the_message_line_before_a_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("reload failed", {"model": "driver_ranking", "version": "2"}, sys.exc_info())
    first, *rest = _PlainFormatter("%(message)s").format(record).splitlines()
    assert first == "reload failed model=driver_ranking version=2"
    assert rest[-1] == "ValueError: boom"


def test_a_line_without_extras_is_unchanged() -> None:
    assert _PlainFormatter("%(message)s").format(_record("ready now", {})) == "ready now"
