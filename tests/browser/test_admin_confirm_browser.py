"""The version page's Activate and Delete buttons, clicked in a real browser, lead to a confirmation
page that changes nothing (activation asks why, and refuses a blank reason in words); confirming
does it. The training progress box keeps polling through server errors, a lost connection and a
lost session, saying so with the last update's time, and shows a diverged run's loss in words."""
from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from classifier.models import ModelVersion
from classifier.registry import activate
from tests.support.browser_helpers import admin_log_in
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _active() -> ModelVersion:
    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


def test_activate_goes_through_a_confirmation_page_that_asks_why(live_server, browser_page, tmp_path, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    shipped = activate(ModelVersion.objects.create(version="shipped", status="ready", sha256=fake_sha("shipped"),
                                                   artifact_path=stand_in_artifact(tmp_path, "shipped")))
    better = ModelVersion.objects.create(
        version="better", status="ready", sha256=fake_sha("better"), target_sensitivity=0.9,
        artifact_path=stand_in_artifact(tmp_path, "better"),
        metrics={"gate": stored_gate(allowed=True, active="shipped", candidate="better")})
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/{better.pk}/change/")
    page.get_by_role("link", name="Activate this version").click()
    expect(page.locator("#confirm-question")).to_contain_text("Are you sure you want to activate better?")
    expect(page.locator("#confirm-current")).to_contain_text("shipped")
    assert _active() == shipped and not AuditEvent.objects.filter(action="activate").exists()  # the click alone
    page.screenshot(path=str(artifacts_dir / "admin-activate-confirm.png"), full_page=True)

    confirm = page.get_by_role("button", name="Yes, activate better")
    confirm.click()  # no reason: the browser asks for one, nothing is sent
    assert page.get_by_label("Reason").evaluate("el => !el.validity.valid")
    page.get_by_label("Reason").fill("   ")  # blank: the server refuses it in words
    confirm.click()
    expect(page.locator(".errorlist")).to_contain_text("Say why you activate this version")
    assert _active() == shipped and not AuditEvent.objects.filter(action="activate").exists()

    page.get_by_label("Reason").fill("Better melanoma sensitivity on frozen benchmark; change 42")
    page.get_by_role("button", name="Yes, activate better").click()
    expect(page.locator(".messagelist")).to_contain_text("Better is now active")
    assert _active() == better
    event = AuditEvent.objects.get(action="activate")
    assert event.new_values["reason"] == "Better melanoma sensitivity on frozen benchmark; change 42"


def test_delete_goes_through_a_confirmation_page(live_server, browser_page, settings, tmp_path):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    root = settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    (root / "train-doomed" / "checkpoints").mkdir(parents=True)
    (root / "train-doomed" / "checkpoints" / "epoch-1.keras").write_bytes(b"weights")
    doomed = ModelVersion.objects.create(version="train-doomed", status="failed", error="Out of memory")
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/{doomed.pk}/change/")
    page.get_by_role("link", name="Delete this failed run").click()
    expect(page.locator("#confirm-question")).to_contain_text("delete the failed run train-doomed")
    expect(page.locator("#confirm-folder")).to_contain_text(str(root / "train-doomed"))
    assert ModelVersion.objects.filter(pk=doomed.pk).exists() and (root / "train-doomed").is_dir()

    page.get_by_role("link", name="No, take me back").click()
    expect(page.locator("pre", has_text="Out of memory")).to_be_visible()
    assert ModelVersion.objects.filter(pk=doomed.pk).exists() and (root / "train-doomed").is_dir()

    page.get_by_role("link", name="Delete this failed run").click()
    page.get_by_role("button", name="Yes, delete train-doomed").click()
    expect(page.locator(".messagelist")).to_contain_text("The failed run train-doomed was deleted")
    assert not ModelVersion.objects.filter(pk=doomed.pk).exists() and not (root / "train-doomed").exists()
    assert AuditEvent.objects.filter(action="delete").count() == 1


def test_the_progress_box_survives_errors_and_shows_a_diverged_loss(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    updated = timezone.now().isoformat()
    run = ModelVersion.objects.create(
        version="train-diverged", status="training", started_at=timezone.now(),
        progress={"phase": "training", "epoch": 2, "epochs": 5, "loss": None, "eta_s": None, "updated_at": updated})
    admin_log_in(page, base)
    progress_url = f"**/admin/classifier/modelversion/{run.pk}/progress/"
    status = page.locator("#train-status")

    page.goto(f"{base}/admin/classifier/modelversion/{run.pk}/change/")
    expect(status).to_contain_text("epoch 2/5 · loss not a number (the run diverged)")
    expect(status).not_to_contain_text("ETA")
    expect(status).not_to_contain_text("0.0000")

    failures = {"left": 2}

    def server_error(route):
        if failures["left"]:
            failures["left"] -= 1
            route.fulfill(status=500, body="<h1>Server Error (500)</h1>", content_type="text/html")
        else:
            route.continue_()

    page.route(progress_url, server_error)
    expect(status).to_contain_text("progress unavailable (HTTP 500) · last update", timeout=15_000)
    # it keeps polling (backing off) and recovers once the server answers again
    ModelVersion.objects.filter(pk=run.pk).update(progress={"phase": "training", "epoch": 3, "epochs": 5,
                                                            "loss": 0.4321, "eta_s": 600, "updated_at": updated})
    expect(status).to_contain_text("epoch 3/5 · loss 0.4321 · ETA 10 min", timeout=20_000)
    page.unroute(progress_url)

    page.route(progress_url, lambda route: route.abort())
    expect(status).to_contain_text("progress unavailable (network error) · last update", timeout=15_000)
    page.unroute(progress_url)
    expect(status).to_contain_text("epoch 3/5", timeout=70_000)

    page.context.clear_cookies()  # the session ends: the poll is sent to the login page
    expect(status).to_contain_text("progress unavailable (signed out? reload the page)", timeout=15_000)
