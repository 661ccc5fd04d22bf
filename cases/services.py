"""Write services for clinicians: patients, cases, lesions and image uploads.

Each service takes keyword-only arguments, validates them, writes inside a transaction and
records the audit event in the same transaction; scoring is dispatched only after commit.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Iterable

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from audit import log as audit_log
from cases import corrections, prediction_states, scoring
from classifier.registry import active_version
from cases.access import can_edit_case, clinic_of, is_clinician
from cases.models import Case, Clinic, Lesion, LesionImage, Patient, PatientLesion, Prediction
from cases.roles import is_admin
from cases.uploads import NormalisedImage, UploadRejected, normalise_upload, sanitize_filename

log = logging.getLogger(__name__)

IMAGE_DIR = "lesion-images"
PATIENT_FIELDS = ("identifier", "birth_year", "sex", "fitzpatrick_type")
CASE_FIELDS = ("visit_date", "clinical_question", "notes", "status")
LESION_FIELDS = ("tracked", "anatomic_site", "description")
TRACKED_FIELDS = ("number", "side", "map_view", "map_x", "map_y")
NOT_STORED = "It could not be read or stored; nothing was saved for this file. Please upload it again."
# never the client's file name (``original_name``): it may name the patient, and only the clinic sees it
IMAGE_AUDIT_FIELDS = ("file", "sha256", "size_bytes", "width", "height", "kind", "original_format", "acquired_on",
                      "source_body_site")


class CaseClosed(PermissionDenied):
    """The user may edit the case's clinic's records, but the case is closed: nothing may be added
    (the pages never offer it; the API answers 409 with the message)."""


ADD_PATIENTS_REFUSED = "Only clinicians who belong to a clinic can add patients."


def may_add_patients(user) -> bool:
    """Clinicians who belong to a clinic add patients (to it); checked before any input is judged,
    so a refusal never depends on what the clinic holds."""
    return is_clinician(user) and clinic_of(user) is not None


def closed_to(user, case: Case) -> bool:
    """The case is closed and is the only reason ``can_edit_case`` refuses the user."""
    return case.status == Case.Status.CLOSED and (
        is_admin(user) or (is_clinician(user) and clinic_of(user) == case.patient.clinic))


def _require_editable(user, case: Case, refusal: str) -> None:
    """Raise CaseClosed for a closed case the user could otherwise edit, else PermissionDenied(refusal)."""
    if can_edit_case(user, case):
        return
    if closed_to(user, case):
        raise CaseClosed("The case is closed.")
    raise PermissionDenied(refusal)


@transaction.atomic
def create_patient(*, user, identifier: str, birth_year: int, sex: str, fitzpatrick_type: int | None = None,
                   request: HttpRequest | None = None) -> Patient:
    """A patient in the user's clinic."""
    if not may_add_patients(user):
        raise PermissionDenied(ADD_PATIENTS_REFUSED)
    clinic = clinic_of(user)
    # the clinic's row, locked until commit: a concurrent patient of this clinic waits, then its
    # identifier check (full_clean) sees this one, so a duplicate is a 400 rather than a database error
    Clinic.objects.select_for_update().get(pk=clinic.pk)
    patient = Patient(clinic=clinic, identifier=identifier, birth_year=birth_year, sex=sex,
                      fitzpatrick_type=fitzpatrick_type, created_by=user)
    return _save_new(patient, fields=PATIENT_FIELDS, user=user, request=request)


def _save_new(obj, *, fields, user, request: HttpRequest | None):
    """Validate (model constraints included), save and audit a new record."""
    obj.full_clean()
    obj.save()
    audit_log.record(action="create", obj=obj, actor=user, request=request, new=audit_log.snapshot(obj, fields))
    return obj


@transaction.atomic
def create_case(*, user, patient: Patient, clinical_question: str, notes: str = "", visit_date: date | None = None,
                request: HttpRequest | None = None) -> Case:
    """A new case (a visit, today unless ``visit_date`` says otherwise) for a patient of the user's clinic."""
    if not (is_clinician(user) and clinic_of(user) == patient.clinic):
        raise PermissionDenied("Only clinicians of the patient's clinic can open a case.")
    case = Case(patient=patient, referring_clinician=user, clinical_question=clinical_question, notes=notes,
                visit_date=visit_date or timezone.localdate())
    return _save_new(case, fields=CASE_FIELDS, user=user, request=request)


