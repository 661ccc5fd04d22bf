"""Claims of SECURITY.md that no other test pinned down: which pages are public, CSRF on every
POST route, cookie and header settings, password rules, the lockout key, production transport."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.django_db

# Pages an anonymous visitor can open. SECURITY.md says "login, /health/ and /health/live"; Django's own auth URLs
# add the password-reset pages and the admin's login page. Any new public page must be added here
# deliberately (and to SECURITY.md).
PUBLIC = {"/accounts/login/", "/health/", "/health/live", "/admin/login/"}


def _concrete(route: str) -> str:
    route = re.sub(r"\(\?P<\w+>[^)]*\)", "1", route.replace("^", "").replace("$", ""))  # routers' regexes
    route = re.sub(r"<int:[^>]+>", "1", route)
    return re.sub(r"<(?:str|slug|path|uuid):[^>]+>|<[^>]+>", "x", route)


def site_urls(*, api: bool = False) -> list[str]:
    """Every route of the site outside the admin (the admin has its own login) and the API (its
    own tokens), made concrete; with ``api``, the API's routes only."""
    urls: list[str] = []

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            route = str(p.pattern)
            if (route.startswith("^") and not api) or route.startswith("admin/") or "format" in route:
                continue
            if not prefix and (route.startswith("api/") != api):
                continue
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + route)
            elif isinstance(p, URLPattern):
                urls.append("/" + _concrete(prefix + route))

    walk(get_resolver().url_patterns, "")
    return sorted(set(urls))


def test_every_page_but_the_known_public_ones_requires_login(client):
    urls = site_urls()
    assert len(urls) > 20 and "/cases/1/status.json" in urls
    public = set()
    for url in urls + ["/admin/", "/admin/audit/auditevent/", "/admin/login/"]:
        response = client.get(url)
        if response.status_code == 302 and "/login/" in response["Location"]:
            continue
        public.add(url)
    assert public == PUBLIC


def test_every_post_route_enforces_csrf(world):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world.clin_a)
    for url in site_urls():
        response = strict.post(url, {"x": "1"})
        assert response.status_code == 403, url


# API routes an anonymous caller can read: the schema and its docs page (no records in either)
API_PUBLIC = {"/api/v1/schema/", "/api/v1/docs/"}


def test_every_api_route_but_the_schema_and_docs_needs_a_token(client):
    urls = site_urls(api=True)
    assert "/api/v1/lesions/1/images/" in urls and len(urls) > 20
    public = {url for url in urls if client.get(url).status_code != 401}
    assert public == API_PUBLIC


def test_the_api_used_with_a_session_enforces_csrf(world):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world.clin_a)
    response = strict.post("/api/v1/patients/", {"identifier": "X-1", "birth_year": 1990, "sex": "male"})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_cookies_and_headers(client, world):
    response = client.post("/accounts/login/", {"username": "clin_a", "password": "pw-for-tests-123"})
    assert response.status_code == 302
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["httponly"] and session["samesite"] == "Lax" and int(session["max-age"]) == 8 * 3600
    page = client.get("/")
    assert page["X-Frame-Options"] == "DENY"
    assert page["X-Content-Type-Options"] == "nosniff"
    assert page["Referrer-Policy"] == "same-origin"
    assert client.cookies["csrftoken"]["samesite"] == "Lax"


@pytest.mark.parametrize("password", ["short1!", "password123", "1234567890123", "clin_a1234"])
def test_weak_passwords_are_refused(world, password):
    with pytest.raises(ValidationError):
        validate_password(password, user=world.clin_a)
    validate_password("a-long-unusual-passphrase-42", user=world.clin_a)


def test_lockout_is_per_username_and_address_and_lasts_15_minutes(client, django_user_model):
    django_user_model.objects.create_user("erin", password="correct-horse-battery-9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "erin", "password": "wrong"}, REMOTE_ADDR="10.0.0.1")
    assert client.post("/accounts/login/", {"username": "erin", "password": "correct-horse-battery-9"},
                       REMOTE_ADDR="10.0.0.1").status_code == 429
    other = Client()
    assert other.post("/accounts/login/", {"username": "erin", "password": "correct-horse-battery-9"},
                      REMOTE_ADDR="10.0.0.2").status_code == 302
    assert settings.AXES_FAILURE_LIMIT == 5 and settings.AXES_COOLOFF_TIME == 0.25  # hours


def test_lockout_ends_after_the_cool_off(client, django_user_model):
    """Time travel by moving the recorded failures back: still locked at 14 minutes, open at 16."""
    from datetime import timedelta

    from axes.models import AccessAttempt
    from django.utils import timezone

    django_user_model.objects.create_user("finn", password="correct-horse-battery-9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "finn", "password": "wrong"}, REMOTE_ADDR="10.0.0.3")
    good = {"username": "finn", "password": "correct-horse-battery-9"}
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=14))
    assert client.post("/accounts/login/", good, REMOTE_ADDR="10.0.0.3").status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert client.post("/accounts/login/", good, REMOTE_ADDR="10.0.0.3").status_code == 302


def test_production_transport_settings():
    env = {k: v for k, v in os.environ.items() if k not in {"SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS"}}
    env.update(DJANGO_ENV="production", SECRET_KEY="k" * 60, ALLOWED_HOSTS="secondlook.example.org",
               DATABASE_URL="postgres://app@db.example.org:5432/secondlook")
    code = ("from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
            "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1].split() == ["True", str(365 * 24 * 3600), "True", "True", "True", "True"], out.stderr[-2000:]


@pytest.mark.parametrize("who", ["clin_a", "derm", "norole"])
def test_only_admins_can_activate_roll_back_train_or_rescore_models(client, world, who):
    from classifier.models import ModelVersion

    other = ModelVersion.objects.create(version="candidate", status=ModelVersion.Status.READY,
                                        artifact_path="/nonexistent/candidate")
    client.force_login(getattr(world, who))
    for url in (f"/admin/classifier/modelversion/{other.pk}/activate/", "/admin/classifier/modelversion/rollback/",
                "/admin/classifier/modelversion/rescore/", "/admin/classifier/modelversion/train/"):
        response = client.post(url, {"sources": ["isic"], "epochs": 1})
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    assert ModelVersion.objects.get(status="active").version == "unit-test-v1"
    assert ModelVersion.objects.count() == 2
