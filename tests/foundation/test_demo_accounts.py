"""The demo-account command creates three roles once and is safe to re-run."""
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from cases.roles import CLINICIAN, DERMATOLOGIST, has_role, is_admin


@pytest.mark.django_db
def test_setup_demo_is_idempotent_and_prints_passwords_once(capsys):
    call_command("setup_demo")
    first = capsys.readouterr().out
    assert first.count("password:") == 3
    call_command("setup_demo")
    second = capsys.readouterr().out
    assert "password:" not in second and "already exist" in second
    User = get_user_model()
    assert User.objects.filter(username__in=["clinician", "dermatologist", "admin"]).count() == 3
    assert has_role(User.objects.get(username="clinician"), CLINICIAN)
    assert has_role(User.objects.get(username="dermatologist"), DERMATOLOGIST)
    assert not has_role(User.objects.get(username="dermatologist"), CLINICIAN)
    assert is_admin(User.objects.get(username="admin"))


@pytest.mark.django_db
def test_printed_password_logs_in(client, capsys):
    call_command("setup_demo")
    line = next(l for l in capsys.readouterr().out.splitlines() if "username: clinician" in l)
    password = line.split("password:")[1].strip()
    response = client.post("/accounts/login/", {"username": "clinician", "password": password})
    assert response.status_code == 302 and response["Location"] == "/"


@pytest.mark.django_db
def test_setup_demo_refuses_in_production(settings, capsys):
    """A superuser named admin with a password printed to a terminal or a log has no place there."""
    from django.core.management import CommandError

    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="createsuperuser"):
        call_command("setup_demo")
    assert not get_user_model().objects.exists()
    assert "password:" not in capsys.readouterr().out
