"""The scoring lifecycle of a Prediction: dispatch, sweep, and the worker-side run.

State machine: pending → running → done | failed; failed → pending (Retry button).
Every transition is ONE conditional UPDATE, so two workers, a redelivered message or two sweeps
racing each other cannot score an image twice or lose a result.

TensorFlow is imported only inside ``run_prediction`` (through mlcore.inference), in the
worker child that executes the task, never in the web process.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import datetime, timedelta

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Case as Cond
from django.db.models import DateTimeField, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from audit.models import AuditEvent
from cases import prediction_states as states
from cases.context import image_context
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from cases.templatetags.cases_extras import percent_pair
from classifier import artifact_store
from classifier.dispatch import broker_connection, send
from classifier.models import ModelVersion
from classifier.registry import active_version
from mlcore.labels import MALIGNANT_CLASSES

log = logging.getLogger(__name__)

# Transient: the database or broker hiccuped; the same task can simply run again later.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)

SCORE_TASK = "cases.tasks.score_image"
INTERACTIVE_QUEUE = "inference"
# re-scoring with a new version: consumed after the interactive queue (queue_order_strategy "priority")
RESCORE_QUEUE = "rescoring"

HEATMAP_DIR = "heatmaps"
# what scoring reads besides the prediction: the image, its patient (clinical context), the model
_SCORING_RELATED = ("image", "image__lesion__case__patient", "model_version")
# Test-only fault injection (settings.SECONDLOOK_FAULT_SCORING_DELAY_S, read from this variable):
# seconds to sleep between predicting and storing, so a test can kill the worker mid-inference.
FAULT_DELAY_ENV = "SECONDLOOK_FAULT_SCORING_DELAY_S"
Status = Prediction.Status


def hard_time_limit() -> int:
    """Seconds after which a 'running' prediction cannot still be running (Celery kills the task)."""
    return int(settings.CELERY_TASK_TIME_LIMIT)


def dispatch_prediction(prediction_id: int, *, connection=None, queue: str = INTERACTIVE_QUEUE) -> bool:
    """Send the scoring task for a pending prediction; False (and still pending) if the broker is down.
    ``queue``: INTERACTIVE_QUEUE for a clinician's upload, RESCORE_QUEUE for re-scoring, which
    workers take only when no interactive task waits.

    enqueued_at is claimed first with a conditional UPDATE so that dispatch and a concurrent
    sweep don't both send; on a send failure the claim is released for the sweep to retry.
    """
    now = timezone.now()
    if not states.claim_dispatch(prediction_id, now=now):
        return False
    try:
        if connection is not None:
            _send(prediction_id, connection, queue)
        else:
            with broker_connection() as fresh:
                _send(prediction_id, fresh, queue)
    except SoftTimeLimitExceeded:  # the calling task's time is up: not a broker failure, it must stop
        states.release_dispatch(prediction_id, enqueued_at=now)  # the sweep sends it if this did not
        raise
    except Exception as exc:  # broker down: the upload stands, the sweep sends it later
        log.warning("could not enqueue prediction %s (%s: %s); the sweep will retry", prediction_id,
                    type(exc).__name__, exc)
        states.release_dispatch(prediction_id, enqueued_at=now)
        return False
    return True


def _send(prediction_id: int, connection, queue: str = INTERACTIVE_QUEUE) -> None:
    # one try (the sweep is the retry); by name: cases.tasks imports this module
    send(SCORE_TASK, [prediction_id], connection=connection, queue=queue)


def _requeue(prediction_id: int, *, started_before: datetime, now: datetime, worker: str | None = None) -> bool:
    return states.requeue(prediction_id, started_before=started_before, now=now, worker=worker,
                          max_attempts=settings.SCORING_MAX_ATTEMPTS, backoff_s=settings.SCORING_BACKOFF_S)


def live_workers(timeout: float = 1.0) -> set[str] | None:
    """Node names of the workers that answer a ping now; None when the broker cannot be asked."""
    try:
        replies = current_app.control.ping(timeout=timeout) or []
    except Exception as exc:
        log.warning("cannot ping the workers (%s: %s)", type(exc).__name__, exc)
        return None
    return {name for reply in replies for name in reply}


def requeue_orphans(*, now: datetime, alive: set[str] | None, grace: timedelta) -> list[int]:
    """Running predictions whose worker does not answer go back to pending at once, after a short
    ``grace`` (a worker that just claimed one answers anyway). ``alive``: the live node names,
    asked with a ping only when some prediction is running (the sweep runs every 30 s)."""
    running = (Prediction.objects.filter(status=Status.RUNNING, started_at__lt=now - grace)
               .exclude(worker="").values_list("pk", "worker")[:500])
    rows = list(running)
    if rows and alive is None:
        alive = live_workers()
    if not rows or alive is None:
        return []
    return [pk for pk, worker in rows
            if worker not in alive and _requeue(pk, started_before=now - grace, now=now, worker=worker)]


def requeue_previous_incarnation(worker: str) -> list[int]:
    """Running predictions claimed under ``worker``'s node name before now: at start-up those
    belong to a previous process of that name, which died."""
    if not worker:
        return []
    now = timezone.now()
    rows = Prediction.objects.filter(status=Status.RUNNING, worker=worker, started_at__lt=now)
    return [pk for pk in list(rows.values_list("pk", flat=True)[:500])
            if _requeue(pk, started_before=now, now=now, worker=worker)]


def create_missing_predictions() -> list[int]:
    """Images stored while no model version could be looked up get a pending prediction of the
    active version now (they are sent with the others)."""
    orphans = list(LesionImage.objects.filter(predictions__isnull=True).values_list("pk", flat=True)[:500])
    if not orphans:
        return []
    version = active_version()
    return [Prediction.objects.get_or_create(image_id=pk, model_version=version, context_revision=0)[0].pk
            for pk in orphans]


def sweep(*, stale_after: timedelta | None = None, running_stale_after: timedelta | None = None,
          alive: set[str] | None = None) -> list[int]:
    """Re-send predictions that were never enqueued, whose message got lost, or whose worker died.

    - images without any prediction (uploaded while the registry could not be read) get one;
    - running on a worker that no longer answers a ping (``alive``, asked when needed), or for
      longer than ``running_stale_after`` (default: the task hard time limit): back to pending,
      sent again after a back-off, failed for good after SCORING_MAX_ATTEMPTS;
    - pending with enqueued_at NULL (broker was down) or older than ``stale_after``.
    Returns the ids sent.
    """
    now = timezone.now()
    stale_after = stale_after if stale_after is not None else timedelta(seconds=hard_time_limit() + 60)
    running_stale_after = running_stale_after if running_stale_after is not None else timedelta(seconds=hard_time_limit())
    try:
        create_missing_predictions()
    except Exception as exc:  # the registry is still unreadable: next sweep
        log.warning("cannot create the missing predictions yet (%s: %s)", type(exc).__name__, exc)
    stuck = Prediction.objects.filter(status=Status.RUNNING, started_at__lt=now - running_stale_after)
    for prediction_id in list(stuck.values_list("pk", flat=True)[:500]):
        _requeue(prediction_id, started_before=now - running_stale_after, now=now)
    requeue_orphans(now=now, alive=alive, grace=timedelta(seconds=settings.SCORING_ORPHAN_GRACE_S))
    # a prediction of an image that already has another version's is a re-score: low priority,
    # and one sent a while ago is most likely still waiting behind its own backlog
    earlier = Prediction.objects.filter(image_id=OuterRef("image_id")).exclude(pk=OuterRef("pk"))
    rescore_stale_after = timedelta(seconds=settings.RESCORE_STALE_AFTER_S)
    candidates = Prediction.objects.filter(status=Status.PENDING).annotate(rescore=Exists(earlier)).filter(
        Q(enqueued_at__isnull=True)
        | Q(rescore=False, enqueued_at__lt=now - stale_after)
        | Q(rescore=True, enqueued_at__lt=now - max(stale_after, rescore_stale_after))
    ).filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    sent: list[int] = []
    # uploads first, never-sent first: a re-score backlog must not crowd an upload out of the batch
    rows = list(candidates.order_by("rescore", F("enqueued_at").asc(nulls_first=True), "pk")
                .values_list("pk", "enqueued_at", "rescore")[:500])
    if not rows:
        return sent
    with broker_connection() as connection:
        for prediction_id, enqueued_at, rescore in rows:
            # Re-claim with a conditional UPDATE on the value we read: a concurrent sweep loses.
            if enqueued_at is not None and not states.release_dispatch(prediction_id, enqueued_at=enqueued_at):
                continue
            if dispatch_prediction(prediction_id, connection=connection,
                                   queue=RESCORE_QUEUE if rescore else INTERACTIVE_QUEUE):
                sent.append(prediction_id)
    return sent


def stale_rescore_reason(version_name: str) -> str:
    """Why a re-score of ``version_name`` was not scored (`stale_rescores`)."""
    return (f"Not scored: model version {version_name} was rolled back or replaced by another version before "
            f"this re-score ran.")


def stale_rescores() -> Q:
    """Re-scores whose version is no longer active: revision 0, without a correction's reason, of a
    version that is not the image's first (an earlier prediction of the image is another version's).
    An image's first score, made with the version active at upload, is never one of them."""
    earlier = (Prediction.objects.filter(image_id=OuterRef("image_id"), pk__lt=OuterRef("pk"))
               .exclude(model_version_id=OuterRef("model_version_id")))
    # a correction's re-score carries its reason (and may be revision 0 of a version that had not scored
    # the image yet): the inputs changed, so it is scored whatever the version, never dropped as stale
    return (Q(context_revision=0, reason="") & ~Q(model_version__status=ModelVersion.Status.ACTIVE)
            & Q(Exists(earlier)))


