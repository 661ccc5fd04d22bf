"""Clinical records: clinics, patients, cases, lesions, images, predictions and reviews.

Each record says which patient and clinic it concerns (``audit_scope``), for the audit trail.

Invariants live in the database (check and unique constraints) so that every writer — views,
Celery workers, the admin, a shell — is held to them, not only the forms.
"""
from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Max, Q
from django.utils import timezone

from classifier.models import ModelVersion
from mlcore.labels import CLASSES

# an absolute path on the server (two or more segments), as error texts quote them
SERVER_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+-]+){2,}/?")
BIRTH_YEAR_MIN = 1900
BIRTH_YEAR_MAX = 2100  # the form also refuses years in the future; the database keeps a fixed bound


class Clinic(models.Model):
    """A practice whose clinicians share patients; the unit of data separation."""

    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return None, self.pk

    def __str__(self) -> str:
        return self.name


class ClinicMembership(models.Model):
    """A user's clinic. One clinic per user keeps scoping unambiguous."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="clinic_membership")
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["clinic__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.clinic}"


class Patient(models.Model):
    """A pseudonymised patient: no names, only the clinic's own identifier."""

    class Sex(models.TextChoices):
        FEMALE = "female", "Female"
        MALE = "male", "Male"
        OTHER = "other", "Other"
        UNKNOWN = "unknown", "Unknown"

    class Fitzpatrick(models.IntegerChoices):
        I = 1, "I"
        II = 2, "II"
        III = 3, "III"
        IV = 4, "IV"
        V = 5, "V"
        VI = 6, "VI"

    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="patients")
    identifier = models.CharField(
        "pseudonymous identifier",
        max_length=64,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "Use letters, digits, '.', '_' or '-' only.")],
        help_text="The clinic's own pseudonymous ID. Never a name or a national ID number.",
    )
    birth_year = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(BIRTH_YEAR_MIN), MaxValueValidator(BIRTH_YEAR_MAX)]
    )
    sex = models.CharField(max_length=8, choices=Sex.choices, default=Sex.UNKNOWN)
    fitzpatrick_type = models.PositiveSmallIntegerField(
        "Fitzpatrick skin type", choices=Fitzpatrick.choices, null=True, blank=True
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["clinic__name", "identifier"]
        constraints = [
            models.UniqueConstraint(fields=["clinic", "identifier"], name="patient_identifier_unique_per_clinic"),
            models.CheckConstraint(
                condition=Q(birth_year__gte=BIRTH_YEAR_MIN, birth_year__lte=BIRTH_YEAR_MAX),
                name="patient_birth_year_range",
            ),
            models.CheckConstraint(condition=Q(sex__in=["female", "male", "other", "unknown"]), name="patient_sex_valid"),
            models.CheckConstraint(
                condition=Q(fitzpatrick_type__isnull=True) | Q(fitzpatrick_type__gte=1, fitzpatrick_type__lte=6),
                name="patient_fitzpatrick_range",
            ),
            models.CheckConstraint(condition=~Q(identifier=""), name="patient_identifier_not_empty"),
        ]

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.pk, self.clinic_id

    def __str__(self) -> str:
        return self.identifier


class Case(models.Model):
    """One referral: a clinical question about some of a patient's lesions."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        IN_REVIEW = "in_review", "In review"
        REVIEWED = "reviewed", "Reviewed"
        CLOSED = "closed", "Closed"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="cases")
    referring_clinician = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="referred_cases")
    # the day the patient was seen (a case is one visit); images of a lesion are compared by it
    visit_date = models.DateField(default=timezone.localdate)
    clinical_question = models.TextField(max_length=2000)
    notes = models.TextField(max_length=5000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="claimed_cases"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
                                  related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["open", "in_review", "reviewed", "closed"]),
                                   name="case_status_valid"),
            models.CheckConstraint(condition=~Q(status="closed") | Q(closed_at__isnull=False), name="case_closed_has_time"),
            models.CheckConstraint(
                condition=Q(claimed_by__isnull=True, claimed_at__isnull=True)
                | Q(claimed_by__isnull=False, claimed_at__isnull=False),
                name="case_claim_complete",
            ),
            models.CheckConstraint(condition=~Q(clinical_question=""), name="case_question_not_empty"),
        ]

    MOVED_WITH_LESIONS = "A visit with lesions cannot be moved to another patient."

    def _moved_with_lesions(self) -> bool:
        """True when this saved case has lesions and ``patient`` differs from the stored one (asked
        of the database, not of cached objects)."""
        if self.pk is None or self.patient_id is None:
            return False
        return (Case.objects.filter(pk=self.pk, lesions__isnull=False).exclude(patient_id=self.patient_id)
                .exists())

    def clean(self) -> None:
        super().clean()
        if self._moved_with_lesions():
            raise ValidationError({"patient": self.MOVED_WITH_LESIONS})

    def save(self, *args, **kwargs) -> None:
        # its lesions belong to the patient's tracked lesions (timeline, body map, training labels):
        # moved to another patient, they would show on that patient's map, whoever writes it
        update_fields = kwargs.get("update_fields")
        if (update_fields is None or "patient" in update_fields) and self._moved_with_lesions():
            raise ValidationError(self.MOVED_WITH_LESIONS)
        super().save(*args, **kwargs)

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.patient_id, self.patient.clinic_id

    def __str__(self) -> str:
        return f"Case {self.pk} ({self.patient})"


ISIC_SITES = [
    "anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
    "palms/soles", "posterior torso", "upper extremity", "unknown",
]


class PatientLesion(models.Model):
    """One lesion of a patient, followed over visits: its number, where it is on the body map,
    and each visit's record of it (``Lesion``, one per case that looked at it)."""

    class Side(models.TextChoices):
        LEFT = "left", "Left"
        RIGHT = "right", "Right"
        MIDLINE = "midline", "Midline"
        UNKNOWN = "", "Not recorded"

    class View(models.TextChoices):
        FRONT = "front", "Front"
        BACK = "back", "Back"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="tracked_lesions")
    number = models.PositiveIntegerField(help_text="L1, L2, … per patient, in the order first seen.")
    side = models.CharField("left/right", max_length=8, choices=Side.choices, blank=True)
    # where the clinician placed it on the body map: which outline, and the point as fractions of
    # the outline's width and height (None: placed from the list, not the map)
    map_view = models.CharField(max_length=5, choices=View.choices, blank=True)
    map_x = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    map_y = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient", "number"]
        constraints = [
            models.UniqueConstraint(fields=["patient", "number"], name="patient_lesion_number_unique"),
            models.CheckConstraint(condition=Q(side__in=["left", "right", "midline", ""]), name="patient_lesion_side_valid"),
            models.CheckConstraint(condition=Q(map_view__in=["front", "back", ""]), name="patient_lesion_view_valid"),
            models.CheckConstraint(
                condition=(Q(map_view="", map_x__isnull=True, map_y__isnull=True)
                           | Q(map_view__in=["front", "back"], map_x__gte=0, map_x__lte=1, map_y__gte=0, map_y__lte=1)),
                name="patient_lesion_map_point_complete",
            ),
        ]

    @property
    def label(self) -> str:
        return f"L{self.number}"

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.patient_id, self.patient.clinic_id

    def __str__(self) -> str:
        return f"{self.label} of {self.patient}"

    def latest_visit(self) -> "Lesion | None":
        """This lesion as seen at its most recent visit."""
        return self.visits.select_related("case__patient").order_by("-case__visit_date", "-pk").first()

    @classmethod
    def next_number(cls, patient: Patient) -> int:
        return (cls.objects.filter(patient=patient).aggregate(n=Max("number"))["n"] or 0) + 1


