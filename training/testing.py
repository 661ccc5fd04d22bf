"""Test helpers: a tiny but COMPLETE model artifact on synthetic data, in seconds on CPU.

    from training.testing import make_tiny_model_dir
    model_dir = make_tiny_model_dir(tmp_path / "model")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcore.labels import CLASSES, HAM_TO_CLASSES, NUM_CLASSES, mask_from_classes

TINY_SIZE = 32


def synthetic_images(n: int, size: int = TINY_SIZE, seed: int = 0):
    """(images uint8 (n,size,size,3), masks (n,9), label sets). Each class has its own colour and
    blob radius so a tiny CNN learns them quickly; some samples get the ambiguous akiec/bkl sets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.empty((n, size, size, 3), np.uint8)
    sets = []
    for i in range(n):
        c = i % NUM_CLASSES
        hue = np.array([(37 * c) % 255, (91 * c + 60) % 255, (151 * c + 120) % 255], np.float32)
        r = size * (0.18 + 0.03 * c)
        cy, cx = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        bg = np.array([220, 180, 160], np.float32) + rng.normal(0, 8, 3)
        img = np.where(blob[..., None], hue, bg) + rng.normal(0, 6, (size, size, 3))
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
        cls = CLASSES[c]
        if i % 7 == 3 and cls in HAM_TO_CLASSES["akiec"] | HAM_TO_CLASSES["bkl"]:
            code = "akiec" if cls in HAM_TO_CLASSES["akiec"] else "bkl"
            sets.append(HAM_TO_CLASSES[code])
        else:
            sets.append(frozenset({cls}))
    masks = np.stack([mask_from_classes(s) for s in sets])
    return imgs, masks, sets


def synthetic_contexts(sets, seed: int = 0) -> list:
    """Clinical contexts where melanoma patients are older (about 72 vs 38 years), so a fitted
    clinical adjustment has something to learn; every fifth context is unknown."""
    from mlcore.clinical import ClinicalContext

    rng = np.random.default_rng(seed + 100)
    out = []
    for i, s in enumerate(sets):
        if i % 5 == 4:
            out.append(ClinicalContext())
            continue
        age = float(np.clip(rng.normal(72 if "melanoma" in s else 38, 8), 1, 100))
        out.append(ClinicalContext(age=round(age), sex=("male", "female")[i % 2],
                                   site=("back", "face", "lower extremity")[i % 3]))
    return out


def tiny_config(seed: int = 0):
    from .config import TrainConfig

    return TrainConfig(seed=seed, backbone="scratch", freeze_blocks=0, image_size=TINY_SIZE, width=8, stages=(1, 1),
                       stem_stride=2, dropout=0.0, epochs=6,
                       batch_size=32, learning_rate=1e-2, weight_decay=1e-4, warmup_epochs=0.5,
                       label_smoothing=0.0, class_weight_power=0.5, mixed_precision="fp32",
                       time_budget_min=0.0, patience=100, aug_zoom=0.05, aug_color=0.05, bootstrap=50,
                       average_tail=0.0, progressive_min_size=0, tta="none",
                       # the synthetic classes differ by colour: colour constancy and the device
                       # augmentation would erase what this tiny task is about
                       colour_constancy="none", aug_device=0.0, aug_zoom_out=0.0)


def make_tiny_model_dir(path: Path, seed: int = 0, plots: bool = False, assessed: bool = False,
                        **config) -> Path:
    """Generate synthetic images, train a very small model briefly, fit temperature/thresholds on
    synthetic validation data and export a complete artifact (same format as the real one).
    ``assessed`` also fits the quality checks, out-of-domain detector and prediction sets
    (training.assessment) on the synthetic splits; without it the artifact is like one from
    before them (every image assessable). ``config`` overrides fields of `tiny_config`."""
    import dataclasses
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .train import fit_model

    cfg = dataclasses.replace(tiny_config(seed), **config)
    x_tr, m_tr, s_tr = synthetic_images(270, seed=seed)
    x_va, m_va, _ = synthetic_images(90, seed=seed + 1)
    model, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0, contexts=synthetic_contexts(s_tr, seed))
    out = _export_tiny(model, cfg, Path(path), seed=seed, history=history,
                       version=f"tiny-test-{seed}" + ("-assessed" if assessed else ""), plots=plots)
    if assessed:
        _assess_tiny(model, out, seed)
    return out


