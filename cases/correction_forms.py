"""Forms of the corrections: each is the record's own form plus the reason, which is required."""
from __future__ import annotations

from django import forms
from django.db.models import Min

from cases import body_map
from cases.forms import CaseForm, PatientForm, ReviewForm, _NoColon
from cases.models import Case, Lesion, Patient, PatientLesion

REASON_HELP = "Why the record is corrected. Kept in the audit trail with the old and new values."


class ReasonMixin(forms.Form):
    reason = forms.CharField(label="Reason for the correction", max_length=300, help_text=REASON_HELP,
                             widget=forms.TextInput(attrs={"size": 60}))


class PatientCorrectionForm(PatientForm, ReasonMixin):
    def clean_identifier(self) -> str:
        identifier = self.cleaned_data["identifier"].strip()
        taken = Patient.objects.filter(clinic=self.instance.clinic, identifier=identifier).exclude(pk=self.instance.pk)
        if taken.exists():
            raise forms.ValidationError("Your clinic already has a patient with this identifier.")
        return identifier

    def clean_birth_year(self) -> int:
        """Not in the future, and not after the patient's earliest visit (whose age would read as 0)."""
        year = super().clean_birth_year()
        if self.instance.pk is None:
            return year
        first = Case.objects.filter(patient=self.instance).aggregate(first=Min("visit_date"))["first"]
        if first is not None and year > first.year:
            raise forms.ValidationError(
                f"The patient has a visit on {first:%Y-%m-%d}: the birth year can't be later than {first.year}. "
                "Correct that visit's date first if it is the wrong one.")
        return year


class CaseCorrectionForm(CaseForm, ReasonMixin):
    """The case's own form: the visit date is required here (an empty one is never read as today)."""

    def __init__(self, *args, **kwargs):
        instance = kwargs.get("instance")
        kwargs.setdefault("patient", instance.patient if instance is not None and instance.pk else None)
        super().__init__(*args, **kwargs)
        self.fields["visit_date"].required = True
        self.fields["visit_date"].error_messages["required"] = (
            "Enter the visit date (the day the patient was seen); a correction can't leave it empty.")


class LesionSiteForm(_NoColon, ReasonMixin):
    anatomic_site = forms.ChoiceField(label="Anatomic site", choices=Lesion.Site.choices)

    field_order = ["anatomic_site", "reason"]


class ReviewAmendmentForm(ReviewForm, ReasonMixin):
    reason = forms.CharField(label="Reason for the amendment", max_length=500,
                             help_text="The signed review stays as it was; this amendment is shown beside it.")


class PlaceLesionForm(_NoColon, ReasonMixin):
    """Where a patient's lesion is on the body map: the map fills these (or the side list alone)."""

    side = forms.ChoiceField(label="Left/right", choices=PatientLesion.Side.choices, required=False)
    map_view = forms.ChoiceField(choices=PatientLesion.View.choices, widget=forms.HiddenInput,
                                 error_messages={"required": "Click the body map where the lesion is."})
    map_x = forms.FloatField(min_value=0.0, max_value=1.0, widget=forms.HiddenInput)
    map_y = forms.FloatField(min_value=0.0, max_value=1.0, widget=forms.HiddenInput)

    field_order = ["side", "reason", "map_view", "map_x", "map_y"]

    def __init__(self, *args, latest: Lesion | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.latest = latest  # the lesion's latest visit: its site is what the model read

    def clean(self) -> dict:
        data = super().clean()
        view, x, y = data.get("map_view"), data.get("map_x"), data.get("map_y")
        if not view or x is None or y is None:
            return data
        site = self.latest.anatomic_site if self.latest is not None else None
        problem = body_map.site_problem(view, x, y, site) if site else None
        if problem:
            region = body_map.point_region(view, x, y)
            if region is not None:
                # a move never changes the site the model read: that is a site correction, re-scored with a reason
                problem = (f"That point is on the {body_map.describe(region)}, but at its latest visit "
                           f"({self.latest.case.visit_date:%Y-%m-%d}) the lesion's site is “{site}”, which the "
                           "model read. Moving a lesion on the map does not change its site: use “Correct the site” "
                           "first (its images are scored again, with your reason), then place it here.")
            raise forms.ValidationError(problem)
        problem = body_map.side_problem(view, x, data.get("side") or "")
        if problem:
            self.add_error("side", problem)
        return data


class CloseCaseForm(_NoColon, forms.Form):
    note = forms.CharField(label="Note (optional)", max_length=300, required=False)
