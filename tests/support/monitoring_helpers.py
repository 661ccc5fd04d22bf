"""Synthetic scored uploads for the monitoring tests: images and finished predictions at chosen times
(``auto_now_add`` dates are frozen afterwards with ``update()``)."""
from __future__ import annotations

import itertools
from datetime import date, datetime, time, timedelta
from typing import Sequence

from django.utils import timezone

from cases.models import Lesion, LesionImage, Prediction

_serial = itertools.count(1)


def at(day: date, hour: int = 12) -> datetime:
    """An aware moment on ``day`` (midday by default, safely inside its ISO week)."""
    return timezone.make_aware(datetime.combine(day, time(hour)))


def scored_images(lesion, *, when: datetime, version, probabilities: Sequence[float],
                  flagged: Sequence[bool] | None = None, assessable: Sequence[bool] | None = None,
                  user=None, separate_lesions: bool = False) -> list[LesionImage]:
    """One image per probability on ``lesion``, uploaded at ``when``, each with one finished score
    (``separate_lesions``: each image on a new lesion of its own, in ``lesion``'s case, as the
    lesion flag rate of the drift check counts them)."""
    n = len(probabilities)
    lesions = ([Lesion.objects.create(case=lesion.case, anatomic_site=lesion.anatomic_site) for _ in range(n)]
               if separate_lesions else [lesion] * n)
    flagged = list(flagged) if flagged is not None else [p >= 0.5 for p in probabilities]
    assessable = list(assessable) if assessable is not None else [True] * n
    images = LesionImage.objects.bulk_create([
        LesionImage(lesion=on, file=f"lesion-images/synthetic-{next(_serial)}.png",
                    sha256=f"{next(_serial):064x}", size_bytes=10, width=8, height=8,
                    uploaded_by=user or lesion.case.referring_clinician)
        for on in lesions])
    LesionImage.objects.filter(pk__in=[i.pk for i in images]).update(uploaded_at=when)
    predictions = Prediction.objects.bulk_create([
        Prediction(image=image, model_version=version, status=Prediction.Status.DONE, melanoma_probability=p,
                   malignancy_score=p, flagged=f, assessable=a, finished_at=when)
        for image, p, f, a in zip(images, probabilities, flagged, assessable)])
    Prediction.objects.filter(pk__in=[p.pk for p in predictions]).update(created_at=when)
    return images


def weekly_uploads(lesion, *, monday: date, version, count: int, flag_rate: float,
                   probability: float | None = None, separate_lesions: bool = False) -> list[LesionImage]:
    """``count`` scored images in the week of ``monday``, a ``flag_rate`` share of them flagged; the
    melanoma probability follows the flag (0.8 / 0.1) unless ``probability`` is given
    (``separate_lesions``: one lesion per image, see ``scored_images``)."""
    flagged = [i < round(count * flag_rate) for i in range(count)]
    probabilities = [probability if probability is not None else (0.8 if f else 0.1) for f in flagged]
    return scored_images(lesion, when=at(monday + timedelta(days=2)), version=version,
                         probabilities=probabilities, flagged=flagged, separate_lesions=separate_lesions)
