"""Whether the model can judge an image: fitting and measuring the image-quality checks, the
out-of-domain detector and the conformal prediction sets of a model artifact (no Django).

Fitted only on the artifact's own training and validation splits:
- quality thresholds (`mlcore.quality`) so that >= 98 % of the training images pass;
- the Mahalanobis detector (`mlcore.ood`) on training features, its threshold so that 95 % of
  the validation images pass;
- the conformal probability floor (`mlcore.conformal`) on validation, for 90 % coverage.
Then measured, never tuned, on the held-out test split, on PH2 (external) and on a set of
clearly non-dermoscopic images (`training.nondermoscopic`).

Written into the artifact as ``assessment.json`` and ``ood.npz`` (its sha256 in the card).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mlcore import conformal, ood, quality
from mlcore.artifact import read_card, sha256_file

from .artifact import save_card

log = logging.getLogger(__name__)
ASSESSMENT_FILE = "assessment.json"


def logits_and_features(keras_model, images: np.ndarray, batch_size: int = 128,
                        tta: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and (when the model has the feature layer) penultimate features of uint8/float images,
    both averaged over the views of ``tta`` as the app's runners average them
    (mlcore.runners.Runner.logits): the checks must be fitted on the features they will be served."""
    from mlcore.keras_model import predict_logits
    from mlcore.labels import NUM_CLASSES

    images = np.asarray(images)
    if not ood.has_feature_layer(keras_model):
        return predict_logits(keras_model, images, batch_size=batch_size, tta=tta), None
    both = predict_logits(ood.with_features(keras_model), images, batch_size=batch_size, tta=tta)
    return both[:, :NUM_CLASSES], both[:, NUM_CLASSES:]


def quality_measures(images) -> list[dict]:
    return [quality.measure(np.asarray(img, np.uint8)) for img in images]


def fit(*, train_images: np.ndarray, train_codes, train_features: np.ndarray | None,
        val_features: np.ndarray | None, val_probs: np.ndarray, val_masks: np.ndarray,
        feature_widths: list[int] | None = None, coverage: float = conformal.DEFAULT_COVERAGE) -> tuple[dict, ood.MahalanobisDetector | None]:
    """Fit the three parts on the training and validation splits; returns (assessment, detector)."""
    q = quality.fit_thresholds(quality_measures(train_images))
    detector, ood_info = None, None
    if train_features is not None and val_features is not None:
        detector = ood.fit(train_features, np.asarray(train_codes), feature_widths, val_features=val_features)
        val_scores = detector.score(val_features)
        detector.threshold = ood.threshold_for(val_scores)
        ood_info = {"method": "per feature group (three pooled block outputs and the penultimate gap "
                              "features; an ensemble: every member's groups) the min class Mahalanobis "
                              "distance with a shared Ledoit-Wolf covariance fitted on the training "
                              "split, divided by its validation median; the score is the largest",
                    "feature_groups": list(feature_widths or [int(train_features.shape[1])]),
                    "threshold": detector.threshold, "target_pass": ood.OOD_PASS_TARGET,
                    "validation_pass_rate": float((val_scores <= detector.threshold).mean()),
                    "train_images": int(len(train_features)), "feature_dim": int(train_features.shape[1])}
    floor = conformal.fit_threshold(val_probs, val_masks, coverage)
    assessment = {
        "quality": q,
        "ood": ood_info,
        "conformal": {"coverage_target": coverage, "probability_floor": floor,
                      "validation": conformal.coverage_and_size(val_probs, val_masks, floor)},
        "clinical_photos": "not assessable: the model is validated for dermoscopic images only",
    }
    return assessment, detector


def _decisions(assessment: dict, detector, images: np.ndarray, features: np.ndarray | None):
    """Per image: failed a quality check, and unfamiliar to the out-of-domain detector."""
    th = assessment["quality"]["thresholds"]
    q_fail = np.array([not quality.check(np.asarray(img, np.uint8), th).ok for img in images], bool)
    unfamiliar = detector.unfamiliar(features) if (detector is not None and features is not None) \
        else np.zeros(len(images), bool)
    return q_fail, unfamiliar


def measure(assessment: dict, detector, *, images: np.ndarray, features: np.ndarray | None,
            probs: np.ndarray | None = None, masks: np.ndarray | None = None, decisions=None) -> dict:
    """Rates on one image set: quality failures, unfamiliar (out-of-domain), not assessable
    (either), and, with labels, the prediction sets' coverage. ``decisions``: precomputed
    ``_decisions`` for these images."""
    q_fail, unfamiliar = decisions or _decisions(assessment, detector, images, features)
    out = {"images": int(len(images)), "quality_failed": int(q_fail.sum()),
           "unfamiliar": int(unfamiliar.sum()), "not_assessable": int((q_fail | unfamiliar).sum())}
    n = max(len(images), 1)
    out.update({k + "_rate": out[k] / n for k in ("quality_failed", "unfamiliar", "not_assessable")})
    if probs is not None and masks is not None:
        floor = assessment["conformal"]["probability_floor"]
        out["conformal"] = conformal.coverage_and_size(probs, masks, floor)
    return out


