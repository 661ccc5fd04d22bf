"""Shapes of the API's objects. Input is validated by the web app's own forms (one rule set)."""
from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cases import access, followup
from cases.forms import CaseForm, LesionForm, PatientForm, ReviewForm
from cases.models import Case, Lesion, LesionImage, Outcome, Patient, Prediction, Review
from cases.outcome_forms import OutcomeForm
from cases.outcomes import current_outcome
from cases.queue import lesion_fingerprint
from cases.roles import display_name
from classifier.models import ModelVersion


def person(user) -> str | None:
    """A user as other people see them: the full name, else the username."""
    return display_name(user) if user is not None else None


def form_validated(form_class, data: dict, **form_kwargs) -> dict:
    """The form's cleaned data, or a DRF ValidationError with the form's messages per field."""
    form = form_class(data=data, **form_kwargs)
    if not form.is_valid():
        raise serializers.ValidationError(
            {("non_field_errors" if name == "__all__" else name): messages for name, messages in form.errors.items()})
    return form.cleaned_data


class PatientSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "identifier", "birth_year", "sex", "fitzpatrick_type", "clinic", "created_at"]
        read_only_fields = ["id", "clinic", "created_at"]
        extra_kwargs = {"identifier": {"validators": []}}  # the form checks uniqueness in the clinic

    def validate(self, attrs: dict) -> dict:
        data = {k: ("" if v is None else v) for k, v in self.initial_data.items()} if hasattr(self.initial_data, "items") else {}
        return form_validated(PatientForm, data, clinic=access.clinic_of(self.context["request"].user))


class ModelVersionSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "version", "status"]


class ModelVersionSerializer(serializers.ModelSerializer):
    melanoma_auc = serializers.FloatField(read_only=True, allow_null=True)
    malignancy_auc = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "version", "status", "created_at", "activated_at", "sha256", "data_sources",
                  "melanoma_threshold", "malignancy_threshold", "target_sensitivity", "temperature",
                  "melanoma_auc", "malignancy_auc", "notes"]


class QualitySerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="the image passed every quality check")
    failed = serializers.ListField(child=serializers.CharField(), help_text="codes of the checks it failed")
    measures = serializers.DictField(child=serializers.FloatField(), help_text="each quality measure's value")


class OutOfDomainSerializer(serializers.Serializer):
    score = serializers.FloatField(help_text="how unlike the training images the model's features are")
    threshold = serializers.FloatField(help_text="scores above this are out of domain")
    unfamiliar = serializers.BooleanField(help_text="score > threshold")


class AssessmentSerializer(serializers.Serializer):
    """What decided `assessable`: the quality checks and the out-of-domain detector."""

    quality = QualitySerializer(allow_null=True, help_text="null: the model has no fitted quality checks")
    ood = OutOfDomainSerializer(allow_null=True, help_text="null: the model has no out-of-domain detector")


def assessment_of(stored) -> dict | None:
    """The documented subset of a stored ``Prediction.assessment`` (None when nothing was assessed);
    the stored JSON is the worker's, so every part is optional and messages stay in assessment_notes."""
    if not isinstance(stored, dict):
        return None
    quality, ood = stored.get("quality"), stored.get("ood")
    return {
        "quality": {"ok": bool(quality.get("ok", not quality.get("failed"))),
                    "failed": [str(code) for code in quality.get("failed") or []],
                    "measures": {str(k): float(v) for k, v in (quality.get("measures") or {}).items()}}
        if isinstance(quality, dict) else None,
        "ood": {"score": float(ood["score"]), "threshold": float(ood["threshold"]),
                "unfamiliar": bool(ood.get("unfamiliar", ood["score"] > ood["threshold"]))}
        if isinstance(ood, dict) and {"score", "threshold"} <= set(ood) else None,
    }


