"""Where the Feast repo lives and which online store it uses, built without a feature_store.yaml.

The features service owns the online store, so these settings are read from its
variables (MESHSERVE_FEATURES_*) wherever they are used: training materializes into the
very store the service reads, and ONE setting (MESHSERVE_FEATURES_ONLINE_STORE=redis,
plus MESHSERVE_FEATURES_REDIS_URL) moves both to Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshserve_runtime.redact import redact_connection_string, redact_url
from meshserve_runtime.settings import meshserve_home

if TYPE_CHECKING:
    from feast import RepoConfig

OnlineStoreKind = Literal["sqlite", "redis"]

#: URL schemes of Feast's SQL registry (SQLAlchemy URLs, optionally with a driver: postgresql+psycopg://).
SQL_REGISTRY_SCHEMES = ("postgresql", "mysql", "sqlite")
#: URL schemes of Feast's file registry kept in object storage, and the module each needs.
OBJECT_REGISTRY_SCHEMES = {"s3": ("boto3", "feast[aws]"), "gs": ("google.cloud.storage", "feast[gcp]")}


def feast_home(home: Path | None = None) -> Path:
    """$MESHSERVE_HOME/feast: registry, SQLite online store and demo data on one machine."""
    return (Path(home) if home is not None else meshserve_home()).resolve() / "feast"


class FeastSettings(BaseSettings):
    """The Feast repo: registry, project, data and online store (env prefix MESHSERVE_FEATURES_)."""

    model_config = SettingsConfigDict(
        env_prefix="MESHSERVE_FEATURES_", use_attribute_docstrings=True, extra="ignore", frozen=True
    )

    feast_project: str = "meshserve"
    """Feast project name (namespaces tables and keys in the online store)."""
    feast_registry: str = Field(default_factory=lambda: str(feast_home() / "registry.db"))
    """Feast's registry: a file path (default $MESHSERVE_HOME/feast/registry.db), a SQL
    registry URL (postgresql+psycopg://user@host:5432/db; mysql://, sqlite:/// also work),
    or s3:// / gs:// (needs boto3 / google-cloud-storage, not in the default image)."""
    feast_data_dir: Path = Field(default_factory=lambda: feast_home() / "data")
    """Directory of the demo parquet files the feature views read (default $MESHSERVE_HOME/feast/data)."""
    online_store: OnlineStoreKind = "sqlite"
    """Feast online store: sqlite (one machine) or redis (production)."""
    sqlite_path: Path = Field(default_factory=lambda: feast_home() / "online.db")
    """SQLite online store file, when online_store=sqlite (default $MESHSERVE_HOME/feast/online.db)."""
    redis_url: str = "127.0.0.1:6379"
    """Redis online store, when online_store=redis: host:port[,db=N][,password=...][,ssl=true]
    (Feast's connection_string; db=N picks a database, e.g. db=15 for tests), or a URL
    redis://[user:password@]host:port[/N] (rediss:// for TLS), turned into that form."""

    @field_validator("redis_url")
    @classmethod
    def _redis_connection_string(cls, value: str) -> str:
        return redis_connection_string(value)

    @field_validator("feast_registry", mode="before")
    @classmethod
    def _registry(cls, value: object) -> str:
        text = str(value).strip()
        registry_kind(text)  # refuse what Feast could not open, here rather than at every load retry
        return text

    @property
    def registry_kind(self) -> RegistryKind:
        return registry_kind(self.feast_registry)

    def describe_registry(self) -> str:
        """The registry's location without credentials, for logs and metric labels."""
        return redact_url(self.feast_registry)

    @classmethod
    def for_home(cls, home: Path, **overrides: Any) -> FeastSettings:
        """The default layout under an explicit MESHSERVE_HOME (what a process with that env gets)."""
        fh = feast_home(home)
        paths = {"feast_registry": str(fh / "registry.db"), "feast_data_dir": fh / "data", "sqlite_path": fh / "online.db"}
        return cls(**{**paths, **overrides})

    def repo_config(self, *, registry_cache_ttl_s: int = 600) -> RepoConfig:
        return repo_config(
            self.feast_project,
            self.feast_registry,
            self.online_store,
            self.sqlite_path,
            self.redis_url,
            registry_cache_ttl_s=registry_cache_ttl_s,
        )

    def describe_online_store(self) -> str:
        """Human-readable location of the online store, for messages."""
        if self.online_store == "redis":
            return f"redis at {redact_connection_string(self.redis_url)}"
        return f"sqlite at {self.sqlite_path}"


RegistryKind = Literal["file", "sql", "object"]


def registry_kind(registry: str) -> RegistryKind:
    """How Feast reads this registry: a local file, a SQL database, or a file in object
    storage; ValueError (naming what to do) for anything else."""
    scheme, sep, _ = registry.partition("://")
    if not sep:
        if not registry:
            raise ValueError("the Feast registry is empty; give a file path or a registry URL")
        return "file"
    base = scheme.split("+", 1)[0].lower()
    if base in SQL_REGISTRY_SCHEMES:
        return "sql"
    if base in OBJECT_REGISTRY_SCHEMES:
        module, extra = OBJECT_REGISTRY_SCHEMES[base]
        import importlib.util

        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package (google.cloud) is missing
            found = False
        if not found:
            raise ValueError(
                f"a {base}:// Feast registry needs the {module} package, which this install lacks "
                f"(pip install '{extra}'); or use a SQL registry (postgresql+psycopg://user@host:5432/db)"
            )
        return "object"
    raise ValueError(
        f"unsupported Feast registry scheme {scheme!r}: use a file path, postgresql+psycopg://, mysql://, "
        "sqlite:///, s3:// or gs://"
    )


def repo_config(
    project: str,
    registry_path: Path | str,
    online_store: OnlineStoreKind,
    sqlite_path: Path | str,
    redis_url: str,
    *,
    registry_cache_ttl_s: int = 600,
) -> RepoConfig:
    """A feast.RepoConfig for the local provider, file offline store and the chosen online store.

    registry_cache_ttl_s=0 caches the registry forever (a server loads it once and never
    refreshes it on the request path).
    """
    from feast import RepoConfig
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig

    online: RedisOnlineStoreConfig | SqliteOnlineStoreConfig
    if online_store == "redis":
        online = RedisOnlineStoreConfig(connection_string=_with_timeouts(redis_url))
    elif online_store == "sqlite":
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        online = SqliteOnlineStoreConfig(path=str(Path(sqlite_path).resolve()))
    else:
        raise ValueError(f"online_store must be 'sqlite' or 'redis', got {online_store!r}")
    kind = registry_kind(str(registry_path))
    registry: RegistryConfig
    if kind == "sql":
        from feast.infra.registry.sql import SqlRegistryConfig

        # pool_pre_ping: a pooled connection the database dropped is replaced, not an error.
        registry = SqlRegistryConfig(registry_type="sql", path=str(registry_path), cache_ttl_seconds=registry_cache_ttl_s,
                                     sqlalchemy_config_kwargs={"echo": False, "pool_pre_ping": True})
    elif kind == "object":
        registry = RegistryConfig(registry_type="file", path=str(registry_path), cache_ttl_seconds=registry_cache_ttl_s)
    else:
        Path(registry_path).parent.mkdir(parents=True, exist_ok=True)
        registry = RegistryConfig(registry_type="file", path=str(Path(registry_path).resolve()),
                                  cache_ttl_seconds=registry_cache_ttl_s)
    return RepoConfig(
        project=project,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store=DaskOfflineStoreConfig(type="file"),
        entity_key_serialization_version=3,
    )


def redis_connection_string(value: str) -> str:
    """Feast's connection string from either form redis_url accepts; ValueError says what is wrong.

    Why at settings time: Feast parses the string only when it first connects, and a
    URL there fails as `invalid literal for int()` on every retry of the service's load.
    """
    value = value.strip()
    if value.startswith(("redis://", "rediss://")):
        url = urlsplit(value)
        if url.query or url.fragment:
            raise ValueError("query parameters are not supported in a redis:// URL; use host:port,db=N,ssl=true,... instead")
        try:
            port = url.port or 6379
        except ValueError:
            raise ValueError("the port of a redis:// URL must be a number from 1 to 65535") from None
        if not url.hostname:
            raise ValueError("a redis:// URL needs a host, e.g. redis://redis-master:6379/0")
        parts = [f"{url.hostname}:{port}"]
        db = url.path.strip("/")
        if db:
            if not db.isdigit():
                raise ValueError(f"the database in a redis:// URL is a number (redis://host:6379/0), got {db!r}")
            parts.append(f"db={int(db)}")
        if url.username:
            parts.append(f"username={unquote(url.username)}")
        if url.password:
            parts.append(f"password={unquote(url.password)}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        if any("," in p for p in parts[1:]):
            raise ValueError("a user name or password containing ',' cannot be passed to Feast's Redis store")
        return ",".join(parts)
    nodes = [p for p in value.split(",") if "=" not in p]
    if not nodes:
        raise ValueError("expected host:port[,db=N][,password=...][,ssl=true] or redis://host:port/N")
    for node in nodes:
        host, sep, port_text = node.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"{node!r} is not host:port; expected host:port[,db=N][,password=...][,ssl=true] "
                "or redis://host:port/N"
            )
    return value


def _with_timeouts(connection_string: str) -> str:
    """Add short socket timeouts unless given: an unreachable Redis must fail fast, not hang a call."""
    parts = connection_string.split(",")
    keys = {p.split("=", 1)[0] for p in parts if "=" in p}
    if "socket_connect_timeout" not in keys:
        parts.append("socket_connect_timeout=2")
    if "socket_timeout" not in keys:
        parts.append("socket_timeout=5")
    return ",".join(parts)
