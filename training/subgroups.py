"""Held-out figures per patient subgroup (source dataset, sex, age band, body site): a model that
is good on average can still miss melanomas on, say, acral skin or older patients."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .evaluate import _auc, sens_spec, targets
from mlcore.scoring import Thresholds, malignancy_score, melanoma_probability

AGE_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 200, "70+"))


def age_band(age: float | None) -> str:
    if age is None or age != age:
        return "unknown"
    for lo, hi, name in AGE_BANDS:
        if lo <= age < hi:
            return name
    return "unknown"


def subgroup_labels(records: Sequence) -> dict[str, list[str]]:
    """Attribute -> one value per record (ImageRecord-like: source, sex, age, site)."""
    return {
        "source": [r.source for r in records],
        "sex": [r.sex or "unknown" for r in records],
        "age": [age_band(r.age) for r in records],
        "site": [r.site or "unknown" for r in records],
    }


def subgroup_report(probs: np.ndarray, masks: np.ndarray, thresholds: Thresholds,
                    groups: dict[str, Sequence[str]], *, min_cases: int = 5) -> dict:
    """Per attribute and value: counts, melanoma / malignancy AUC and sensitivity / specificity at
    the model's thresholds. Figures from fewer than ``min_cases`` positives or negatives are
    None (too few to say anything), never a misleading 1.0 or 0.0."""
    probs = np.asarray(probs, dtype=np.float64)
    t = targets(masks)
    scores = {"melanoma": (t["melanoma"], melanoma_probability(probs), thresholds.melanoma),
              "malignancy": (t["malignant"], malignancy_score(probs), thresholds.malignancy)}
    out: dict = {}
    for attribute, values in groups.items():
        values = np.asarray(values, dtype=object)
        if len(values) != len(probs):
            raise ValueError(f"{attribute}: {len(values)} labels for {len(probs)} images")
        rows = {}
        for value in sorted(set(values), key=str):
            sel = values == value
            row: dict = {"n": int(sel.sum())}
            for name, (positives, score, thr) in scores.items():
                pos = positives[sel]
                n_pos, n_neg = int(pos.sum()), int((~pos).sum())
                row[f"n_{name}_positive"] = n_pos
                enough = n_pos >= min_cases and n_neg >= min_cases
                row[f"{name}_auc"] = _auc(pos, score[sel]) if enough else None
                sens, spec = sens_spec(score[sel], pos, thr)
                row[f"{name}_sensitivity"] = sens if n_pos >= min_cases else None
                row[f"{name}_specificity"] = spec if n_neg >= min_cases else None
            rows[str(value)] = row
        out[attribute] = rows
    return out


def lesion_ids_of(records, groups: Mapping[str, str] | None = None) -> np.ndarray:
    """One id per record for the bootstrap CIs to resample: its split group when ``groups`` (the
    audit's: lesion ids unioned over near-duplicates) knows it, else its lesion id, so that
    near-duplicates of one lesion are drawn together, as in the promotion gate."""
    groups = groups or {}
    return np.array([str(groups.get(r.isic_id) or r.lesion_id or r.isic_id) for r in records])
