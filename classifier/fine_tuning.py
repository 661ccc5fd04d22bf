"""Fine-tuning the active model from the admin ("Start from: the active model").

A run from ImageNet weights on the 2-core CPU ends far below a model trained on an accelerator, so
it rarely passes the promotion gate. Fine-tuning continues the active model instead: its own
settings, then `training.config.FINE_TUNE_RECIPE` (its top blocks, a few epochs), warm-started
from its weights and on its lesion split, so no image it learned from is validated or tested on.
The request records the version it starts from (name and sha256); the worker resolves that
artifact on its own host when the run starts.
"""
from __future__ import annotations

from classifier import artifact_store
from classifier.models import ModelVersion
from mlcore.artifact import CardError
from training.config import FINE_TUNE_RECIPE, TrainConfig, fine_tune_config

IMAGENET = "imagenet"
ACTIVE = "active"
START_KEY = "start_from"  # in a run's training_config: {"version", "sha256"} of the model it continues


class FineTuneError(ValueError):
    """The active model cannot be fine-tuned; the message says why."""


def _card(version: ModelVersion) -> dict:
    try:
        return artifact_store.card_of(version)
    except (artifact_store.ArtifactUnavailable, CardError, OSError) as exc:
        raise FineTuneError(f"The files of {version.version} are not usable on this server ({exc}).") from None


def check_fine_tunable(version: ModelVersion | None) -> dict:
    """The card of ``version`` when it can be fine-tuned: a single CNN whose card records its
    training settings and lesion split; raises `FineTuneError` saying why not."""
    if version is None:
        raise FineTuneError("No model is active, so there is none to fine-tune.")
    card = _card(version)
    if card.get("ensemble"):
        raise FineTuneError(f"{version.version} is an ensemble; fine-tuning starts from a single CNN.")
    if not (card.get("training") or {}).get("config") or not card.get("split_ids"):
        raise FineTuneError(f"The model card of {version.version} does not record its training settings and "
                            "lesion split, which fine-tuning keeps.")
    return card


def start_record(version: ModelVersion) -> dict:
    """What a run's ``training_config[START_KEY]`` keeps of the model it starts from."""
    return {"version": version.version, "sha256": version.sha256}


def run_config(start: dict, *, per_run: dict, asked: dict) -> TrainConfig:
    """The config of a run that continues ``start`` (a `start_record`): that model's own settings,
    the fine-tuning recipe, the run's expert ``per_run`` overrides, then what the form ``asked``
    (its epochs only as an upper bound on the recipe's), warm-started from the model's weights."""
    version = ModelVersion.objects.filter(version=start["version"]).first()
    if version is None or (start.get("sha256") and version.sha256 != start["sha256"]):
        raise FineTuneError(f"The model to fine-tune, {start['version']}, is no longer in the registry as it was.")
    check_fine_tunable(version)
    asked = dict(asked)
    epochs = min(int(asked.pop("epochs", FINE_TUNE_RECIPE["epochs"])), int(FINE_TUNE_RECIPE["epochs"]))
    return fine_tune_config(artifact_store.local_dir(version), dict(per_run) | asked | {"epochs": epochs})


def describe_start(version: ModelVersion) -> str | None:
    """ "Fine-tuned from VERSION" for a run that continued another model, else None."""
    start = (version.training_config or {}).get(START_KEY)
    return f"Fine-tuned from {start['version']} (its top blocks, on its lesion split)" if start else None
