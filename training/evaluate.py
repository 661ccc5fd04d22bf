"""Metrics (scikit-learn) and plots (matplotlib Agg) on calibrated probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcore.labels import CLASSES, HAM_CODES, MALIGNANT_CLASSES, ham_membership_matrix
from mlcore.scoring import Thresholds, malignancy_score, melanoma_probability


def targets(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Binary/ categorical targets from allowed-class masks."""
    masks = np.asarray(masks) > 0.5
    mel = masks[:, CLASSES.index("melanoma")] & (masks.sum(1) == 1)
    malig_cols = [CLASSES.index(c) for c in MALIGNANT_CLASSES]
    malignant = masks[:, malig_cols].sum(1) == masks.sum(1)
    single = masks.sum(1) == 1
    cls9 = np.where(single, masks.argmax(1), -1)
    ham = (masks.astype(np.float32) @ ham_membership_matrix()).argmax(1)
    return {"melanoma": mel, "malignant": malignant, "single": single, "cls9": cls9, "ham7": ham}


def sens_spec(scores, positives, thr) -> tuple[float, float]:
    pred = np.asarray(scores) >= thr
    pos = np.asarray(positives, bool)
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[~pos]).mean()) if (~pos).any() else float("nan")
    return sens, spec


def _cluster_sampler(m: int, clusters: np.ndarray | None, rng):
    """A function drawing one bootstrap resample of row indices: whole clusters (lesions) with
    replacement when ``clusters`` is given (images of one lesion are not independent), else rows."""
    if clusters is None:
        return lambda: rng.integers(0, m, m)
    _, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    members = np.split(order, bounds)
    k = len(members)
    return lambda: np.concatenate([members[j] for j in rng.integers(0, k, k)])


def bootstrap_ci(fn, arrays: list[np.ndarray], n: int = 1000, seed: int = 0,
                 clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile 95% CI of fn(*resampled arrays); with ``clusters`` (one lesion id per row) the
    resampling draws whole lesions, so several images of one lesion count as one draw."""
    rng = np.random.default_rng(seed)
    draw = _cluster_sampler(len(arrays[0]), clusters, rng)
    vals = []
    for _ in range(n):
        idx = draw()
        try:
            v = fn(*[a[idx] for a in arrays])
        except ValueError:
            continue
        if v == v:
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def _auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, bool)
    if y.all() or (~y).all():
        return float("nan")
    return float(roc_auc_score(y, s))


def expected_calibration_error(probs: np.ndarray, correct_cls: np.ndarray, n_bins: int = 15):
    """Top-label ECE over single-label images; returns (ece, bin table)."""
    conf = probs.max(1)
    pred = probs.argmax(1)
    acc = (pred == correct_cls).astype(float)
    bins = np.linspace(0, 1, n_bins + 1)
    ece, table = 0.0, []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(acc[sel].mean() - conf[sel].mean())
            table.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                          "accuracy": float(acc[sel].mean()), "confidence": float(conf[sel].mean())})
    return float(ece), table


def operating_point_report(scores, positives, thr, n_boot=1000, seed=0, clusters=None) -> dict:
    """Sensitivity and specificity at ``thr`` with bootstrap CIs (positives and negatives resampled
    separately; by lesion when ``clusters`` is given)."""
    sens, spec = sens_spec(scores, positives, thr)
    pos = np.asarray(positives, bool)
    scores = np.asarray(scores)
    rng = np.random.default_rng(seed)
    s_pos, s_neg = scores[pos], scores[~pos]
    c = None if clusters is None else np.asarray(clusters)
    draw_pos = _cluster_sampler(len(s_pos), None if c is None else c[pos], rng)
    draw_neg = _cluster_sampler(len(s_neg), None if c is None else c[~pos], rng)
    sv, pv = [], []
    for _ in range(n_boot):
        if len(s_pos):
            sv.append(float((s_pos[draw_pos()] >= thr).mean()))
        if len(s_neg):
            pv.append(float((s_neg[draw_neg()] < thr).mean()))
    ci = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [None, None]
    return {"threshold": float(thr), "sensitivity": sens, "sensitivity_ci95": ci(sv),
            "specificity": spec, "specificity_ci95": ci(pv), "n_positive": int(pos.sum()),
            "n_negative": int((~pos).sum())}


def evaluate_probs(probs: np.ndarray, masks: np.ndarray, thresholds: Thresholds,
                   n_boot: int = 1000, seed: int = 0, groups: dict | None = None,
                   lesions=None) -> dict:
    """Full evaluation dict on calibrated probabilities (N, 9) vs allowed-class masks; with
    ``groups`` (attribute -> one value per image, e.g. ``subgroups.subgroup_labels(records)``)
    also the per-subgroup figures under "subgroups". ``lesions`` (one lesion id per image) makes
    every bootstrap CI resample lesions instead of images."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    probs = np.asarray(probs, dtype=np.float64)
    t = targets(masks)
    mel = melanoma_probability(probs)
    mal = malignancy_score(probs)
    out: dict = {"n_images": int(len(probs)), "n_single_label": int(t["single"].sum()),
                 "n_melanoma": int(t["melanoma"].sum()), "n_malignant": int(t["malignant"].sum())}
    out["melanoma_auc"] = _auc(t["melanoma"], mel)
    out["melanoma_auc_ci95"] = list(bootstrap_ci(_auc, [t["melanoma"], mel], n_boot, seed, clusters=lesions))
    out["malignancy_auc"] = _auc(t["malignant"], mal)
    out["malignancy_auc_ci95"] = list(bootstrap_ci(_auc, [t["malignant"], mal], n_boot, seed + 1, clusters=lesions))
    s = t["single"]
    pred9 = probs.argmax(1)
    if s.any():
        out["balanced_accuracy_9"] = float(balanced_accuracy_score(t["cls9"][s], pred9[s]))
        out["balanced_accuracy_9_ci95"] = list(bootstrap_ci(
            lambda a, b: float(balanced_accuracy_score(a, b)), [t["cls9"][s], pred9[s]], n_boot, seed + 2,
            clusters=None if lesions is None else np.asarray(lesions)[s]))
    ham_p = probs @ ham_membership_matrix()
    pred7 = ham_p.argmax(1)
    out["balanced_accuracy_7"] = float(balanced_accuracy_score(t["ham7"], pred7))
    out["balanced_accuracy_7_ci95"] = list(bootstrap_ci(
        lambda a, b: float(balanced_accuracy_score(a, b)), [t["ham7"], pred7], n_boot, seed + 3, clusters=lesions))
    p, r, f, sup = precision_recall_fscore_support(t["cls9"][s], pred9[s], labels=list(range(9)),
                                                   zero_division=0)
    out["per_class_9"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(sup[i])} for i, c in enumerate(CLASSES)}
    p, r, f, sup = precision_recall_fscore_support(t["ham7"], pred7, labels=list(range(7)), zero_division=0)
    out["per_code_7"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(sup[i])} for i, c in enumerate(HAM_CODES)}
    out["confusion_matrix_7"] = confusion_matrix(t["ham7"], pred7, labels=list(range(7))).tolist()
    out["confusion_matrix_9_single"] = confusion_matrix(t["cls9"][s], pred9[s], labels=list(range(9))).tolist()
    out["operating_points"] = {
        "melanoma": operating_point_report(mel, t["melanoma"], thresholds.melanoma, n_boot, seed + 4, lesions),
        "malignancy": operating_point_report(mal, t["malignant"], thresholds.malignancy, n_boot, seed + 5, lesions),
    }
    flagged = (mel >= thresholds.melanoma) | (mal >= thresholds.malignancy)
    out["flag_rate"] = float(flagged.mean())
    out["ci_resampling"] = "lesions" if lesions is not None else "images"
    if lesions is not None:
        out["n_lesions"] = int(len(set(np.asarray(lesions).astype(str).tolist())))
    out["flag_sensitivity_malignant"] = float(flagged[t["malignant"]].mean()) if t["malignant"].any() else None
    ece, table = expected_calibration_error(probs[s], t["cls9"][s])
    out["ece_top_label"] = ece
    out["reliability_bins"] = table
    from mlcore.scoring import set_nll

    out["set_nll"] = set_nll(probs, masks)
    if groups is not None:
        from .subgroups import subgroup_report

        out["subgroups"] = subgroup_report(probs, masks, thresholds, groups)
    return out


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite_points(values) -> list[tuple[int, float]]:
    """(epoch, value) pairs of a history series, leaving out epochs without a value (NaN in
    memory, null in metrics.json: validation skipped while the input still grows)."""
    return [(i, v) for i, v in enumerate(values or [], start=1) if v is not None and v == v]


