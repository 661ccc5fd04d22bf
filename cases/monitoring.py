"""How often the model could not judge recent uploads (images uploaded in the last days), per model
version (for the admin)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from cases.models import LesionImage, Prediction

RECENT_DAYS = 30


@dataclass(frozen=True)
class AssessmentRates:
    """Counts of images (each once) uploaded in the window that one model version finished scoring."""

    version: str
    scored: int
    quality_failed: int
    unfamiliar: int
    clinical_photos: int
    not_assessable: int

    def rate(self, count: int) -> float | None:
        return count / self.scored if self.scored else None

    @property
    def not_assessable_rate(self) -> float | None:
        return self.rate(self.not_assessable)

    @property
    def quality_failed_rate(self) -> float | None:
        return self.rate(self.quality_failed)

    @property
    def unfamiliar_rate(self) -> float | None:
        return self.rate(self.unfamiliar)


def _images(**only) -> Count:
    """Distinct images among the rows (those matching ``only``): an image is one count, however
    many predictions of it a join or a re-score brings."""
    return Count("image", distinct=True, filter=Q(**only) if only else None)


def assessment_rates(*, days: int = RECENT_DAYS, predictions=None) -> list[AssessmentRates]:
    """Per model version, over the images uploaded in the last ``days`` days that it finished
    scoring (by upload, not by when scored: a re-scoring job over old images must not swamp the
    recent uploads' rates): how many
    failed a quality check, looked unfamiliar (out of domain), were clinical photos, and how many
    the model could not assess in all (one image can fail several ways). Each image counts once per
    version, with that version's latest finished score of it: a correction's re-score (the next
    context revision) replaces the earlier one rather than counting the image twice.
    ``predictions`` (a Prediction queryset, e.g. one clinic's) limits what is counted; default all."""
    since = timezone.now() - timedelta(days=days)
    base = Prediction.objects.all() if predictions is None else predictions
    done = Q(status=Prediction.Status.DONE, image__uploaded_at__gte=since)
    newer = Prediction.objects.filter(status=Prediction.Status.DONE, image=OuterRef("image"),
                                      model_version=OuterRef("model_version")).filter(
        Q(created_at__gt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), pk__gt=OuterRef("pk")))
    rows = (
        base.filter(done).exclude(Exists(newer))
        .values("model_version__version")
        .annotate(
            scored=_images(),
            not_assessable=_images(assessable=False),
            quality_failed=_images(assessment__quality__ok=False),
            unfamiliar=_images(assessment__ood__unfamiliar=True),
            clinical_photos=_images(image__kind=LesionImage.Kind.CLINICAL),
        )
        .order_by("model_version__version")
    )
    return [AssessmentRates(version=r["model_version__version"], scored=r["scored"],
                            quality_failed=r["quality_failed"], unfamiliar=r["unfamiliar"],
                            clinical_photos=r["clinical_photos"], not_assessable=r["not_assessable"])
            for r in rows]
