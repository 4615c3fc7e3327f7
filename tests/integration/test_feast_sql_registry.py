"""Feast's SQL registry on the real PostgreSQL: what a Kubernetes install points
features.feast.registry at (postgresql+psycopg://...), applied and then served from."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from meshserve_feature_repo.config import FeastSettings
from meshserve_features.store import OnlineFeatureStore

PG_HOST, PG_PORT = os.environ.get("MESHSERVE_TEST_PG_HOST", "127.0.0.1"), int(os.environ.get("MESHSERVE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MESHSERVE_TEST_PG_USER", "postgres")


def _postgres_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A database of its own on the test PostgreSQL (dropped afterwards): its SQLAlchemy URL."""
    if not _postgres_answers():
        pytest.skip(f"PostgreSQL is not answering at {PG_HOST}:{PG_PORT}; start it to test Feast's SQL registry")
    import psycopg

    name = f"meshserve_test_{uuid.uuid4().hex[:10]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_features_are_served_from_a_sql_registry_on_postgres(pg_database: str, tmp_path) -> None:  # noqa: ANN001
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Int64

    now = datetime.now(UTC)
    (tmp_path / "data").mkdir()
    pd.DataFrame({
        "driver_id": [1, 2], "score": pd.Series([0.5, 0.75], dtype="float32"),
        "event_timestamp": [now - timedelta(hours=1)] * 2, "created": [now] * 2,
    }).to_parquet(tmp_path / "data" / "drivers.parquet")
    settings = FeastSettings(feast_registry=pg_database, feast_project="meshserve_sql", online_store="sqlite",
                             feast_data_dir=tmp_path / "data", sqlite_path=tmp_path / "online.db")
    assert settings.registry_kind == "sql"
    entity = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    source = FileSource(name="drivers", path=str(tmp_path / "data" / "drivers.parquet"),
                        timestamp_field="event_timestamp", created_timestamp_column="created")
    view = FeatureView(name="driver_scores", entities=[entity], ttl=timedelta(days=1), online=True, source=source,
                       schema=[Field(name="driver_id", dtype=Int64), Field(name="score", dtype=Float32)])
    fs = FeatureStore(config=settings.repo_config())
    fs.apply([entity, source, view, FeatureService(name="scores", features=[view])])
    fs.materialize(now - timedelta(days=1), now)

    # What the features service does at start-up, from the registry in PostgreSQL.
    for read_path in ("direct", "feast"):
        store = OnlineFeatureStore(FeastSettings(feast_registry=pg_database, feast_project="meshserve_sql",
                                                 online_store="sqlite", sqlite_path=tmp_path / "online.db"),
                                   read_path=read_path)
        store.load("scores")
        batch = store.read(store.service("scores"), {"driver_id": [1, 2, 3]})
        np.testing.assert_array_equal(batch.values, [[0.5, 0.75, np.nan]])
        assert batch.status == [[1, 1, 2]]  # PRESENT, PRESENT, NOT_FOUND

    missing = OnlineFeatureStore(FeastSettings(feast_registry=pg_database, feast_project="meshserve_sql",
                                               online_store="sqlite", sqlite_path=tmp_path / "online.db"))
    with pytest.raises(LookupError, match="not in the registry postgresql"):
        missing.load("driver_ranking_v1")
