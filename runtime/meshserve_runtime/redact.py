"""Credentials out of what is logged, labelled or sent back to a caller.

Operators put passwords where the tools expect them: in a URL's user info
(postgresql+psycopg://feast:PASSWORD@host/db, http://user:PASSWORD@mlflow) or in Feast's
Redis connection string (host:port,password=PASSWORD). Every place that shows such a
value to a person (a log line, a metric label, an error message) shows it through here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "***"


def redact_url(value: str) -> str:
    """A URL with its password (and any query string, which may carry one) replaced by ***;
    anything that is not a URL, unchanged."""
    if "://" not in value:
        return value
    try:
        url = urlsplit(value)
        password = url.password
    except ValueError:  # not parseable as a URL: show nothing of it past the scheme
        return value.split("://", 1)[0] + "://" + MASK
    if password is None and not url.query:
        return value
    netloc = url.netloc
    if password is not None:
        netloc = netloc.replace(":" + password + "@", ":" + MASK + "@", 1)
    return url._replace(netloc=netloc, query=MASK if url.query else "").geturl()


def redact_connection_string(value: str) -> str:
    """Feast's Redis connection string (host:port[,key=value...]) with password= masked;
    a redis:// URL is handled as a URL."""
    if "://" in value:
        return redact_url(value)
    parts = value.split(",")
    return ",".join(f"{p.split('=', 1)[0]}={MASK}" if p.strip().lower().startswith("password=") else p for p in parts)
