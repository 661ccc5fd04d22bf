"""Token authentication: only an active token of an active user gets in; secrets are not stored."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ApiToken, hash_key
from tests.api.conftest import issue_token


def _client(key: str, keyword: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {key}")
    return client


def test_valid_token_identifies_the_user(world):
    key = issue_token(world.clin_a)
    response = _client(key).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["username"] == "clin_a"
    assert response.json()["clinic"]["name"] == "Clinic A"
    assert response.json()["clinician"] is True and response.json()["reviewer"] is False
    assert _client(key, "Bearer").get("/api/v1/me/").status_code == 200


def test_only_the_hash_is_stored(world):
    key = issue_token(world.clin_a)
    token = ApiToken.objects.get()
    assert token.key_hash == hash_key(key) and key not in (token.key_hash, token.prefix)
    assert key.startswith(token.prefix)


def test_missing_wrong_revoked_and_expired_tokens_are_refused(world):
    assert APIClient().get("/api/v1/me/").status_code == 401
    assert APIClient().get("/api/v1/patients/").status_code == 401
    wrong = _client("sl_not-a-token").get("/api/v1/me/")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Invalid token."
    revoked_key = issue_token(world.clin_a, revoked_at=timezone.now())
    assert _client(revoked_key).get("/api/v1/me/").json()["detail"] == "This token is revoked."
    expired_key = issue_token(world.clin_a, expires_at=timezone.now() - timedelta(minutes=1))
    assert _client(expired_key).get("/api/v1/me/").json()["detail"] == "This token is expired."
    world.clin_b.is_active = False
    world.clin_b.save()
    disabled = _client(issue_token(world.clin_b)).get("/api/v1/me/")
    assert disabled.status_code == 401 and "disabled" in disabled.json()["detail"]


def test_last_use_is_recorded(world):
    key = issue_token(world.clin_a)
    assert ApiToken.objects.get().last_used_at is None
    _client(key).get("/api/v1/me/")
    assert ApiToken.objects.get().last_used_at is not None


def test_rate_limit_answers_429(world, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "3/minute", raising=False)
    client = _client(issue_token(world.clin_a))
    codes = [client.get("/api/v1/me/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
