"""Checks run before training: every place it writes, and every online store it fills.

Why: training takes a minute and registers a new pair before it materializes; an online
store that is down, or a MESHSERVE_HOME that is a file, must stop it at the start with
one line naming the variable to fix, not as a traceback after the work is done.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from meshserve_feature_repo.config import FeastSettings
from meshserve_runtime.redact import redact_connection_string
from meshserve_runtime.settings import setting_name
from meshserve_training.settings import TrainingSettings

HOME_ENV = "MESHSERVE_HOME"
#: How the main online store's Redis is chosen (the features service's variable, or the CLI flag).
REDIS_URL_SETTING = f"{setting_name(FeastSettings, 'redis_url')} (--redis-url)"


class PreflightError(RuntimeError):
    """Training cannot work as configured; the message is one line naming what to change."""


def writable_dir_problem(path: Path) -> str | None:
    """None when `path` is (or can be created as) a directory we can create files in; else why not."""
    if path.exists() and not path.is_dir():
        return "not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
        # os.access is no proof (root passes it on a read-only mount): really create a file.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return (err.strerror or str(err)).lower()
    return None


def _sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// MLflow URI (None for a server or another database)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _local_dirs(settings: TrainingSettings, stores: Sequence[FeastSettings]) -> list[tuple[Path, str]]:
    """(directory, its setting's variable) for everything training writes on this machine."""
    dirs: list[tuple[Path, str]] = []
    db = _sqlite_path(settings.mlflow_tracking_uri)
    if db is not None:
        dirs.append((db.parent, setting_name(settings, "mlflow_tracking_uri")))
    artifacts = settings.experiment_artifact_root()
    if artifacts is not None:  # None: the MLflow server stores them
        dirs.append((Path(artifacts), setting_name(settings, "artifact_root")))
    feast = stores[0]
    dirs.append((Path(feast.feast_data_dir), setting_name(feast, "feast_data_dir")))
    if feast.registry_kind == "file":
        dirs.append((Path(feast.feast_registry).parent, setting_name(feast, "feast_registry")))
    for store in stores:
        if store.online_store == "sqlite":
            dirs.append((Path(store.sqlite_path).parent, setting_name(store, "sqlite_path")))
    return dirs


def check_local_dirs(settings: TrainingSettings, stores: Sequence[FeastSettings]) -> None:
    """PreflightError unless every local directory training writes is a writable directory."""
    seen: set[Path] = set()
    for path, variable in _local_dirs(settings, stores):
        path = path.resolve()
        if path in seen:
            continue
        seen.add(path)
        problem = writable_dir_problem(path)
        if problem is None:
            continue
        # These paths default to $MESHSERVE_HOME/...: name that variable unless the user set this one.
        if variable in os.environ:
            raise PreflightError(f"{variable}: {path} is not a writable directory ({problem}); set {variable} to one")
        home = os.environ.get(HOME_ENV, ".meshserve")
        raise PreflightError(f"{HOME_ENV}={home}: {path} is not a writable directory ({problem}); set {HOME_ENV} to a writable directory")


def redis_problem(store: FeastSettings) -> str | None:
    """None when the store's Redis answers PING (with the connection Feast would open); else why not."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from meshserve_feature_repo.config import _with_timeouts

    # Feast's own parser: the check connects exactly as materialize will (db, password, ssl).
    nodes, kwargs = RedisOnlineStore._parse_connection_string(_with_timeouts(store.redis_url))
    # One retry, no backoff: redis-py's default backoff makes a refused connection take ~10 s.
    kwargs["retry"] = Retry(NoBackoff(), 1)
    client = Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kwargs)
    try:
        client.ping()
    except Exception as err:  # refused, timeout, auth, TLS: all mean materialize would fail
        return str(err) or type(err).__name__
    finally:
        client.close()
    return None


def check_online_stores(feast: FeastSettings, extra_stores: Sequence[FeastSettings] = ()) -> None:
    """PreflightError unless every Redis online store answers (SQLite ones are local files)."""
    for store, variable in ((feast, REDIS_URL_SETTING), *((s, "--materialize-redis") for s in extra_stores)):
        if store.online_store != "redis":
            continue
        problem = redis_problem(store)
        if problem is not None:
            raise PreflightError(
                f"the Redis online store at {redact_connection_string(store.redis_url)} does not answer ({problem}); "
                f"start Redis there or set {variable} to a reachable one"
            )


def preflight(settings: TrainingSettings, feast: FeastSettings, extra_stores: Sequence[FeastSettings] = ()) -> None:
    """Everything training needs that can be checked in a second, before any work (PreflightError)."""
    check_local_dirs(settings, [feast, *extra_stores])
    check_online_stores(feast, extra_stores)
