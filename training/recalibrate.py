"""Re-fit temperature + thresholds (validation) and re-evaluate (test) an existing artifact on its
recorded split, optionally switching test-time augmentation or the clinical-context adjustment
(fitted on the training split); writes a new artifact directory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def recalibrate(model_dir: Path, out_dir: Path, data_root: Path, cache_dir: Path | None,
                tta: str | None = None, target_sensitivity: float | None = None,
                version: str | None = None, clinical_context: bool | None = None) -> dict:
    """``clinical_context`` True (re)fits the clinical adjustment on the training split, False
    drops it, None keeps what the config says."""
    from classifier.model_store import load_model

    from .artifact import export_artifact
    from .audit import run_audit
    from .cache import load_images
    from .config import TrainConfig
    from .evaluate import evaluate_probs
    from .labels import mask_from_classes
    from .scoring import softmax_with_temperature
    from .subgroups import subgroup_labels
    from .clinical import contexts_of
    from .train import adjusted_logits, calibrate, fit_clinical

    m = load_model(Path(model_dir))
    cfg = TrainConfig.from_dict(m.card["training"]["config"])
    if tta is not None:
        cfg.tta = tta
    if target_sensitivity is not None:
        cfg.target_sensitivity = target_sensitivity
    if clinical_context is not None:
        cfg.clinical_context = clinical_context
    audit = run_audit(data_root, cache_dir)
    by_id = {r.isic_id: r for r in audit.records}
    split = m.card["split_ids"]

    def arrays(name):
        recs = [by_id[i] for i in split[name]]
        x = load_images([r.path for r in recs], m.input_size, cache_dir)
        return x, np.stack([mask_from_classes(r.allowed) for r in recs]), recs

    clinical = fit_clinical(m.keras_model, cfg, *arrays("train")) if cfg.clinical_context else None
    x_val, m_val, val_recs = arrays("val")
    x_te, m_te, test_recs = arrays("test")
    cal = calibrate(m.keras_model, cfg, x_val, m_val, clinical=clinical, contexts=contexts_of(val_recs))
    probs = softmax_with_temperature(
        adjusted_logits(m.keras_model, cfg, x_te, clinical=clinical, contexts=contexts_of(test_recs)),
        cal["temperature"])
    metrics = evaluate_probs(probs, m_te, cal["thresholds"], cfg.bootstrap, cfg.seed,
                             groups=subgroup_labels(test_recs))
    old_metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    history = old_metrics.get("history", {})
    suffix = "" if cfg.tta == "none" else f"-{cfg.tta}"
    export_artifact(m.keras_model, Path(out_dir), cfg=cfg, temperature=cal["temperature"],
                    thresholds=cal["thresholds"], validation=cal["validation"], metrics=metrics,
                    history=history, audit_report=audit.report, split=split, test_probs=probs,
                    test_masks=m_te, version=version or (m.version + suffix), clinical=clinical,
                    data_sources=m.card.get("data_sources"))
    return {"out": str(out_dir), "tta": cfg.tta, "temperature": cal["temperature"],
            "thresholds": cal["thresholds"].to_dict(),
            "melanoma_auc": metrics["melanoma_auc"], "malignancy_auc": metrics["malignancy_auc"],
            "balanced_accuracy_7": metrics["balanced_accuracy_7"],
            "melanoma_op": metrics["operating_points"]["melanoma"],
            "validation_melanoma_auc": cal["validation"]["melanoma_auc"],
            "validation_malignancy_auc": cal["validation"]["malignancy_auc"]}