def plot_all(probs: np.ndarray, masks: np.ndarray, metrics: dict, history: dict | None,
             out_dir: Path) -> list[Path]:
    from sklearn.metrics import roc_curve

    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = targets(masks)
    paths = []
    # ROC
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, sc, thr_key in [("melanoma", t["melanoma"], melanoma_probability(probs), "melanoma"),
                                 ("malignant", t["malignant"], malignancy_score(probs), "malignancy")]:
        if y.any() and (~y).any():
            fpr, tpr, _ = roc_curve(y, sc)
            auc = metrics.get(f"{thr_key}_auc", float("nan"))
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
            op = metrics["operating_points"][thr_key]
            ax.plot(1 - op["specificity"], op["sensitivity"], "o")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC (held-out test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "roc.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    # confusion matrix (7 codes, row-normalised)
    cm = np.asarray(metrics["confusion_matrix_7"], dtype=float)
    cmn = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cmn, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(7), HAM_CODES)
    ax.set_yticks(range(7), HAM_CODES)
    for i in range(7):
        for j in range(7):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if cmn[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion (7 codes), bal. acc {metrics['balanced_accuracy_7']:.3f}")
    fig.colorbar(im)
    fig.tight_layout()
    paths.append(out_dir / "confusion_matrix.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    # reliability
    fig, ax = plt.subplots(figsize=(5, 5))
    bins = metrics.get("reliability_bins", [])
    if bins:
        mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
        ax.bar(mids, [b["accuracy"] for b in bins], width=1 / 15, alpha=0.6, edgecolor="k", label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="per bin")
    ax.plot([0, 1], [0, 1], "k:")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability, ECE {metrics.get('ece_top_label', float('nan')):.3f}")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "reliability.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    # training curves
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    h = history or {}
    # an ensemble's history is its members' histories
    runs = [(f" (member {i})", mh) for i, mh in enumerate(h["members"])] if "members" in h else [("", h)]
    for suffix, run in runs:
        for k in ("loss", "val_loss"):
            pts = _finite_points(run.get(k))
            if pts:
                axes[0].plot(*zip(*pts), label=k + suffix)
        for k in ("val_melanoma_auc", "val_malignancy_auc", "val_balanced_accuracy_7"):
            pts = _finite_points(run.get(k))
            if pts:
                axes[1].plot(*zip(*pts), marker=".", markersize=3, label=k + suffix)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=7 if len(runs) > 1 else None)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation metrics")
    axes[1].legend(fontsize=7 if len(runs) > 1 else None)
    fig.tight_layout()
    paths.append(out_dir / "training_curves.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths
