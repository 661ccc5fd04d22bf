"""Fine-tuning the active model from the admin, clicked in a real browser: the training form offers
the active model as a starting point, refuses it for an ensemble, and starts a fine-tuning run
whose page says what it continues. The training itself is not run here:
tests/registry/test_fine_tuning.py runs it."""
from __future__ import annotations

import pytest

from classifier.models import ModelVersion
from classifier.registry import activate, register_artifact
from tests.support.browser_helpers import admin_log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_active_model_is_fine_tuned_from_the_training_form(live_server, browser_page, settings, tmp_path,
                                                               monkeypatch, tiny_model_dir, artifacts_dir):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("classifier.lifecycle.enqueue_training",
                        lambda pk, **options: sent.append(("classifier.tasks.train_model", [pk], options)))  # no training here
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    active = activate(register_artifact(tiny_model_dir))
    page, base = browser_page, live_server.url
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/")
    page.get_by_role("link", name="Train a new version").click()
    expect(page.get_by_label("ImageNet weights: a full training of the network", exact=False)).to_be_checked()
    tune = page.get_by_label(f"The active model, {active.version}", exact=False)
    expect(page.locator("#row-start_from")).to_contain_text("keeps the active model's settings and lesion split")
    tune.check()
    page.get_by_label("Ensemble of 2-3 CNNs", exact=False).check()
    for missing in ("ISIC 9-class set (shared data)", "HAM10000, further images (shared data)"):
        page.get_by_label(missing).uncheck()
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#row-start_from .errorlist")).to_contain_text("choose a single CNN")
    assert ModelVersion.objects.count() == 1 and sent == []

    expect(page.get_by_label(f"The active model, {active.version}", exact=False)).to_be_checked()  # kept
    page.get_by_label("Single CNN", exact=False).check()
    page.screenshot(path=str(artifacts_dir / "33-admin-fine-tune.png"), full_page=True)
    page.get_by_role("button", name="Start training").click()
    expect(page.locator(".messagelist")).to_contain_text("queued; progress shows below")
    run = ModelVersion.objects.exclude(pk=active.pk).get()
    assert run.version.startswith("tune-") and run.status == "training"
    assert run.training_config["start_from"] == {"version": active.version, "sha256": active.sha256}
    assert [(name, args) for name, args, _ in sent] == [("classifier.tasks.train_model", [run.pk])]
    expect(page.locator(".field-model_kind .readonly")).to_have_text(
        f"Single CNN; fine-tuned from {active.version} (its top blocks, on its lesion split)")