# Outputs of the scores that the pages and the FHIR export never show for an image the model could
# not assess (they are kept in the record, unreliable): the API answers null for them. The flag
# stays: such an image is flagged for review ("Model could not assess…"), as on the pages and in FHIR,
# so an integration filtering on flagged never misses it.
UNRELIABLE_WHEN_NOT_ASSESSABLE = ("melanoma_probability", "malignancy_score", "class_probabilities",
                                  "prediction_set")
NOT_ASSESSABLE_HELP = ("null until the score is made (status not done), and when the model could not assess the "
                       "image (assessable false: see assessment_notes)")

# Outputs that exist only once the score is made: while a prediction waits, runs or has failed the API
# answers null for every one of them, never the record's defaults (flagged false, assessable true, no
# reasons or notes), so an image without a result never reads as "not flagged, assessable".
RESULT_ONLY_WHEN_DONE = (*UNRELIABLE_WHEN_NOT_ASSESSABLE, "flagged", "flag_reasons", "assessable",
                         "assessment_notes", "assessment", "clinical_context")
NOT_DONE = "null until the score is made (status not done: pending, running or failed)"


@extend_schema_field({"type": "array", "items": {"type": "string"}, "nullable": True})
class StringListField(serializers.JSONField):
    """A stored JSON list of messages, given as stored (its type documented in the schema)."""


@extend_schema_field({"type": "object", "nullable": True, "properties": {
    "age": {"type": "number", "nullable": True, "description": "years; null: not known to the model"},
    "sex": {"type": "string", "nullable": True, "description": "null: not known to the model"},
    "site": {"type": "string", "nullable": True, "description": "the lesion's anatomic site; null: not known"}}})
class ClinicalContextField(serializers.JSONField):
    """The age, sex and site a score used, as the worker stored them."""


def current_pk(context: dict, image: LesionImage) -> int | None:
    """The pk of ``image``'s result in force (``LesionImage.current_prediction``), worked out once
    per image and serializer context (a list page shares it between the image's predictions)."""
    known = context.setdefault("_current_by_image", {})
    if image.pk not in known:
        shown = image.current_prediction()
        known[image.pk] = shown.pk if shown is not None else None
    return known[image.pk]