@transaction.atomic
def add_lesion(*, user, case: Case, anatomic_site: str, description: str = "", same_as: PatientLesion | None = None,
               side: str = "", map_view: str = "", map_x: float | None = None, map_y: float | None = None,
               request: HttpRequest | None = None) -> Lesion:
    """A lesion at this visit: a new patient lesion, or ``same_as`` (one of the patient's lesions
    seen at an earlier visit), so its visits form one timeline. A body-map point or side given
    for an existing lesion corrects where it is (audited)."""
    _require_editable(user, case, "Only clinicians of the patient's clinic can add lesions.")
    # the patient's row, locked until commit: a concurrent lesion of this patient waits here, so
    # that it numbers after this one (MAX + 1) and sees it in the "already part of this visit" check
    Patient.objects.select_for_update().get(pk=case.patient_id)
    if same_as is None:
        tracked = PatientLesion(patient=case.patient, number=PatientLesion.next_number(case.patient),
                                side=side or "", map_view=map_view or "", map_x=map_x, map_y=map_y)
        _save_new(tracked, fields=TRACKED_FIELDS, user=user, request=request)
    else:
        tracked = same_as
        if tracked.patient_id != case.patient_id:
            raise ValidationError("That lesion belongs to another patient.")
        if Lesion.objects.filter(case=case, tracked=tracked).exists():
            raise ValidationError(f"{tracked.label} is already part of this visit.")
        # a side or point given now corrects the recorded one; left empty, the old one stays
        correction = ({"side": side} if side else {}) | (
            {"map_view": map_view, "map_x": map_x, "map_y": map_y} if map_view else {})
        if correction:
            old = audit_log.snapshot(tracked, TRACKED_FIELDS)
            for name, value in correction.items():
                setattr(tracked, name, value)
            tracked.full_clean()
            tracked.save()
            audit_log.record(action="update", obj=tracked, actor=user, request=request, old=old,
                             new=audit_log.snapshot(tracked, TRACKED_FIELDS))
    lesion = Lesion(case=case, tracked=tracked, anatomic_site=anatomic_site, description=description)
    return _save_new(lesion, fields=LESION_FIELDS, user=user, request=request)


