"""Batched inference: images -> calibrated class probabilities, scores and flag decision."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from training.clinical import ClinicalContext
from training.scoring import class_probability_dict, flag_decision, score_logits

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

    def to_dict(self) -> dict:
        return asdict(self)


def predict_images(model, images: list[np.ndarray], batch_size: int = 32,
                   contexts: Sequence[ClinicalContext | None] | None = None) -> list[ImagePrediction]:
    """RGB uint8 images (any size) -> one ImagePrediction each (batched forward pass).

    ``contexts`` (one training.clinical.ClinicalContext or None per image) shift the logits when
    the model has a clinical adjustment; otherwise the image alone decides. inference_ms is the
    per-image share of preprocessing + forward time."""
    if not images:
        return []
    if contexts is not None and len(contexts) != len(images):
        raise ValueError(f"{len(contexts)} clinical contexts for {len(images)} images")
    t0 = time.perf_counter()
    batch = prepare_batch(images, model.input_size)
    logits = model.predict_logits(batch, batch_size=batch_size)
    clinical = getattr(model, "clinical", None)
    used: list[dict | None] = [None] * len(images)
    if clinical is not None and contexts is not None:
        filled = [c or ClinicalContext() for c in contexts]
        logits = clinical.apply(logits, filled)
        used = [c.to_dict() if c.known else None for c in filled]
    sc = score_logits(logits, model.temperature, model.thresholds)
    ms = (time.perf_counter() - t0) * 1000.0 / len(images)
    out = []
    for i in range(len(images)):
        mel, mal = float(sc.melanoma[i]), float(sc.malignancy[i])
        dec = flag_decision(mel, mal, model.thresholds)
        out.append(ImagePrediction(
            class_probabilities=class_probability_dict(sc.probs[i]), melanoma_probability=mel,
            malignancy_score=mal, flagged=dec.flagged, flag_reasons=dec.reasons,
            model_version=model.version, inference_ms=round(ms, 2), clinical_context=used[i]))
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
