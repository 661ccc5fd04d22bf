"""A re-score of a model version that is no longer active (``scoring.stale_rescores``) never runs:
the pages pass over it, so the score it would have replaced stays in force (with its own Retry when
that one failed), and retry_prediction refuses it in words, changing nothing."""
from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import services
from cases.models import LesionImage, Prediction
from cases.scoring import stale_rescore_reason, stale_rescores
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, score_image

pytestmark = pytest.mark.django_db


def _failed(image, version, *, error: str = "Scoring error: RuntimeError: boom", **fields) -> Prediction:
    return Prediction.objects.create(image=image, model_version=version, status="failed", error=error,
                                     finished_at=timezone.now(), **fields)


def _stale_after_a_failed_upload_score(world, model_version) -> tuple[Prediction, Prediction]:
    """The image's upload score failed; a re-score by v2, then rolled back, was not scored."""
    image = make_image(world)
    upload = _failed(image, model_version)
    rolled_back = ModelVersion.objects.create(version="v2", status=ModelVersion.Status.READY, artifact_path="/x")
    return upload, _failed(image, rolled_back, error=stale_rescore_reason("v2"))


def _snapshot(prediction: Prediction) -> tuple:
    return tuple(Prediction.objects.filter(pk=prediction.pk).values_list(
        "status", "error", "attempts", "enqueued_at", "started_at", "finished_at").get())


def test_retry_is_refused_in_words_and_changes_nothing(world, model_version, dispatched):
    _, stale = _stale_after_a_failed_upload_score(world, model_version)
    before = _snapshot(stale)
    with pytest.raises(services.VersionNotActive) as refused:
        services.retry_prediction(user=world.clin_a, prediction=stale)
    assert refused.value.messages == ["Model version v2 is no longer active, so this re-score will not run; nothing "
                                      "was changed. The case page shows the image's own score instead."]
    assert _snapshot(stale) == before and dispatched == []
    assert not AuditEvent.objects.filter(action="retry").exists()


def test_the_pages_show_the_upload_score_with_its_retry_instead(world, model_version, client, dispatched,
                                                                django_capture_on_commit_callbacks):
    upload, stale = _stale_after_a_failed_upload_score(world, model_version)
    client.force_login(world.clin_a)
    polled = client.get(f"/cases/{world.case_a.pk}/status.json").json()["predictions"]
    assert [(p["id"], p["status"]) for p in polled] == [(upload.pk, "failed")]
    for html in (client.get(f"/cases/{world.case_a.pk}/").content.decode(), polled[0]["html"]):
        assert f"/predictions/{stale.pk}/retry/" not in html and "rolled back or replaced" not in html
        assert f"/predictions/{upload.pk}/retry/" in html
    before = _snapshot(stale)
    # a page loaded before the roll-back may still have the re-score's button: refused, in words
    page = client.post(f"/predictions/{stale.pk}/retry/", follow=True).content.decode()
    assert "v2 is no longer active, so this re-score will not run; nothing was changed" in page
    assert _snapshot(stale) == before and dispatched == []
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/predictions/{upload.pk}/retry/")
    assert Prediction.objects.get(pk=upload.pk).status == "pending" and dispatched == [upload.pk]


def _scenario(world, model_version, name: str) -> Prediction:
    """The newest prediction of an image in each situation, stale (``stale_rescores``) or not."""
    image = make_image(world)
    v0 = ModelVersion.objects.create(version="v0", status=ModelVersion.Status.RETIRED, artifact_path="/x")
    v2 = ModelVersion.objects.create(version="v2", status=ModelVersion.Status.READY, artifact_path="/x")
    if name == "failed re-score of a version rolled back":
        _failed(image, model_version)
        return _failed(image, v2, error=stale_rescore_reason("v2"))
    if name == "pending re-score of a version rolled back":
        _failed(image, model_version)
        return Prediction.objects.create(image=image, model_version=v2)
    if name == "upload score of a version since replaced":
        return _failed(image, v0)
    if name == "correction under a version since replaced":
        _failed(image, model_version)
        return _failed(image, v2, reason="site corrected by Clin_A: wrong site")
    if name == "correction revision of a version since replaced":
        score_image(image, v2)
        return _failed(image, v2, context_revision=1, reason="age corrected by Clin_A")
    assert name == "re-score of the active version"
    _failed(image, v0)
    return _failed(image, model_version)


@pytest.mark.parametrize("name, stale", [
    ("failed re-score of a version rolled back", True),
    ("pending re-score of a version rolled back", True),
    ("upload score of a version since replaced", False),
    ("correction under a version since replaced", False),
    ("correction revision of a version since replaced", False),
    ("re-score of the active version", False),
])
def test_the_pages_pass_over_exactly_the_re_scores_that_never_run(world, model_version, name, stale):
    """current_prediction's test is stale_rescores() over prefetched rows: the two never disagree."""
    newest = _scenario(world, model_version, name)
    assert Prediction.objects.filter(stale_rescores(), pk=newest.pk).exists() == stale
    image = LesionImage.objects.prefetch_related("predictions__model_version").get(pk=newest.image_id)
    shown = image.current_prediction()
    assert (shown.pk != newest.pk) == stale
    assert image.rescore_in_progress() is None
