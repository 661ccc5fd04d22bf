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
    from classifier.model_store import load_model

    from .audit import run_audit
    from .cache import load_images
    from .evaluate import evaluate_probs, plot_all
    from .labels import mask_from_classes
    from .scoring import softmax_with_temperature
    from .subgroups import subgroup_labels

    m = load_model(Path(model_dir))
    ids = m.card["split_ids"][split]
    audit = run_audit(data_root, cache_dir)
    by_id = {r.isic_id: r for r in audit.records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} {split} ids of the model card are not in the cleaned data "
                           f"(e.g. {missing[:3]}); data changed?")
    recs = [by_id[i] for i in ids]
    images = load_images([r.path for r in recs], m.input_size, cache_dir)
    masks = np.stack([mask_from_classes(r.allowed) for r in recs])
    logits = m.predict_logits(images.astype(np.float32), batch_size=128)
    if clinical and m.clinical is not None:
        from .clinical import contexts_of

        logits = m.clinical.apply(logits, contexts_of(recs))
    probs = softmax_with_temperature(logits, m.temperature)
    metrics = evaluate_probs(probs, masks, m.thresholds, n_boot=n_boot, seed=0, groups=subgroup_labels(recs))
    if plots_dir:
        plot_all(probs, masks, metrics, None, Path(plots_dir))
    fp_ok = audit.report["data_fingerprint"] == m.card.get("data_fingerprint")
    keep = ("n_images", "n_melanoma", "n_malignant", "melanoma_auc", "melanoma_auc_ci95", "malignancy_auc",
            "malignancy_auc_ci95", "balanced_accuracy_7", "balanced_accuracy_7_ci95", "balanced_accuracy_9",
            "balanced_accuracy_9_ci95", "ece_top_label", "operating_points", "flag_rate", "per_code_7")
    return {"model_dir": str(m.model_dir), "model_version": m.version, "split": split,
            "data_fingerprint_matches": fp_ok, "temperature": m.temperature,
            "clinical_context": bool(clinical and m.clinical is not None),
            "thresholds": m.thresholds.to_dict(), "metrics": {k: metrics.get(k) for k in keep},
            "subgroups": metrics["subgroups"]}