class PredictionSerializer(serializers.ModelSerializer):
    model_version = ModelVersionSummarySerializer(read_only=True)
    error = serializers.CharField(source="error_for_display", read_only=True)
    lesion = serializers.IntegerField(source="image.lesion_id", read_only=True)
    case = serializers.IntegerField(source="image.lesion.case_id", read_only=True)
    melanoma_threshold = serializers.FloatField(source="model_version.melanoma_threshold", read_only=True,
                                                allow_null=True)
    malignancy_threshold = serializers.FloatField(source="model_version.malignancy_threshold", read_only=True,
                                                  allow_null=True)
    flagged = serializers.BooleanField(
        read_only=True, allow_null=True,
        help_text="true: flagged for dermatologist review (an image the model could not assess stays flagged); "
                  f"{NOT_DONE}, never false for an image without a result")
    flag_reasons = StringListField(
        read_only=True, allow_null=True,
        help_text=f"why it is flagged ([] when not flagged); {NOT_DONE}")
    assessable = serializers.BooleanField(
        read_only=True, allow_null=True,
        help_text="false: the model could not assess the image (see assessment_notes) and its scores are null; "
                  f"{NOT_DONE}")
    assessment_notes = StringListField(
        read_only=True, allow_null=True,
        help_text=f"why the model could not assess the image ([] when it could); {NOT_DONE}")
    clinical_context = ClinicalContextField(
        read_only=True, allow_null=True,
        help_text="the age, sex and site the score used, as they were when it was made (patient records may change "
                  f"later); null when the image alone decided (the model or the record had none); {NOT_DONE}")
    assessment = serializers.SerializerMethodField(
        help_text="what decided assessable: quality measures and failed checks, the out-of-domain score and its "
                  f"threshold; null for a model without these checks; {NOT_DONE}")
    is_current = serializers.SerializerMethodField(
        help_text="true for the image's result in force, the one the pages, the PDF report and the FHIR export "
                  "show (the image's current_prediction): its newest prediction, except that while a re-score by "
                  "another model version waits, runs or has failed, the newest finished score before it stays in "
                  "force; a correction's next context_revision replaces every older score at once")

    class Meta:
        model = Prediction
        fields = ["id", "image", "lesion", "case", "status", "melanoma_probability", "malignancy_score",
                  "melanoma_threshold", "malignancy_threshold", "flagged", "flag_reasons", "assessable",
                  "assessment_notes", "assessment", "prediction_set", "class_probabilities", "clinical_context",
                  "error", "attempts", "model_version", "model_card_sha256", "created_at", "finished_at",
                  "context_revision", "reason", "is_current"]
        read_only_fields = ["model_card_sha256", "context_revision", "reason"]
        extra_kwargs = {
            **{name: {"allow_null": True, "help_text": NOT_ASSESSABLE_HELP} for name in UNRELIABLE_WHEN_NOT_ASSESSABLE},
            "context_revision": {"help_text": "0 for a model version's first score of the image; a correction of the "
                                              "model's input (site, age, sex) scores it again as the next revision"},
            "reason": {"help_text": "why this score was made, when not on upload (a correction); empty otherwise"},
        }

    @extend_schema_field(AssessmentSerializer(allow_null=True, read_only=True))
    def get_assessment(self, prediction: Prediction) -> dict | None:
        return assessment_of(prediction.assessment)

    def get_is_current(self, prediction: Prediction) -> bool:
        return current_pk(self.context, prediction.image) == prediction.pk

    def to_representation(self, prediction: Prediction) -> dict:
        data = super().to_representation(prediction)
        if prediction.status != Prediction.Status.DONE:
            data.update(dict.fromkeys(RESULT_ONLY_WHEN_DONE))
        elif not prediction.assessable:
            data.update(dict.fromkeys(UNRELIABLE_WHEN_NOT_ASSESSABLE))
        return data


class ImageSerializer(serializers.ModelSerializer):
    file_url = serializers.SerializerMethodField()
    original_name = serializers.SerializerMethodField()
    latest_prediction = serializers.SerializerMethodField(
        help_text="the image's newest prediction, in any status (a re-score still waiting included)")
    current_prediction = serializers.SerializerMethodField(
        help_text="the image's result in force, as the pages and the report show it (see is_current)")

    class Meta:
        model = LesionImage
        fields = ["id", "lesion", "kind", "width", "height", "sha256", "original_format", "original_name",
                  "uploaded_at", "acquired_on", "source_body_site", "file_url", "latest_prediction",
                  "current_prediction"]

    def get_file_url(self, image: LesionImage) -> str:
        return self.context["request"].build_absolute_uri(reverse("api:image-file", args=[image.pk]))

    def get_original_name(self, image: LesionImage) -> str | None:
        # the client's file name may carry patient details: only the clinic sees it, as on the pages
        return image.original_name if self._may_edit(image.lesion.case) else None

    def _may_edit(self, case: Case) -> bool:
        """``can_edit_case`` once per case and serializer context: a list page's images share it."""
        known = self.context.setdefault("_editable_by_case", {})
        if case.pk not in known:
            known[case.pk] = access.can_edit_case(self.context["request"].user, case)
        return known[case.pk]

    @extend_schema_field(PredictionSerializer(allow_null=True))
    def get_latest_prediction(self, image: LesionImage) -> dict | None:
        return self._prediction(image, image.newest_prediction())

    @extend_schema_field(PredictionSerializer(allow_null=True))
    def get_current_prediction(self, image: LesionImage) -> dict | None:
        return self._prediction(image, image.current_prediction())

    def _prediction(self, image: LesionImage, prediction: Prediction | None) -> dict | None:
        if prediction is None:
            return None
        current_pk(self.context, image)  # from the prefetched predictions: is_current needs no query
        return PredictionSerializer(prediction, context=self.context).data


