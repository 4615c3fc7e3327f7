"""Settings are checked when a process starts: a wrong value exits 2 with one line naming the
variable (no traceback, no secret echoed), and the Redis address takes both the form Feast
reads and the redis:// URL operators have at hand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import Field

from meshserve_feature_repo.config import FeastSettings, redis_connection_string
from meshserve_runtime.settings import ServerSettings, load_settings


class _Settings(ServerSettings):
    model_config = {**ServerSettings.model_config, "env_prefix": "MESHSERVE_TESTSVC_"}
    workers: int = Field(default=1, ge=1)
    api_token: str = ""


def test_load_settings_names_each_bad_variable_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MESHSERVE_TESTSVC_WORKERS", "0")
    monkeypatch.setenv("MESHSERVE_TESTSVC_PORT", "http")
    with pytest.raises(SystemExit) as exit_:
        load_settings(_Settings)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "MESHSERVE_TESTSVC_WORKERS='0': Input should be greater than or equal to 1" in err
    assert "MESHSERVE_TESTSVC_PORT='http': Input should be a valid integer" in err


def test_load_settings_never_echoes_a_secret_value(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MESHSERVE_FEATURES_REDIS_URL", "redis://:hunter2@redis:notaport/0")
    with pytest.raises(SystemExit):
        load_settings(FeastSettings)
    err = capsys.readouterr().err
    assert "MESHSERVE_FEATURES_REDIS_URL: Value error, the port of a redis:// URL must be a number" in err
    assert "hunter2" not in err


def test_load_settings_returns_good_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHSERVE_TESTSVC_WORKERS", "3")
    assert load_settings(_Settings).workers == 3


def test_a_service_with_a_bad_setting_exits_2_without_a_traceback() -> None:
    env = {**os.environ, "MESHSERVE_MODEL_MAX_BATCH_SIZE": "lots"}
    proc = subprocess.run([sys.executable, "-m", "meshserve_model"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "MESHSERVE_MODEL_MAX_BATCH_SIZE='lots'" in proc.stderr


@pytest.mark.parametrize(("given", "feast"), [
    ("127.0.0.1:6379", "127.0.0.1:6379"),
    ("redis-master:6379,db=3,ssl=true", "redis-master:6379,db=3,ssl=true"),
    ("redis://redis-master", "redis-master:6379"),
    ("redis://redis-master:6380/3", "redis-master:6380,db=3"),
    ("redis://:p%40ss@redis-master:6379/0", "redis-master:6379,db=0,password=p@ss"),
    ("rediss://app:pw@redis-master:6380", "redis-master:6380,username=app,password=pw,ssl=true"),
])
def test_redis_address_forms(given: str, feast: str) -> None:
    assert redis_connection_string(given) == feast
    assert FeastSettings(redis_url=given).redis_url == feast


@pytest.mark.parametrize(("given", "says"), [
    ("redis-master", "'redis-master' is not host:port"),
    ("redis-master:port,db=1", "'redis-master:port' is not host:port"),
    ("db=1", "expected host:port"),
    ("redis://redis-master:6379/zero", "the database in a redis:// URL is a number"),
    ("redis://redis-master:6379/0?ssl=true", "query parameters are not supported"),
    ("redis://:6379", "needs a host"),
])
def test_redis_address_mistakes_are_refused_with_the_form_expected(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        redis_connection_string(given)


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("/var/lib/feast/registry.db", "file"),
        ("postgresql+psycopg://feast@postgres:5432/feast", "sql"),
        ("postgresql://feast@postgres/feast", "sql"),
        ("mysql+pymysql://feast@mysql/feast", "sql"),
        ("sqlite:////var/lib/feast/registry.sqlite", "sql"),
    ],
)
def test_feast_registry_forms(given: str, kind: str) -> None:
    settings = FeastSettings(feast_registry=given)
    assert settings.registry_kind == kind
    assert settings.feast_registry == given  # passed to Feast as given (a Path would turn s3:// into s3:/)
    if kind == "sql":  # (a file path's config would create its directory)
        assert settings.repo_config().registry.registry_type == "sql"


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ftp://host/registry.db", "unsupported Feast registry scheme 'ftp'"),
        ("", "the Feast registry is empty"),
    ],
)
def test_feast_registry_mistakes_are_refused_with_the_forms_expected(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        FeastSettings(feast_registry=given)


def test_an_object_store_registry_without_its_client_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the boto3 package.*feast\[aws\]"):
        FeastSettings(feast_registry="s3://bucket/registry.db")


def test_a_registry_password_never_reaches_logs_or_labels() -> None:
    settings = FeastSettings(feast_registry="postgresql+psycopg://feast:s3cret@postgres:5432/feast?sslmode=require")
    assert "s3cret" not in settings.describe_registry()
    assert settings.describe_registry().startswith("postgresql+psycopg://feast:***@postgres:5432/feast")
    assert FeastSettings(feast_registry="sqlite:////x/r.db").describe_registry() == "sqlite:////x/r.db"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("redis-master:6379,password=TopSecretPw", "redis at redis-master:6379,password=***"),
        ("redis://:TopSecretPw@redis-master:6379/2", "redis at redis-master:6379,db=2,password=***"),
        ("rediss://app:TopSecretPw@redis-master:6380/0", "redis at redis-master:6380,db=0,username=app,password=***,ssl=true"),
        ("redis-master:6379,db=3", "redis at redis-master:6379,db=3"),
    ],
)
def test_the_online_store_is_described_without_its_password(given: str, shown: str) -> None:
    """describe_online_store() goes into log lines, readiness reasons and UNAVAILABLE messages."""
    assert FeastSettings(online_store="redis", redis_url=given).describe_online_store() == shown


def test_urls_lose_their_passwords_and_keep_the_rest() -> None:
    from meshserve_runtime.redact import redact_connection_string, redact_url

    assert redact_url("http://mluser:MlflowPw@mlflow:5000") == "http://mluser:***@mlflow:5000"
    assert redact_url("https://mlflow.example.com/api?token=abc") == "https://mlflow.example.com/api?***"
    assert redact_url("http://mlflow:5000") == "http://mlflow:5000"
    assert redact_url("sqlite:////home/x/mlflow.db") == "sqlite:////home/x/mlflow.db"
    assert redact_url("http://[::1") == "http://***"  # unparseable: nothing past the scheme
    assert redact_connection_string("h:1,PASSWORD=x,db=2") == "h:1,PASSWORD=***,db=2"
