"""Admin forms for the model registry."""
from django import forms

from classifier.lifecycle import DATA_SOURCES
from training.config import TrainConfig


class TrainingForm(forms.Form):
    """"Train a new version": data sources, epochs, seed and the target sensitivity."""

    sources = forms.MultipleChoiceField(
        choices=list(DATA_SOURCES.items()), widget=forms.CheckboxSelectMultiple,
        initial=["isic-9class", "ham10000", "ham10000-more", "reviews"],
    )
    epochs = forms.IntegerField(min_value=1, max_value=200, initial=TrainConfig.epochs,
                                help_text="Upper bound; the training time budget usually ends the run first.")
    seed = forms.IntegerField(initial=TrainConfig.seed)
    target_sensitivity = forms.FloatField(min_value=0.5, max_value=0.99, initial=TrainConfig.target_sensitivity,
                                          label="Target sensitivity")
