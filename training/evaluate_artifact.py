"""Re-evaluate a saved artifact on exactly the split recorded in its model card."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def evaluate_artifact(model_dir: Path, data_root: Path, cache_dir: Path | None, split: str = "test",
                      plots_dir: Path | None = None, n_boot: int = 1000, clinical: bool = True) -> dict:
    """Figures of the artifact on one recorded split; ``clinical=False`` scores the images alone
    (ignoring the card's clinical-context adjustment, to see what it adds)."""
    from mlcore.model_store import load_model

    from .audit import run_audit
    from .cache import load_images
    from .evaluate import evaluate_probs, plot_all
    from mlcore.labels import mask_from_classes
    from mlcore.scoring import softmax_with_temperature
    from .subgroups import lesion_ids_of, subgroup_labels

    m = load_model(Path(model_dir))
    ids = m.card["split_ids"][split]
    audit = run_audit(data_root, cache_dir)
    by_id = {r.isic_id: r for r in audit.records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} {split} ids of the model card are not in the cleaned data "
                           f"(e.g. {missing[:3]}); data changed?")
    recs = [by_id[i] for i in ids]
    images = load_images([r.path for r in recs], m.input_size, cache_dir, framing=m.framing)
    masks = np.stack([mask_from_classes(r.allowed) for r in recs])
    logits = m.predict_logits(images.astype(np.float32), batch_size=128)
    if clinical and m.clinical is not None:
        from mlcore.clinical import contexts_of

        logits = m.clinical.apply(logits, contexts_of(recs))
    probs = softmax_with_temperature(logits, m.temperature)
    # the audit's split groups, as training resampled them: near-duplicates of one lesion are one draw
    metrics = evaluate_probs(probs, masks, m.thresholds, n_boot=n_boot, seed=0, groups=subgroup_labels(recs),
                             lesions=lesion_ids_of(recs, audit.groups))
    if plots_dir:
        plot_all(probs, masks, metrics, None, Path(plots_dir))
    fp_ok = audit.report["data_fingerprint"] == m.card.get("data_fingerprint")
    keep = ("n_images", "n_melanoma", "n_malignant", "melanoma_auc", "melanoma_auc_ci95", "malignancy_auc",
            "malignancy_auc_ci95", "balanced_accuracy_7", "balanced_accuracy_7_ci95", "balanced_accuracy_9",
            "balanced_accuracy_9_ci95", "ece_top_label", "operating_points", "flag_rate", "per_code_7",
            "ci_resampling", "n_lesions")
    from mlcore.scoring import SCORE_HISTOGRAM_KEY, melanoma_probability, score_histogram

    return {"model_dir": str(m.model_dir), "model_version": m.version, "split": split,
            SCORE_HISTOGRAM_KEY: score_histogram(melanoma_probability(probs)),
            "data_fingerprint_matches": fp_ok, "temperature": m.temperature,
            "clinical_context": bool(clinical and m.clinical is not None),
            "thresholds": m.thresholds.to_dict(), "metrics": {k: metrics.get(k) for k in keep},
            "subgroups": metrics["subgroups"]}


def evaluate_external(model_dir: Path, data_root: Path, n_boot: int = 1000) -> dict:
    """Figures of the artifact on PH2 (external test set: scored and reported, never tuned on),
    through the app's own inference path (decode, resize, checks, runner). Every PH2 image is its
    own lesion, so the bootstrap resamples lesions here too. Flagged = either shipped threshold
    reached; "sent to review" also counts images the model could not assess."""
    from mlcore.inference import decode_for, predict_images
    from mlcore.model_store import load_model

    from .evaluate import _auc, bootstrap_ci, operating_point_report
    from mlcore.conformal import coverage_and_size
    from mlcore.labels import CLASSES
    from .ph2 import load_ph2, ph2_masks

    m = load_model(Path(model_dir))
    ph2 = load_ph2(data_root)
    preds = []
    for i in range(0, len(ph2), 32):
        chunk = ph2[i:i + 32]
        preds += predict_images(m, [decode_for(m, Path(x.path).read_bytes()) for x in chunk])
    mel_true = np.array([x.dx == "mel" for x in ph2])
    lesions = np.array([x.lesion_id for x in ph2])
    mel = np.array([p.melanoma_probability for p in preds])
    mal = np.array([p.malignancy_score for p in preds])
    flagged = np.array([p.flagged for p in preds])
    assessable = np.array([p.assessable for p in preds])
    to_review = flagged | ~assessable
    thr = m.thresholds
    out = {"model_version": m.version, "dataset": "PH2 (Hospital Pedro Hispano, Portugal; external)",
           "n_images": len(ph2), "n_melanoma": int(mel_true.sum()),
           "ci_resampling": "lesions (one image per PH2 lesion)",
           "melanoma_auc": _auc(mel_true, mel),
           "melanoma_auc_ci95": list(bootstrap_ci(_auc, [mel_true, mel], n_boot, 0, clusters=lesions)),
           "malignancy_auc": _auc(mel_true, mal),
           "melanoma_operating_point": operating_point_report(mel, mel_true, thr.melanoma, n_boot, 1, lesions),
           "flag": operating_point_report(flagged.astype(float), mel_true, 0.5, n_boot, 2, lesions),
           "sent_to_review": operating_point_report(to_review.astype(float), mel_true, 0.5, n_boot, 3, lesions),
           "not_assessable": int((~assessable).sum()),
           "not_assessable_by_diagnosis": {}, "flag_rate_by_diagnosis": {}}
    kind = [x.diagnosis.split(" (")[0] for x in ph2]  # "atypical nevus (histology: ...)" -> "atypical nevus"
    for dx in sorted(set(kind)):
        sel = np.array([k == dx for k in kind])
        out["flag_rate_by_diagnosis"][dx] = float(flagged[sel].mean())
        out["not_assessable_by_diagnosis"][dx] = int((~assessable[sel]).sum())
    if all(p.prediction_set is not None for p in preds):
        probs = np.array([[p.class_probabilities[c] for c in CLASSES] for p in preds])
        floor = m.assessment["conformal"]["probability_floor"]
        out["conformal"] = coverage_and_size(probs, ph2_masks(ph2), floor)
    return out
