"""Training an ensemble from the admin, clicked in a real browser: the form offers "Single CNN" or an
ensemble with its member seeds and time estimate, refuses repeated seeds, and starts the run; the
version page says it is an ensemble and shows which member is training. The training itself is
not run here (as in the other retraining browser tests): tests/registry/test_ensemble_admin.py runs it."""
from __future__ import annotations

import pytest

from classifier.models import ModelVersion
from tests.support.browser_helpers import admin_log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_ensemble_is_started_from_the_training_form(live_server, browser_page, settings, tmp_path, monkeypatch,
                                                       artifacts_dir):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("classifier.lifecycle.enqueue_training",
                        lambda pk, **options: sent.append(("classifier.tasks.train_model", [pk], options)))  # no training here
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    page, base = browser_page, live_server.url
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/")
    page.get_by_role("link", name="Train a new version").click()
    expect(page.get_by_label("Single CNN (about 1 h)")).to_be_checked()
    ensemble = page.get_by_label("Ensemble of 2-3 CNNs", exact=False)
    expect(page.locator("#row-kind")).to_contain_text("2 members: about 2 h 15 min; 3 members: about 3 h 15 min")
    expect(page.locator("#row-kind")).to_contain_text("its time limit is the single run's (3 h) per member")
    ensemble.check()
    for missing in ("ISIC 9-class set (shared data)", "HAM10000, further images (shared data)"):
        page.get_by_label(missing).uncheck()
    seeds = page.get_by_label("Ensemble member seeds")
    seeds.fill("2026 2026")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#row-members .errorlist")).to_contain_text("Each member needs its own seed")
    assert not ModelVersion.objects.exists() and sent == []

    expect(page.get_by_label("Ensemble of 2-3 CNNs", exact=False)).to_be_checked()  # the choice is kept
    page.get_by_label("Ensemble member seeds").fill("1234, 2026")
    page.screenshot(path=str(artifacts_dir / "31-admin-train-ensemble.png"), full_page=True)
    page.get_by_role("button", name="Start training").click()
    expect(page.locator(".messagelist")).to_contain_text("queued; progress shows below")
    run = ModelVersion.objects.get()
    assert run.status == "training" and run.version.startswith("ens2-train-")
    assert run.training_config["members"] == [1234, 2026] and run.data_sources == ["ham10000", "reviews"]
    assert [(name, args) for name, args, _ in sent] == [("classifier.tasks.train_model", [run.pk])]
    assert sent[0][2]["soft_time_limit"] == 2 * settings.TRAINING_SOFT_TIME_LIMIT
    assert f"/admin/classifier/modelversion/{run.pk}/change/" in page.url
    expect(page.locator(".field-model_kind .readonly")).to_have_text(
        "Ensemble of 2 CNNs (seeds 1234, 2026; mean of their logits)")

    # the worker reports per member; the page's progress line follows it
    ModelVersion.objects.filter(pk=run.pk).update(progress={
        "phase": "member 2/2 (seed 2026): training", "member": 2, "members": 2, "epoch": 3, "epochs": 100})
    expect(page.locator("#train-status")).to_contain_text("member 2/2 (seed 2026): training · epoch 3/100")
    page.screenshot(path=str(artifacts_dir / "32-admin-ensemble-progress.png"), full_page=True)
