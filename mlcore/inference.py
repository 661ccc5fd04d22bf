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


NON_FINITE_MESSAGE = ("The model returned a non-numeric output for this image ({outputs} not finite: NaN or "
                      "infinity), so it was not scored; retry it, and if it fails again the model version "
                      "needs checking")


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinity for some images of a batch.

    Compared with a threshold a NaN is never "above" it (``nan >= t`` is False) and clamped it
    becomes 0.0, so it would read as a confident benign result: such an image must fail
    visibly instead. ``results`` holds the other images' predictions (None for each image in
    ``reasons``), so that one broken image does not cost its batch mates their scores.
    """

    def __init__(self, reasons: dict[int, str], results: list["ImagePrediction | None"]):
        self.reasons = dict(reasons)  # batch index -> message for that image
        self.results = results
        super().__init__(f"{len(self.reasons)} of {len(results)} images: " + next(iter(self.reasons.values()), ""))


def non_finite_outputs(logits: np.ndarray, probs: np.ndarray, melanoma: np.ndarray, malignancy: np.ndarray,
                       ood_scores: np.ndarray | None) -> dict[int, str]:
    """Batch index -> message for every image with a non-finite model output (an empty dict when
    all are finite): the one place that decides whether the model's numbers can be used."""
    checks = [("logits", ~np.isfinite(np.asarray(logits, np.float64)).all(axis=-1)),
              ("class probabilities", ~np.isfinite(probs).all(axis=-1)),
              ("melanoma probability", ~np.isfinite(melanoma)),
              ("malignancy score", ~np.isfinite(malignancy))]
    if ood_scores is not None:
        checks.append(("out-of-domain distance", ~np.isfinite(np.asarray(ood_scores, np.float64))))
    out = {}
    for i in range(len(probs)):
        bad = [name for name, mask in checks if mask[i]]
        if bad:
            out[i] = NON_FINITE_MESSAGE.format(outputs=", ".join(bad))
    return out


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
    per-image share of preprocessing + forward time.

    Raises NonFiniteOutputError when any image's output (logits, probabilities, scores,
    out-of-domain distance) is NaN or infinite; it carries the other images' predictions."""
    if not images:
        return []
    if contexts is not None and len(contexts) != len(images):
        raise ValueError(f"{len(contexts)} clinical contexts for {len(images)} images")
    t0 = time.perf_counter()
    batch = prepare_batch(images, model.input_size, getattr(model, "framing", "squash"))
    logits, features = model.predict_logits_and_features(batch)
    distances = ood_scores(model, features)
    checks = assess_batch(model, batch, features, distances=distances)
    clinical = getattr(model, "clinical", None)
    used: list[dict | None] = [None] * len(images)
    if clinical is not None and contexts is not None:
        filled = [c or ClinicalContext() for c in contexts]
        logits = clinical.apply(logits, filled)
        used = [c.to_dict() if c.known else None for c in filled]
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf rows are refused below, not warned about
        sc = score_logits(logits, model.temperature, model.thresholds)
    floor = ((getattr(model, "assessment", None) or {}).get("conformal") or {}).get("probability_floor")
    sets = prediction_sets(sc.probs, floor) if floor is not None else None
    ms = (time.perf_counter() - t0) * 1000.0 / len(images)
    broken = non_finite_outputs(logits, sc.probs, sc.melanoma, sc.malignancy, distances)
    out: list[ImagePrediction | None] = []
    for i in range(len(images)):
        if i in broken:
            out.append(None)
            continue
        mel, mal = float(sc.melanoma[i]), float(sc.malignancy[i])
        dec = flag_decision(mel, mal, model.thresholds)
        out.append(ImagePrediction(
            class_probabilities=class_probability_dict(sc.probs[i]), melanoma_probability=mel,
            malignancy_score=mal, flagged=dec.flagged, flag_reasons=dec.reasons,
            model_version=model.version, inference_ms=round(ms, 2), clinical_context=used[i],
            assessable=checks[i][0], assessment_notes=checks[i][1], assessment=checks[i][2],
            prediction_set=None if sets is None else [c for c, keep in zip(CLASSES, sets[i]) if keep]))
    if broken:
        raise NonFiniteOutputError(broken, out)
    return out  # type: ignore[return-value]  # no None left when nothing is broken


UNFAMILIAR_NOTE = ("unlike the images the model was trained on (another kind of image, device or "
                   "view): its scores are not reliable here")


def ood_scores(model, features: np.ndarray | None) -> np.ndarray | None:
    """The out-of-domain detector's score per image, or None when the model has no detector (or
    no features) or no fitted checks (then nothing reads the score)."""
    detector = getattr(model, "ood_detector", None)
    if not getattr(model, "assessment", None) or detector is None or features is None:
        return None
    return detector.score(features)


def assess_batch(model, batch: np.ndarray, features: np.ndarray | None,
                 distances: np.ndarray | None = None) -> list[tuple[bool, list[str], dict | None]]:
    """(assessable, notes, details) per image of a prepared batch: the model's quality checks on
    the pixels it scores and its out-of-domain detector on its own features (``distances``: its
    scores when already computed). A model without fitted checks (older artifacts) assesses
    nothing and calls every image assessable."""
    assessment = getattr(model, "assessment", None)
    if not assessment:
        return [(True, [], None)] * len(batch)
    thresholds = assessment["quality"]["thresholds"]
    detector = getattr(model, "ood_detector", None)
    scores = distances if distances is not None else ood_scores(model, features)
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


def decode_for(model, data: bytes) -> np.ndarray:
    """The one decode of an encoded image for ``model``: the web worker, the CLI, the benchmarks and
    the external test set all see the pixels the same way. A camera-sized JPEG is decoded at a
    reduced scale that stays >= DRAFT_MARGIN x the model input (bench/inference.py measures parity);
    images of the training data's sizes decode in full, bit-identical to the training cache (as does
    every image for a stand-in model without an input size). Raises ImageDecodeError."""
    return decode_image(data, target_size=getattr(model, "input_size", None))


def predict_bytes(model, data: bytes) -> ImagePrediction:
    """Decode (raises ImageDecodeError) and predict one image; inference_ms includes decoding."""
    t0 = time.perf_counter()
    pred = predict_images(model, [decode_for(model, data)])[0]
    pred.inference_ms = round((time.perf_counter() - t0) * 1000.0, 2)
    return pred


def predict_many_bytes(model, blobs: list[bytes]) -> list[ImagePrediction]:
    """Decode and predict several images in one batched forward pass (raises ImageDecodeError)."""
    return predict_images(model, [decode_for(model, b) for b in blobs])
