"""The histopathology result form (cases.outcomes); one per lesion on the case page."""
from __future__ import annotations

from django import forms
from django.utils import timezone

from cases.forms import _NoColon
from cases.models import DIAGNOSIS_CHOICES, Outcome


class OutcomeForm(_NoColon, forms.Form):
    """Diagnosis, report date and reference; a correction of the current result also asks why."""

    diagnosis = forms.ChoiceField(label="Histopathological diagnosis", choices=[("", "—")] + DIAGNOSIS_CHOICES)
    diagnosis_date = forms.DateField(label="Report date", widget=forms.DateInput(attrs={"type": "date"},
                                                                                  format="%Y-%m-%d"))
    report_reference = forms.CharField(label="Report reference", max_length=100,
                                       help_text="The laboratory's report id.")
    # the result this entry corrects, as the page showed it: a result corrected meanwhile is refused
    supersedes = forms.IntegerField(required=False, widget=forms.HiddenInput)
    reason = forms.CharField(label="Reason for the correction", max_length=500, required=False)

    def __init__(self, *args, lesion=None, current: Outcome | None = None, **kwargs):
        if lesion is not None:  # several lesions on one page: ids of their own
            kwargs.setdefault("auto_id", f"id_outcome_{lesion.pk}_%s")
        super().__init__(*args, **kwargs)
        self.current = current
        self.fields["diagnosis_date"].widget.attrs["max"] = timezone.localdate().isoformat()
        if current is None:
            del self.fields["reason"]
        else:
            self.fields["supersedes"].initial = current.pk
            self.fields["reason"].required = True

    def clean_diagnosis_date(self):
        value = self.cleaned_data["diagnosis_date"]
        if value > timezone.localdate():
            raise forms.ValidationError("The report date can't be in the future.")
        return value

    def clean_report_reference(self) -> str:
        value = self.cleaned_data["report_reference"].strip()
        if not value:
            raise forms.ValidationError("Enter the laboratory's report reference.")
        return value
