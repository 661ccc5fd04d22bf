"""The admin's model-version buttons work when clicked in a real browser (they sit inside the
admin's change form, where a nested <form> would be dropped and the click would save the change
form instead)."""
from __future__ import annotations

import pytest
from tests.support.browser_helpers import PASSWORD
from django.contrib.auth import get_user_model

from classifier.models import ModelVersion
from classifier.registry import register_artifact

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def admin_log_in(page, base):
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_activate_and_cancel_buttons_do_what_they_say(live_server, tiny_model_dir, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    ready = register_artifact(tiny_model_dir)
    ready.status = ModelVersion.Status.READY
    ready.metrics = dict(ready.metrics, gate={"candidate": {"melanoma_auc": 0.91, "melanoma_sensitivity": 0.95},
                                              "active": {}})
    ready.save()
    running = ModelVersion.objects.create(version="run-in-progress", status=ModelVersion.Status.TRAINING)
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/{ready.pk}/change/")
    page.get_by_role("button", name="Activate this version").click()
    expect(page.locator(".messagelist")).to_contain_text("is now active")
    ready.refresh_from_db()
    assert ready.status == ModelVersion.Status.ACTIVE
    page.screenshot(path=str(artifacts_dir / "30-admin-activated.png"), full_page=True)
    # the version page's abstention panel links to that version's predictions, headed by the rates
    expect(page.locator("#abstentions")).to_contain_text("No image scored by this version")
    page.get_by_role("link", name="Predictions of this version").click()
    expect(page.locator("#assessment-rates")).to_contain_text("Images the model could not assess")
    assert f"model_version__id__exact={ready.pk}" in page.url

    page.goto(f"{base}/admin/classifier/modelversion/{running.pk}/change/")
    page.get_by_role("button", name="Cancel this run").click()
    expect(page.locator(".messagelist")).to_contain_text("Cancellation of run-in-progress requested")
    running.refresh_from_db()
    assert running.cancel_requested and running.status == ModelVersion.Status.TRAINING