@dataclass
class UploadOutcome:
    """What happened to each file of one upload, for the messages shown to the user."""

    accepted: list[LesionImage] = field(default_factory=list)
    duplicates: list[tuple[str, LesionImage | None]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    scoring_unavailable: str = ""
    # (file name, note) for an accepted file stored as another kind than the form asked for, or whose
    # DICOM body site replaced the lesion's "unknown" one (``_site_note``)
    notes: list[tuple[str, str]] = field(default_factory=list)


def _store(content: bytes) -> str:
    """Write under a generated name; the client's name never reaches the storage path."""
    return default_storage.save(f"{IMAGE_DIR}/{uuid.uuid4().hex}.png", ContentFile(content))


def _delete_quietly(name: str) -> None:
    try:
        default_storage.delete(name)
    except Exception:  # the orphan is harmless; losing the original error would not be
        log.exception("could not delete stored file %s", name)


def _save_image(*, lesion: Lesion, image: NormalisedImage, kind: str, user, model_version,
                request: HttpRequest | None) -> LesionImage:
    """Store one image and its rows (``_image_rows``) atomically; the file goes if the rows don't.

    Once the rows are committed, a failure of a hook run after the commit (sending a prediction,
    the database dropped while claiming it) must not delete their file: the predictions stay
    pending and the sweep sends them."""
    name = _store(image.content)
    site_before = lesion.anatomic_site
    committed: list[bool] = []
    try:
        with transaction.atomic():
            transaction.on_commit(partial(committed.append, True))  # the first hook: the rows are in
            row = _image_rows(lesion=lesion, image=image, name=name, kind=kind, user=user,
                              model_version=model_version, request=request)
    except BaseException as exc:
        if not committed:
            _delete_quietly(name)
            lesion.anatomic_site = site_before  # the update, if any, was rolled back with the rows
            raise
        if not isinstance(exc, Exception):
            raise
        log.exception("a send after the commit of image %s failed; the sweep sends its predictions", row.pk)
    return row


def _image_rows(*, lesion: Lesion, image: NormalisedImage, name: str, kind: str, user, model_version,
                request: HttpRequest | None) -> LesionImage:
    """The image's row and audit event, and its pending prediction, sent after the commit.

    A body site stated by the file fills in a lesion whose site is unknown before the prediction
    exists, so that scoring sees it; the lesion's other images, scored with the site unknown, are
    scored again with it (as a correction of the site would)."""
    # the case's row lock, as a review's save takes it (queue.submit_reviews): a review being saved
    # either sees this image in its fingerprint or is refused, never signs it unseen
    list(Case.objects.select_for_update().filter(pk=lesion.case_id).values_list("pk", flat=True))
    row = LesionImage(
        lesion=lesion, file=name, sha256=image.sha256, size_bytes=len(image.content),
        width=image.width, height=image.height, kind=kind, original_name=image.original_name,
        original_format=image.original_format, acquired_on=image.acquired_on,
        source_body_site=image.body_site or "", uploaded_by=user,
    )
    row.full_clean(validate_unique=False, validate_constraints=False)
    row.save()
    new = audit_log.snapshot(row, IMAGE_AUDIT_FIELDS)
    if image.laterality:
        new["source_laterality"] = image.laterality  # stated by the file; the models have no field for it
    if image.source_sop_class:
        new["source_sop_class"] = image.source_sop_class  # what decided the kind of a DICOM image
    audit_log.record(action="upload", obj=row, actor=user, request=request, new=new)
    row.rescored_for_site = 0  # how many other images this file's site sent for scoring again (_site_note)
    if _adopt_file_site(lesion=lesion, site=image.body_site, user=user, request=request) and model_version is not None:
        # never the client's file name: the reason is shown on the pages and kept with the scores
        row.rescored_for_site = len(corrections.rescore(
            lesion.images.exclude(pk=row.pk),
            reason=f"site set from unknown to {lesion.anatomic_site} from the DICOM file of image {row.pk}"))
    if model_version is not None:
        prediction = Prediction.objects.create(image=row, model_version=model_version)
        # robust: a failed send leaves the prediction pending for the sweep (a lambda: Django's
        # robust hook names the callable by __qualname__, which a partial lacks)
        transaction.on_commit(lambda pk=prediction.pk: scoring.dispatch_prediction(pk), robust=True)
    return row


def _adopt_file_site(*, lesion: Lesion, site: str | None, user, request: HttpRequest | None) -> bool:
    """Set an "unknown" lesion site to the one the image file states (audited); True if it did. A
    site the clinician chose is never overwritten. The conditional update keeps concurrent uploads
    from racing."""
    if not site or site not in Lesion.Site.values or site == Lesion.Site.UNKNOWN:
        return False
    if not Lesion.objects.filter(pk=lesion.pk, anatomic_site=Lesion.Site.UNKNOWN).update(anatomic_site=site):
        return False
    lesion.anatomic_site = site
    audit_log.record(action="update", obj=lesion, actor=user, request=request,
                     old={"anatomic_site": Lesion.Site.UNKNOWN}, new={"anatomic_site": site,
                                                                      "reason": "from the DICOM file"})
    return True


def _active_model_version():
    """The active model, or None when none can be registered (the upload must still succeed)."""
    try:
        return active_version()
    except Exception as exc:
        log.error("no active model version: %s", exc)
        return None


def _where(lesion: Lesion, position: int, image: NormalisedImage | None = None) -> str:
    """Which upload failed, for the log: the lesion, the file's place in the batch and the start of
    its pixel digest, never the client's file name (it may name the patient)."""
    digest = f", sha256 {image.sha256[:12]}" if image is not None else ""
    return f"lesion {lesion.pk}, file {position} of the upload{digest}"


def _add_image(outcome: UploadOutcome, *, display_name: str, where: str, lesion: Lesion, image: NormalisedImage,
               **save) -> bool:
    """Store one normalised image unless the lesion already has its pixels, and note in ``outcome``
    what happened; True when the lesion now holds these pixels (stored now or before). Any failure
    is this file's alone: reported, logged by ``where`` (never the client's file name), and nothing
    of it is left behind (``_save_image`` removes its file)."""
    try:
        existing = LesionImage.objects.filter(lesion=lesion, sha256=image.sha256).first()
        if existing is not None:
            outcome.duplicates.append((display_name, existing))
            return True
        outcome.accepted.append(_save_image(lesion=lesion, image=image, **save))
        return True
    except IntegrityError:
        # A concurrent upload of the same pixels won the unique constraint.
        outcome.duplicates.append((display_name, LesionImage.objects.filter(lesion=lesion, sha256=image.sha256).first()))
        return True
    except DatabaseError:
        log.exception("saving an uploaded image failed (%s)", where)
        outcome.rejected.append((display_name, "It could not be saved because of a database error; nothing was "
                                               "stored. Please upload it again."))
    except OSError:
        # Local storage full or unwritable: report this file, keep going with the others.
        log.exception("storing an uploaded image failed (%s)", where)
        outcome.rejected.append((display_name, "It could not be stored because of a storage error; nothing was "
                                               "saved. Please upload it again."))
    except Exception:  # object storage (botocore's ClientError is no OSError) or anything unforeseen
        log.exception("storing an uploaded image failed (%s)", where)
        outcome.rejected.append((display_name, NOT_STORED))
    return False


def upload_images(*, user, lesion: Lesion, files: Iterable[UploadedFile], kind: str = LesionImage.Kind.DERMOSCOPIC,
                  request: HttpRequest | None = None) -> UploadOutcome:
    """Validate, normalise and store several images of one lesion.

    Every file is judged on its own: a rejected file leaves nothing behind and never costs the
    good ones. Each accepted image commits separately with its pending prediction, and its
    scoring task is sent after that commit. A DICOM file's stated body site is kept on the image,
    and fills in the lesion's site only where that was "unknown"; a DICOM file stating it is a clinical
    photo is stored as one whatever ``kind`` says (``_image_kind``, noted in ``UploadOutcome.notes``).
    """
    _require_editable(user, lesion.case, "Only clinicians of the patient's clinic can upload images.")
    if kind not in LesionImage.Kind.values:
        raise ValidationError(f"Unknown image kind {kind!r}.")
    outcome = UploadOutcome()
    model_version = _active_model_version()
    if model_version is None:
        outcome.scoring_unavailable = "No model is available, so the images were stored but not scored yet."
    held: set[str] = set()  # digests the lesion holds now: a later copy in the batch is a duplicate
    for position, upload in enumerate(files, start=1):
        display_name = sanitize_filename(upload.name)
        try:
            image = normalise_upload(upload)
        except UploadRejected as exc:
            outcome.rejected.append((display_name, str(exc)))
            continue
        except Exception:  # a reader bug or a file no check foresaw: this file only, never the batch
            log.exception("reading an uploaded file failed (%s)", _where(lesion, position))
            outcome.rejected.append((display_name, NOT_STORED))
            continue
        if image.sha256 in held:
            outcome.duplicates.append((display_name, None))
            continue
        image_kind, note = _image_kind(image, kind)
        site_before = lesion.anatomic_site
        # only once it is held: when the first copy fails to save, the next copy is tried, not called a duplicate
        if _add_image(outcome, display_name=display_name, where=_where(lesion, position, image), lesion=lesion,
                      image=image, kind=image_kind, user=user, model_version=model_version, request=request):
            held.add(image.sha256)
            if note:
                outcome.notes.append((display_name, note))
            if lesion.anatomic_site != site_before:  # this file, just stored, filled in the unknown site
                outcome.notes.append((display_name, _site_note(lesion, outcome.accepted[-1].rescored_for_site)))
    return outcome


def _site_note(lesion: Lesion, rescored: int) -> str:
    """What the upload changed when a DICOM file's body site replaced the lesion's "unknown" one."""
    site = lesion.get_anatomic_site_display()
    again = (f"; its {rescored} other image(s) are being scored again with the new site" if rescored else "")
    return f"The DICOM file states the body site, so the lesion's site was changed from Unknown to {site}{again}."


def _image_kind(image: NormalisedImage, requested: str) -> tuple[str, str]:
    """The kind to store an image as, and a note when it is not what the form and the file agree
    on. A clinical photo is never scored as dermoscopy: a file that states it is one (a DICOM VL
    Photographic object) is stored as clinical whatever the form's default said, and a clinician's
    explicit "clinical" is kept even when the file says dermoscopic (the safer of the two)."""
    if not image.kind or image.kind == requested:
        return requested, ""
    if image.kind == LesionImage.Kind.CLINICAL:
        return image.kind, (f"The DICOM file is a {image.source_sop_class} object, a clinical photo rather than a "
                            "dermoscopic image, so it was stored as a clinical photo: the model does not score "
                            "those, and a dermatologist will look at it.")
    return requested, (f"The DICOM file is a {image.source_sop_class} object, but it was stored as a clinical "
                       "photo, as chosen, so the model does not score it; upload it again as dermoscopic to have "
                       "it scored.")


class VersionNotActive(ValidationError):
    """A retry refused because its model version is no longer active: a conflict with the model
    registry, not bad input (the API answers 409; the pages show the message as any refusal)."""


@transaction.atomic
def retry_prediction(*, user, prediction: Prediction, request: HttpRequest | None = None) -> bool:
    """Reset a failed prediction to pending and send it again after commit; False if it was not failed.
    A re-score of a version that is no longer active (``scoring.stale_rescores``) is refused
    (VersionNotActive), changing nothing: it would fail again."""
    _require_editable(user, prediction.image.lesion.case, "Only clinicians of the patient's clinic can retry scoring.")
    if Prediction.objects.filter(pk=prediction.pk).filter(scoring.stale_rescores()).exists():
        shown = prediction.image.current_prediction()  # never this re-score: the pages pass over it
        kept = (" The image keeps its result in force." if shown is not None and shown.status == Prediction.Status.DONE
                else " The case page shows the image's own score instead.")
        raise VersionNotActive(f"Model version {prediction.model_version.version} is no longer active, so this "
                               f"re-score will not run; nothing was changed.{kept}")
    if not prediction_states.retry_failed(prediction.pk):
        return False
    audit_log.record(action="retry", obj=prediction, actor=user, request=request,
                 old={"status": "failed", "error": prediction.error}, new={"status": "pending"})
    transaction.on_commit(partial(scoring.dispatch_prediction, prediction.pk))
    return True
