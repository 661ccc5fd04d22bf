"""Token authentication: only an active token of an active user gets in; secrets are not stored."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ApiToken, hash_key
from melanoma_site.embedded_redis import free_port
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
    from api.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "3/minute", raising=False)
    client = _client(issue_token(world.clin_a))
    codes = [client.get("/api/v1/me/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def _redis_cache(url: str) -> dict:
    return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                        "KEY_PREFIX": "secondlook-cache-test",
                        "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}}}


def test_rate_limit_counters_are_shared_through_redis(world, monkeypatch, settings):
    """Two web workers count against one limit: the counters live in Redis, not in a process."""
    import redis

    from api.throttling import UserRateThrottle
    from tests.conftest import BROKER_URL

    settings.CACHES = _redis_cache(BROKER_URL)
    monkeypatch.setattr(UserRateThrottle, "rate", "3/minute", raising=False)
    client = _client(issue_token(world.clin_a))
    assert [client.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]
    keys = redis.Redis.from_url(BROKER_URL).keys("secondlook-cache-test:*throttle_user_*")
    assert len(keys) == 1
    # what another worker sees: the same two calls, so its third is the last allowed
    from django.core.cache import caches

    caches.close_all()
    assert [client.get("/api/v1/me/").status_code for _ in range(2)] == [200, 429]
    redis.Redis.from_url(BROKER_URL).delete(*keys)


def test_an_unreachable_cache_lets_requests_through_and_says_so(world, monkeypatch, settings, caplog):
    from api.throttling import UserRateThrottle

    settings.CACHES = _redis_cache(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    monkeypatch.setattr(UserRateThrottle, "rate", "1/minute", raising=False)
    client = _client(issue_token(world.clin_a))
    with caplog.at_level("WARNING", logger="api.throttling"):
        codes = [client.get("/api/v1/me/").status_code for _ in range(2)]
    assert codes == [200, 200]
    assert "rate limit not checked" in caplog.text and "UserRateThrottle" in caplog.text


def test_uploads_have_their_own_rate_limit(world, monkeypatch):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from api.throttling import ScopedRateThrottle

    # a scoped throttle reads its rate from THROTTLE_RATES on every call
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"uploads": "2/minute"})
    client = _client(issue_token(world.clin_a))

    def upload() -> int:
        empty = SimpleUploadedFile("empty.png", b"")  # refused per file (400): cheap, stores nothing
        return client.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", {"images": [empty]},
                           format="multipart").status_code

    assert [upload() for _ in range(3)] == [400, 400, 429]
    limited = client.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", {}, format="multipart")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert "throttled" in limited.json()["detail"]
    assert client.get("/api/v1/me/").status_code == 200  # other calls are not counted as uploads
    assert _client(issue_token(world.clin_b)).post(f"/api/v1/lesions/{world.lesion_b.pk}/images/", {},
                                                   format="multipart").status_code == 400  # per user


def test_anonymous_calls_have_a_rate_limit(world, monkeypatch):
    from api.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "rate", "2/minute", raising=False)
    anonymous = APIClient()
    codes = [anonymous.get("/api/v1/schema/?format=json").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert int(anonymous.get("/api/v1/schema/?format=json")["Retry-After"]) > 0
    assert _client(issue_token(world.clin_a)).get("/api/v1/me/").status_code == 200  # a token is not anonymous


def test_refused_tokens_count_against_the_address_rate_and_valid_ones_still_get_in(world, monkeypatch):
    """A missing, wrong or revoked token is refused (401) before DRF checks any throttle: each
    refusal counts against the address's anonymous rate, then 429 with Retry-After."""
    from api.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "rate", "3/minute", raising=False)
    wrong, nothing = _client("sl_not-a-token"), APIClient()
    revoked = _client(issue_token(world.clin_a, revoked_at=timezone.now()))
    codes = [wrong.get("/api/v1/patients/").status_code, revoked.get("/api/v1/me/").status_code,
             nothing.get("/api/v1/cases/").status_code]
    assert codes == [401, 401, 401]
    for client in (wrong, revoked, nothing):
        limited = client.get("/api/v1/me/")
        assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
        assert "throttled" in limited.json()["detail"]
    # another address has its own count; a valid token is never refused for another caller's failures
    assert wrong.get("/api/v1/me/", REMOTE_ADDR="192.0.2.7").status_code == 401
    valid = _client(issue_token(world.clin_b))
    assert valid.get("/api/v1/me/", REMOTE_ADDR="192.0.2.8").status_code == 200
    assert valid.get("/api/v1/me/").status_code == 200


def test_refused_tokens_are_not_counted_where_the_view_has_no_throttle(world, monkeypatch):
    """The refusals count as the view's own throttles would count them: none, none counted."""
    from api.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "rate", "1/minute", raising=False)
    monkeypatch.setattr("rest_framework.views.APIView.throttle_classes", [])
    assert [_client("sl_not-a-token").get("/api/v1/me/").status_code for _ in range(3)] == [401, 401, 401]
