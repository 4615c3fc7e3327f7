"""Structured logs: one JSON object per line on stderr (or plain text for a terminal).

Every line logged while a span is current carries `trace_id` and `span_id` (hex, as
tracing backends show them), so a log search by trace id finds the lines of all four
services for one request. Lines logged while a call's authenticated caller is known (set
in CALLER by the gateway's authentication) carry `caller`.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

#: Identity of the caller of the RPC being handled (None: unknown or auth off). Each RPC
#: runs in its own asyncio task, so a value set during one call stays with that call.
CALLER: ContextVar[str | None] = ContextVar("meshserve_caller", default=None)


class TraceContextFilter(logging.Filter):
    """Adds trace_id/span_id of the current span to each record (nothing outside a span),
    and the call's `caller` when it is known."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = trace.format_trace_id(ctx.trace_id)
            record.span_id = trace.format_span_id(ctx.span_id)
        caller = CALLER.get()
        if caller is not None:
            record.caller = caller
        return True


#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
#: Added by TraceContextFilter; _PlainFormatter.format places them itself.
_CONTEXT_ATTRS = frozenset({"trace_id", "span_id", "caller"})


class _PlainFormatter(logging.Formatter):
    """Text lines for a terminal: the message, its `extra=` fields as key=value, the trace id when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The `extra=` fields as key=value after the message: they carry what a line is
        # about (the listening address, an access-log line's method and code, a digest
        # mismatch's digests), so dropping them would leave bare words like "rpc".
        line = super().formatMessage(record)
        extras = [
            f"{k}={_plain_value(v)}" for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k not in _CONTEXT_ATTRS
        ]
        return f"{line} {' '.join(extras)}" if extras else line

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        caller = getattr(record, "caller", None)
        if caller:
            line = f"{line} caller={caller}"
        return f"{line} trace_id={trace_id}" if trace_id else line


def _plain_value(value: object) -> str:
    """A value of a key=value pair; a string is quoted when it holds a space (or is empty)."""
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        return repr(value)
    return str(value)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Route every logger to stderr in one format; call once at process start."""
    handler = logging.StreamHandler(sys.stderr)
    # On the handler, not a logger: it must see records propagated from every logger.
    handler.addFilter(TraceContextFilter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    if json_lines:
        # stderr is the service's log stream, one JSON object per line: MLflow's artifact
        # download progress bars (tqdm, on by default) would interleave lines no log
        # pipeline can parse. An explicit setting still wins.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Python warnings (numpy, libraries) as log records of "py.warnings", not raw stderr text.
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that drowns the service's own lines at INFO.
    for noisy in ("alembic", "mlflow", "urllib3", "feast", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