def save(model_dir: Path, assessment: dict, detector) -> dict:
    """Write assessment.json (+ ood.npz) into the artifact and its summary into the model card."""
    model_dir = Path(model_dir)
    if detector is not None:
        detector.save(model_dir / ood.STATS_FILE)
        assessment = dict(assessment, ood=dict(assessment["ood"], file=ood.STATS_FILE,
                                               sha256=sha256_file(model_dir / ood.STATS_FILE)))
    (model_dir / ASSESSMENT_FILE).write_text(json.dumps(assessment, indent=1))
    card = read_card(model_dir, required=())
    card["assessment"] = assessment
    save_card(model_dir, card)
    return card


def assess(keras_model, card: dict, splits: dict, data_root: Path | None, *,
           external: bool = True, outputs=None) -> tuple[dict, object]:
    """Fit on ``splits["train"]`` and ``splits["val"]`` ((records, uint8 images) each), measure on
    ``splits["test"]`` and, with ``external``, on PH2 (under ``data_root``, when present) and the
    non-dermoscopic set. ``outputs`` (split name -> (logits before the clinical offset, features)
    at the card's test-time augmentation, e.g. `training.train.SplitOutputs`) spares scoring the
    splits again. Returns (assessment with its "measured" report, detector)."""
    from mlcore.clinical import ClinicalAdjustment, contexts_of
    from mlcore.framing import DEFAULT_FRAMING
    from mlcore.imageio import decode_file
    from mlcore.preprocess import prepare_image
    from mlcore.labels import mask_from_classes
    from .nondermoscopic import build as build_nondermoscopic
    from .ph2 import load_ph2, ph2_masks
    from mlcore.scoring import softmax_with_temperature

    size = int(card["input_size"])
    framing = card.get("framing") or DEFAULT_FRAMING
    temperature = float(card["temperature"])
    clinical = ClinicalAdjustment.from_dict(card["clinical_context"]) if card.get("clinical_context") else None
    tta = str(card.get("tta") or "none")  # the temperature and the served features assume it

    def scored(name):
        recs, imgs = splits[name]
        logits, feats = outputs[name] if outputs is not None else logits_and_features(keras_model, imgs, tta=tta)
        if clinical is not None:
            logits = clinical.apply(logits, contexts_of(recs))
        probs = softmax_with_temperature(logits, temperature)
        return recs, imgs, feats, probs, np.stack([mask_from_classes(r.allowed) for r in recs])

    tr_recs, tr_imgs, tr_feats, _, _ = scored("train")
    _, _, va_feats, va_probs, va_masks = scored("val")
    assessment, detector = fit(train_images=tr_imgs, train_codes=[r.ham_code for r in tr_recs],
                               train_features=tr_feats, val_features=va_feats, val_probs=va_probs,
                               val_masks=va_masks,
                               feature_widths=ood.feature_widths(keras_model) if tr_feats is not None else None)
    _, te_imgs, te_feats, te_probs, te_masks = scored("test")
    report = {"test": measure(assessment, detector, images=te_imgs, features=te_feats, probs=te_probs,
                              masks=te_masks)}
    if not external:
        assessment["measured"] = report
        return assessment, detector
    try:
        ph2 = load_ph2(data_root) if data_root is not None else None
        if ph2 is None:
            raise FileNotFoundError("no data root")
        ph_imgs = np.stack([prepare_image(decode_file(i.path), size, framing) for i in ph2])
        ph_logits, ph_feats = logits_and_features(keras_model, ph_imgs, tta=tta)
        report["ph2"] = measure(assessment, detector, images=ph_imgs, features=ph_feats,
                                probs=softmax_with_temperature(ph_logits, temperature), masks=ph2_masks(ph2))
    except FileNotFoundError as exc:
        report["ph2"] = {"error": f"PH2 not measured: {exc}"}
    nd = build_nondermoscopic()
    nd_imgs = np.stack([prepare_image(img, size, framing) for _, img in nd])
    _, nd_feats = logits_and_features(keras_model, nd_imgs, tta=tta)
    q_fail, unfam = _decisions(assessment, detector, nd_imgs, nd_feats)
    m = measure(assessment, detector, images=nd_imgs, features=nd_feats, decisions=(q_fail, unfam))
    m["missed_by_ood"] = [name for (name, _), u in zip(nd, unfam) if not u]
    m["missed_by_both"] = [name for (name, _), u, f in zip(nd, unfam, q_fail) if not u and not f]
    report["non_dermoscopic"] = m
    assessment["measured"] = report
    return assessment, detector


def assess_artifact(model_dir: Path, data_root: Path, cache_dir: Path | None, *, write: bool = True,
                    audit=None) -> dict:
    """Fit and measure the assessment of a saved artifact on its recorded splits (data from
    ``data_root``; ``audit``, default the audit of all of it, holds their records) and, with
    ``write``, store it in the artifact."""
    from .audit import run_audit
    from .cache import load_images
    from mlcore.keras_model import load_keras_model

    model_dir = Path(model_dir)
    card = read_card(model_dir, required=())
    km = load_keras_model(model_dir / card.get("model_file", "model.keras"))
    audit = audit if audit is not None else run_audit(data_root, cache_dir)
    by_id = {r.isic_id: r for r in audit.records}
    splits = {}
    for name in ("train", "val", "test"):
        recs = [by_id[i] for i in card["split_ids"][name]]
        splits[name] = (recs, load_images([r.path for r in recs], int(card["input_size"]), cache_dir,
                                          framing=card.get("framing") or "squash"))
    assessment, detector = assess(km, card, splits, data_root)
    if write:
        save(model_dir, assessment, detector)
    return assessment
