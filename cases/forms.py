"""Forms for the clinician and dermatologist pages."""
from __future__ import annotations

from datetime import date

from django import forms
from django.conf import settings
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from cases import body_map
from cases.models import BIRTH_YEAR_MIN, DIAGNOSIS_CHOICES, Case, Lesion, LesionImage, Patient, PatientLesion, Review
from cases.uploads import megabytes
from mlcore.labels import MALIGNANT_CLASSES


class _NoColon:
    """Labels without Django's trailing colon, matching the rest of the app."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class PatientForm(_NoColon, forms.ModelForm):
    """A new pseudonymous patient; the clinic comes from the user, not the form."""

    class Meta:
        model = Patient
        fields = ["identifier", "birth_year", "sex", "fitzpatrick_type"]
        widgets = {"birth_year": forms.NumberInput(attrs={"min": BIRTH_YEAR_MIN, "inputmode": "numeric"})}

    def __init__(self, *args, clinic=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.clinic = clinic
        self.fields["birth_year"].widget.attrs["max"] = timezone.now().year
        self.fields["fitzpatrick_type"].required = False

    def clean_identifier(self) -> str:
        identifier = self.cleaned_data["identifier"].strip()
        if self.clinic is not None and Patient.objects.filter(clinic=self.clinic, identifier=identifier).exists():
            raise forms.ValidationError("Your clinic already has a patient with this identifier.")
        return identifier

    def clean_birth_year(self) -> int:
        year = self.cleaned_data["birth_year"]
        if year > timezone.now().year:
            raise forms.ValidationError("The birth year can't be in the future.")
        return year


class CaseForm(_NoColon, forms.ModelForm):
    """The referral question for a new case."""

    class Meta:
        model = Case
        fields = ["visit_date", "clinical_question", "notes"]
        widgets = {
            "visit_date": forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
            "clinical_question": forms.Textarea(attrs={"rows": 3}),
            "notes": forms.Textarea(attrs={"rows": 3}),
        }
        labels = {"visit_date": "Visit date"}
        help_texts = {"clinical_question": "What would you like a second opinion on?",
                      "visit_date": "The day the patient was seen (today unless you record an earlier visit)."}

    def __init__(self, *args, patient: Patient | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # the age at the visit is a model input: a visit before the birth year is refused, never read as age 0
        self.patient = patient
        self.fields["visit_date"].required = False  # empty means today

    def clean_visit_date(self) -> date:
        day = self.cleaned_data.get("visit_date") or timezone.localdate()
        if day > timezone.localdate():
            raise forms.ValidationError("The visit date can't be in the future.")
        problem = visit_before_birth(day, self.patient)
        if problem:
            raise forms.ValidationError(problem)
        return day


def visit_before_birth(day: date, patient: Patient | None) -> str | None:
    """Why ``day`` can't be a visit of ``patient`` (before 1 January of the birth year), or None."""
    if patient is None or not patient.birth_year or day >= date(patient.birth_year, 1, 1):
        return None
    return (f"The visit date {day:%Y-%m-%d} is before the patient's birth year ({patient.birth_year}): "
            "check the date, or correct the patient's birth year first.")


