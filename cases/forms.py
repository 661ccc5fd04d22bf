"""Forms for the clinician and dermatologist pages."""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.utils import timezone

from cases.models import BIRTH_YEAR_MIN, Case, Lesion, LesionImage, Patient, Review
from cases.uploads import megabytes


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
        fields = ["clinical_question", "notes"]
        widgets = {
            "clinical_question": forms.Textarea(attrs={"rows": 3}),
            "notes": forms.Textarea(attrs={"rows": 3}),
        }
        help_texts = {"clinical_question": "What would you like a second opinion on?"}


class LesionForm(_NoColon, forms.ModelForm):
    """A lesion on the case."""

    class Meta:
        model = Lesion
        fields = ["anatomic_site", "description"]
        help_texts = {"description": "Size, colour, change over time… (optional)",
                      "anatomic_site": "The model weighs the site with the patient's age and sex; "
                                       "choose Unknown rather than guess."}


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


class UploadForm(_NoColon, forms.Form):
    """Images of one lesion."""

    images = MultipleImageField(
        label="Images",
        help_text=f"JPEG, PNG, TIFF or DICOM (.dcm), up to {megabytes(settings.UPLOAD_MAX_BYTES)} each; up to "
                  f"{settings.UPLOAD_MAX_FILES} at a time.",
        widget=MultipleFileInput(attrs={"accept": UPLOAD_ACCEPT, "multiple": True}),
    )
    kind = forms.ChoiceField(label="Image type", choices=LesionImage.Kind.choices, initial=LesionImage.Kind.DERMOSCOPIC)


class ReviewForm(_NoColon, forms.ModelForm):
    """A dermatologist's review of one flagged lesion."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Radio buttons need no "---------" choice: required fields start with nothing checked.
        self.fields["agreement"].choices = Review.Agreement.choices
        self.fields["management"].choices = Review.Management.choices

    class Meta:
        model = Review
        fields = ["agreement", "final_diagnosis", "management", "notes"]
        widgets = {
            "agreement": forms.RadioSelect,
            "management": forms.RadioSelect,
            "notes": forms.Textarea(attrs={"rows": 2}),
        }
