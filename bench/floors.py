"""Floors measured in the orchestrator process: the raw Redis read Feast makes, and `feast listen`.

Redis floor: the very commands Feast's Redis store sends for our FeatureService, built with
Feast's own key and field helpers (one HMGET per (entity, feature view), deduplicated
entities, all in one non-transactional pipeline), sent with redis-py and not decoded.
That is the network + Redis part of a read; everything above it is Feast/meshserve work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bench.requests import PAIRS
from meshserve_feature_repo.config import FeastSettings
from meshserve_feature_repo.definitions import FEATURE_SERVICE
from meshserve_runtime.grpc_env import with_grpc_defaults

if TYPE_CHECKING:
    import redis


def feast_store(home: Path, redis_url: str) -> Any:
    from feast import FeatureStore

    settings = FeastSettings.for_home(home, online_store="redis", redis_url=redis_url)
    return FeatureStore(config=settings.repo_config(registry_cache_ttl_s=0))


def redis_commands(store: Any, rows: int) -> list[tuple[bytes, list[Any]]]:
    """(redis key, HMGET fields) pairs Feast sends to read `rows` of our entity pairs."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    online = store._get_provider().online_store
    config = store.config
    fs = store.get_feature_service(FEATURE_SERVICE)
    pairs = PAIRS[:rows]
    commands: list[tuple[bytes, list[Any]]] = []
    for proj in fs.feature_view_projections:
        fv = store.get_feature_view(proj.name)
        join_key = fv.entity_columns[0].name
        ids = sorted({d if join_key == "driver_id" else c for d, c in pairs})
        protos = [EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=i)]) for i in ids]
        _, fields = online._generate_hset_keys_for_features(fv, [f.name for f in proj.features])
        keys = online._generate_redis_keys_for_entities(config, protos)
        commands += [(k, fields) for k in keys]
    return commands


def _redis_client(redis_url: str) -> redis.Redis:
    """A redis-py client for a Feast-style `host:port,db=N` URL."""
    import redis

    host_port, *opts = redis_url.split(",")
    host, port = host_port.split(":")
    db = int(dict(o.split("=", 1) for o in opts).get("db", 0))
    return redis.Redis(host=host, port=int(port), db=db)


def redis_pid(redis_url: str) -> int | None:
    """The Redis server's process id (INFO server), when it runs on this machine; else None."""
    try:
        # The sync client's reply (redis-py types it as sync-or-async).
        info = cast(dict[str, Any], _redis_client(redis_url).info("server"))
    except Exception:  # noqa: BLE001 -- only a label for the CPU split: none is fine
        return None
    pid = info.get("process_id")
    return int(pid) if pid and Path(f"/proc/{pid}").exists() else None


def redis_floor(store: Any, redis_url: str, rows: int, seconds: float) -> dict[str, float]:
    client = _redis_client(redis_url)
    commands = redis_commands(store, rows)
    times = []
    replies: list[Any] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            for key, fields in commands:
                pipe.hmget(key, fields)  # type: ignore[arg-type]  # Feast's keys are bytes; redis-py's hints say str
            replies = pipe.execute()
        times.append(time.perf_counter() - t0)
    assert all(v is not None for r in replies for v in r), "Redis floor read keys Feast has not written"
    client.close()
    return {"rows": rows, "keys": len(commands), "p50_ms": float(np.median(times) * 1e3),
            "p99_ms": float(np.percentile(times, 99) * 1e3), "requests": len(times)}


def inprocess_feast(store: Any, rows: int, seconds: float) -> dict[str, float]:
    """Feast's own get_online_features in this process (what the features service wraps)."""
    fs = store.get_feature_service(FEATURE_SERVICE)
    pairs = PAIRS[:rows]
    entity_rows = {"driver_id": [d for d, _ in pairs], "customer_id": [c for _, c in pairs]}
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        store.get_online_features(features=fs, entity_rows=entity_rows)
        times.append(time.perf_counter() - t0)
    return {"rows": rows, "p50_ms": float(np.median(times) * 1e3), "requests": len(times)}


FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry:
  registry_type: file
  path: {registry}
  cache_ttl_seconds: 0
online_store:
  type: redis
  connection_string: "{redis_url}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def start_feast_listen(home: Path, redis_url: str, port: int, log: Path) -> subprocess.Popen:
    """`feast listen` on the same registry and Redis, from a generated feature_store.yaml."""
    settings = FeastSettings.for_home(home, online_store="redis", redis_url=redis_url)
    repo = home.parent / "feast_listen"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML.format(
        project=settings.feast_project, registry=Path(settings.feast_registry).resolve(), redis_url=redis_url))
    feast = str(Path(sys.executable).parent / "feast")
    with open(log, "ab") as out:
        return subprocess.Popen(
            # registry TTL of an hour: no refresh during the run (fair to Feast: no reload cost)
            [feast, "-c", str(repo), "listen", "-a", f"127.0.0.1:{port}", "-w", "8", "-r", "3600"],
            # The same gRPC core switches as every server of the run (meshserve_runtime.grpc_env).
            stdout=out, stderr=subprocess.STDOUT, env=with_grpc_defaults(os.environ), start_new_session=True,
        )


def inprocess_meshserve(home: Path, redis_url: str, rows: int, seconds: float, read_path: str) -> dict[str, float]:
    """The features service's own store wrapper in this process, by read path (direct vs feast)."""
    from meshserve_features.store import OnlineFeatureStore

    store = OnlineFeatureStore(FeastSettings.for_home(home, online_store="redis", redis_url=redis_url), read_path=read_path)
    store.load(FEATURE_SERVICE)
    spec = store.service(FEATURE_SERVICE)
    pairs = PAIRS[:rows]
    keys = {"driver_id": [d for d, _ in pairs], "customer_id": [c for _, c in pairs]}  # as the servicer passes them
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        store.read(spec, keys)
        times.append(time.perf_counter() - t0)
    return {"rows": rows, "p50_ms": float(np.median(times) * 1e3), "requests": len(times)}
