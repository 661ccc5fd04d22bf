"""The review page's test set-up: a score, a queued lesion, a claim, the page opened and the
fingerprint it rendered (shared by the review page's test modules)."""
from __future__ import annotations

import re
from datetime import timedelta

from django.utils import timezone

from cases.models import Case, Lesion, Prediction
from tests.support.case_helpers import make_image


def score_for_review(image, version, *, melanoma=0.8, flagged=True, status="done", reason="", revision=0,
                     minutes_ago=0, **extra) -> Prediction:
    """A prediction of ``image`` (finished, flagged, 0.8 unless told), created ``minutes_ago``."""
    done = status == "done"
    return Prediction.objects.create(
        image=image, model_version=version, status=status, melanoma_probability=melanoma if done else None,
        malignancy_score=melanoma if done else None, flagged=flagged if done else False, context_revision=revision,
        reason=reason, created_at=timezone.now() - timedelta(minutes=minutes_ago),
        finished_at=timezone.now() if done else None, **extra)


def queue_lesions(*lesions) -> None:
    Lesion.objects.filter(pk__in=[lesion.pk for lesion in lesions]).update(
        flagged=True, awaiting_review=True, flagged_at=timezone.now())


def claim_case(case, reviewer, *, hours_ago: float = 0) -> None:
    Case.objects.filter(pk=case.pk).update(claimed_by=reviewer, claimed_at=timezone.now() - timedelta(hours=hours_ago),
                                           status=Case.Status.IN_REVIEW)


def seen_fingerprint(page: str, lesion) -> str:
    """The fingerprint the page rendered for ``lesion`` (its hidden input)."""
    match = re.search(rf'name="lesion-{lesion.pk}-seen" value="([^"]*)"', page)
    assert match, f"no fingerprint for lesion {lesion.pk} on the page"
    return match.group(1)


def open_review_page(world, model_version, client, **score) -> tuple[str, object]:
    """Derm has claimed case A (lesion A flagged by a first image, scored with ``score``) and opened
    its review page: (the page's HTML, the first image)."""
    first = make_image(world)
    score_for_review(first, model_version, minutes_ago=5, **score)
    queue_lesions(world.lesion_a)
    claim_case(world.case_a, world.derm)
    client.force_login(world.derm)
    page = client.get(f"/cases/{world.case_a.pk}/review/")
    assert page.status_code == 200
    return page.content.decode(), first
