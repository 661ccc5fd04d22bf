"""What a production deployment needs beyond the deploy checks: health on web hosts without model
files, plain-HTTP health probes, a bound on a request's file bytes, no DEBUG on a reachable host, and
proxy headers believed only from the app's own proxies."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from rest_framework.request import Request
from rest_framework.test import APIClient

from api.models import ApiToken
from api.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle
from cases.models import LesionImage
from classifier.models import ModelVersion
from melanoma_site import health
from cases.upload_limits import TotalUploadSizeHandler, UploadTooLarge
from tests.support.case_helpers import stored_files
from tests.support.imagegen import jpeg, upload

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = dict(DJANGO_ENV="production", SECRET_KEY="k" * 60, ALLOWED_HOSTS="secondlook.example.org",
                  DATABASE_URL="postgres://app@db.example.org:5432/secondlook")


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py in a fresh process with exactly these deployment variables (none inherited)."""
    full_env = {k: v for k, v in os.environ.items() if k not in {
        "DJANGO_ENV", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "TRUSTED_PROXIES", "SECURE_SSL_REDIRECT"}}
    full_env.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)


# --- /health/ on a web host when models live in the object storage --------------------------------

@pytest.mark.django_db
def test_health_finds_the_active_model_in_the_storage_when_this_host_has_no_copy(settings, tmp_path):
    """Web hosts never load a model; with SECONDLOOK_MODELS_IN_STORAGE the workers download it from
    the storage, so its stored copy is what must exist (it used to be 'missing', 503, for ever)."""
    settings.SECONDLOOK_MODELS_IN_STORAGE = True
    settings.VAR_DIR = tmp_path / "var"  # no host copy
    weights = b"the active model's weights"
    sha = hashlib.sha256(weights).hexdigest()
    default_storage.save(f"models/{sha}/model.keras", ContentFile(weights))
    default_storage.save(f"models/{sha}/model_card.json", ContentFile(b'{"model_sha256": "%s"}' % sha.encode()))
    ModelVersion.objects.create(version="v-stored", status=ModelVersion.Status.ACTIVE, sha256=sha,
                                artifact_path=str(tmp_path / "a-worker-host" / "model"))
    assert health.check_model() == {"ok": True, "version": "v-stored", "served_from": "storage"}

    default_storage.delete(f"models/{sha}/model.keras")  # gone from the storage too: down, and says so
    model = health.check_model()
    assert model["ok"] is False and "missing" in model["error"] and "not in the storage either" in model["error"]

    settings.SECONDLOOK_MODELS_IN_STORAGE = False  # models not kept in storage: the local disk decides
    default_storage.save(f"models/{sha}/model.keras", ContentFile(weights))
    assert health.check_model()["ok"] is False


# --- plain-HTTP health probes; X-Forwarded-Proto only from a trusted proxy -------------------------

SHOW_TRANSPORT = """
from django.conf import settings
from django.test import Client, RequestFactory
client = Client(HTTP_HOST="secondlook.example.org")
live, login = client.get("/health/live"), client.get("/accounts/login/")
forwarded = RequestFactory().get("/", HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.0.0.2")
print(live.status_code, login.status_code, login.get("Location"), forwarded.is_secure(), settings.SECURE_PROXY_SSL_HEADER)
"""


def test_production_redirects_to_https_except_the_health_probes_and_believes_no_forwarded_proto():
    result = _manage("shell", "-c", SHOW_TRANSPORT, **PRODUCTION)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1].split() == [
        "200", "301", "https://secondlook.example.org/accounts/login/", "False", "None"]


def test_behind_trusted_proxies_their_forwarded_proto_marks_https():
    result = _manage("shell", "-c", SHOW_TRANSPORT, **PRODUCTION, TRUSTED_PROXIES="10.0.0.0/8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1].split()[:4] == [
        "200", "301", "https://secondlook.example.org/accounts/login/", "True"]


# --- DEBUG never serves a host other than this machine ---------------------------------------------

def test_debug_with_a_public_host_refuses_to_start():
    """A forgotten DJANGO_ENV=production leaves DEBUG on: the settings refuse, naming the fix."""
    forgot = _manage("check", ALLOWED_HOSTS="secondlook.example.org")
    assert forgot.returncode != 0
    assert "DEBUG is on while ALLOWED_HOSTS names secondlook.example.org" in forgot.stderr
    assert "DJANGO_ENV=production" in forgot.stderr
    assert _manage("check", ALLOWED_HOSTS="secondlook.example.org", DEBUG="0").returncode == 0
    assert _manage("check", DEBUG="1").returncode == 0  # the development default: local names only