class ReviewSerializer(serializers.ModelSerializer):
    reviewer = serializers.SerializerMethodField()
    amended_by = serializers.SerializerMethodField(
        help_text="the review that amends this one (then this one is superseded); null while it is current")

    class Meta:
        model = Review
        fields = ["id", "lesion", "reviewer", "agreement", "final_diagnosis", "management", "notes", "created_at",
                  "amends", "amendment_reason", "amended_by", "lesion_changed"]
        read_only_fields = ["amends", "amendment_reason"]
        extra_kwargs = {"lesion_changed": {"help_text": "changed since the earlier visit; null when not asked (no "
                                                        "earlier visit) or not answered"}}

    def get_amended_by(self, review: Review) -> int | None:
        amended_by = getattr(review, "amended_by", None)  # the reverse one-to-one raises when absent
        return amended_by.pk if amended_by is not None else None

    def get_reviewer(self, review: Review) -> str | None:
        return person(review.reviewer)


LOCATION_FIELDS = ("same_as", "side", "map_view", "map_x", "map_y")


SEEN_HELP = ("what a dermatologist reviewing the lesion has before them (its images and each one's score in force), "
             "as one string: send it back as `seen` with the lesion's review; it changes with a new image, a "
             "re-score or a score finishing")


class LesionSerializer(serializers.ModelSerializer):
    images = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    fingerprint = serializers.SerializerMethodField(help_text=SEEN_HELP)
    patient_lesion = serializers.SerializerMethodField(help_text="the patient's lesion this visit's record belongs to")
    same_as = serializers.IntegerField(write_only=True, required=False, allow_null=True,
                                       help_text="id of the patient's lesion seen at an earlier visit (patient_lesion.id)")
    side = serializers.ChoiceField(choices=["left", "right", "midline", ""], write_only=True, required=False)
    map_view = serializers.ChoiceField(choices=["front", "back", ""], write_only=True, required=False)
    map_x = serializers.FloatField(min_value=0, max_value=1, write_only=True, required=False, allow_null=True)
    map_y = serializers.FloatField(min_value=0, max_value=1, write_only=True, required=False, allow_null=True)

    class Meta:
        model = Lesion
        fields = ["id", "case", "patient_lesion", "anatomic_site", "description", "flagged", "awaiting_review",
                  "flagged_at", "created_at", "images", "fingerprint", *LOCATION_FIELDS]
        read_only_fields = ["id", "flagged", "awaiting_review", "flagged_at", "created_at", "images"]
        extra_kwargs = {"anatomic_site": {"required": False}}

    @extend_schema_field({"type": "object", "nullable": True, "properties": {
        "id": {"type": "integer"}, "label": {"type": "string"}, "side": {"type": "string"},
        "map_view": {"type": "string"}, "map_x": {"type": "number", "nullable": True},
        "map_y": {"type": "number", "nullable": True}}})
    def get_patient_lesion(self, lesion: Lesion) -> dict | None:
        t = lesion.tracked
        return None if t is None else {"id": t.pk, "label": t.label, "side": t.side, "map_view": t.map_view,
                                       "map_x": t.map_x, "map_y": t.map_y}

    def get_fingerprint(self, lesion: Lesion) -> str:
        return lesion_fingerprint(lesion)  # the review page's, from the prefetched images and predictions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            self.fields["case"].queryset = access.visible_cases(request.user)

    def validate(self, attrs: dict) -> dict:
        data = {name: self.initial_data.get(name, "") for name in ("anatomic_site", "description", *LOCATION_FIELDS)}
        data = {k: ("" if v is None else v) for k, v in data.items()}
        form = LesionForm(data=data, case=attrs["case"])
        if data["same_as"] != "" and "same_as" not in form.fields:
            raise serializers.ValidationError({"same_as": [
                "Not one of this patient's lesions that can be added to this visit."]})
        return {"case": attrs["case"], **form_validated(LesionForm, data, case=attrs["case"])}


