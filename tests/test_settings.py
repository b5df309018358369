"""Settings from the environment: the typed helpers, and the settings module in fresh processes."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common import envhelpers
from common.envhelpers import ConfigError, envbool, envfloat, envint, envlist, envstr, flotilla_home

ROOT = Path(__file__).resolve().parent.parent

PRINT_SETTINGS = """
import json
import django
django.setup()
from django.conf import settings
from django.db import connection
db = settings.DATABASES["default"]
out = {
    "engine": db["ENGINE"],
    "name": str(db["NAME"]),
    "host": db.get("HOST"),
    "options": db.get("OPTIONS", {}),
    "debug": settings.DEBUG,
    "secret_key": settings.SECRET_KEY,
    "broker": settings.CELERY_BROKER_URL,
    "allowed_hosts": settings.ALLOWED_HOSTS,
}
if db["ENGINE"].endswith("sqlite3"):
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        out["journal_mode"] = cursor.fetchone()[0]
print(json.dumps(out))
"""


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A production-like environment: nothing from this test run leaks in."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "FLOTILLA_HOME": str(tmp_path / "flotilla"),
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    }
    env.update(extra)
    return env


def run_python(tmp_path: Path, code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings_in_process(tmp_path: Path, **extra: str) -> dict:
    result = run_python(tmp_path, PRINT_SETTINGS, **extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_deploy(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = clean_env(
        tmp_path,
        SECRET_KEY=secrets.token_urlsafe(45),
        ALLOWED_HOSTS="flotilla.example.com",
        **extra,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def env(monkeypatch):
    for name in ("FLOTILLA_X", "FLOTILLA_X_FILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- envstr -----------------------------------------------------------------------


def test_envstr_reads_the_variable(env):
    env.setenv("FLOTILLA_X", "value")
    assert envstr("FLOTILLA_X") == "value"


def test_envstr_falls_back_to_the_default_when_unset_or_empty(env):
    assert envstr("FLOTILLA_X") is None
    assert envstr("FLOTILLA_X", "fallback") == "fallback"
    env.setenv("FLOTILLA_X", "")
    assert envstr("FLOTILLA_X", "fallback") == "fallback"


def test_envstr_reads_a_secret_from_the_file_variant(env, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-file\n")
    env.setenv("FLOTILLA_X_FILE", str(secret))
    assert envstr("FLOTILLA_X") == "s3cret-from-file"


def test_envstr_prefers_the_file_variant_over_the_variable(env, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    env.setenv("FLOTILLA_X", "from-env")
    env.setenv("FLOTILLA_X_FILE", str(secret))
    assert envstr("FLOTILLA_X") == "from-file"


def test_envstr_names_the_file_variable_when_the_file_cannot_be_read(env, tmp_path):
    env.setenv("FLOTILLA_X_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as excinfo:
        envstr("FLOTILLA_X")
    assert str(excinfo.value).startswith("FLOTILLA_X_FILE=")
    assert "missing" in str(excinfo.value)
    assert "cannot be read" in str(excinfo.value)


def test_a_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- envbool ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "True", "YES", "on", " true "])
def test_envbool_reads_true(env, value):
    env.setenv("FLOTILLA_X", value)
    assert envbool("FLOTILLA_X") is True


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off"])
def test_envbool_reads_false(env, value):
    env.setenv("FLOTILLA_X", value)
    assert envbool("FLOTILLA_X", default=True) is False


def test_envbool_uses_the_default_when_unset(env):
    assert envbool("FLOTILLA_X") is False
    assert envbool("FLOTILLA_X", default=True) is True


def test_envbool_names_the_variable_when_it_is_not_a_boolean(env):
    env.setenv("FLOTILLA_X", "maybe")
    with pytest.raises(ConfigError) as excinfo:
        envbool("FLOTILLA_X")
    assert str(excinfo.value) == "FLOTILLA_X='maybe' is not a boolean; use true or false"


def test_envbool_reads_the_file_variant(env, tmp_path):
    flag = tmp_path / "flag"
    flag.write_text("true\n")
    env.setenv("FLOTILLA_X_FILE", str(flag))
    assert envbool("FLOTILLA_X") is True


# --- envint and envfloat ------------------------------------------------------------


def test_envint_reads_an_integer(env):
    env.setenv("FLOTILLA_X", "42")
    assert envint("FLOTILLA_X", 7) == 42


def test_envint_uses_the_default_when_unset(env):
    assert envint("FLOTILLA_X", 7) == 7


def test_envint_reads_the_file_variant(env, tmp_path):
    number = tmp_path / "number"
    number.write_text("9\n")
    env.setenv("FLOTILLA_X_FILE", str(number))
    assert envint("FLOTILLA_X", 7) == 9


@pytest.mark.parametrize("value", ["forty", "4.5", "1e3"])
def test_envint_names_the_variable_when_it_is_not_an_integer(env, value):
    env.setenv("FLOTILLA_X", value)
    with pytest.raises(ConfigError) as excinfo:
        envint("FLOTILLA_X", 7)
    assert str(excinfo.value) == f"FLOTILLA_X={value!r} is not an integer"


def test_envint_names_the_variable_and_the_minimum(env):
    env.setenv("FLOTILLA_X", "5")
    with pytest.raises(ConfigError) as excinfo:
        envint("FLOTILLA_X", 100, minimum=10)
    assert str(excinfo.value) == "FLOTILLA_X=5 is below the minimum of 10"
    env.setenv("FLOTILLA_X", "10")
    assert envint("FLOTILLA_X", 100, minimum=10) == 10


def test_envfloat_reads_a_number(env):
    env.setenv("FLOTILLA_X", "2.5")
    assert envfloat("FLOTILLA_X", 1.0) == 2.5
    env.delenv("FLOTILLA_X")
    assert envfloat("FLOTILLA_X", 1.0) == 1.0


def test_envfloat_names_the_variable_when_it_is_wrong(env):
    env.setenv("FLOTILLA_X", "soon")
    with pytest.raises(ConfigError, match=r"^FLOTILLA_X='soon' is not a number$"):
        envfloat("FLOTILLA_X", 1.0)
    env.setenv("FLOTILLA_X", "0.5")
    with pytest.raises(ConfigError, match=r"^FLOTILLA_X=0.5 is below the minimum of 1"):
        envfloat("FLOTILLA_X", 40.0, minimum=1.0)


# --- envlist and FLOTILLA_HOME ------------------------------------------------------


def test_envlist_splits_on_commas_and_drops_blanks(env):
    env.setenv("FLOTILLA_X", " a.example.com, b.example.com ,,c ")
    assert envlist("FLOTILLA_X") == ["a.example.com", "b.example.com", "c"]


def test_envlist_returns_a_copy_of_the_default(env):
    default = ["localhost"]
    hosts = envlist("FLOTILLA_X", default)
    hosts.append("evil.example.com")
    assert default == ["localhost"]
    assert envlist("FLOTILLA_X") == []


def test_flotilla_home_defaults_to_a_dot_directory_in_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOTILLA_HOME", raising=False)
    monkeypatch.delenv("FLOTILLA_HOME_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert flotilla_home() == tmp_path / ".flotilla"


def test_flotilla_home_expands_a_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FLOTILLA_HOME", "~/fleet")
    assert envhelpers.flotilla_home() == tmp_path / "fleet"


# --- the settings module in a fresh process -----------------------------------------


def test_manage_py_check_deploy_passes_with_production_settings(tmp_path):
    result = check_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_manage_py_check_deploy_fails_when_debug_is_on(tmp_path):
    result = check_deploy(tmp_path, DEBUG="true")
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr


def test_the_default_database_is_sqlite_in_wal_mode_under_flotilla_home(tmp_path):
    found = settings_in_process(tmp_path)
    assert found["engine"] == "django.db.backends.sqlite3"
    assert found["name"] == str(tmp_path / "flotilla" / "flotilla.sqlite3")
    assert "journal_mode=WAL" in found["options"]["init_command"]
    assert found["journal_mode"] == "wal"
    assert (tmp_path / "flotilla" / "flotilla.sqlite3").exists()


def test_a_sqlite_database_url_also_gets_wal_mode(tmp_path):
    path = tmp_path / "elsewhere.sqlite3"
    found = settings_in_process(tmp_path, DATABASE_URL=f"sqlite:///{path}")
    assert found["name"] == str(path)
    assert found["journal_mode"] == "wal"


def test_a_postgresql_database_url_selects_postgresql(tmp_path):
    found = settings_in_process(
        tmp_path, DATABASE_URL="postgresql://flotilla:pw@db.example.com:5432/flotilla"
    )
    assert found["engine"] == "django.db.backends.postgresql"
    assert (found["host"], found["name"]) == ("db.example.com", "flotilla")
    assert "init_command" not in found["options"]


def test_an_unknown_database_url_names_the_variable(tmp_path):
    result = run_python(tmp_path, PRINT_SETTINGS, DATABASE_URL="nosuchdb://x/y")
    assert result.returncode != 0
    assert "ConfigError: DATABASE_URL is not a database URL Flotilla knows" in result.stderr


def test_a_malformed_setting_names_its_variable_at_start_up(tmp_path):
    result = run_python(tmp_path, PRINT_SETTINGS, FLOTILLA_NODE_TIMEOUT="forty")
    assert result.returncode != 0
    assert "ConfigError: FLOTILLA_NODE_TIMEOUT='forty' is not a number" in result.stderr


def test_debug_is_off_unless_asked(tmp_path):
    assert settings_in_process(tmp_path)["debug"] is False
    assert settings_in_process(tmp_path, DEBUG="true")["debug"] is True


def test_allowed_hosts_come_from_the_environment(tmp_path):
    assert settings_in_process(tmp_path)["allowed_hosts"] == ["127.0.0.1", "localhost", "[::1]"]
    found = settings_in_process(tmp_path, ALLOWED_HOSTS="flotilla.example.com,api.example.com")
    assert found["allowed_hosts"] == ["flotilla.example.com", "api.example.com"]


def test_the_secret_key_comes_from_secret_key_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k" * 60 + "\n")
    assert settings_in_process(tmp_path, SECRET_KEY_FILE=str(key_file))["secret_key"] == "k" * 60


def test_without_a_secret_key_one_is_generated_once_and_kept_private(tmp_path):
    first = settings_in_process(tmp_path)["secret_key"]
    second = settings_in_process(tmp_path)["secret_key"]
    assert len(first) >= 50
    assert first == second
    key_path = tmp_path / "flotilla" / "secret_key"
    assert key_path.read_text().strip() == first
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_the_default_broker_needs_no_server(tmp_path):
    assert settings_in_process(tmp_path)["broker"] == "filesystem://"
    assert (tmp_path / "flotilla" / "broker" / "queue").is_dir()
    found = settings_in_process(tmp_path, CELERY_BROKER_URL="redis://127.0.0.1:6379/0")
    assert found["broker"] == "redis://127.0.0.1:6379/0"
