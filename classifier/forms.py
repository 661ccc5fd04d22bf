"""Admin forms for the model registry."""
from django import forms

from classifier import ensemble_training as ens
from classifier.lifecycle import DATA_SOURCES
from training.config import TrainConfig

SINGLE = "single"


class TrainingForm(forms.Form):
    """"Train a new version": one CNN or an ensemble, data sources, epochs, seed(s) and the target
    sensitivity. ``cleaned_data`` holds the keyword arguments of ``lifecycle.start_training``."""

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
        soft, _ = ens.time_limits_s(1)
        self.fields["kind"].help_text = (
            f"An ensemble trains its members one after the other, so it takes about as many times as long as a "
            f"single CNN, and its time limit is the single run's ({ens.format_minutes(soft / 60)}) per member. It "
            f"costs as many times the inference time per image; its quality checks, prediction sets and "
            f"out-of-domain detector (over every member's features) are fitted like a single CNN's.")

    def clean(self) -> dict:
        """An ensemble's seeds parsed and checked; the form's choice folded into ``members``."""
        data = super().clean()
        kind = data.pop("kind", SINGLE)
        text = data.pop("members", "") or ""
        data["members"] = ()
        if kind == ens.ENSEMBLE:
            try:
                data["members"] = ens.validate_members(ens.parse_seeds(text))
            except ens.EnsembleRequestError as exc:
                self.add_error("members", str(exc))
        return data