class CaseSerializer(serializers.ModelSerializer):
    referring_clinician = serializers.SerializerMethodField()
    claimed_by = serializers.SerializerMethodField()
    lesions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Case
        fields = ["id", "patient", "visit_date", "clinical_question", "notes", "status", "referring_clinician",
                  "claimed_by",
                  "claimed_at", "created_at", "updated_at", "lesions"]
        read_only_fields = ["id", "status", "claimed_at", "created_at", "updated_at", "lesions"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            self.fields["patient"].queryset = access.visible_patients(request.user)

    def get_referring_clinician(self, case: Case) -> str | None:
        return person(case.referring_clinician)

    def get_claimed_by(self, case: Case) -> str | None:
        return person(case.claimed_by)

    def validate(self, attrs: dict) -> dict:
        data = {name: self.initial_data.get(name) or "" for name in ("visit_date", "clinical_question", "notes")}
        return {"patient": attrs["patient"], **form_validated(CaseForm, data, patient=attrs["patient"])}


class QueueEntrySerializer(serializers.ModelSerializer):
    patient_identifier = serializers.CharField(source="patient.identifier", read_only=True)
    top_melanoma_probability = serializers.FloatField(
        source="top_melanoma", read_only=True, allow_null=True,
        help_text="highest assessable melanoma probability of the case's flagged lesions; null when none")
    cannot_assess = serializers.BooleanField(read_only=True)
    claimed_by = serializers.SerializerMethodField()
    flag_cleared = serializers.BooleanField(
        read_only=True, help_text="flagged by an earlier score; every current score of its flagged lesions is below "
                                  "the thresholds (it stays queued until a dermatologist reviews it)")

    class Meta:
        model = Case
        fields = ["id", "patient", "patient_identifier", "clinical_question", "status", "top_melanoma_probability",
                  "cannot_assess", "claimed_by", "claimed_at", "created_at", "flag_cleared"]

    def get_claimed_by(self, case: Case) -> str | None:
        return person(case.claimed_by)


class UploadSerializer(serializers.Serializer):
    """Multipart input of an upload: several files under ``images``."""

    images = serializers.ListField(child=serializers.FileField(allow_empty_file=True), allow_empty=False,
                                   max_length=settings.UPLOAD_MAX_FILES)
    kind = serializers.ChoiceField(choices=LesionImage.Kind.choices, default=LesionImage.Kind.DERMOSCOPIC)


class UploadItemSerializer(serializers.Serializer):
    name = serializers.CharField()
    image = serializers.IntegerField(allow_null=True, help_text="the stored (or already stored) image's id")
    error = serializers.CharField(allow_blank=True)


class UploadNoteSerializer(serializers.Serializer):
    name = serializers.CharField()
    note = serializers.CharField(help_text="why an accepted file was stored as another kind than asked (a DICOM "
                                           "file's SOP class), or kept as the clinical photo asked for")


class UploadResultSerializer(serializers.Serializer):
    accepted = UploadItemSerializer(many=True)
    duplicates = UploadItemSerializer(many=True)
    rejected = UploadItemSerializer(many=True)
    scoring_unavailable = serializers.CharField(allow_blank=True)
    notes = UploadNoteSerializer(many=True)


class UploadInputErrorSerializer(serializers.Serializer):
    """The upload call itself was invalid (no files under `images`, too many, an unknown `kind`, a body
    that could not be read): messages per field, and no file was judged."""

    images = serializers.ListField(child=serializers.CharField(), required=False)
    kind = serializers.ListField(child=serializers.CharField(), required=False)
    detail = serializers.CharField(required=False, help_text="the request body could not be read")


class LesionReviewInputSerializer(serializers.Serializer):
    lesion = serializers.IntegerField()
    agreement = serializers.ChoiceField(choices=Review.Agreement.choices)
    final_diagnosis = serializers.ChoiceField(choices=Review._meta.get_field("final_diagnosis").choices)
    management = serializers.ChoiceField(choices=Review.Management.choices)
    notes = serializers.CharField(max_length=5000, allow_blank=True, default="")
    lesion_changed = serializers.BooleanField(
        required=False, allow_null=True, default=None,
        help_text="changed since the earlier visit? Asked, as on the page, only for a lesion seen at an earlier "
                  "visit (optional there); for any other lesion it is not asked and recorded as null")
    seen = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False,
        help_text="the lesion's `fingerprint` as it was when you reviewed it (GET lesions/{id}/): the review is "
                  "refused (409, nothing saved) when the lesion has changed since (a new image, a re-score), as "
                  "the review page refuses it. Optional, but give it for every lesion of the submission or none")

    def validate(self, attrs: dict) -> dict:
        """The web ReviewForm's rules; like the page's, it asks lesion_changed only when the lesion
        (``context["lesions"]``: the lesions waiting for review, by id) has earlier visits."""
        lesion = self.context.get("lesions", {}).get(attrs["lesion"])
        earlier = lesion is not None and followup.earlier_visits(lesion).exists()
        fields = {k: attrs[k] for k in ("agreement", "final_diagnosis", "management", "notes", "lesion_changed")}
        seen = {"seen": attrs["seen"]} if "seen" in attrs else {}
        return {"lesion": attrs["lesion"], **form_validated(ReviewForm, fields, earlier_visits=earlier), **seen}