class LesionForm(_NoColon, forms.ModelForm):
    """A lesion at this visit: a new one, or one of the patient's lesions seen at an earlier visit;
    where it is (the body map fills the site, side and point; the lists work without it)."""

    same_as = forms.ModelChoiceField(
        queryset=PatientLesion.objects.none(), required=False, label="Seen before?",
        empty_label="No: a new lesion",
        help_text="Choose the patient's lesion if it was seen at an earlier visit: its visits form one timeline. "
                  "A side or a point on the map given with it moves that lesion for all its visits.")
    side = forms.ChoiceField(label="Left/right", choices=PatientLesion.Side.choices, required=False)
    map_view = forms.ChoiceField(choices=[("", "")] + PatientLesion.View.choices, required=False,
                                 widget=forms.HiddenInput)
    map_x = forms.FloatField(min_value=0.0, max_value=1.0, required=False, widget=forms.HiddenInput)
    map_y = forms.FloatField(min_value=0.0, max_value=1.0, required=False, widget=forms.HiddenInput)

    class Meta:
        model = Lesion
        fields = ["same_as", "anatomic_site", "side", "description", "map_view", "map_x", "map_y"]
        help_texts = {"description": "Size, colour, change over time… (optional)",
                      "anatomic_site": "The model weighs the site with the patient's age and sex; "
                                       "choose Unknown rather than guess."}

    def __init__(self, *args, case=None, **kwargs):
        super().__init__(*args, **kwargs)
        options = []
        if case is not None:
            self.fields["same_as"].queryset = (PatientLesion.objects.filter(patient=case.patient)
                                               .exclude(visits__case=case).order_by("number"))
            # the options and their labels (each lesion's latest visit) from one query, not one per option
            options = [(tracked.pk, _tracked_label(tracked)) for tracked in _with_latest_visit(
                self.fields["same_as"].queryset)]
        if not options:
            del self.fields["same_as"]
        else:
            self.fields["same_as"].choices = [("", self.fields["same_as"].empty_label), *options]
            self.fields["anatomic_site"].required = False  # an earlier visit's site is the default

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("anatomic_site") and "anatomic_site" not in self.errors:
            earlier = data.get("same_as")
            latest = earlier.latest_visit() if earlier else None
            if latest is None:
                self.add_error("anatomic_site", "Choose the site (or Unknown).")
            else:
                data["anatomic_site"] = latest.anatomic_site
        point = [data.get("map_view"), data.get("map_x"), data.get("map_y")]
        if any(v not in (None, "") for v in point) and not all(v not in (None, "") for v in point):
            raise forms.ValidationError("The body-map point is incomplete; click the map again or clear it.")
        self._check_point(data, point)
        return data

    def _check_point(self, data: dict, point: list) -> None:
        """The point (given now, or kept from the earlier visit) must lie in the site and on the side."""
        earlier = data.get("same_as")
        if not point[0] and earlier is not None and earlier.map_view:
            point = [earlier.map_view, earlier.map_x, earlier.map_y]
        if not point[0]:
            return
        side = data.get("side") or (earlier.side if earlier is not None else "")
        if data.get("anatomic_site") and "anatomic_site" not in self.errors:
            problem = body_map.site_problem(*point, data["anatomic_site"])
            if problem:
                self.add_error("anatomic_site", problem)
                return
        problem = body_map.side_problem(point[0], point[1], side)
        if problem and "side" not in self.errors:
            self.add_error("side", problem)


def _with_latest_visit(tracked):
    """Patient lesions with their latest visit's site and date (``PatientLesion.latest_visit``'s
    order) as ``latest_site`` and ``latest_date``: None when it has no visit."""
    latest = Lesion.objects.filter(tracked=OuterRef("pk")).order_by("-case__visit_date", "-pk")
    return tracked.annotate(latest_site=Subquery(latest.values("anatomic_site")[:1]),
                            latest_date=Subquery(latest.values("case__visit_date")[:1]))


def _tracked_label(tracked: PatientLesion) -> str:
    """A "Seen before?" option, from ``_with_latest_visit``'s annotations."""
    seen = tracked.latest_date is not None
    where = dict(Lesion.Site.choices).get(tracked.latest_site, tracked.latest_site) if seen else "no visits yet"
    side = f", {tracked.get_side_display().lower()}" if tracked.side else ""
    when = f", last seen {tracked.latest_date:%Y-%m-%d}" if seen else ""
    return f"{tracked.label}: {where}{side}{when}"


# What the file picker offers; the server still judges every file by its content. DICOM files
# often have no extension or MIME type at all, so they can also be chosen with "All files".
UPLOAD_ACCEPT = "image/jpeg,image/png,image/tiff,application/dicom,.dcm,.dicom"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files in one field; each is validated later, one by one, by cases.uploads."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError("Choose at least one image file.")
        if len(files) > settings.UPLOAD_MAX_FILES:
            raise forms.ValidationError(
                f"{len(files)} files were chosen; upload at most {settings.UPLOAD_MAX_FILES} at a time.")
        # Size and content checks happen per file in cases.uploads so one bad file can't sink the rest.
        return files


