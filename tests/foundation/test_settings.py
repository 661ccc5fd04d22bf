"""Production settings pass Django's deploy checks; migrations are complete."""
import os
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
    assert result.stdout.splitlines()[-1].split() == ["django.core.cache.backends.redis.RedisCache",
                                                    "redis://cache.example.org:6379/0"]
    result = _manage("check", **env, CACHE_URL="memcached://somewhere")
    assert result.returncode != 0 and "CACHE_URL must be" in result.stderr


def test_development_cache_is_in_memory(settings):
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
