"""The promotion gate: may a candidate model replace the active one?

Both models are scored on the SAME images: the frozen benchmark (``training.benchmark``: the
shipped model's held-out lesions, which no training run may use), so neither trained on them.
The comparison is paired: a lesion-level bootstrap resamples lesions with replacement (all
images of a drawn lesion come along, weighted by how often it was drawn), computes each metric
for both models on the same resample and takes the difference, candidate minus active. The
95 % interval is the 2.5th-97.5th percentile of those differences.

Rules (each one a reason in the result):

* melanoma sensitivity, each model at its own melanoma threshold: lower bound of the difference
  >= -MAX_SENSITIVITY_DROP (non-inferior);
* melanoma AUC and malignancy AUC: lower bound of the difference >= -MAX_AUC_DROP;
* calibration: the candidate's top-label ECE on the benchmark (as ``training.evaluate`` computes
  it) <= MAX_ECE, an absolute cap (the active model's ECE and the difference are reported);
* subgroups (source, sex, age band): in every group with at least MIN_SUBGROUP_MELANOMAS
  melanoma lesions (and as many other lesions), the candidate's melanoma AUC is at most
  MAX_SUBGROUP_AUC_DROP below the active model's (the observed difference: a subgroup's interval
  is too wide to ask for non-inferiority at this margin; it is shown). Smaller groups are
  reported, not gated.

PH2 (external) is scored for both models and reported beside the benchmark, never gated. With no
active model (the first one), the candidate needs the calibration cap and its melanoma
sensitivity at its threshold reaching the target sensitivity.

Point figures use scikit-learn (``roc_auc_score``) and ``training.evaluate``; the 1,000
resamples use the same metrics written as weighted sums over the resample counts (vectorised;
``weighted_auc`` equals ``roc_auc_score`` with ``sample_weight``, tested). No Django here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mlcore.artifact import json_safe

GATE_FORMAT = 2  # metrics["gate"]["format"]: 2 = paired comparison on the frozen benchmark
MAX_SENSITIVITY_DROP = 0.05
MAX_AUC_DROP = 0.02
MAX_ECE = 0.05
MAX_SUBGROUP_AUC_DROP = 0.05
MIN_SUBGROUP_MELANOMAS = 10
SUBGROUP_ATTRIBUTES = ("source", "sex", "age")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
PH2_NOT_FOUND = "PH2 not scored: dataset not found on this server"


@dataclass
class GateResult:
    """The decision, one reason per rule, and the tables the admin shows."""

    allowed: bool
    reasons: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # metric, candidate, active, difference, ci_low, ci_high, margin, passed
    subgroups: list[dict] = field(default_factory=list)
    external: list[dict] = field(default_factory=list)  # PH2, reported only
    external_note: str | None = None  # why PH2 was not scored, shown in its place
    benchmark: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)  # version, model_sha256, thresholds
    active: dict | None = None
    bootstrap: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    plot: str | None = None  # plots/<name>.png of the candidate's artifact

    def to_dict(self) -> dict:
        """What metrics["gate"] stores (JSON: NaN becomes None)."""
        return json_safe({"format": GATE_FORMAT, **asdict(self)})

    @classmethod
    def from_dict(cls, d: dict) -> "GateResult":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def current_rules() -> dict:
    return {"max_sensitivity_drop": MAX_SENSITIVITY_DROP, "max_auc_drop": MAX_AUC_DROP, "max_ece": MAX_ECE,
            "max_subgroup_auc_drop": MAX_SUBGROUP_AUC_DROP, "min_subgroup_melanomas": MIN_SUBGROUP_MELANOMAS,
            "subgroup_attributes": list(SUBGROUP_ATTRIBUTES)}


# ----------------------------------------------------------------------------- the bootstrap
def lesion_weights(lesion_ids: Sequence, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, N) image weights: each row draws the lesions with replacement (as many draws
    as there are lesions); an image's weight is how often its lesion was drawn."""
    _, inverse = np.unique(np.asarray(lesion_ids).astype(str), return_inverse=True)
    k = int(inverse.max()) + 1 if len(inverse) else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_resamples) if k else np.zeros((n_resamples, 0))
    return counts[:, inverse].astype(np.float64)