class Lesion(models.Model):
    """A lesion as seen at one visit (case): its ISIC anatomic site, images, flag and reviews.
    The same lesion at other visits shares ``tracked`` (the patient's lesion)."""

    class Site(models.TextChoices):
        ANTERIOR_TORSO = "anterior torso", "Anterior torso"
        HEAD_NECK = "head/neck", "Head/neck"
        LATERAL_TORSO = "lateral torso", "Lateral torso"
        LOWER_EXTREMITY = "lower extremity", "Lower extremity"
        ORAL_GENITAL = "oral/genital", "Oral/genital"
        PALMS_SOLES = "palms/soles", "Palms/soles"
        POSTERIOR_TORSO = "posterior torso", "Posterior torso"
        UPPER_EXTREMITY = "upper extremity", "Upper extremity"
        UNKNOWN = "unknown", "Unknown"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="lesions")
    tracked = models.ForeignKey(PatientLesion, on_delete=models.PROTECT, related_name="visits", null=True,
                                blank=True, help_text="The patient's lesion this visit's record belongs to.")
    anatomic_site = models.CharField(max_length=32, choices=Site.choices)
    description = models.CharField(max_length=500, blank=True)
    # Set by scoring when any image of the lesion is flagged; cleared by a dermatologist's review.
    flagged = models.BooleanField(default=False)
    awaiting_review = models.BooleanField(default=False, db_index=True)
    flagged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(anatomic_site__in=ISIC_SITES),
                name="lesion_site_valid",
            ),
            models.CheckConstraint(condition=Q(awaiting_review=False) | Q(flagged=True), name="lesion_review_needs_flag"),
            # a patient's lesion is seen at most once per visit
            models.UniqueConstraint(fields=["case", "tracked"], name="lesion_once_per_visit"),
        ]

    OTHER_PATIENT = "That lesion belongs to another patient."

    def _tracked_of_another_patient(self) -> bool:
        """True when ``tracked`` is a lesion of a patient other than the case's (asked of the
        database, not of cached objects)."""
        if self.tracked_id is None or self.case_id is None:
            return False
        return not PatientLesion.objects.filter(pk=self.tracked_id, patient__cases=self.case_id).exists()

    def clean(self) -> None:
        super().clean()
        if self._tracked_of_another_patient():
            raise ValidationError({"tracked": self.OTHER_PATIENT})

    def save(self, *args, **kwargs) -> None:
        # every writer (services, admin, shell, fixtures) gets a patient lesion: a lesion recorded
        # without saying which earlier one it is, is a new one
        if self.tracked_id is None and self.case_id is not None:
            self.tracked = PatientLesion.objects.create(patient=self.case.patient,
                                                        number=PatientLesion.next_number(self.case.patient))
        # and never one of another patient, whoever writes it: the visit would join that patient's
        # timeline, and its reviews would label that patient's images for training
        update_fields = kwargs.get("update_fields")
        if (update_fields is None or {"case", "tracked"} & set(update_fields)) and self._tracked_of_another_patient():
            raise ValidationError(self.OTHER_PATIENT)
        super().save(*args, **kwargs)

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.case.audit_scope()

    def __str__(self) -> str:
        return f"Lesion {self.pk} ({self.get_anatomic_site_display()})"