# --- the request's file bytes are bounded before any view ------------------------------------------

def _images(count: int) -> tuple[list, int]:
    files = [jpeg(seed=n) for n in range(count)]
    return [upload(f"{n}.jpg", data) for n, data in enumerate(files)], sum(len(data) for data in files)


def test_an_upload_past_the_total_cap_gets_the_400_page_and_stores_nothing(client, world, media_root, settings,
                                                                           monkeypatch, caplog):
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    files, total = _images(3)
    settings.UPLOAD_MAX_TOTAL_BYTES = total - 1
    client.force_login(world.clin_a)
    response = client.post(f"/lesions/{world.lesion_a.pk}/", {"images": files, "kind": "dermoscopic"})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert (f"The upload is too large: one request may carry at most {total - 1:,} bytes of files "
            f"({settings.UPLOAD_MAX_FILES} images of up to {settings.UPLOAD_MAX_BYTES:,} bytes each).") in page
    assert "Nothing was saved" in page and "with fewer files at a time" in page
    assert [r.name for r in caplog.records if r.name.startswith("django.security.")] == [
        "django.security.UploadTooLarge"]
    assert LesionImage.objects.count() == 0 and stored_files(media_root) == []

    settings.UPLOAD_MAX_TOTAL_BYTES = total  # exactly the cap: accepted
    files, _ = _images(3)
    response = client.post(f"/lesions/{world.lesion_a.pk}/", {"images": files, "kind": "dermoscopic"})
    assert response.status_code == 302 and LesionImage.objects.count() == 3


def test_an_api_upload_past_the_total_cap_gets_a_json_400_that_says_so(world, settings):
    files, total = _images(2)
    settings.UPLOAD_MAX_TOTAL_BYTES = total - 1
    token = ApiToken(user=world.clin_a, name="tests")
    key = token.issue()
    token.save()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = api.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", {"images": files}, format="multipart")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith(f"The upload is too large: one request may carry at most "
                                                f"{total - 1:,} bytes of files")
    assert LesionImage.objects.count() == 0


def test_a_declared_body_past_the_cap_is_refused_before_it_is_read(settings):
    settings.UPLOAD_MAX_TOTAL_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 500

    class Unreadable:
        def read(self, *args):
            raise AssertionError("the body was read")

    handler = TotalUploadSizeHandler()
    assert handler.handle_raw_input(Unreadable(), {}, 1500, b"boundary") is None  # files + fields allowance
    with pytest.raises(UploadTooLarge, match="at most 1,000 bytes of files"):
        handler.handle_raw_input(Unreadable(), {}, 1501, b"boundary")


def test_the_total_cap_follows_the_per_file_limits_and_its_handler_comes_first(settings):
    from django.conf import settings as configured

    assert configured.FILE_UPLOAD_HANDLERS[0] == "cases.upload_limits.TotalUploadSizeHandler"
    assert configured.FILE_UPLOAD_HANDLERS[1:] == [
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler"]  # Django's own keep the files
    if "UPLOAD_MAX_TOTAL_BYTES" not in os.environ:
        assert configured.UPLOAD_MAX_TOTAL_BYTES == configured.UPLOAD_MAX_FILES * configured.UPLOAD_MAX_BYTES


# --- API rate limits key on the client address, as the lockout and the audit trail do --------------

def test_api_rate_limits_ignore_a_forwarded_for_that_no_trusted_proxy_wrote(rf, settings, monkeypatch):
    """DRF's default key is the raw X-Forwarded-For: a new forged address per call escaped the limit."""
    cache.clear()
    monkeypatch.setattr(AnonRateThrottle, "rate", "1/minute", raising=False)

    def request(forwarded: str) -> Request:
        return Request(rf.get("/api/v1/schema/", HTTP_X_FORWARDED_FOR=forwarded, REMOTE_ADDR="10.0.0.2"))

    def allowed(forwarded: str) -> bool:
        return AnonRateThrottle().allow_request(request(forwarded), view=None)

    settings.TRUSTED_PROXIES = []
    assert [allowed("198.51.100.1"), allowed("198.51.100.2")] == [True, False]
    for throttle in (UserRateThrottle(), ScopedRateThrottle()):
        assert throttle.get_ident(request("198.51.100.3")) == "10.0.0.2"

    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]  # behind our own proxy its header names the client
    cache.clear()
    assert [allowed("198.51.100.1"), allowed("198.51.100.2"), allowed("198.51.100.1")] == [True, True, False]
    assert AnonRateThrottle().get_ident(request("198.51.100.9, 10.0.0.7")) == "198.51.100.9"