def upload_help() -> str:
    """The upload's limits as the form states them (settings.UPLOAD_MAX_BYTES, UPLOAD_MAX_FILES)."""
    return (f"JPEG, PNG, TIFF or DICOM (.dcm), up to {megabytes(settings.UPLOAD_MAX_BYTES)} each; up to "
            f"{settings.UPLOAD_MAX_FILES} at a time.")


class UploadForm(_NoColon, forms.Form):
    """Images of one lesion."""

    images = MultipleImageField(
        label="Images",
        help_text=upload_help(),  # as the settings stood at import; each form states the limits in force (__init__)
        widget=MultipleFileInput(attrs={"accept": UPLOAD_ACCEPT, "multiple": True}),
    )
    kind = forms.ChoiceField(label="Image type", choices=LesionImage.Kind.choices, initial=LesionImage.Kind.DERMOSCOPIC)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["images"].help_text = upload_help()  # the limits in force now, as the checks read them


# the malignant classes that are cancers: reassurance is refused for them (actinic keratosis, a
# precancer the model counts as malignant, may be left untreated with a note saying why)
CANCERS = MALIGNANT_CLASSES - {"actinic keratosis"}


class ReviewForm(_NoColon, forms.ModelForm):
    """A dermatologist's review of one flagged lesion. ``earlier_visits``: the lesion was seen at
    an earlier visit, so "Changed since the earlier visit?" is asked; ``change_required``: it
    must then be answered Yes or No (the review page; the API keeps it optional)."""

    def __init__(self, *args, earlier_visits: bool = False, change_required: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        # Radio buttons need no "---------" choice: required fields start with nothing checked.
        self.fields["agreement"].choices = Review.Agreement.choices
        self.fields["management"].choices = Review.Management.choices
        if not earlier_visits:
            del self.fields["lesion_changed"]  # nothing to compare with
        elif change_required:
            self.fields["lesion_changed"] = forms.TypedChoiceField(
                label=self.fields["lesion_changed"].label, choices=[("true", "Yes"), ("false", "No")],
                coerce=lambda value: value == "true", widget=forms.RadioSelect,
                error_messages={"required": "Say whether the lesion changed since the earlier visit."})

    def clean(self) -> dict:
        """Refuse a review that contradicts itself; ask for a note where its choices need a reason."""
        data = super().clean()
        diagnosis, management = data.get("final_diagnosis"), data.get("management")
        malignant = diagnosis in MALIGNANT_CLASSES  # the model's malignant classes
        name = dict(DIAGNOSIS_CHOICES).get(diagnosis, "")
        if diagnosis in CANCERS and management == Review.Management.REASSURE:
            self.add_error("management", f"{name} is malignant: reassurance is not a management for it. "
                                         "Choose follow-up, excision or biopsy.")
        if (data.get("notes") or "").strip() or "notes" in self.errors:
            return data
        if malignant and data.get("agreement") == Review.Agreement.DISAGREE:
            self.add_error("notes", f"You disagree with the AI flag but diagnose {name.lower()}: "
                                    "say why in the notes.")
        elif malignant and diagnosis not in CANCERS and management == Review.Management.REASSURE:  # a precancer
            self.add_error("notes", f"Say in the notes why {name.lower()} is not to be treated or followed up.")
        elif diagnosis == "other":
            self.add_error("notes", "Name the diagnosis in the notes (“Other” was chosen).")
        elif diagnosis and not malignant and management in (Review.Management.EXCISION, Review.Management.BIOPSY):
            self.add_error("notes", f"Say in the notes why a {name.lower()} is to have "
                                    f"{'an excision' if management == Review.Management.EXCISION else 'a biopsy'}.")
        return data

    class Meta:
        model = Review
        fields = ["agreement", "final_diagnosis", "management", "lesion_changed", "notes"]
        widgets = {
            "agreement": forms.RadioSelect,
            "management": forms.RadioSelect,
            "lesion_changed": forms.NullBooleanSelect(),
            "notes": forms.Textarea(attrs={"rows": 2}),
        }
        labels = {"lesion_changed": "Changed since the earlier visit?"}
