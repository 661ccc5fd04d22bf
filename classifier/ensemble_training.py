"""Ensembles trained from the admin: what may be asked, how long it takes, how a version says it is one.

An ensemble run trains one CNN per member seed with the run's config and data sources, on the
lesion split of the first seed, then combines them into one artifact averaging their logits
(``training.ensemble.train_ensemble``, the functions behind ``python -m training ensemble``).
It registers as one version and goes through the same promotion gate as a single CNN.

Its time limit is the single run's limit per member (a run is N trainings in a row); the sweep
reads it from the run's ``training_config["time_limit_s"]``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.conf import settings

from classifier.models import ModelVersion
from mlcore.artifact import read_card
from training.config import TrainConfig

ENSEMBLE = "ensemble"
# the largest ensemble is a setting: the broker's visibility timeout must outlast its run
MIN_MEMBERS, MAX_MEMBERS = 2, settings.TRAINING_MAX_ENSEMBLE_MEMBERS
# After each member's training loop: audit, image loading, calibration, evaluation and its checks
# (a default single run, 55-minute budget, stays within 60 minutes on this 2-core CPU). After the
# last member: refitting the combined model and its checks, which score every split with every
# member (about 3 minutes per member with the full data), and the gate.
MEMBER_OVERHEAD_MIN = 5.0
COMBINE_MIN = 15.0


class EnsembleRequestError(ValueError):
    """Member seeds the admin may not ask for; the message says why."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """Whole numbers separated by spaces or commas ("1234, 2026") as a tuple."""
    seeds = []
    for token in text.replace(",", " ").split():
        try:
            seeds.append(int(token))
        except ValueError:
            raise EnsembleRequestError(
                f"Seeds are whole numbers separated by spaces or commas; {token!r} is not one.") from None
    return tuple(seeds)


def run_config(overrides: dict | None = None) -> TrainConfig:
    """The config a run gets before its own epochs and seed: the defaults, then the ops overrides
    (settings.SECONDLOOK_TRAINING_OVERRIDES), then the run's expert ``overrides``."""
    return TrainConfig.from_dict(TrainConfig().to_dict() | dict(settings.SECONDLOOK_TRAINING_OVERRIDES)
                                 | dict(overrides or {}))


def estimate_minutes(members: int, config: TrainConfig | None = None) -> float:
    """Rough wall-clock minutes of a run of ``members`` CNNs (1: a single CNN): each member's
    training loop stops at the config's time budget, and its whole run within the run budget."""
    config = config or run_config()
    per_member = config.time_budget_min + MEMBER_OVERHEAD_MIN
    if config.run_budget_min > 0:
        per_member = min(per_member, config.run_budget_min)
    return members * per_member + (COMBINE_MIN if members > 1 else 0.0)


def time_limits_s(members: int) -> tuple[int, int]:
    """(soft, hard) Celery time limits of a run of ``members`` CNNs: the single run's per member."""
    soft = members * settings.TRAINING_SOFT_TIME_LIMIT
    return soft, soft + (settings.TRAINING_TIME_LIMIT - settings.TRAINING_SOFT_TIME_LIMIT)


def validate_members(seeds: Iterable[int], *, overrides: dict | None = None) -> tuple[int, ...]:
    """Check an ensemble's member seeds: 2 to 3, distinct, and the run fitting in its time limit."""
    seeds = tuple(int(s) for s in seeds)
    if not MIN_MEMBERS <= len(seeds) <= MAX_MEMBERS:
        raise EnsembleRequestError(
            f"An ensemble has {MIN_MEMBERS} to {MAX_MEMBERS} members; {len(seeds)} seed(s) given.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise EnsembleRequestError(
            f"Each member needs its own seed (the same seed on the same data trains the same model): "
            f"{', '.join(map(str, repeated))} given more than once.")
    minutes, (soft, _) = estimate_minutes(len(seeds), run_config(overrides)), time_limits_s(len(seeds))
    if minutes * 60 > soft:
        raise EnsembleRequestError(
            f"An ensemble of {len(seeds)} would take about {format_minutes(minutes)}, beyond its time limit of "
            f"{format_minutes(soft / 60)} (TRAINING_SOFT_TIME_LIMIT per member): choose fewer members or a "
            f"shorter time budget.")
    return seeds


def format_minutes(minutes: float) -> str:
    """"55 min", "2 h 10 min"."""
    minutes = int(round(minutes))
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h" + (f" {rest} min" if rest else "")


def member_seeds(version: ModelVersion) -> tuple[int, ...]:
    """The member seeds a run was asked for; () for a single CNN."""
    config = version.training_config or {}
    return tuple(config.get("members") or ()) if config.get("kind") == ENSEMBLE else ()


def describe(version: ModelVersion) -> str:
    """What kind of model ``version`` is, for the admin: "Ensemble of 2 CNNs (seeds 1234, 2026)"."""
    seeds = member_seeds(version)
    if seeds:
        return f"Ensemble of {len(seeds)} CNNs (seeds {', '.join(map(str, seeds))}; mean of their logits)"
    if version.artifact_path:  # an ensemble built with `python -m training ensemble` and registered
        try:
            members = (read_card(version.model_dir, required=()).get("ensemble") or {}).get("members")
        except (OSError, ValueError):
            members = None
        if members:
            return f"Ensemble of {len(members)} CNNs ({', '.join(str(m.get('version')) for m in members)})"
    return "Single CNN"


def architecture(seeds: Sequence[int], card: dict) -> dict:
    """What the registry's metrics record of an ensemble version (its model card has the members in full)."""
    ensemble = card.get("ensemble") or {}
    return {"kind": ENSEMBLE, "members": len(seeds), "seeds": list(seeds), "combine": ensemble.get("combine"),
            "member_versions": [m.get("version") for m in ensemble.get("members", [])]}