class LesionImage(models.Model):
    """An uploaded image, stored re-encoded from pixels (no client metadata, generated name)."""

    class Kind(models.TextChoices):
        DERMOSCOPIC = "dermoscopic", "Dermoscopic"
        CLINICAL = "clinical", "Clinical (close-up)"

    lesion = models.ForeignKey(Lesion, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64, help_text="sha256 of the decoded RGB pixels, to detect re-uploads.")
    size_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.DERMOSCOPIC)
    original_name = models.CharField(max_length=255, blank=True, help_text="Sanitised client file name (metadata only).")
    original_format = models.CharField(max_length=8, blank=True)
    acquired_on = models.DateField(null=True, blank=True,
                                   help_text="Date the image was taken, from the file where it says so.")
    source_body_site = models.CharField(max_length=32, blank=True,
                                        help_text="The body site the file itself stated (DICOM), for the record.")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["uploaded_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["lesion", "sha256"], name="lesion_image_unique_pixels"),
            models.CheckConstraint(condition=Q(width__gt=0, height__gt=0, size_bytes__gt=0), name="lesion_image_positive_size"),
            models.CheckConstraint(condition=Q(kind__in=["dermoscopic", "clinical"]), name="lesion_image_kind_valid"),
            models.CheckConstraint(condition=~Q(file=""), name="lesion_image_has_file"),
        ]

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.lesion.audit_scope()

    def __str__(self) -> str:
        return f"Image {self.pk} of lesion {self.lesion_id}"

    def newest_prediction(self) -> "Prediction | None":
        """The newest prediction (of any model version, whatever its status); uses prefetched
        ``predictions`` whatever their order."""
        return max(self.predictions.all(), key=lambda p: (p.created_at, p.pk), default=None)

    def current_prediction(self) -> "Prediction | None":
        """The prediction the pages, the report and the exports show: the newest, except that while
        a re-score by another model version (the same inputs: no ``reason``) waits, runs or has
        failed, the newest finished score before it stays in force, so re-scoring never blanks a
        result. A re-score for a correction (with its reason) makes every older score stale: it
        is shown in whatever state it is. Uses prefetched ``predictions``."""
        ordered = sorted(self.predictions.all(), key=lambda p: (p.created_at, p.pk), reverse=True)
        # an unfinished re-score of a version no longer active never runs: passed over, the score it
        # would have replaced stays in force (with its Retry, if that one failed)
        ordered = [p for p in ordered if not _unfinished_stale_rescore(p, ordered)]
        for prediction in ordered:
            if prediction.status == Prediction.Status.DONE:
                return prediction
            if prediction.reason:  # the inputs changed: nothing older may stand in for it
                break
        return ordered[0] if ordered else None

    def rescore_in_progress(self) -> "Prediction | None":
        """A newer prediction than the one shown (a version re-score waiting, running or failed),
        for a note beside the result; None when the shown one is the newest, or when the newer one
        failed and its version is no longer active (rolled back or replaced: it will never run, so
        there is nothing to wait for or retry)."""
        newest, shown = self.newest_prediction(), self.current_prediction()
        if newest is None or shown is None or newest.pk == shown.pk:
            return None
        if newest.status != Prediction.Status.DONE and newest.model_version.status != ModelVersion.Status.ACTIVE:
            return None
        return newest