class CaseReviewInputSerializer(serializers.Serializer):
    """The reviews of every flagged lesion of a claimed case, submitted together (as on the page)."""

    reviews = LesionReviewInputSerializer(many=True, allow_empty=False)

    def validate_reviews(self, reviews: list[dict]) -> list[dict]:
        """One review per lesion: the same lesion twice would save two current reviews of it."""
        counts = Counter(item["lesion"] for item in reviews)
        repeated = sorted(lesion for lesion, n in counts.items() if n > 1)
        if repeated:
            raise serializers.ValidationError(
                f"Give each lesion once (lesion {', '.join(map(str, repeated))} more than once).")
        # what was seen is checked for the whole case or not at all (the page always sends every lesion's)
        without = sorted(item["lesion"] for item in reviews if "seen" not in item)
        if without and len(without) < len(reviews):
            raise serializers.ValidationError(
                f"Give seen for every lesion or for none (lesion {', '.join(map(str, without))} has none).")
        return reviews


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class OutcomeSerializer(serializers.ModelSerializer):
    """A histopathology result; a correction names the result it ``supersedes`` and a reason."""

    entered_by = serializers.SerializerMethodField()

    class Meta:
        model = Outcome
        fields = ["id", "lesion", "diagnosis", "diagnosis_date", "report_reference", "supersedes", "reason",
                  "entered_by", "entered_at"]
        read_only_fields = ["id", "entered_by", "entered_at"]
        extra_kwargs = {"supersedes": {"queryset": Outcome.objects.all()}}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            self.fields["lesion"].queryset = access.visible_lesions(request.user)
            # an outcome of a lesion the caller cannot see reads as "does not exist"
            self.fields["supersedes"].queryset = Outcome.objects.filter(lesion__in=access.visible_lesions(request.user))

    def get_entered_by(self, outcome: Outcome) -> str | None:
        return person(outcome.entered_by)

    def validate(self, attrs: dict) -> dict:
        lesion = attrs["lesion"]
        data = {name: self.initial_data.get(name) or "" for name in
                ("diagnosis", "diagnosis_date", "report_reference", "reason")}
        data["supersedes"] = attrs["supersedes"].pk if attrs.get("supersedes") else ""
        cleaned = form_validated(OutcomeForm, data, lesion=lesion, current=current_outcome(lesion))
        return {"lesion": lesion, "supersedes": attrs.get("supersedes"), **{
            k: cleaned.get(k, "") for k in ("diagnosis", "diagnosis_date", "report_reference", "reason")}}