def _claim(prediction_id: int, *, run_by: str, worker: str) -> tuple[bool, datetime]:
    """pending → running in one UPDATE (see prediction_states.start); a prediction that has used
    up its attempts is failed instead."""
    now = timezone.now()
    max_attempts = settings.SCORING_MAX_ATTEMPTS
    claimed = states.start(prediction_id, now=now, stale_before=now - timedelta(seconds=hard_time_limit()),
                           max_attempts=max_attempts, run_by=run_by, worker=worker)
    if not claimed:
        attempts = Prediction.objects.filter(pk=prediction_id).values_list("attempts", flat=True).first()
        if attempts is not None and attempts >= max_attempts:
            states.give_up(prediction_id, attempts=attempts, status=Status.PENDING)
    return claimed, now


def _fail(prediction_id: int, started_at, message: str) -> None:
    states.fail(prediction_id, started_at=started_at, reason=message)
    log.warning("prediction %s failed: %s", prediction_id, message)


def _flags(result, model_version) -> tuple[bool, list[str]]:
    """Flag decision with the registry's thresholds, which an admin may have tuned after export.

    A threshold left empty in the registry falls back to the model's own decision for that
    score; reasons the model gives for anything other than these two scores are always kept.
    """
    scores = (
        ("melanoma probability", result.melanoma_probability, model_version.melanoma_threshold),
        ("malignancy score", result.malignancy_score, model_version.malignancy_threshold),
    )
    own = list(result.flag_reasons)
    reasons = [r for r in own if not r.lower().startswith(tuple(label for label, _, _ in scores))]
    for label, value, threshold in scores:
        if threshold is None:
            reasons += [r for r in own if r.lower().startswith(label)]
        elif value >= threshold:
            # in the page's own words and precision (percent_pair): "9.5% ≥ threshold 9.2%", "18.45% ≥
            # threshold 18.44%", never "0.10 ≥ threshold 0.09" nor "18.45% ≥ threshold 18.4%"
            shown, shown_threshold = percent_pair(value, threshold)
            reasons.append(f"{label} {shown} \u2265 threshold {shown_threshold}")
    return bool(reasons) or (bool(result.flagged) and not own), reasons


