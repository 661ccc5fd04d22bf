"""The daily lists' filters: one form per list (what the page offers) and the queryset it selects.

The cases list, the patients list and the review queue share the markup
(templates/cases/partials/list_filters.html) and the rules: a bad value gives the form's message
and the unfiltered list, never a database error.
"""
from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery

from cases.models import Case, Lesion, Patient, Review
from cases.roles import DERMATOLOGIST, display_name

STATES = [
    ("", "Any"),
    ("flagged", "Flagged by the model"),
    ("awaiting", "Awaiting review"),
    ("reviewed", "Reviewed"),
    ("open", "Open"),
    ("closed", "Closed"),
]

LESION_STATES = [
    ("", "Any"),
    ("flagged", "Any flagged"),
    ("awaiting", "Awaiting review"),
    ("reviewed", "Reviewed"),
]

CLAIMS = [
    ("", "Any"),
    ("unclaimed", "Unclaimed or claim expired"),
    ("mine", "By me"),
]


def _date(label: str) -> forms.DateField:
    return forms.DateField(label=label, required=False, widget=forms.DateInput(attrs={"type": "date"}))


def _person(label: str) -> forms.ModelChoiceField:
    # the queryset is set per request in ListFilterForm.__init__ (users change while the process runs)
    return forms.ModelChoiceField(label=label, required=False, queryset=get_user_model().objects.none(),
                                  empty_label="Anyone")


def dermatologists() -> QuerySet:
    """Users who review: the reviewer choices of the lists."""
    return get_user_model().objects.filter(groups__name=DERMATOLOGIST).order_by("last_name", "username")


def claimers() -> QuerySet:
    """Users who can hold a claim: dermatologists and admins (cases.access.is_reviewer)."""
    users = get_user_model().objects.filter(Q(groups__name=DERMATOLOGIST) | Q(is_staff=True, is_superuser=True))
    return users.distinct().order_by("last_name", "username")


class ListFilterForm(forms.Form):
    """Shared rules: people fields list ``people`` (field name -> queryset function); the date
    pair ``dates`` (from, to) must not run backwards."""

    people: dict = {}
    dates: tuple[str, str] = ("visit_from", "visit_to")

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        for name, users in self.people.items():
            self.fields[name].queryset = users()
            self.fields[name].label_from_instance = display_name

    def clean(self) -> dict:
        data = super().clean()
        first, last = self.dates
        start, end = data.get(first), data.get(last)
        if start and end and start > end:
            raise forms.ValidationError(f"“{self.fields[first].label}” is after “{self.fields[last].label}”.")
        return data

    def is_filtering(self) -> bool:
        """Whether a valid form narrows the list (for the "nothing matches" wording)."""
        return self.is_bound and self.is_valid() and any(self.cleaned_data.values())


class CaseFilterForm(ListFilterForm):
    q = forms.CharField(label="Search", required=False, widget=forms.TextInput(
        attrs={"type": "search", "placeholder": "Patient or question"}))
    state = forms.ChoiceField(label="State", choices=STATES, required=False)
    visit_from = _date("Visit from")
    visit_to = _date("Visit to")
    reviewer = _person("Reviewer")

    people = {"reviewer": dermatologists}


class PatientFilterForm(ListFilterForm):
    q = forms.CharField(label="Search by identifier", required=False, widget=forms.TextInput(
        attrs={"type": "search", "placeholder": "Identifier"}))
    status = forms.ChoiceField(label="Lesions", choices=LESION_STATES, required=False)
    visit_from = _date("Last visit from")
    visit_to = _date("Last visit to")
    reviewer = _person("Reviewer")

    people = {"reviewer": dermatologists}


class QueueFilterForm(ListFilterForm):
    q = forms.CharField(label="Search", required=False, widget=forms.TextInput(
        attrs={"type": "search", "placeholder": "Patient or question"}))
    claim = forms.ChoiceField(label="Claimed", choices=CLAIMS, required=False)
    # not "Claimed by": Playwright's get_by_label("Claimed") matches substrings and must stay unique
    claimed_by = _person("Claim held by")
    visit_from = _date("Visit from")
    visit_to = _date("Visit to")
    # value "1": links and tests written for the hand-made form send followed=1
    followed = forms.BooleanField(label="Seen at earlier visits", required=False,
                                  widget=forms.CheckboxInput(attrs={"value": "1"}))

    people = {"claimed_by": claimers}


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
    cases = _visit_dates(cases, data, "visit_date")
    if data.get("reviewer"):
        cases = cases.filter(Exists(Review.objects.filter(lesion__case=OuterRef("pk"), reviewer=data["reviewer"])))
    return cases


def _visit_dates(rows: QuerySet, data: dict, field: str) -> QuerySet:
    if data.get("visit_from"):
        rows = rows.filter(**{f"{field}__gte": data["visit_from"]})
    if data.get("visit_to"):
        rows = rows.filter(**{f"{field}__lte": data["visit_to"]})
    return rows


def with_last_visit(patients: QuerySet[Patient], cases: QuerySet[Case]) -> QuerySet[Patient]:
    """Annotate ``last_visit``: the latest visit date among ``cases`` (the user's visible cases),
    so neither the column nor the date filter reveals a visit the user may not open."""
    latest = cases.filter(patient=OuterRef("pk")).order_by("-visit_date").values("visit_date")[:1]
    return patients.annotate(last_visit=Subquery(latest))


def filter_patients(patients: QuerySet[Patient], data: dict, cases: QuerySet[Case]) -> QuerySet[Patient]:
    """Apply a valid PatientFilterForm's cleaned data to patients annotated by with_last_visit.

    Lesions and reviews count only on ``cases`` (the user's visible cases), for the same reason."""
    if data.get("q"):
        patients = patients.filter(identifier__icontains=data["q"])
    lesions = Lesion.objects.filter(case__in=cases, case__patient=OuterRef("pk"))
    reviews = Review.objects.filter(lesion__case__in=cases, lesion__case__patient=OuterRef("pk"))
    status = data.get("status")
    if status == "flagged":
        patients = patients.filter(Exists(lesions.filter(flagged=True)))
    elif status == "awaiting":
        patients = patients.filter(Exists(lesions.filter(awaiting_review=True)))
    elif status == "reviewed":
        patients = patients.filter(Exists(reviews))
    patients = _visit_dates(patients, data, "last_visit")
    if data.get("reviewer"):
        patients = patients.filter(Exists(reviews.filter(reviewer=data["reviewer"])))
    return patients


def filter_queue(cases: QuerySet[Case], data: dict, user, expired_before) -> QuerySet[Case]:
    """Apply a valid QueueFilterForm's cleaned data to the review queue; "mine" is ``user``'s
    claims, and a claim made before ``expired_before`` counts as none (anyone may take it over)."""
    if data.get("q"):
        cases = cases.filter(Q(patient__identifier__icontains=data["q"]) | Q(clinical_question__icontains=data["q"]))
    if data.get("claim") == "unclaimed":
        cases = cases.filter(Q(claimed_by__isnull=True) | Q(claimed_at__lt=expired_before))
    elif data.get("claim") == "mine":
        cases = cases.filter(claimed_by=user)
    if data.get("claimed_by"):
        cases = cases.filter(claimed_by=data["claimed_by"])
    if data.get("followed"):
        cases = cases.filter(has_earlier_visits=True)
    return _visit_dates(cases, data, "visit_date")
