"""Admin forms for the model registry."""
from django import forms

from classifier import ensemble_training as ens
from classifier import fine_tuning
from classifier.lifecycle import DATA_SOURCES
from classifier.models import ModelVersion
from training.config import FINE_TUNE_RECIPE, TrainConfig

SINGLE = "single"


class TrainingForm(forms.Form):
    """"Train a new version": from ImageNet weights or the active model, one CNN or an ensemble, data
    sources, epochs, seed(s) and the target sensitivity. ``cleaned_data`` holds the keyword
    arguments of ``lifecycle.start_training``."""

    start_from = forms.ChoiceField(label="Start from", widget=forms.RadioSelect, initial=fine_tuning.IMAGENET,
                                   choices=[], required=False)
    kind = forms.ChoiceField(label="Model", widget=forms.RadioSelect, initial=SINGLE, choices=[])
    members = forms.CharField(
        label="Ensemble member seeds", required=False, initial="1234 2026",
        help_text=f"Ensemble only: {ens.MIN_MEMBERS} to {ens.MAX_MEMBERS} different whole numbers, separated by "
                  "spaces or commas, one member per seed. Every member trains with the data and settings of this "
                  "form, on the lesion split of the first seed; the members are then combined into one model "
                  "averaging their logits, registered as one version and put through the same promotion gate.")
    sources = forms.MultipleChoiceField(
        choices=list(DATA_SOURCES.items()), widget=forms.CheckboxSelectMultiple,
        initial=["isic-9class", "ham10000", "ham10000-more", "reviews"],
    )
    epochs = forms.IntegerField(min_value=1, max_value=200, initial=TrainConfig.epochs,
                                help_text="Upper bound (per member of an ensemble); the training time budget "
                                          "usually ends the run first.")
    seed = forms.IntegerField(initial=TrainConfig.seed, help_text="Single CNN; an ensemble uses its member seeds.")
    target_sensitivity = forms.FloatField(min_value=0.5, max_value=0.99, initial=TrainConfig.target_sensitivity,
                                          label="Target sensitivity")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the estimate follows this server's training budget (SECONDLOOK_TRAINING_OVERRIDES)
        config = ens.run_config()
        single = ens.format_minutes(ens.estimate_minutes(1, config))
        sizes = "; ".join(f"{n} members: about {ens.format_minutes(ens.estimate_minutes(n, config))}"
                          for n in range(ens.MIN_MEMBERS, ens.MAX_MEMBERS + 1))
        self.fields["kind"].choices = [
            (SINGLE, f"Single CNN (about {single})"),
            (ens.ENSEMBLE, f"Ensemble of {ens.MIN_MEMBERS}-{ens.MAX_MEMBERS} CNNs, one per member seed ({sizes})"),
        ]
        self._offer_fine_tuning(single)
        soft, _ = ens.time_limits_s(1)
        self.fields["kind"].help_text = (
            f"An ensemble trains its members one after the other, so it takes about as many times as long as a "
            f"single CNN, and its time limit is the single run's ({ens.format_minutes(soft / 60)}) per member. It "
            f"costs as many times the inference time per image; its quality checks, prediction sets and "
            f"out-of-domain detector (over every member's features) are fitted like a single CNN's.")

    def _offer_fine_tuning(self, single: str) -> None:
        """Offer "the active model" when it can be fine-tuned; otherwise say why not."""
        choices = [(fine_tuning.IMAGENET, f"ImageNet weights: a full training of the network (about {single})")]
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        try:
            fine_tuning.check_fine_tunable(active)
        except fine_tuning.FineTuneError as exc:
            help_text = f"Fine-tuning the active model is not offered: {exc}"
        else:
            choices.append((fine_tuning.ACTIVE, (
                f"The active model, {active.version}: its top blocks fine-tuned for up to "
                f"{FINE_TUNE_RECIPE['epochs']} epochs (at most {FINE_TUNE_RECIPE['run_budget_min']:.0f} min)")))
            help_text = ("Fine-tuning keeps the active model's settings and lesion split (no image it learned from is "
                         "validated or tested on) and adds what the chosen data hold, such as reviewed cases; the new "
                         "version goes through the same promotion gate. A single CNN only.")
        self.fields["start_from"].choices = choices
        self.fields["start_from"].help_text = help_text

    def clean(self) -> dict:
        """An ensemble's seeds parsed and checked; the form's choice folded into ``members``."""
        data = super().clean()
        data["start_from"] = data.get("start_from") or fine_tuning.IMAGENET
        kind = data.pop("kind", SINGLE)
        if kind == ens.ENSEMBLE and data["start_from"] == fine_tuning.ACTIVE:
            self.add_error("start_from", "An ensemble trains each member from ImageNet weights; choose a single CNN "
                                         "to fine-tune the active model.")
        text = data.pop("members", "") or ""
        data["members"] = ()
        if kind == ens.ENSEMBLE:
            try:
                data["members"] = ens.validate_members(ens.parse_seeds(text))
            except ens.EnsembleRequestError as exc:
                self.add_error("members", str(exc))
        return data


def reason_field(help_text: str, **kwargs) -> forms.CharField:
    """The "why" of a lifecycle action, kept in its audit event (required)."""
    return forms.CharField(label="Reason", max_length=1000, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
                           help_text=help_text, **kwargs)


class ActivationForm(forms.Form):
    """The activation's confirmation: why (as `RollbackForm` asks why of a roll-back)."""

    reason = reason_field(
        "Why this version is activated (what its comparison showed, a ticket or change number); kept in "
        "the audit trail with the promotion gate's evidence, your user name and address.",
        error_messages={"required": "Say why you activate this version: the reason is kept in the audit trail. "
                                    "Nothing was changed."})


class RollbackForm(forms.Form):
    """The roll-back's confirmation: the active version and the version to re-activate as the page
    named them (hidden; `lifecycle.rollback` refuses them once they are out of date), and why."""

    expected_active = forms.IntegerField(widget=forms.HiddenInput, required=False)  # blank: no active version
    target = forms.IntegerField(widget=forms.HiddenInput)
    reason = reason_field(
        "Why the active version is rolled back (a problem seen, an incident number); kept in the audit "
        "trail with both versions, their model files' sha256, your user name and address.")

    def named_versions(self) -> tuple[ModelVersion | None, ModelVersion | None]:
        """(active, target) as the submitted page named them (None where it named none, or no
        such version), to show them again with the form's errors."""
        data = getattr(self, "cleaned_data", {})

        def get(pk: int | None) -> ModelVersion | None:
            return None if pk is None else ModelVersion.objects.filter(pk=pk).first()

        return get(data.get("expected_active")), get(data.get("target"))