def _unfinished_stale_rescore(prediction: "Prediction", predictions: list["Prediction"]) -> bool:
    """A re-score that is not done and never will be: cases.scoring.stale_rescores() (revision 0, no
    correction's reason, not the image's first version, its version no longer active) over one
    image's ``predictions``, cheapest tests first (the version's status is a query when not joined)."""
    return (prediction.status != Prediction.Status.DONE and prediction.context_revision == 0
            and not prediction.reason
            and any(p.pk < prediction.pk and p.model_version_id != prediction.model_version_id for p in predictions)
            and prediction.model_version.status != ModelVersion.Status.ACTIVE)


class Prediction(models.Model):
    """One model version's scores for one image. Unique per (image, version, context revision): scoring
    is idempotent, and a correction of the model's input scores the image again as the next revision."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be scored"
        RUNNING = "running", "Scoring…"
        DONE = "done", "Scored"
        FAILED = "failed", "Failed"

    image = models.ForeignKey(LesionImage, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey("classifier.ModelVersion", on_delete=models.PROTECT, related_name="predictions")
    model_card_sha256 = models.CharField(
        max_length=64, blank=True,
        help_text="sha256 of the model card (model_card.json) the score was made with: a version's card re-assessed "
                  "in place (image checks, out-of-domain threshold, prediction-set floor) gives another one. Empty "
                  "until scored, and for scores made before it was recorded.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING, db_index=True)
    class_probabilities = models.JSONField(default=dict, blank=True)
    melanoma_probability = models.FloatField(null=True, blank=True)
    malignancy_score = models.FloatField(null=True, blank=True)
    flagged = models.BooleanField(default=False)
    flag_reasons = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # after its worker died, a prediction is not sent again before this (back-off)
    not_before = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # the task run (Celery task id) and worker (node name) that claimed it while running: a
    # redelivered message resumes its own run at once, and the sweep re-queues a dead worker's
    run_by = models.CharField(max_length=64, blank=True)
    # 0 for a model version's first score of the image; a correction of the model's input (site,
    # age, sex) scores it again as the next revision, with the reason, and the old one stays
    context_revision = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=300, blank=True, help_text="Why this score was made, when not an upload.")
    # set when this score disagrees with the dermatologist's review of the same image: a newer
    # version's re-score of what the reviewer saw is listed for the admin, not put back in the
    # queue; a score the reviewer could not have seen (cases.scoring.review_covers) is queued too
    review_disagreement = models.CharField(max_length=300, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    # age/sex/site as the model used them (None: image only); patient records may change later
    clinical_context = models.JSONField(null=True, blank=True)
    # False: the model could not judge this image (failed a quality check, unlike its training
    # images, or not a dermoscopic image); its scores are kept for the record but not shown as a
    # result, and the lesion goes to the dermatologists as "model could not assess".
    assessable = models.BooleanField(default=True)
    assessment_notes = models.JSONField(default=list, blank=True)
    # what decided it: quality measures and failed checks, out-of-domain score and threshold
    assessment = models.JSONField(null=True, blank=True)
    # split-conformal set of the diagnoses the model cannot rule out (None: model without one)
    prediction_set = models.JSONField(null=True, blank=True)
    heatmap = models.FileField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["image", "model_version", "context_revision"],
                                    name="prediction_unique_per_version"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "done", "failed"]), name="prediction_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(melanoma_probability__isnull=True)
                | Q(melanoma_probability__gte=0.0, melanoma_probability__lte=1.0),
                name="prediction_melanoma_probability_range",
            ),
            models.CheckConstraint(
                condition=Q(malignancy_score__isnull=True) | Q(malignancy_score__gte=0.0, malignancy_score__lte=1.0),
                name="prediction_malignancy_score_range",
            ),
            models.CheckConstraint(
                condition=~Q(status="done")
                | Q(melanoma_probability__isnull=False, malignancy_score__isnull=False, finished_at__isnull=False),
                name="prediction_done_has_scores",
            ),
            models.CheckConstraint(condition=~Q(status="running") | Q(started_at__isnull=False), name="prediction_running_started"),
        ]

    @property
    def error_for_display(self) -> str:
        """The failure reason as clinicians see it: server paths reduced to their file name (the
        full text stays in the record, for the admin)."""
        return SERVER_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], self.error)

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.image.audit_scope()

    def __str__(self) -> str:
        return f"Prediction {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        """Still waiting for a worker (the case page keeps polling)."""
        return self.status in (self.Status.PENDING, self.Status.RUNNING)


DIAGNOSIS_CHOICES = [(c, c.capitalize()) for c in CLASSES] + [("other", "Other")]


class Review(models.Model):
    """A dermatologist's review of a flagged lesion."""

    class Agreement(models.TextChoices):
        AGREE = "agree", "Agree with the AI flag"
        DISAGREE = "disagree", "Disagree with the AI flag"
        UNCERTAIN = "uncertain", "Uncertain"

    class Management(models.TextChoices):
        REASSURE = "reassure", "Reassure"
        FOLLOW_UP = "follow_up", "Follow-up"
        EXCISION = "excision", "Excision"
        BIOPSY = "biopsy", "Biopsy"

    lesion = models.ForeignKey(Lesion, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    agreement = models.CharField("agreement with the AI", max_length=10, choices=Agreement.choices)
    final_diagnosis = models.CharField(max_length=40, choices=DIAGNOSIS_CHOICES)
    management = models.CharField(max_length=10, choices=Management.choices)
    # asked when the lesion was seen at an earlier visit: has it changed since? (None: not asked)
    lesion_changed = models.BooleanField("changed since the earlier visit", null=True, blank=True)
    notes = models.TextField(max_length=5000, blank=True)
    # a signed review is never edited: an amendment is a new review that refers to it
    amends = models.OneToOneField("self", on_delete=models.PROTECT, null=True, blank=True,
                                  related_name="amended_by")
    amendment_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(agreement__in=["agree", "disagree", "uncertain"]), name="review_agreement_valid"),
            models.CheckConstraint(
                condition=Q(final_diagnosis__in=[*CLASSES, "other"]), name="review_diagnosis_valid"
            ),
            models.CheckConstraint(
                condition=Q(management__in=["reassure", "follow_up", "excision", "biopsy"]), name="review_management_valid"
            ),
            models.CheckConstraint(condition=Q(amends__isnull=True) | ~Q(amendment_reason=""),
                                   name="review_amendment_has_reason"),
        ]

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.lesion.audit_scope()

    def __str__(self) -> str:
        return f"Review of lesion {self.lesion_id} by {self.reviewer}"


