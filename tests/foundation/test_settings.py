"""Production settings pass Django's deploy checks; migrations are complete."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_ENV", "SECRET_KEY", "ALLOWED_HOSTS"}}
    full_env.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_production_settings_pass_deploy_checks():
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_ENV="production", SECRET_KEY="x" * 20 + "-production-key-for-the-check-only-9f3k2",
        ALLOWED_HOSTS="secondlook.example.org", DATABASE_URL="postgres://app@db.example.org:5432/secondlook",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL"])
def test_production_refuses_to_start_without_required_setting(missing):
    env = dict(DJANGO_ENV="production", SECRET_KEY="k" * 60, ALLOWED_HOSTS="secondlook.example.org",
               DATABASE_URL="postgres://app@db.example.org:5432/secondlook")
    env[missing] = ""
    result = _manage("check", **env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_migrations_are_complete():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_development_defaults_need_no_environment(settings):
    assert settings.SECRET_KEY and len(settings.SECRET_KEY) >= 50
    assert settings.MEDIA_URL is None  # images only through authenticated views


def test_production_keeps_rate_limits_in_redis_and_a_bad_cache_url_is_refused():
    env = dict(DJANGO_ENV="production", SECRET_KEY="k" * 60, ALLOWED_HOSTS="secondlook.example.org",
               DATABASE_URL="postgres://app@db.example.org:5432/secondlook", REDIS_URL="redis://cache.example.org:6379/0")
    show = ("shell", "-c", "from django.conf import settings; c = settings.CACHES['default']; "
            "print(c['BACKEND'], c.get('LOCATION'))")
    result = _manage(*show, **env)
    assert result.returncode == 0, result.stderr
    # the broker's Redis, another database: cache.clear() (FLUSHDB) must not empty the task queues
    assert result.stdout.splitlines()[-1].split() == ["django.core.cache.backends.redis.RedisCache",
                                                    "redis://cache.example.org:6379/1"]
    result = _manage("check", **env, CACHE_URL="memcached://somewhere")
    assert result.returncode != 0 and "CACHE_URL must be" in result.stderr


def test_development_cache_is_in_memory(settings):
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"


@pytest.mark.parametrize("broker, cache", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
    ("redis://cache.example.org:6379", "redis://cache.example.org:6379/1"),
    ("rediss://app:p%40ss@redis.example.org:6380/3?ssl_cert_reqs=required",
     "rediss://app:p%40ss@redis.example.org:6380/4?ssl_cert_reqs=required"),
    ("redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379/14"),  # a default Redis has no database 16
    ("redis://127.0.0.1:6379/0?db=2", "redis://127.0.0.1:6379/0?db=3"),  # redis-py: the query wins
    ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock?db=1"),
    ("unix:///run/redis/redis.sock?db=4&password=s", "unix:///run/redis/redis.sock?password=s&db=5"),
])
def test_the_default_cache_is_another_database_of_the_brokers_redis(broker, cache):
    from melanoma_site.settings import _cache_url_beside

    assert _cache_url_beside(broker) == cache


def test_database_connections_are_checked_before_reuse(settings):
    """Persistent connections (production's CONN_MAX_AGE) would fail once after a database restart."""
    assert settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] is True


def test_uploaded_files_and_their_folders_are_readable_by_the_owner_only(tmp_path):
    from django.core.files.base import ContentFile
    from django.core.files.storage import FileSystemStorage

    name = FileSystemStorage(location=tmp_path).save("lesion-images/2026/a.jpg", ContentFile(b"jpeg bytes"))
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lesion-images" / "2026").stat().st_mode) == 0o700


def test_collected_static_files_stay_world_readable(settings, tmp_path):
    """Static files are public, and a proxy running as another user may serve STATIC_ROOT."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    config = settings.STORAGES["staticfiles"]
    storage = storages.create_storage({**config, "OPTIONS": {**config.get("OPTIONS", {}), "location": str(tmp_path)}})
    name = storage.save("css/site.css", ContentFile(b"body {}"))
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "css").stat().st_mode) == 0o755


def test_a_new_var_dir_is_created_owner_only(tmp_path):
    """Where the settings create VAR_DIR (a first development start), only its owner may enter it."""
    var = tmp_path / "var"
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT,
                            env={**{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DJANGO_ENV"}},
                                 "DJANGO_SETTINGS_MODULE": "melanoma_site.settings", "SECONDLOOK_VAR_DIR": str(var)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