CLINICAL_PHOTO_NOTE = ("a clinical (close-up) photo: this model is validated for dermoscopic images only, "
                       "so it does not score clinical photos")
CANNOT_ASSESS = "Model could not assess this image"


def assessment_of(result, image) -> tuple[bool, list[str]]:
    """Whether the scores can be shown as a result, and why not: the model's own quality and
    out-of-domain checks, and the image kind (no model here is validated for clinical photos)."""
    notes = list(getattr(result, "assessment_notes", None) or [])
    if image.kind == LesionImage.Kind.CLINICAL:
        notes.insert(0, CLINICAL_PHOTO_NOTE)
    return (not notes) and bool(getattr(result, "assessable", True)), notes


def _read_image_bytes(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


def score_batch_size() -> int:
    """At most this many predictions are scored in one forward pass by one task (1 disables
    batching): settings.SECONDLOOK_SCORE_BATCH."""
    return max(1, int(settings.SECONDLOOK_SCORE_BATCH))


def _claim_batch_mates(prediction: Prediction, limit: int, *, run_by: str, worker: str) -> list[tuple[int, datetime]]:
    """Claim up to ``limit`` other pending predictions of the same model version whose task is already
    enqueued (enqueued_at set), each with the same conditional UPDATE as ``_claim``. Their own task
    will find them running or done and do nothing; if this worker dies, the sweep re-queues them
    (running rows older than the hard time limit) like any orphaned prediction."""
    if limit <= 0:
        return []
    own = Q(status=Status.RUNNING, run_by=run_by) if run_by else Q(pk__in=[])
    mates = Prediction.objects.filter(Q(status=Status.PENDING, enqueued_at__isnull=False) | own,
                                      model_version_id=prediction.model_version_id).exclude(pk=prediction.pk)
    if prediction.model_version.status != ModelVersion.Status.ACTIVE:
        mates = mates.exclude(stale_rescores())  # their own task fails them, saying why
    ids = list(mates.order_by("enqueued_at", "pk").values_list("pk", flat=True)[:limit])
    claimed = []
    for pk in ids:
        now = timezone.now()
        if states.start_batch_mate(pk, now=now, max_attempts=settings.SCORING_MAX_ATTEMPTS, run_by=run_by,
                                   worker=worker):
            claimed.append((pk, now))
    return claimed


def _release(prediction_id: int, started_at) -> None:
    """running → pending for a batch mate this task could not score; its own task scores it."""
    states.release(prediction_id, started_at=started_at)


def run_prediction(*, prediction_id: int, run_by: str = "", worker: str = "") -> str:
    """Score one prediction's image with its model version; returns what happened (for the task log).

    Safe to call any number of times for the same prediction: only one caller claims it. Under a
    burst, up to SECONDLOOK_SCORE_BATCH - 1 other enqueued predictions of the same model version are
    claimed too and scored in the same forward pass (a lone image costs one extra SELECT); if that
    pass fails, the own image is scored alone and the mates left to their own tasks (`_forward_pass`).
    A resumed run (its earlier one never finished) scores its image alone and releases its mates.
    """
    claimed, started_at = _claim(prediction_id, run_by=run_by, worker=worker)
    if not claimed:
        return "not claimable (already running or finished)"
    prediction = Prediction.objects.select_related(*_SCORING_RELATED).get(pk=prediction_id)
    # a run resumed (its own row was running already: the message redelivered after its worker died,
    # or retried), or an image whose earlier run never finished, is scored alone: the image that
    # stopped the worker may be any of the batch, and re-claiming them all would cost every mate an
    # attempt per crash until SCORING_MAX_ATTEMPTS failed them. The mates still running under this
    # run go back to pending with their attempts kept, for the sweep to send again.
    resumed = prediction.attempts > 1
    if resumed:
        states.release_batch_mates(run_by, own_id=prediction_id)
    model_version = prediction.model_version
    if (model_version.status != ModelVersion.Status.ACTIVE
            and Prediction.objects.filter(stale_rescores(), pk=prediction_id).exists()):
        _fail(prediction_id, started_at, stale_rescore_reason(model_version.version))
        return "not scored (its version is no longer active)"
    try:
        from mlcore.model_store import ModelLoadError, get_model
        from mlcore.inference import decode_for
        from mlcore.preprocess import ImageDecodeError
    except Exception as exc:  # the ML stack is broken on this worker
        _fail(prediction_id, started_at, f"Classifier unavailable on this worker: {type(exc).__name__}: {exc}")
        return "failed"
    mates: list[tuple[int, datetime]] = []
    try:
        try:
            model = get_model(artifact_store.local_dir(model_version))
        except (ModelLoadError, artifact_store.ArtifactUnavailable) as exc:
            _fail(prediction_id, started_at, f"Model could not be loaded: {exc}")
            return "failed"
        if not resumed:
            mates = _claim_batch_mates(prediction, score_batch_size() - 1, run_by=run_by, worker=worker)
        batch: list[tuple[Prediction, datetime, object]] = []
        own_failed = False
        for pred, started in [(prediction, started_at)] + [
            (Prediction.objects.select_related(*_SCORING_RELATED).get(pk=pk), st)
            for pk, st in mates
        ]:
            try:
                batch.append((pred, started, decode_for(model, _read_image_bytes(pred.image.file.name))))
            except TRANSIENT_ERRORS:  # ConnectionError and TimeoutError are OSErrors: not the image's fault
                raise
            except (ImageDecodeError, FileNotFoundError, OSError) as exc:
                _fail(pred.pk, started, f"Stored image could not be read: {type(exc).__name__}: {exc}")
                own_failed = own_failed or pred.pk == prediction_id
        if not batch:
            return "failed"
        batch, results, non_finite = _forward_pass(model, batch, own_id=prediction_id)
    except TRANSIENT_ERRORS:
        raise  # as when storing: the task retries and resumes its own row (alone: its mates are released)
    except SoftTimeLimitExceeded:
        _fail(prediction_id, started_at, f"Scoring took longer than {settings.CELERY_TASK_SOFT_TIME_LIMIT} s and was stopped.")
        for pk, st in mates:
            _release(pk, st)
        return "failed"
    except Exception as exc:
        _fail(prediction_id, started_at, f"Scoring error: {type(exc).__name__}: {exc}")
        for pk, st in mates:
            _release(pk, st)
        log.exception("prediction %s", prediction_id)
        return "failed"

    delay = settings.SECONDLOOK_FAULT_SCORING_DELAY_S
    if delay:
        time.sleep(delay)
    outcome = "failed" if own_failed else "not scored"
    for i, (pred, started, pixels) in enumerate(batch):
        if i >= len(results):  # a stand-in classifier may return fewer results: the rest go back
            _release(pred.pk, started)
            continue
        if i in non_finite:  # NaN is never >= a threshold: stored, it would read as a benign 0 %
            _fail(pred.pk, started, non_finite[i])
            if pred.pk == prediction_id:
                outcome = "failed"
            continue
        try:
            heatmap = _heatmap_png(model, pixels)
            what = _store_result(pred, started, results[i], heatmap,
                                 card_sha256=getattr(model, "card_sha256", ""))
        except TRANSIENT_ERRORS:
            raise  # the task retries and resumes its own running rows
        except Exception as exc:  # a time limit, a full disk, a value the database refuses
            if isinstance(exc, SoftTimeLimitExceeded):
                reason = f"Scoring took longer than {settings.CELERY_TASK_SOFT_TIME_LIMIT} s and was stopped."
            else:
                reason = f"The result could not be saved: {type(exc).__name__}: {exc}"
                log.exception("saving prediction %s", pred.pk)
            if pred.pk == prediction_id:
                _fail(prediction_id, started_at, reason)
                outcome = "failed"
            else:
                _release(pred.pk, started)  # its own task tries again and says why if it fails too
            continue
        if pred.pk == prediction_id:
            outcome = what
    if len(batch) > 1:
        log.info("prediction %s scored with %d batch mates", prediction_id, len(batch) - 1)
    return outcome


def _predict(model, batch: list) -> tuple[list, dict[int, str]]:
    """One forward pass over ``batch``: the results, and the reasons of the images (by index) whose
    output was not finite (they fail with it; the others are stored)."""
    from mlcore.inference import NonFiniteOutputError, predict_images

    try:
        return predict_images(model, [pixels for _, _, pixels in batch],
                              contexts=[image_context(pred.image) for pred, _, _ in batch]), {}
    except NonFiniteOutputError as exc:
        return exc.results, exc.reasons


def _forward_pass(model, batch: list, *, own_id: int) -> tuple[list, list, dict[int, str]]:
    """Score ``batch`` (the task's own image and its batch mates); returns the part of it scored,
    the results and the non-finite reasons (`_predict`).

    One bad image (a model error, a MemoryError) breaks the whole pass, and it may as well be a
    mate's as the own: then the mates go back to pending, for their own tasks to score alone, and
    the own image is tried alone once, so only its own failure reaches the caller."""
    try:
        return (batch, *_predict(model, batch))
    except TRANSIENT_ERRORS + (SoftTimeLimitExceeded,):
        raise  # the caller's handling: retried, or out of time (a second pass would not fit either)
    except Exception as exc:
        if len(batch) == 1:
            raise
        log.warning("a batch of %d images failed (%s: %s); prediction %s is scored alone, the others by their "
                    "own tasks", len(batch), type(exc).__name__, exc, own_id)
    for pred, started, _ in batch:
        if pred.pk != own_id:
            _release(pred.pk, started)
    alone = [entry for entry in batch if entry[0].pk == own_id]  # empty when the own image was unreadable
    return (alone, *_predict(model, alone)) if alone else ([], [], {})


def _heatmap_png(model, pixels) -> bytes | None:
    """The Grad-CAM overlay; a failure here must not lose the scores."""
    try:
        from mlcore.explain import gradcam_overlay_png

        return gradcam_overlay_png(model, pixels, class_name="melanoma")
    except Exception:
        log.exception("Grad-CAM overlay failed")
        return None


def _store_result(prediction: Prediction, started_at, result, heatmap: bytes | None, *,
                  card_sha256: str = "") -> str:
    """running → done with the scores and the sha256 of the model card they were made with (its image
    checks may be re-assessed in place); flags the lesion. The heatmap file is removed if this loses."""
    assessable, notes = assessment_of(result, prediction.image)
    if assessable:
        flagged, reasons = _flags(result, prediction.model_version)
    else:
        # never silently unflagged: the lesion goes to the dermatologists with its own reason
        flagged, reasons = True, [f"{CANNOT_ASSESS}: {note}" for note in notes]
    review = review_of_image(prediction.image)
    covered = review is not None and review_covers(review, prediction)
    # only the model's own call can disagree with the review: the flag of an image it could not
    # assess (a clinical photo, a blurred or unfamiliar image) is forced, not a judgement
    disagreement = (review_disagreement(review, flagged=flagged, correction=bool(prediction.reason), covered=covered)
                    if review is not None and assessable else "")
    heatmap_name = ""
    if heatmap:
        heatmap_name = default_storage.save(f"{HEATMAP_DIR}/{uuid.uuid4().hex}.png", ContentFile(heatmap))
    now = timezone.now()
    try:
        with transaction.atomic():
            stored = states.finish(
                prediction.pk, started_at=started_at,
                class_probabilities={k: float(v) for k, v in result.class_probabilities.items()},
                melanoma_probability=_unit(result.melanoma_probability),
                malignancy_score=_unit(result.malignancy_score),
                flagged=flagged,
                flag_reasons=reasons,
                inference_ms=float(result.inference_ms),
                clinical_context=getattr(result, "clinical_context", None),
                assessable=assessable,
                assessment_notes=notes,
                assessment=getattr(result, "assessment", None),
                prediction_set=getattr(result, "prediction_set", None),
                heatmap=heatmap_name,
                review_disagreement=disagreement,
                model_card_sha256=card_sha256,
            )
            if not stored:
                raise _Superseded
            # a score the reviewer saw (re-scored with a new version since) does not go back to the
            # queue: a disagreement is listed for the admin instead. One they could not have seen
            # (a correction's re-score, a first score that landed after the review) is a new question
            if flagged and not covered:
                _flag_lesion(prediction.image.lesion_id, now)
            AuditEvent.objects.create(
                action="score", object_type="prediction", object_id=str(prediction.pk),
                patient_id=prediction.image.lesion.case.patient_id,
                clinic_id=Case.objects.filter(pk=prediction.image.lesion.case_id).values_list("patient__clinic_id", flat=True).first(),
                new_values={"model_version": prediction.model_version.version, "melanoma_probability": result.melanoma_probability,
                            "malignancy_score": result.malignancy_score, "flagged": flagged,
                            "assessable": assessable},
            )
    except _Superseded:
        if heatmap_name:
            default_storage.delete(heatmap_name)
        return "superseded by another run"
    except BaseException:
        if heatmap_name:
            default_storage.delete(heatmap_name)
        raise
    if not assessable:
        return "done (model could not assess)"
    return "done (flagged)" if flagged else "done"


class _Superseded(Exception):
    """Another run re-claimed the prediction while this one was predicting."""


def _unit(value: float) -> float:
    """Clamp float noise (1.0000001) into [0, 1] so the database range check holds; a NaN or an
    infinity is refused (``max(0.0, nan)`` is 0.0: it would be stored as a benign 0 %)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the model returned a non-numeric score ({value}) for this image")
    return min(1.0, max(0.0, value))


def review_of_image(image: LesionImage) -> Review | None:
    """The newest review of the image's lesion made after the image was uploaded (so: a review
    that saw this image), or None."""
    return (Review.objects.filter(lesion_id=image.lesion_id, created_at__gte=image.uploaded_at)
            .order_by("-created_at").first())


def review_covers(review: Review, prediction: Prediction) -> bool:
    """Whether ``review`` speaks for ``prediction``: the dermatologist could have seen the image's
    score when signing it. Not so for a correction's re-score (it carries the ``reason``) made after
    the review, nor for the image's first score when it landed after the review (still waiting or
    failed when the review was saved). A new version's re-score of a score the reviewer saw is
    covered: it is listed for the admin when it disagrees, not queued again."""
    if prediction.reason and prediction.created_at > review.created_at:
        return False
    return (Prediction.objects.filter(image_id=prediction.image_id, status=Status.DONE,
                                      finished_at__lte=review.created_at)
            .exclude(pk=prediction.pk).exists())


def review_disagreement(review: Review, *, flagged: bool, correction: bool = False, covered: bool = True) -> str:
    """Why a score disagrees with a dermatologist's review of the same image ("" when it agrees):
    a flag on a lesion reviewed as benign with reassurance or follow-up, or no flag on one
    reviewed as malignant or sent for biopsy or excision. ``correction``: the score is a
    correction's re-score (corrected inputs); else, not ``covered`` (`review_covers`): a score
    that finished after the review; else a new model's re-score of what the reviewer saw."""
    malignant = review.final_diagnosis in MALIGNANT_CLASSES or review.management in (
        Review.Management.BIOPSY, Review.Management.EXCISION)
    who = ("Re-score after a record correction" if correction
           else "New model" if covered else "A score finished after the review")
    reviewed = f"a lesion reviewed as {review.final_diagnosis} ({review.get_management_display().lower()})"
    if flagged and not malignant:
        return f"{who} disagrees with review: it flags {reviewed}."
    if not flagged and malignant:
        return f"{who} disagrees with review: it does not flag {reviewed}."
    return ""


def _flag_lesion(lesion_id: int, when) -> None:
    """Put the lesion (and so its case) in the review queue. A lesion already waiting keeps the time
    it was first flagged: the queue ranks and shows the wait by it."""
    # one UPDATE: its CASE reads the row as it was, so a concurrent flag cannot reset the wait either
    Lesion.objects.filter(pk=lesion_id).update(
        flagged=True, awaiting_review=True,
        flagged_at=Cond(When(awaiting_review=True, flagged_at__isnull=False, then=F("flagged_at")),
                        default=Value(when, output_field=DateTimeField())))
    # A case reviewed earlier goes back to open when a new image of it is flagged.
    Case.objects.filter(lesions__pk=lesion_id, status=Case.Status.REVIEWED).update(status=Case.Status.OPEN)
