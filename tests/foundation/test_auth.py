"""Login is required everywhere except the login page and the health endpoint."""
import pytest
from django.urls import reverse


@pytest.mark.django_db
def test_anonymous_user_is_redirected_to_login(client):
    for url in [reverse("home"), "/admin/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert "login" in response["Location"]


@pytest.mark.django_db
def test_login_and_health_are_public(client):
    assert client.get(reverse("login")).status_code == 200
    assert client.get(reverse("health")).status_code in (200, 503)


@pytest.mark.django_db
def test_logout_invalidates_the_session(client, django_user_model):
    django_user_model.objects.create_user("carol", password="a-long-passphrase-1")
    response = client.post(reverse("login"), {"username": "carol", "password": "a-long-passphrase-1"})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200
    session_key = client.session.session_key
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    from django.contrib.sessions.models import Session

    assert not Session.objects.filter(session_key=session_key).exists()
    assert client.get(reverse("home")).status_code == 302


@pytest.mark.django_db
def test_repeated_failed_logins_are_throttled(client, django_user_model, settings):
    django_user_model.objects.create_user("dave", password="correct-horse-battery-9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": "dave", "password": "wrong"})
    response = client.post(reverse("login"), {"username": "dave", "password": "correct-horse-battery-9"})
    assert response.status_code == 429
    assert "Too many failed" in response.content.decode()


@pytest.mark.django_db
def test_csrf_is_enforced_on_login():
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    response = strict.post(reverse("login"), {"username": "x", "password": "y"})
    assert response.status_code == 403


def test_client_address_behind_trusted_proxies_only(rf, settings):
    from audit.log import client_ip

    forged = rf.get("/", HTTP_X_FORWARDED_FOR="6.6.6.6", REMOTE_ADDR="203.0.113.9")
    settings.TRUSTED_PROXIES = []
    assert client_ip(forged) == "203.0.113.9"  # no proxy configured: the header is ignored
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(forged) == "203.0.113.9"  # the peer is not our proxy: ignored again
    via_proxy = rf.get("/", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7, 10.0.0.3", REMOTE_ADDR="10.0.0.2")
    assert client_ip(via_proxy) == "198.51.100.7"  # the first hop not written by a client
    assert client_ip(rf.get("/", HTTP_X_FORWARDED_FOR="junk", REMOTE_ADDR="10.0.0.2")) == "10.0.0.2"


@pytest.mark.django_db
def test_lockout_and_audit_see_the_client_behind_the_proxy(client, settings, django_user_model):
    from axes.models import AccessAttempt

    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    django_user_model.objects.create_user("proxied", password="right-password-123")
    client.post("/accounts/login/", {"username": "proxied", "password": "wrong"},
                REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.23")
    assert AccessAttempt.objects.get(username="proxied").ip_address == "198.51.100.23"
