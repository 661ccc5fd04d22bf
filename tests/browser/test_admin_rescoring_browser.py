"""The registry's list buttons clicked in a real browser: "Re-score all images" and "Roll back"
(twice: back through the activation history), each through its confirmation page, the re-scoring
job's "new model disagrees with review" count (a link to those predictions), and "Cancel this run"
on a run no worker has started."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases.models import Prediction, Review
from classifier.models import ModelVersion, RescoreJob
from classifier.registry import activate
from audit.models import AuditEvent
from tests.support.browser_helpers import admin_log_in
from tests.support.case_helpers import World, make_image
from tests.support.gate_helpers import fake_sha, stand_in_artifact

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _versions(root) -> tuple[ModelVersion, ModelVersion]:
    """v1 active first, then v2: v2 is active and v1 is the version to roll back to (stand-in model
    files under ``root``, with the image checks a roll-back asks for)."""
    earlier = activate(ModelVersion.objects.create(version="v1-earlier", status="ready", sha256=fake_sha("v1-earlier"),
                                                   artifact_path=stand_in_artifact(root, "v1-earlier")))
    ModelVersion.objects.filter(pk=earlier.pk).update(activated_at=timezone.now() - timedelta(days=3))
    earlier.refresh_from_db()
    return earlier, activate(ModelVersion.objects.create(version="v2-current", status="ready",
                                                         sha256=fake_sha("v2-current"),
                                                         artifact_path=stand_in_artifact(root, "v2-current")))


def test_rescore_all_then_roll_back_by_clicking(live_server, browser_page, monkeypatch, artifacts_dir, tmp_path):
    from playwright.sync_api import expect

    sent = []
    monkeypatch.setattr("cases.rescoring.enqueue", sent.append)  # no broker: the job's task is recorded
    page, base = browser_page, live_server.url
    # active before v1-earlier: where a second roll-back goes (not forward again to v2-current)
    oldest = ModelVersion.objects.create(version="v0-oldest", status="retired", sha256=fake_sha("v0-oldest"),
                                         artifact_path=stand_in_artifact(tmp_path, "v0-oldest"),
                                         activated_at=timezone.now() - timedelta(days=9))
    earlier, current = _versions(tmp_path)
    make_image(World())
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/")
    page.get_by_role("link", name="Re-score all images with the active version").click()
    summary = page.locator("#rescore-summary")
    expect(summary).to_contain_text("v2-current")
    expect(summary).to_contain_text("1 of the 1 images in the archive will be queued")
    assert not RescoreJob.objects.exists()  # the page alone changes nothing
    page.screenshot(path=str(artifacts_dir / "49-admin-rescore-confirm.png"), full_page=True)
    page.get_by_role("button", name="Yes, re-score with v2-current").click()
    expect(page.locator(".messagelist")).to_contain_text("Re-scoring all images with v2-current in the background")
    job = RescoreJob.objects.get()
    assert job.model_version == current and job.image_ids == [] and sent == [job.pk]
    expect(page.locator("table", has=page.locator("caption", has_text="Recent re-scoring jobs"))).to_contain_text(
        "v2-current")
    page.screenshot(path=str(artifacts_dir / "50-admin-rescore-queued.png"), full_page=True)
    # while it is queued the page says so and offers no second job
    page.get_by_role("link", name="Re-score all images with the active version").click()
    expect(page.locator("#rescore-running")).to_contain_text("already queued")
    expect(page.get_by_role("button", name="Yes, re-score with v2-current")).to_be_disabled()

    # a second admin opens the roll-back page at the same time: it goes stale once the first rolls back
    other = page.context.new_page()
    other.goto(f"{base}/admin/classifier/modelversion/rollback/")
    page.goto(f"{base}/admin/classifier/modelversion/")
    page.get_by_role("link", name="Roll back to the previous active version").click()
    expect(page.locator("#rollback-current")).to_contain_text("v2-current")
    expect(page.locator("#rollback-current")).to_contain_text(fake_sha("v2-current")[:12])
    expect(page.locator("#rollback-target")).to_contain_text("v1-earlier")
    expect(page.locator("#rollback-target")).to_contain_text(fake_sha("v1-earlier")[:12])
    expect(page.locator("#rollback-target")).to_contain_text(
        timezone.localtime(earlier.activated_at).strftime("%Y-%m-%d %H:%M"))
    page.get_by_role("button", name="Yes, roll back to v1-earlier").click()  # no reason: the browser asks for one
    assert page.get_by_label("Reason").evaluate("field => field.validity.valueMissing")
    assert ModelVersion.objects.get(status="active") == current
    page.get_by_label("Reason").fill("Flags every nevus since the upgrade (incident 42)")
    page.screenshot(path=str(artifacts_dir / "51-admin-rollback-confirm.png"), full_page=True)
    page.get_by_role("button", name="Yes, roll back to v1-earlier").click()
    expect(page.locator(".messagelist")).to_contain_text("Rolled back: v1-earlier is active again")
    assert ModelVersion.objects.get(status="active") == earlier
    current.refresh_from_db()
    assert current.status == "ready"
    expect(page.locator("#content")).to_contain_text("Active model: v1-earlier")
    event = AuditEvent.objects.get(action="rollback")
    assert event.actor.username == "root" and event.ip_address == "127.0.0.1"
    assert event.new_values["reason"] == "Flags every nevus since the upgrade (incident 42)"

    # the stale page's roll-back would have rolled forward to v2-current: refused, nothing changed
    other.get_by_label("Reason").fill("Roll back")
    other.get_by_role("button", name="Yes, roll back to v1-earlier").click()
    expect(other.locator(".messagelist")).to_contain_text("The active version is now v1-earlier, not v2-current as "
                                                          "the page showed")
    assert ModelVersion.objects.get(status="active") == earlier
    assert AuditEvent.objects.filter(action="rollback").count() == 1

    # a second roll-back goes further back, to v0-oldest, passing over v2-current (rolled back from)
    page.goto(f"{base}/admin/classifier/modelversion/")
    page.get_by_role("link", name="Roll back to the previous active version").click()
    expect(page.locator("#rollback-current")).to_contain_text("v1-earlier")
    expect(page.locator("#rollback-target")).to_contain_text("v0-oldest")
    expect(page.locator("#rollback-target")).to_contain_text(fake_sha("v0-oldest")[:12])
    expect(page.locator("#rollback-skipped")).to_contain_text("v2-current")
    expect(page.get_by_role("button", name="Yes, roll back to v2-current")).to_have_count(0)
    page.get_by_label("Reason").fill("v1-earlier misses melanomas on the new dermatoscopes (incident 43)")
    page.get_by_role("button", name="Yes, roll back to v0-oldest").click()
    expect(page.locator(".messagelist")).to_contain_text("Rolled back: v0-oldest is active again")
    expect(page.locator("#content")).to_contain_text("Active model: v0-oldest")
    assert ModelVersion.objects.get(status="active") == oldest
    trail = [(e.old_values["active"], e.new_values["active"])
             for e in AuditEvent.objects.filter(action="rollback").order_by("pk")]
    assert trail == [("v2-current", "v1-earlier"), ("v1-earlier", "v0-oldest")]
    # nothing further back: the page says so instead of offering a version rolled back from
    page.get_by_role("link", name="Roll back to the previous active version").click()
    expect(page.locator(".messagelist")).to_contain_text("There is no earlier active version to roll back to")
    assert ModelVersion.objects.get(status="active") == oldest


def test_the_jobs_disagreement_count_opens_the_disagreeing_predictions(live_server, browser_page, tmp_path):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    world = World()
    earlier, current = _versions(tmp_path)
    reviewed, agreeing = make_image(world, sha="a" * 64), make_image(world, sha="b" * 64)
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="reassure")
    done = {"status": "done", "melanoma_probability": 0.7, "malignancy_score": 0.7, "finished_at": timezone.now()}
    disagreeing = Prediction.objects.create(
        image=reviewed, model_version=current, flagged=True, **done,
        review_disagreement="New model disagrees with review: it flags a lesion reviewed as nevus (reassure).")
    Prediction.objects.create(image=agreeing, model_version=current, flagged=False, **done)
    Prediction.objects.create(image=agreeing, model_version=earlier, flagged=True, review_disagreement="older", **done)
    RescoreJob.objects.create(model_version=current, status="done", total=2, queued=2)
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/rescorejob/")
    page.locator("#result_list").get_by_role("link", name="1", exact=True).click()
    assert "disagrees=yes" in page.url and f"model_version__id__exact={current.pk}" in page.url
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(str(disagreeing.pk))
    expect(page.locator("#changelist-filter")).to_contain_text("Score disagrees with review")


def test_cancelling_a_run_no_worker_started_ends_it_at_once(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    queued = ModelVersion.objects.create(version="train-queued", status=ModelVersion.Status.TRAINING,
                                         progress={"phase": "queued"})
    admin_log_in(page, base)

    page.goto(f"{base}/admin/classifier/modelversion/{queued.pk}/change/")
    page.get_by_role("link", name="Cancel this run").click()
    page.get_by_role("button", name="Yes, cancel train-queued").click()
    expect(page.locator(".messagelist")).to_contain_text("The run train-queued was cancelled before it started")
    expect(page.locator("pre", has_text="before a training worker started it")).to_be_visible()
    queued.refresh_from_db()
    assert queued.status == ModelVersion.Status.FAILED and not ModelVersion.objects.filter(status="training").exists()
    expect(page.get_by_role("button", name="Retry this run")).to_be_visible()
