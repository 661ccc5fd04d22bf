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
    drops it, None keeps what the config says. The assessment (quality thresholds, out-of-domain
    detector, prediction sets) is fitted again for the new artifact when the config asks for it."""
    from mlcore.model_store import load_model

    from .config import TrainConfig

    m = load_model(Path(model_dir))
    cfg = TrainConfig.from_dict(m.card["training"]["config"])
    if tta is not None:
        cfg.tta = tta
    if target_sensitivity is not None:
        cfg.target_sensitivity = target_sensitivity
    if clinical_context is not None:
        cfg.clinical_context = clinical_context
    old_metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    suffix = "" if cfg.tta == "none" else f"-{cfg.tta}"
    res = refit_and_export(m.keras_model, cfg, m.card["split_ids"], Path(out_dir), data_root, cache_dir,
                           input_size=m.input_size, history=old_metrics.get("history", {}),
                           version=version or (m.version + suffix), data_sources=m.card.get("data_sources"),
                           ensemble=m.card.get("ensemble"), assess=cfg.assessment)
    return res


def refit_and_export(keras_model, cfg, split: dict, out_dir: Path, data_root: Path, cache_dir: Path | None, *,
                     input_size: int, history: dict, version: str, data_sources=None,
                     ensemble: dict | None = None, audit=None, assess: bool = False) -> dict:
    """Fit the clinical adjustment on the recorded training split (when ``cfg`` asks for it), the
    temperature and thresholds on validation, evaluate on test, and export an artifact of
    ``keras_model``; with ``assess``, also fit its quality checks, out-of-domain detector and
    prediction sets from the same pass over the splits (the artifact is served as it is: without
    them the app would never say it cannot judge an image). Returns the headline figures.
    ``audit`` (default: the audit of all of ``data_root``) must hold the split's records."""
    from .artifact import export_artifact
    from .audit import run_audit
    from .cache import load_images
    from .evaluate import evaluate_probs
    from mlcore.labels import mask_from_classes
    from mlcore.scoring import SCORE_HISTOGRAM_KEY, softmax_with_temperature
    from .subgroups import lesion_ids_of, subgroup_labels
    from .train import SplitOutputs, calibrate_logits, fit_clinical

    audit = audit if audit is not None else run_audit(data_root, cache_dir)
    by_id = {r.isic_id: r for r in audit.records}
    kept_out = _keep_benchmark_out(audit, split)
    # the training images are needed only for the offset and the assessment
    names = ("train", "val", "test") if cfg.clinical_context or assess else ("val", "test")
    recs = {name: [by_id[i] for i in split[name]] for name in names}
    images = {name: load_images([r.path for r in recs[name]], input_size, cache_dir, framing=cfg.framing)
              for name in names}
    masks = {name: np.stack([mask_from_classes(r.allowed) for r in recs[name]]) for name in names}
    outputs = SplitOutputs(keras_model, cfg.tta, images)
    clinical = (fit_clinical(cfg, outputs.logits("train"), masks["train"], recs["train"])
                if cfg.clinical_context else None)
    cal = calibrate_logits(outputs.logits("val", clinical=clinical, records=recs["val"]), masks["val"], cfg,
                           lesions=lesion_ids_of(recs["val"], audit.groups))
    test_recs, m_te = recs["test"], masks["test"]
    probs = softmax_with_temperature(outputs.logits("test", clinical=clinical, records=test_recs), cal["temperature"])
    metrics = evaluate_probs(probs, m_te, cal["thresholds"], cfg.bootstrap, cfg.seed,
                             groups=subgroup_labels(test_recs), lesions=lesion_ids_of(test_recs, audit.groups))
    metrics[SCORE_HISTOGRAM_KEY] = cal["validation"][SCORE_HISTOGRAM_KEY]  # the monitoring's reference
    export_artifact(keras_model, Path(out_dir), cfg=cfg, temperature=cal["temperature"],
                    thresholds=cal["thresholds"], validation=cal["validation"], metrics=metrics,
                    history=history, audit_report=audit.report, split=split, test_probs=probs,
                    test_masks=m_te, version=version, clinical=clinical, data_sources=data_sources,
                    ensemble=ensemble, benchmark=kept_out)
    if assess:
        from mlcore.artifact import read_card

        from .assessment import assess as fit_assessment, save as save_assessment

        save_assessment(Path(out_dir), *fit_assessment(
            keras_model, read_card(Path(out_dir)), {k: (recs[k], images[k]) for k in names}, data_root,
            outputs=outputs))
    return {"out": str(out_dir), "tta": cfg.tta, "temperature": cal["temperature"],
            "thresholds": cal["thresholds"].to_dict(),
            "melanoma_auc": metrics["melanoma_auc"], "malignancy_auc": metrics["malignancy_auc"],
            "balanced_accuracy_7": metrics["balanced_accuracy_7"],
            "melanoma_op": metrics["operating_points"]["melanoma"],
            "validation_melanoma_auc": cal["validation"]["melanoma_auc"],
            "validation_malignancy_auc": cal["validation"]["malignancy_auc"]}


def _keep_benchmark_out(audit, split: dict) -> dict:
    """Refuse to fit the clinical offset, temperature or thresholds on frozen-benchmark lesions
    (an artifact split before the benchmark existed may hold some); the card's benchmark entry."""
    from .benchmark import check_not_in_training, current_benchmark, frozen_groups

    benchmark = current_benchmark()
    by_id = {r.isic_id: r for r in audit.records}
    frozen = frozen_groups(benchmark, audit.records, audit.groups, audit.aliases)
    check_not_in_training(benchmark, {s: [by_id[i] for i in split[s] if i in by_id] for s in ("train", "val")},
                          groups=audit.groups, frozen=frozen, aliases=audit.aliases)
    return {**benchmark.summary(), "kept_out_of": ["train", "val"], "lesion_groups_in_data": len(frozen),
            "images_in_test": len(set(split["test"]) & benchmark.image_ids)}
