"""Forms of the corrections: each is the record's own form plus the reason, which is required."""
from __future__ import annotations

from django import forms

from cases.forms import CaseForm, PatientForm, ReviewForm, _NoColon
from cases.models import Lesion, Patient, PatientLesion

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


class CaseCorrectionForm(CaseForm, ReasonMixin):
    pass


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


class CloseCaseForm(_NoColon, forms.Form):
    note = forms.CharField(label="Note (optional)", max_length=300, required=False)
