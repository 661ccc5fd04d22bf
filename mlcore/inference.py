"""Batched inference: images -> calibrated class probabilities, scores and flag decision."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from mlcore.clinical import ClinicalContext
from mlcore.conformal import prediction_sets
from mlcore.labels import CLASSES
from mlcore.quality import check as quality_check
from mlcore.scoring import class_probability_dict, flag_decision, score_logits

from .preprocess import decode_image, prepare_batch


@dataclass
class ImagePrediction:
    class_probabilities: dict[str, float]
    melanoma_probability: float
    malignancy_score: float
    flagged: bool
    flag_reasons: list[str] = field(default_factory=list)
    model_version: str = ""
    inference_ms: float = 0.0
    # the age/sex/site that shifted the scores (None: the model or the request had none)
    clinical_context: dict | None = None
    # False when the image failed a quality check or looks unlike the training images: the scores
    # are then not reliable and must not be shown as a normal result (training.assessment)
    assessable: bool = True
    assessment_notes: list[str] = field(default_factory=list)
    # what decided it: quality measures and failed checks, out-of-domain score and threshold
    assessment: dict | None = None
    # split-conformal set of the diagnoses the model cannot rule out (90 % coverage on validation)
    prediction_set: list[str] | None = None

    @property
    def assessment_note(self) -> str:
        return "; ".join(self.assessment_notes)

    def to_dict(self) -> dict:
        return asdict(self)


def predict_images(model, images: list[np.ndarray], batch_size: int = 32,
                   contexts: Sequence[ClinicalContext | None] | None = None) -> list[ImagePrediction]:
    """RGB uint8 images (any size) -> one ImagePrediction each (batched forward pass).

    ``contexts`` (one mlcore.clinical.ClinicalContext or None per image) shift the logits when
    the model has a clinical adjustment; otherwise the image alone decides. inference_ms is the
    per-image share of preprocessing + forward time."""
    if not images:
        return []
    if contexts is not None and len(contexts) != len(images):
        raise ValueError(f"{len(contexts)} clinical contexts for {len(images)} images")
    t0 = time.perf_counter()
    batch = prepare_batch(images, model.input_size, getattr(model, "framing", "squash"))
    logits, features = model.predict_logits_and_features(batch)
    checks = assess_batch(model, batch, features)
    clinical = getattr(model, "clinical", None)
    used: list[dict | None] = [None] * len(images)
    if clinical is not None and contexts is not None:
        filled = [c or ClinicalContext() for c in contexts]
        logits = clinical.apply(logits, filled)
        used = [c.to_dict() if c.known else None for c in filled]
    sc = score_logits(logits, model.temperature, model.thresholds)
    floor = ((getattr(model, "assessment", None) or {}).get("conformal") or {}).get("probability_floor")
    sets = prediction_sets(sc.probs, floor) if floor is not None else None
    ms = (time.perf_counter() - t0) * 1000.0 / len(images)
    out = []
    for i in range(len(images)):
        mel, mal = float(sc.melanoma[i]), float(sc.malignancy[i])
        dec = flag_decision(mel, mal, model.thresholds)
        out.append(ImagePrediction(
            class_probabilities=class_probability_dict(sc.probs[i]), melanoma_probability=mel,
            malignancy_score=mal, flagged=dec.flagged, flag_reasons=dec.reasons,
            model_version=model.version, inference_ms=round(ms, 2), clinical_context=used[i],
            assessable=checks[i][0], assessment_notes=checks[i][1], assessment=checks[i][2],
            prediction_set=None if sets is None else [c for c, keep in zip(CLASSES, sets[i]) if keep]))
    return out


UNFAMILIAR_NOTE = ("unlike the images the model was trained on (another kind of image, device or "
                   "view): its scores are not reliable here")


def assess_batch(model, batch: np.ndarray, features: np.ndarray | None) -> list[tuple[bool, list[str], dict | None]]:
    """(assessable, notes, details) per image of a prepared batch: the model's quality checks on
    the pixels it scores and its out-of-domain detector on its own features. A model without
    fitted checks (older artifacts) assesses nothing and calls every image assessable."""
    assessment = getattr(model, "assessment", None)
    if not assessment:
        return [(True, [], None)] * len(batch)
    thresholds = assessment["quality"]["thresholds"]
    detector = getattr(model, "ood_detector", None)
    scores = detector.score(features) if detector is not None and features is not None else None
    out = []
    for i, img in enumerate(batch):
        q = quality_check(np.clip(img, 0, 255).astype(np.uint8), thresholds)
        notes = list(q.messages)
        details: dict = {"quality": q.to_dict()}
        if scores is not None:
            unfamiliar = bool(scores[i] > detector.threshold)
            details["ood"] = {"score": round(float(scores[i]), 3), "threshold": round(float(detector.threshold), 3),
                              "unfamiliar": unfamiliar}
            if unfamiliar:
                notes.append(UNFAMILIAR_NOTE)
        out.append((not notes, notes, details))
    return out


def predict_bytes(model, data: bytes) -> ImagePrediction:
    """Decode (raises ImageDecodeError) and predict one image; inference_ms includes decoding."""
    t0 = time.perf_counter()
    pred = predict_images(model, [decode_image(data, target_size=model.input_size)])[0]
    pred.inference_ms = round((time.perf_counter() - t0) * 1000.0, 2)
    return pred


def predict_many_bytes(model, blobs: list[bytes]) -> list[ImagePrediction]:
    """Decode and predict several images in one batched forward pass (raises ImageDecodeError)."""
    return predict_images(model, [decode_image(b, target_size=model.input_size) for b in blobs])
