"""How often the model could not judge recent uploads, per model version (for the admin)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone

from cases.models import LesionImage, Prediction

RECENT_DAYS = 30


@dataclass(frozen=True)
class AssessmentRates:
    """Counts over the scored (done) predictions of one model version in the window."""

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


def assessment_rates(*, days: int = RECENT_DAYS, predictions=None) -> list[AssessmentRates]:
    """Per model version, over predictions finished in the last ``days`` days: how many images
    failed a quality check, looked unfamiliar (out of domain), were clinical photos, and how many
    the model could not assess in all (one image can fail several ways). ``predictions`` (a
    Prediction queryset, e.g. one clinic's) limits what is counted; default all."""
    since = timezone.now() - timedelta(days=days)
    base = Prediction.objects.all() if predictions is None else predictions
    rows = (
        base.filter(status=Prediction.Status.DONE, finished_at__gte=since)
        .values("model_version__version")
        .annotate(
            scored=Count("pk"),
            not_assessable=Count("pk", filter=Q(assessable=False)),
            quality_failed=Count("pk", filter=Q(assessment__quality__ok=False)),
            unfamiliar=Count("pk", filter=Q(assessment__ood__unfamiliar=True)),
            clinical_photos=Count("pk", filter=Q(image__kind=LesionImage.Kind.CLINICAL)),
        )
        .order_by("model_version__version")
    )
    return [AssessmentRates(version=r["model_version__version"], scored=r["scored"],
                            quality_failed=r["quality_failed"], unfamiliar=r["unfamiliar"],
                            clinical_photos=r["clinical_photos"], not_assessable=r["not_assessable"])
            for r in rows]