def weighted_auc(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of ``weights`` (R, N) (ties count one half): roc_auc_score(positives,
    scores, sample_weight=row) for every row at once; NaN where a row lacks either class."""
    w = np.atleast_2d(weights)
    order = np.argsort(scores, kind="mergesort")
    s, y, w = np.asarray(scores)[order], np.asarray(positives, bool)[order], w[:, order]
    neg, pos = w * ~y, w * y
    cum_neg = np.cumsum(neg, axis=1)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1] if len(s) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(s)] - 1
    block = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    below = (cum_neg[:, starts] - neg[:, starts])[:, block]  # negatives strictly below the score
    equal = (cum_neg[:, ends] - (cum_neg[:, starts] - neg[:, starts]))[:, block]  # tied negatives
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pos * (below + 0.5 * equal)).sum(1) / den, np.nan)


def weighted_rate(hits: np.ndarray, among: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted share of ``hits`` among the ``among`` images, per row of ``weights``."""
    w = np.atleast_2d(weights)
    den = w @ among.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w @ (hits & among).astype(float)) / den, np.nan)


def weighted_ece(probs: np.ndarray, masks: np.ndarray, weights: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """training.evaluate.expected_calibration_error (top label, single-label images, equal-width
    bins (lo, hi]) per row of ``weights``."""
    from training.evaluate import targets

    t = targets(masks)
    single = t["single"]
    conf, correct = probs[single].max(1), (probs[single].argmax(1) == t["cls9"][single]).astype(float)
    w = np.atleast_2d(weights)[:, single]
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1), conf, side="left") - 1
    onehot = (bins[:, None] == np.arange(n_bins)[None, :]).astype(float)
    gap = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * conf[:, None])).sum(1)
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap / total, np.nan)


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ----------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A figure of one model on a set of images: point (scikit-learn) and per resample."""

    key: str
    label: str
    point: Callable  # (scored) -> float
    resampled: Callable  # (scored, weights) -> (R,) array


def _auc_point(positives: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    positives = np.asarray(positives, bool)
    return float(roc_auc_score(positives, scores)) if positives.any() and (~positives).any() else float("nan")


def _truth(scored) -> dict:
    from training.evaluate import targets

    return targets(scored.images.masks)


def _metrics() -> list[Metric]:
    from training.evaluate import expected_calibration_error, sens_spec

    def mel(s):
        return s.probs[:, _melanoma_index()]

    def mal(s):
        from mlcore.scoring import malignancy_score

        return malignancy_score(s.probs)

    def flagged_mel(s):
        return mel(s) >= s.thresholds.melanoma

    def flagged_mal(s):
        return mal(s) >= s.thresholds.malignancy

    def ece_point(s):
        t = _truth(s)
        return expected_calibration_error(s.probs[t["single"]], t["cls9"][t["single"]])[0]

    return [
        Metric("melanoma_sensitivity", "Melanoma sensitivity at its own threshold",
               lambda s: sens_spec(mel(s), _truth(s)["melanoma"], s.thresholds.melanoma)[0],
               lambda s, w: weighted_rate(flagged_mel(s), _truth(s)["melanoma"], w)),
        Metric("melanoma_auc", "Melanoma AUC", lambda s: _auc_point(_truth(s)["melanoma"], mel(s)),
               lambda s, w: weighted_auc(_truth(s)["melanoma"], mel(s), w)),
        Metric("malignancy_auc", "Malignancy AUC", lambda s: _auc_point(_truth(s)["malignant"], mal(s)),
               lambda s, w: weighted_auc(_truth(s)["malignant"], mal(s), w)),
        Metric("ece", "Calibration error (ECE, top label)", ece_point,
               lambda s, w: weighted_ece(s.probs, s.images.masks, w)),
        Metric("melanoma_specificity", "Melanoma specificity at its own threshold",
               lambda s: sens_spec(mel(s), _truth(s)["melanoma"], s.thresholds.melanoma)[1],
               lambda s, w: weighted_rate(~flagged_mel(s), ~_truth(s)["melanoma"], w)),
        Metric("malignancy_sensitivity", "Malignancy sensitivity at its own threshold",
               lambda s: sens_spec(mal(s), _truth(s)["malignant"], s.thresholds.malignancy)[0],
               lambda s, w: weighted_rate(flagged_mal(s), _truth(s)["malignant"], w)),
        Metric("malignancy_specificity", "Malignancy specificity at its own threshold",
               lambda s: sens_spec(mal(s), _truth(s)["malignant"], s.thresholds.malignancy)[1],
               lambda s, w: weighted_rate(~flagged_mal(s), ~_truth(s)["malignant"], w)),
    ]


def _melanoma_index() -> int:
    from mlcore.labels import CLASSES

    return CLASSES.index("melanoma")


# margin per gated metric: ("noninferior", m) = lower CI bound of the difference >= -m;
# ("cap", m) = the candidate's own value <= m
GATED = {"melanoma_sensitivity": ("noninferior", MAX_SENSITIVITY_DROP), "melanoma_auc": ("noninferior", MAX_AUC_DROP),
         "malignancy_auc": ("noninferior", MAX_AUC_DROP), "ece": ("cap", MAX_ECE)}
PH2_METRICS = ("melanoma_auc", "melanoma_sensitivity", "melanoma_specificity")


def _check_paired(candidate, active) -> None:
    a, b = candidate.images, active.images
    if list(a.image_ids) != list(b.image_ids) or not np.array_equal(a.masks, b.masks):
        raise ValueError("the two models were not scored on the same images: a paired comparison needs them")


def paired_rows(candidate, active, metrics: Sequence[Metric], weights: np.ndarray) -> list[dict]:
    """One row per metric: both point figures, the difference and its paired 95 % interval
    (``active`` None: the candidate's figures alone)."""
    rows = []
    for m in metrics:
        c = _num(m.point(candidate))
        row = {"key": m.key, "metric": m.label, "candidate": c, "active": None, "difference": None,
               "ci_low": None, "ci_high": None}
        if active is not None:
            a = _num(m.point(active))
            diffs = m.resampled(candidate, weights) - m.resampled(active, weights)
            low, high = _interval(diffs)
            row |= {"active": a, "difference": None if c is None or a is None else c - a, "ci_low": low,
                    "ci_high": high}
        rows.append(row)
    return rows


def _num(value) -> float | None:
    return None if value is None or value != value else float(value)


def _judge(row: dict, has_active: bool, target_sensitivity: float) -> tuple[bool, str]:
    """Apply a gated metric's rule to its row (sets ``margin`` and ``rule``); (passed, reason),
    the reason empty where the rule does not apply (no active model to compare with)."""
    kind, margin = GATED[row["key"]]
    name, c = row["metric"], row["candidate"]
    if kind == "cap":
        row |= {"margin": margin, "rule": f"candidate <= {margin:.2f}"}
        ok = c is not None and c <= margin
        versus = f" (active {row['active']:.3f})" if row.get("active") is not None else ""
        return ok, f"{name} {_f(c)}{versus} is {'within' if ok else 'above'} the cap {margin:.2f}."
    if not has_active:
        if row["key"] != "melanoma_sensitivity":
            return True, ""
        row |= {"margin": None, "rule": f"candidate >= {target_sensitivity:.2f} (no active model)"}
        ok = c is not None and c >= target_sensitivity
        return ok, (f"{name} {_f(c)} {'reaches' if ok else 'is below'} the target {target_sensitivity:.2f} "
                    "(no active model to compare with).")
    row |= {"margin": margin, "rule": f"95 % CI low >= -{margin:.2f}"}
    low = row["ci_low"]
    ok = low is not None and low >= -margin
    return ok, (f"{name}: {_f(c)} vs active {_f(row['active'])}, difference {_sf(row['difference'])} "
                f"[95 % CI {_sf(low)}, {_sf(row['ci_high'])}]; "
                + (f"non-inferior (lower bound >= -{margin:.2f})." if ok else
                   f"the lower bound is below -{margin:.2f}: not shown to be non-inferior."))


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _sf(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def subgroup_rows(candidate, active, weights: np.ndarray) -> list[dict]:
    """Melanoma AUC of both models per subgroup value, with the paired interval of the
    difference; ``gated`` where the group has enough melanomas and other images."""
    from training.evaluate import targets

    images = candidate.images
    y = targets(images.masks)["melanoma"]
    mel_c, mel_a = candidate.probs[:, _melanoma_index()], active.probs[:, _melanoma_index()]
    lesion_ids = np.asarray(images.lesion_ids).astype(str)
    rows = []
    for attribute in SUBGROUP_ATTRIBUTES:
        values = images.groups.get(attribute)
        if values is None:
            continue
        values = np.asarray(values).astype(str)
        for value in sorted(set(values)):
            sel = values == value
            n_mel, n_other = int((y & sel).sum()), int((~y & sel).sum())
            # lesions are the independent unit: a group of 3 melanomas photographed 4 times is 3
            lesions_mel = len(set(lesion_ids[y & sel].tolist()))
            lesions_other = len(set(lesion_ids[~y & sel].tolist()))
            gated = lesions_mel >= MIN_SUBGROUP_MELANOMAS and lesions_other >= MIN_SUBGROUP_MELANOMAS
            c, a = _num(_auc_point(y[sel], mel_c[sel])), _num(_auc_point(y[sel], mel_a[sel]))
            low = high = None
            if n_mel and n_other:
                w = weights * sel
                low, high = _interval(weighted_auc(y, mel_c, w) - weighted_auc(y, mel_a, w))
            diff = None if c is None or a is None else c - a
            rows.append({"attribute": attribute, "value": str(value), "images": int(sel.sum()),
                         "lesions": len(set(lesion_ids[sel].tolist())), "melanomas": n_mel,
                         "melanoma_lesions": lesions_mel,
                         "candidate": c, "active": a, "difference": diff, "ci_low": low, "ci_high": high,
                         "margin": MAX_SUBGROUP_AUC_DROP if gated else None,
                         "rule": f"difference >= -{MAX_SUBGROUP_AUC_DROP:.2f}" if gated else
                         f"reported (< {MIN_SUBGROUP_MELANOMAS} melanoma or other lesions)", "gated": gated,
                         "passed": (diff is not None and diff >= -MAX_SUBGROUP_AUC_DROP) if gated else None})
    return rows


def _subgroup_reason(rows: list[dict]) -> tuple[bool, str]:
    gated = [r for r in rows if r["gated"]]
    failed = [r for r in gated if not r["passed"]]
    if failed:
        return False, "Subgroups losing more than {:.2f} melanoma AUC: {}.".format(
            MAX_SUBGROUP_AUC_DROP, "; ".join(
                f"{r['attribute']} {r['value']} ({r['melanoma_lesions']} melanoma lesions): {_f(r['candidate'])} vs "
                f"{_f(r['active'])}, {_sf(r['difference'])} [95 % CI {_sf(r['ci_low'])}, {_sf(r['ci_high'])}]"
                for r in failed))
    worst = min(gated, key=lambda r: r["difference"] if r["difference"] is not None else 0.0, default=None)
    return True, (f"No subgroup loses more than {MAX_SUBGROUP_AUC_DROP:.2f} melanoma AUC ({len(gated)} of "
                  f"{len(rows)} groups have >= {MIN_SUBGROUP_MELANOMAS} melanoma lesions and are gated"
                  + (f"; largest change {worst['attribute']} {worst['value']} {_sf(worst['difference'])})."
                     if worst else ")."))


def paired_gate(candidate, active=None, *, external: tuple | None = None, target_sensitivity: float = 0.90,
                n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, plot: str | None = None) -> GateResult:
    """The gate on per-image scores (``training.benchmark.scoring.ScoredImages``, or anything with
    ``images`` (image_ids, lesion_ids, masks, groups, name, content_sha256), ``probs``,
    ``thresholds``, ``model_version``, ``model_sha256``) of the candidate and the active model
    on the same benchmark images; ``external`` = (candidate, active) on PH2, reported only."""
    if active is not None:
        _check_paired(candidate, active)
    images = candidate.images
    weights = lesion_weights(images.lesion_ids, n_resamples, seed)
    metrics = _metrics()
    rows = paired_rows(candidate, active, metrics, weights)
    allowed, reasons = True, []
    for row in rows:
        row |= {"margin": None, "rule": "reported"}
        if row["key"] in GATED:
            ok, reason = _judge(row, active is not None, target_sensitivity)
            row["gated"], row["passed"] = bool(reason), ok if reason else None
            allowed &= ok
            if reason:
                reasons.append(reason)
        else:
            row["gated"], row["passed"] = False, None
    subgroups = subgroup_rows(candidate, active, weights) if active is not None else []
    if active is not None:
        ok, reason = _subgroup_reason(subgroups)
        allowed &= ok
        reasons.append(reason)
    return GateResult(
        allowed=bool(allowed), reasons=reasons, rows=rows, subgroups=subgroups,
        external=_external_rows(external, n_resamples, seed + 1, metrics) if external else [],
        benchmark=_set_summary(images), candidate=_model_summary(candidate),
        active=_model_summary(active) if active is not None else None,
        bootstrap={"resamples": n_resamples, "seed": seed, "unit": "lesion", "interval": "95 % percentile",
                   "difference": "candidate - active"},
        rules=current_rules(), plot=plot)


def _external_rows(external: tuple, n_resamples: int, seed: int, metrics: Sequence[Metric]) -> list[dict]:
    candidate, active = external
    if candidate is None:
        return []
    if active is not None:
        _check_paired(candidate, active)
    weights = lesion_weights(candidate.images.lesion_ids, n_resamples, seed)
    rows = paired_rows(candidate, active, [m for m in metrics if m.key in PH2_METRICS], weights)
    for row in rows:
        row |= {"dataset": candidate.images.name, "gated": False, "passed": None, "margin": None,
                "rule": "reported (external)"}
    return rows


def _set_summary(images) -> dict:
    from training.evaluate import targets

    units = np.asarray(images.lesion_ids).astype(str)
    lesions = getattr(images, "lesions", None)
    return {"version": images.name, "content_sha256": images.content_sha256, "images": len(units),
            "lesions": len(set(np.asarray(lesions if lesions is not None else units).astype(str).tolist())),
            "resampling_groups": len(set(units.tolist())),
            "melanomas": int(targets(images.masks)["melanoma"].sum())}


def _model_summary(scored) -> dict:
    return {"version": scored.model_version, "model_sha256": scored.model_sha256,
            "thresholds": {"melanoma": float(scored.thresholds.melanoma),
                           "malignancy": float(scored.thresholds.malignancy)}}


# ----------------------------------------------------------------------------- measuring and reading
def check_kept_out(model_dir: Path, *, role: str, benchmark, audit=None) -> None:
    """Raise BenchmarkLeakError unless the artifact's model card records its split (``split_ids``)
    and none of the images it was trained or validated on (``training.train.fitted_ids``) is a
    benchmark image, an image of a benchmark lesion or in a split group holding one: the check a
    training run makes of the network it starts from, made against ``benchmark`` and ``audit``
    (training.audit.AuditResult of the data the benchmark resolves against). A model that has
    seen a benchmark lesion would be compared on what it learnt."""
    from mlcore.artifact import read_card
    from training.benchmark import BenchmarkLeakError, check_not_in_training, frozen_groups
    from training.train import fitted_ids

    card = read_card(Path(model_dir), required=())
    name = f"{role} model {card.get('version') or model_dir}"
    if not card.get("split_ids"):
        raise BenchmarkLeakError(
            f"the {name} has no split_ids in its model card: what it was trained and validated on cannot be "
            f"checked against the frozen benchmark {benchmark.version}, so it cannot be compared on it")
    records = list(getattr(audit, "records", None) or [])
    groups = getattr(audit, "groups", None) or None
    aliases = getattr(audit, "aliases", None) or {}
    seen = fitted_ids(Path(model_dir), aliases)
    named = sorted(seen & (benchmark.image_ids | benchmark.lesion_ids))  # caught without the data too
    if named:
        raise BenchmarkLeakError(
            f"{len(named)} {name} train/val images are images of the frozen benchmark {benchmark.version} "
            f"(e.g. {', '.join(named[:3])}): it was trained or validated on the benchmark, so it cannot be "
            "compared on it")
    by_id = {r.isic_id: r for r in records}
    check_not_in_training(benchmark, {f"{name} train/val": [by_id[i] for i in sorted(seen) if i in by_id]},
                          groups=groups, frozen=frozen_groups(benchmark, records, groups, aliases), aliases=aliases)


def compare_artifacts(candidate_dir: Path, active_dir: Path | None, data_root: Path, cache_dir: Path | None, *,
                      benchmark=None, external: bool = True, target_sensitivity: float = 0.90,
                      n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      plot_to: Path | None = None, on_step: Callable[[str], None] | None = None) -> GateResult:
    """Score both artifacts on the frozen benchmark (and PH2) and apply the gate; ``plot_to``
    writes the paired melanoma ROC there. ``on_step`` is told each scoring step before it starts
    (a training run's heartbeat: no single step outlasts the stale-run window). Raises
    BenchmarkLeakError, before scoring, when either model cannot be shown to have kept the
    benchmark out of its training and validation (``check_kept_out``)."""
    from training.audit import run_audit
    from training.benchmark import current_benchmark
    from training.benchmark.plots import plot_paired_roc
    from training.benchmark.scoring import resolve_sets, score_artifact

    def scored(role: str, model_dir: Path) -> dict:
        out = {}
        for image_set in sets:
            if on_step is not None:
                on_step(f"scoring the {role} model on {image_set.name}")
            out.update(score_artifact(model_dir, data_root, cache_dir, image_sets=[image_set]))
        return out

    benchmark = benchmark or current_benchmark()
    sets = resolve_sets(data_root, cache_dir, benchmark=benchmark, external=external)
    audit = getattr(sets[0], "audit", None) or run_audit(Path(data_root), cache_dir, progress=False)
    for role, model_dir in (("candidate", candidate_dir), ("active", active_dir)):
        if model_dir is not None:
            check_kept_out(model_dir, role=role, benchmark=benchmark, audit=audit)
    cand = scored("candidate", candidate_dir)
    act = scored("active", active_dir) if active_dir is not None else {}
    if plot_to is not None:
        plot_paired_roc(cand["benchmark"], act.get("benchmark"), Path(plot_to))
    ph2 = (cand["ph2"], act.get("ph2")) if "ph2" in cand else None
    result = paired_gate(cand["benchmark"], act.get("benchmark"), external=ph2, target_sensitivity=target_sensitivity,
                         n_resamples=n_resamples, seed=seed, plot=Path(plot_to).stem if plot_to is not None else None)
    if external and ph2 is None:  # resolve_sets leaves PH2 out when its folder is missing: say so
        result.external_note = PH2_NOT_FOUND
    return result


def evaluate_gate(gate: dict | None, *, active_version: str | None, target_sensitivity: float | None = None,
                  benchmark_version: str | None = None, candidate_sha256: str | None = None,
                  active_sha256: str | None = None) -> GateResult:
    """The stored gate of a version (metrics["gate"]) read against the registry as it is now:
    refused when nothing was measured, when it was measured the old way (on the candidate's own
    test split), against another active version, on another benchmark version, on other model
    files than the registry's (``candidate_sha256``, ``active_sha256``: the rows' sha256 now;
    None: not checked), under other rules than ``current_rules()`` or with fewer than
    BOOTSTRAP_RESAMPLES resamples. ``target_sensitivity`` is kept for callers of the old gate:
    the first-model rule applied it when the comparison was measured."""
    if not gate:
        return GateResult(False, ["No comparison on the frozen benchmark has been measured for this version."])
    if gate.get("format") != GATE_FORMAT:
        return GateResult(False, ["This comparison was measured on the candidate's own test split, which the active "
                                  "model may have trained on: re-measure it on the frozen benchmark."])
    if gate.get("error"):
        return GateResult(False, [f"The comparison on the frozen benchmark could not be measured: {gate['error']}"])
    result = GateResult.from_dict(gate)
    rerun = f"re-run the comparison (python manage.py compare_on_benchmark {result.candidate.get('version', 'VERSION')})."
    stale = _stale_reasons(gate, active_version=active_version, benchmark_version=benchmark_version,
                           candidate_sha256=candidate_sha256, active_sha256=active_sha256)
    if stale:
        result.allowed = False
        result.reasons = [f"{reason}: {rerun}" for reason in stale] + result.reasons
    return result


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "none"


def _stale_reasons(gate: dict, *, active_version: str | None, benchmark_version: str | None,
                   candidate_sha256: str | None, active_sha256: str | None) -> list[str]:
    """Why a stored comparison no longer vouches for the registry as it is now (one per problem)."""
    reasons = []
    measured = gate.get("active") or {}
    if measured.get("version") != active_version:
        reasons.append(f"The comparison was made against {measured.get('version') or 'no model'}, but "
                       f"{active_version or 'no model'} is active now")
    elif active_version is not None and active_sha256 is not None and measured.get("model_sha256") != active_sha256:
        reasons.append(f"The comparison scored a model file of {active_version} with sha256 "
                       f"{_short(measured.get('model_sha256'))}, but the registry's {active_version} is "
                       f"{_short(active_sha256)}")
    if benchmark_version is not None and (gate.get("benchmark") or {}).get("version") != benchmark_version:
        reasons.append(f"The comparison was made on {(gate.get('benchmark') or {}).get('version')}, but the frozen "
                       f"benchmark is {benchmark_version} now")
    candidate = gate.get("candidate") or {}
    if candidate_sha256 is not None and candidate.get("model_sha256") != candidate_sha256:
        reasons.append(f"The comparison scored a candidate model file with sha256 "
                       f"{_short(candidate.get('model_sha256'))}, but this version's registered file is "
                       f"{_short(candidate_sha256)}")
    if gate.get("rules") != current_rules():
        reasons.append("The comparison was judged by other rules than the gate's current ones")
    resamples = (gate.get("bootstrap") or {}).get("resamples")
    if not isinstance(resamples, int) or resamples < BOOTSTRAP_RESAMPLES:
        reasons.append(f"The comparison's intervals come from {resamples or 'an unknown number of'} bootstrap "
                       f"resamples, fewer than the {BOOTSTRAP_RESAMPLES} the gate requires")
    return reasons


IMAGE_CHECKS = "image_checks"  # the gate's row for the model card's fitted image checks
IMAGE_CHECKS_LABEL = "Image checks (quality, out-of-domain) in the model card"
IMAGE_CHECKS_PASSED = ("Image checks: the model card has its fitted image-quality checks (and the out-of-domain "
                       "detector its network feeds).")


def image_checks_problem(card: dict, has_feature_layer: Callable[[], bool]) -> str | None:
    """Why a model card cannot say that an image is not assessable (None: it can): it needs the
    fitted image-quality thresholds (``assessment.quality``) and, when its network has the feature
    layer the out-of-domain detector reads (``has_feature_layer()``, asked only when the card has no
    detector), the detector (``assessment.ood``). Without them every image, blurry or not a
    dermoscopic image at all, is scored as if the model could judge it."""
    missing = ("; without them it would score blurry or non-dermoscopic images as if it could judge them. Fit "
               "them: python -m training assess --model MODEL_DIR before registering it, or, for a "
               "registered version, python manage.py reassess_model VERSION --reason ...")
    assessment = card.get("assessment")
    if not isinstance(assessment, dict) or not assessment:
        return "its model card has no fitted image checks (no assessment)" + missing
    quality = assessment.get("quality")
    if not isinstance(quality, dict) or not quality.get("thresholds"):
        return "its model card has no fitted image-quality thresholds (assessment.quality)" + missing
    ood = assessment.get("ood")
    if ood:
        if not isinstance(ood, dict) or not ood.get("file") or not ood.get("sha256"):
            return ("its model card's out-of-domain detector (assessment.ood) names no detector file and sha256"
                    + missing)
        return None
    if has_feature_layer():
        return ("its model card has no out-of-domain detector (assessment.ood), though its network has the "
                "feature layer the detector reads" + missing)
    return None


def with_image_checks(result: GateResult, problem: str | None) -> GateResult:
    """``result`` with the image-check rule applied: a row in the gate's table and a reason; a
    ``problem`` (`image_checks_problem`) refuses the version whatever its comparison says."""
    reason = IMAGE_CHECKS_PASSED if problem is None else f"Image checks: {problem}"
    if result.rows:
        result.rows = [*result.rows, {
            "key": IMAGE_CHECKS, "metric": IMAGE_CHECKS_LABEL, "candidate": None, "active": None,
            "difference": None, "ci_low": None, "ci_high": None, "margin": None,
            "rule": "quality thresholds and out-of-domain detector fitted", "gated": True, "passed": problem is None}]
    if problem is None:
        result.reasons = [*result.reasons, reason]
    else:
        result.allowed = False
        result.reasons = [reason, *result.reasons]
    return result


def gate_evidence(gate: GateResult | dict | None) -> dict:
    """What the audit trail keeps of a gate (a GateResult as read, or a stored metrics["gate"]):
    the benchmark and the two model files compared, the decision and its reasons."""
    stored = gate.to_dict() if isinstance(gate, GateResult) else dict(gate or {})
    benchmark, candidate, active = (stored.get(k) or {} for k in ("benchmark", "candidate", "active"))
    evidence = {"benchmark": benchmark.get("version"), "benchmark_sha256": benchmark.get("content_sha256"),
                "candidate": candidate.get("version"), "candidate_sha256": candidate.get("model_sha256"),
                "active": active.get("version"), "active_sha256": active.get("model_sha256"),
                "resamples": (stored.get("bootstrap") or {}).get("resamples"),
                "allowed": bool(stored.get("allowed")), "reasons": list(stored.get("reasons") or [])}
    return evidence | ({"error": stored["error"]} if stored.get("error") else {})


def failed_measurement(error: str) -> dict:
    """What metrics["gate"] stores when the comparison could not be measured (the run stays usable)."""
    return {"format": GATE_FORMAT, "error": error, "allowed": False, "reasons": [error]}
