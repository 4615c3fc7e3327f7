"""Tracing API for the services' in-process stages.

`span()` uses the OpenTelemetry API only; it is a no-op until the SDK is configured at
start-up, so code can mark its stages unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

_tracer = trace.get_tracer("meshserve")


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A child span of the current one, e.g. `with span("forward", batch_size=n): ...`."""
    with _tracer.start_as_current_span(name, attributes={f"meshserve.{k}": v for k, v in attributes.items()}) as s:
        yield s