def make_tiny_ensemble_dir(path: Path, member_dirs, seed: int = 0, plots: bool = False,
                           assessed: bool = False) -> Path:
    """A complete ensemble artifact (training.ensemble) of tiny member artifacts, calibrated and
    evaluated on synthetic data like ``make_tiny_model_dir`` (``assessed`` as there)."""
    from .ensemble import load_ensemble

    _, model, ensemble, history = load_ensemble(member_dirs)
    out = _export_tiny(model, tiny_config(seed), Path(path), seed=seed, history=history,
                       version=f"tiny-ensemble-{seed}" + ("-assessed" if assessed else ""), plots=plots,
                       ensemble=ensemble)
    if assessed:
        _assess_tiny(model, out, seed)
    return out


def _assess_tiny(model, out: Path, seed: int) -> None:
    """Fit the quality checks, out-of-domain detector and prediction sets on the synthetic splits."""
    from mlcore.artifact import read_card
    from .assessment import assess, save
    from .data import ImageRecord
    from mlcore.labels import ham_code_of

    splits = {}
    for k, n, s in (("train", 270, seed), ("val", 90, seed + 1), ("test", 90, seed + 2)):
        x, _, sets = synthetic_images(n, seed=s)
        splits[k] = ([ImageRecord(path="", isic_id=f"SYN_{k}_{i:04d}", lesion_id=f"SYN_{k}_{i:04d}",
                                  allowed=st, source="synthetic", ham_code=ham_code_of(st))
                      for i, st in enumerate(sets)], x)
    assessment, detector = assess(model, read_card(out), splits, None, external=False)
    save(out, assessment, detector)


def _export_tiny(model, cfg, path: Path, *, seed: int, history: dict, version: str, plots: bool,
                 ensemble: dict | None = None) -> Path:
    """Fit the clinical adjustment, temperature and thresholds on synthetic data, evaluate and export."""
    from .artifact import export_artifact
    from .audit import data_fingerprint
    from mlcore.clinical import fit_adjustment
    from .data import ImageRecord
    from .evaluate import evaluate_probs
    from mlcore.keras_model import predict_logits
    from mlcore.scoring import softmax_with_temperature
    from .subgroups import subgroup_labels
    from .train import adjusted_logits, calibrate

    x_tr, m_tr, s_tr = synthetic_images(270, seed=seed)
    x_va, m_va, s_va = synthetic_images(90, seed=seed + 1)
    x_te, m_te, s_te = synthetic_images(90, seed=seed + 2)
    clinical = fit_adjustment(predict_logits(model, x_tr), m_tr, synthetic_contexts(s_tr, seed),
                              l2=cfg.clinical_l2)
    cal = calibrate(model, cfg, x_va, m_va, clinical=clinical, contexts=synthetic_contexts(s_va, seed + 1))
    test_logits = adjusted_logits(model, cfg, x_te, clinical=clinical, contexts=synthetic_contexts(s_te, seed + 2))
    probs = softmax_with_temperature(test_logits, cal["temperature"])
    split = {k: [f"SYN_{k}_{i:04d}" for i in range(n)] for k, n in (("train", 270), ("val", 90), ("test", 90))}
    recs = [ImageRecord(path="", isic_id=i, lesion_id=i, allowed=s, source="synthetic")
            for i, s in zip(split["test"], s_te)]
    metrics = evaluate_probs(probs, m_te, cal["thresholds"], n_boot=cfg.bootstrap, seed=seed,
                             groups=subgroup_labels(recs))
    audit = {"counts": {"clean_images": 450, "synthetic": True}, "data_fingerprint": data_fingerprint(recs),
             "policy": "synthetic data, no audit", "details": {}}
    return export_artifact(model, path, cfg=cfg, temperature=cal["temperature"],
                           thresholds=cal["thresholds"], validation=cal["validation"], metrics=metrics,
                           history=history, audit_report=audit, split=split, test_probs=probs,
                           test_masks=m_te, version=version, plots=plots, clinical=clinical, ensemble=ensemble)
