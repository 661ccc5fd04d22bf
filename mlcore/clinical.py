"""Clinical context (age, sex, anatomic site) as a per-class offset on the CNN's logits.

The image model stays as it is; a small linear layer adds ``features(context) @ weights`` to its
nine logits before temperature scaling. Every feature is 0 when its value is unknown, so an image
without clinical context (the ISIC 9-class folders, the predict CLI without options) gets exactly
the image model's logits: the offset carries only what the context says, never a guess from its
absence. The weights are fitted on the training split (the same set-valued loss and class weights
as the CNN), so validation stays clean for the temperature and the thresholds that follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AGE_CENTER, AGE_SCALE = 50.0, 20.0
AGE_RANGE = (0.0, 120.0)
SEXES = ("male", "female")
# ISIC's general anatomic sites, plus "torso" for a trunk site given without a side
SITE_GROUPS = ("head/neck", "anterior torso", "posterior torso", "torso", "upper extremity",
               "lower extremity", "palms/soles", "oral/genital")
# HAM10000 `localization` values and the app's sites (ISIC general sites) -> group
_SITE_ALIASES = {
    "scalp": "head/neck", "face": "head/neck", "ear": "head/neck", "neck": "head/neck",
    "abdomen": "anterior torso", "chest": "anterior torso", "back": "posterior torso",
    "trunk": "torso", "lateral torso": "torso", "hand": "upper extremity", "foot": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital",
    **{g: g for g in SITE_GROUPS},
}
FEATURES = ("age", "age squared", "male", "female", *(f"site {g}" for g in SITE_GROUPS))


class ClinicalContextError(ValueError):
    """A context value that cannot be used (age out of range, unknown site or sex)."""


@dataclass(frozen=True)
class ClinicalContext:
    """What the clinician knows about the patient and the lesion; None = unknown."""

    age: float | None = None
    sex: str | None = None
    site: str | None = None

    def __post_init__(self) -> None:
        if self.age is not None and not (AGE_RANGE[0] <= float(self.age) <= AGE_RANGE[1]):
            raise ClinicalContextError(f"age {self.age} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years")
        if self.sex is not None and self.sex not in (*SEXES, "other", "unknown"):
            raise ClinicalContextError(f"sex {self.sex!r} is not one of male, female, other, unknown")
        if self.site is not None and site_group(self.site) is None and self.site != "unknown":
            raise ClinicalContextError(f"anatomic site {self.site!r} is not known; use one of "
                                       f"{', '.join(sorted(_SITE_ALIASES))} or unknown")

    @classmethod
    def of_record(cls, record) -> "ClinicalContext":
        """The context of a training record (``training.data.ImageRecord``); a value this code does
        not know (a new HAM localization, an age out of range) counts as unknown."""
        age = record.age if record.age is not None and AGE_RANGE[0] <= record.age <= AGE_RANGE[1] else None
        sex = record.sex if record.sex in SEXES else None
        return cls(age=age, sex=sex, site=record.site if site_group(record.site) else None)

    def to_dict(self) -> dict:
        return {"age": self.age, "sex": self.sex, "site": self.site}

    @property
    def known(self) -> bool:
        """Whether any value takes part in the offset."""
        return bool(features([self]).any())


def contexts_of(records) -> list[ClinicalContext]:
    """The clinical context of each training record."""
    return [ClinicalContext.of_record(r) for r in records]


def site_group(site: str | None) -> str | None:
    """The group of a HAM10000 localization or an ISIC general site; None if unknown."""
    return _SITE_ALIASES.get((site or "").strip().lower())


def features(contexts: Sequence[ClinicalContext]) -> np.ndarray:
    """(N, len(FEATURES)) float64; all zeros for an unknown value."""
    out = np.zeros((len(contexts), len(FEATURES)))
    for i, c in enumerate(contexts):
        if c.age is not None:
            z = (float(c.age) - AGE_CENTER) / AGE_SCALE
            out[i, 0:2] = z, z * z
        if c.sex in SEXES:
            out[i, 2 + SEXES.index(c.sex)] = 1.0
        group = site_group(c.site)
        if group is not None:
            out[i, 4 + SITE_GROUPS.index(group)] = 1.0
    return out


@dataclass
class ClinicalAdjustment:
    """logits + features(context) @ weights; ``weights`` is (len(FEATURES), n_classes)."""

    weights: np.ndarray
    l2: float = 0.0

    def apply(self, logits: np.ndarray, contexts: Sequence[ClinicalContext] | None) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float32)
        if contexts is None:
            return logits
        if len(contexts) != len(logits):
            raise ValueError(f"{len(contexts)} clinical contexts for {len(logits)} images")
        return (logits + features(contexts) @ self.weights).astype(np.float32)

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "weights": np.round(self.weights, 6).tolist(), "l2": self.l2,
                "age_center": AGE_CENTER, "age_scale": AGE_SCALE,
                "fitted_on": "the image model's logits on the training split"}

    @classmethod
    def from_dict(cls, d: dict) -> "ClinicalAdjustment":
        if list(d.get("features", [])) != list(FEATURES) or (d.get("age_center"), d.get("age_scale")) != (
                AGE_CENTER, AGE_SCALE):
            raise ValueError("the model card's clinical features differ from this code's; retrain or update")
        return cls(weights=np.asarray(d["weights"], dtype=np.float64), l2=float(d.get("l2", 0.0)))


def fit_adjustment(logits: np.ndarray, masks: np.ndarray, contexts: Sequence[ClinicalContext], *,
                   sample_weight: np.ndarray | None = None, l2: float = 1e-3,
                   intercept: bool = False) -> ClinicalAdjustment:
    """Weights minimising the weighted set-valued NLL (-log of the allowed classes' summed
    probability) of ``logits + features @ W`` plus ``l2/2 * |W|^2`` (L-BFGS; convex).

    ``intercept``: fit an unpenalised per-class bias beside ``W`` and leave it out of the returned
    adjustment. With zero ``logits`` that is the context-only model of the class, and ``W`` alone is
    its log-likelihood ratio ``log p(c | context) - log p(c)`` up to a per-image constant (see
    ``prior_ratio``)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    z0 = np.asarray(logits, dtype=np.float64)
    allowed = np.asarray(masks) > 0.5
    x = features(contexts)
    w = np.ones(len(z0)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w / w.sum()
    n_bias = z0.shape[1] if intercept else 0
    shape = (x.shape[1], z0.shape[1])

    def objective(theta):
        bias, weights = theta[:n_bias], theta[n_bias:].reshape(shape)
        z = z0 + x @ weights + (bias if intercept else 0.0)
        lse_all = logsumexp(z, axis=1)
        z_allowed = np.where(allowed, z, -np.inf)
        lse_allowed = logsumexp(z_allowed, axis=1)
        loss = float(w @ (lse_all - lse_allowed)) + 0.5 * l2 * float((weights ** 2).sum())
        grad_z = w[:, None] * (np.exp(z - lse_all[:, None]) - np.exp(z_allowed - lse_allowed[:, None]))
        grad = (x.T @ grad_z + l2 * weights).ravel()
        return loss, (np.concatenate([grad_z.sum(axis=0), grad]) if intercept else grad)

    res = minimize(objective, np.zeros(n_bias + shape[0] * shape[1]), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000})
    return ClinicalAdjustment(weights=res.x[n_bias:].reshape(shape), l2=l2)


def prior_ratio(masks: np.ndarray, contexts: Sequence[ClinicalContext], *,
                sample_weight: np.ndarray | None = None, l2: float = 1e-3) -> ClinicalAdjustment:
    """The offset a context-only model gives: ``log p(c | context) - log p(c)``, fitted on labels
    alone (no image model), so it is the same whichever network it is added to. Adding it to an
    image model's logits is Bayes' rule when image and context are independent given the class;
    the joint fit (``fit_adjustment`` on the network's logits) does not assume that."""
    masks = np.asarray(masks)
    return fit_adjustment(np.zeros(masks.shape, dtype=np.float64), masks, contexts,
                          sample_weight=sample_weight, l2=l2, intercept=True)
