"""The promotion gate: may a candidate model replace the active one?

Both models are measured on the same held-out set (the candidate's test split, which neither
trained on); the figures arrive here as plain dicts so the rule is testable without Django.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_MELANOMA_AUC_DROP = 0.01


@dataclass
class GateResult:
    """The decision, the reasons for it, and a side-by-side table for the admin."""

    allowed: bool
    reasons: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


COMPARED = (
    ("melanoma_auc", "Melanoma AUC"),
    ("malignancy_auc", "Malignancy AUC"),
    ("melanoma_sensitivity", "Melanoma sensitivity at threshold"),
    ("melanoma_specificity", "Melanoma specificity at threshold"),
    ("malignancy_sensitivity", "Malignancy sensitivity at threshold"),
    ("malignancy_specificity", "Malignancy specificity at threshold"),
    ("balanced_accuracy_7", "Balanced accuracy (7 HAM codes)"),
)


def evaluate_gate(
    gate: dict | None,
    *,
    active_version: str | None,
    target_sensitivity: float,
    max_auc_drop: float = MAX_MELANOMA_AUC_DROP,
) -> GateResult:
    """Apply the rule to a comparison measured by the training worker.

    ``gate`` is ``{"heldout": {...}, "candidate": {metric: value}, "active": {"version": str, metric: value}}``.
    The candidate passes when its melanoma AUC is at most ``max_auc_drop`` below the active model's
    on the same set, and its melanoma sensitivity at its own threshold reaches the target.
    """
    if not gate or "candidate" not in gate:
        return GateResult(False, ["No held-out comparison has been measured for this version."])
    candidate, active = gate["candidate"], gate.get("active") or {}
    rows = [
        {
            "metric": label,
            "candidate": candidate.get(key),
            "active": active.get(key),
            "delta": None if candidate.get(key) is None or active.get(key) is None else candidate[key] - active[key],
        }
        for key, label in COMPARED
    ]
    reasons: list[str] = []
    allowed = True
    if active_version is not None:
        if active.get("version") != active_version:
            return GateResult(
                False,
                [f"The comparison was made against {active.get('version') or 'no model'}, but {active_version} "
                 "is active now: re-run the comparison."],
                rows,
            )
        drop = active["melanoma_auc"] - candidate["melanoma_auc"]
        if drop > max_auc_drop:
            allowed = False
            reasons.append(
                f"Melanoma AUC {candidate['melanoma_auc']:.3f} is {drop:.3f} below the active model's "
                f"{active['melanoma_auc']:.3f} (allowed drop {max_auc_drop:.2f})."
            )
        else:
            reasons.append(f"Melanoma AUC {candidate['melanoma_auc']:.3f} vs active {active['melanoma_auc']:.3f}: OK.")
    sensitivity = candidate.get("melanoma_sensitivity")
    if sensitivity is None or sensitivity < target_sensitivity:
        allowed = False
        reasons.append(f"Melanoma sensitivity at its threshold is {sensitivity if sensitivity is not None else 'unknown'}"
                       f", below the target {target_sensitivity:.2f}.")
    else:
        reasons.append(f"Melanoma sensitivity {sensitivity:.3f} reaches the target {target_sensitivity:.2f}.")
    return GateResult(allowed, reasons, rows)