class Outcome(models.Model):
    """A histopathology result for a lesion at the visit it was excised or biopsied at, entered
    by its clinic. Append-only: a correction is a new outcome that ``supersedes`` the earlier one,
    with the reason; the current result of a lesion is the one nothing supersedes."""

    lesion = models.ForeignKey(Lesion, on_delete=models.PROTECT, related_name="outcomes")
    diagnosis = models.CharField("histopathological diagnosis", max_length=40, choices=DIAGNOSIS_CHOICES)
    diagnosis_date = models.DateField("date of the report")
    report_reference = models.CharField("laboratory report reference", max_length=100,
                                        help_text="The laboratory's report id, to find the report again.")
    entered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    entered_at = models.DateTimeField(auto_now_add=True)
    supersedes = models.OneToOneField("self", on_delete=models.PROTECT, null=True, blank=True,
                                      related_name="superseded_by")
    reason = models.CharField("reason for the correction", max_length=500, blank=True)

    class Meta:
        ordering = ["-entered_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(diagnosis__in=[*CLASSES, "other"]), name="outcome_diagnosis_valid"),
            models.CheckConstraint(condition=~Q(report_reference=""), name="outcome_reference_not_empty"),
            models.CheckConstraint(condition=Q(supersedes__isnull=True) | ~Q(reason=""),
                                   name="outcome_correction_has_reason"),
            # two clinicians entering a lesion's first result at the same moment (SQLite takes no
            # row lock): the database keeps one, the other is told to correct it instead
            models.UniqueConstraint(fields=["lesion"], condition=Q(supersedes__isnull=True),
                                    name="one_first_outcome_per_lesion",
                                    violation_error_message="This lesion already has a result: enter a "
                                                            "correction of it, with the reason."),
        ]

    def save(self, *args, **kwargs) -> None:
        # a result, once entered, is part of the record: it is corrected by a new outcome
        if not self._state.adding:
            raise ValueError("Outcomes are append-only: record a correction that supersedes this one.")
        super().save(*args, **kwargs)

    def audit_scope(self) -> tuple[int | None, int | None]:
        """(patient id, clinic id) for the audit trail."""
        return self.lesion.audit_scope()

    def __str__(self) -> str:
        return f"Histopathology of lesion {self.lesion_id}: {self.diagnosis} ({self.report_reference})"
