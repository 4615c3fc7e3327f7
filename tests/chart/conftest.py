"""Fixtures of tests/chart; the helpers live in chart_helpers.py (a unique module name, so
they never clash with another directory's conftest)."""

from chart_helpers import case, docs, strict_schema, values  # noqa: F401  (pytest fixtures)
