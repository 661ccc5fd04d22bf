"""The cases list's filters: a form (what the page offers) and the queryset it selects."""
from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet

from cases.models import Case, Lesion, Review
from cases.roles import DERMATOLOGIST, display_name

STATES = [
    ("", "Any"),
    ("flagged", "Flagged by the model"),
    ("awaiting", "Awaiting review"),
    ("reviewed", "Reviewed"),
    ("open", "Open"),
    ("closed", "Closed"),
]


class CaseFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, widget=forms.TextInput(
        attrs={"type": "search", "placeholder": "Patient or question"}))
    state = forms.ChoiceField(label="State", choices=STATES, required=False)
    visit_from = forms.DateField(label="Visit from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    visit_to = forms.DateField(label="Visit to", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    reviewer = forms.ModelChoiceField(label="Reviewer", required=False, queryset=get_user_model().objects.none(),
                                      empty_label="Anyone")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        users = get_user_model().objects.filter(groups__name=DERMATOLOGIST).order_by("last_name", "username")
        self.fields["reviewer"].queryset = users
        self.fields["reviewer"].label_from_instance = display_name

    def clean(self):
        data = super().clean()
        start, end = data.get("visit_from"), data.get("visit_to")
        if start and end and start > end:
            raise forms.ValidationError("“Visit from” is after “Visit to”.")
        return data


def filter_cases(cases: QuerySet[Case], data: dict) -> QuerySet[Case]:
    """Apply a valid CaseFilterForm's cleaned data."""
    if data.get("q"):
        cases = cases.filter(Q(patient__identifier__icontains=data["q"]) | Q(clinical_question__icontains=data["q"]))
    state = data.get("state")
    if state == "flagged":
        cases = cases.filter(Exists(Lesion.objects.filter(case=OuterRef("pk"), flagged=True)))
    elif state == "awaiting":
        cases = cases.filter(Exists(Lesion.objects.filter(case=OuterRef("pk"), awaiting_review=True)))
    elif state in ("reviewed", "open", "closed"):
        cases = cases.filter(status=state)
    if data.get("visit_from"):
        cases = cases.filter(visit_date__gte=data["visit_from"])
    if data.get("visit_to"):
        cases = cases.filter(visit_date__lte=data["visit_to"])
    if data.get("reviewer"):
        cases = cases.filter(Exists(Review.objects.filter(lesion__case=OuterRef("pk"), reviewer=data["reviewer"])))
    return cases
