"""Synthetic per-image scores for promotion-gate tests: lesions with several images, calibrated
probabilities, subgroup attributes."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from mlcore.labels import CLASSES, mask_from_classes
from mlcore.scoring import Thresholds
from training.benchmark.scoring import ImageSet, ScoredImages

MEL = CLASSES.index("melanoma")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def synthetic_set(n_lesions: int = 1500, seed: int = 0, name: str = "synthetic-v0") -> tuple[ImageSet, np.ndarray]:
    """1-3 images per lesion, the lesion's class drawn from its own predicted distribution (so the
    probabilities are calibrated), image scores close to their lesion's; source, sex and age
    band per lesion."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_lesions)
    logits = rng.normal(0, 2.0, (n_lesions, len(CLASSES)))
    logits[:, CLASSES.index("nevus")] += 2.0
    classes = np.array([rng.choice(len(CLASSES), p=p) for p in _softmax(logits)])
    lesion = np.repeat(np.arange(n_lesions), per)
    probs = _softmax(logits[lesion] + rng.normal(0, 0.1, (len(lesion), len(CLASSES))))
    masks = np.stack([mask_from_classes({CLASSES[c]}) for c in classes[lesion]])
    attributes = {"source": rng.choice(["ham10000", "isic-9class"], n_lesions),
                  "sex": rng.choice(["male", "female"], n_lesions),
                  "age": rng.choice(["<30", "30-49", "50-69", "70+"], n_lesions)}
    images = ImageSet(name, "0" * 64, np.array([f"I{i:06d}" for i in range(len(lesion))]),
                      np.array([f"L{i:05d}" for i in lesion]), masks,
                      {k: v[lesion].astype(object) for k, v in attributes.items()})
    return images, probs


def scored(images: ImageSet, probs: np.ndarray, *, melanoma_threshold: float = 0.2, version: str = "cand",
           sha256: str | None = None) -> ScoredImages:
    """``probs`` as ``version``'s scores on ``images``; its model file's sha256 is ``sha256`` (a
    registered version's) or made up from the name."""
    return ScoredImages(images, probs, np.ones(len(probs), bool), version, sha256 or version * 8,
                        Thresholds(melanoma_threshold, 0.3))


def with_melanoma(probs: np.ndarray, melanoma: np.ndarray) -> np.ndarray:
    """``probs`` with the melanoma column replaced (the others rescaled so each row sums to 1)."""
    out = probs.copy()
    rest = np.delete(out, MEL, axis=1)
    rest *= ((1 - melanoma) / rest.sum(1))[:, None]
    out[:, [i for i in range(len(CLASSES)) if i != MEL]] = rest
    out[:, MEL] = melanoma
    return out


def fake_sha(version: str) -> str:
    """A model file's sha256 for a test version with no file: the same for the registry row and its gate."""
    import hashlib

    return hashlib.sha256(version.encode()).hexdigest()


@lru_cache(maxsize=None)
def _measured(allowed: bool, has_active: bool) -> str:
    from classifier.promotion import BOOTSTRAP_RESAMPLES, paired_gate
    from training.benchmark import CURRENT_VERSION

    images, probs = synthetic_set(1500, name=CURRENT_VERSION)  # fewer lesions: a noisy ECE
    reference = scored(images, probs, version="act") if has_active else None
    result = paired_gate(scored(images, probs, melanoma_threshold=0.2 if allowed else 0.7, version="cand"),
                         reference, target_sensitivity=0.5, n_resamples=BOOTSTRAP_RESAMPLES)
    assert result.allowed == allowed, result.reasons
    return json.dumps(result.to_dict())


def stored_gate(*, allowed: bool, active: str | None, candidate: str = "cand", candidate_sha256: str | None = None,
                active_sha256: str | None = None) -> dict:
    """A metrics["gate"] as a finished run stores it (on the current benchmark version, with the
    gate's resamples and rules), whose decision is ``allowed``: a paired comparison of synthetic
    scores with a good or a much worse melanoma threshold for the candidate. The models' sha256
    are ``fake_sha`` of their names unless given (a registered model's ``sha256``). Measured once
    per decision: the names and files only label the scores."""
    gate = json.loads(_measured(allowed, active is not None))
    gate["candidate"] |= {"version": candidate, "model_sha256": candidate_sha256 or fake_sha(candidate)}
    if active is not None:
        gate["active"] |= {"version": active, "model_sha256": active_sha256 or fake_sha(active)}
    return gate


# a model card's fitted image checks, as training.assessment writes them (values do not matter here)
FITTED_CHECKS = {"quality": {"thresholds": {"sharpness_min": 1.0}},
                 "ood": {"file": "ood.npz", "sha256": "0" * 64, "threshold": 1.0}}


def stand_in_artifact(root, version: str, *, assessment: dict | None = FITTED_CHECKS) -> str:
    """An artifact directory for a test version with no real model: its "model file" holds the
    version's name, so its sha256 is ``fake_sha(version)``, and its card has the fitted image
    checks the promotion gate asks for (``assessment``; None: a card without them). Returns its path."""
    from pathlib import Path

    from mlcore.artifact import CARD_FILE, MODEL_FILE

    out = Path(root) / f"artifact-{version}"
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(version.encode())
    card = {"version": version, "model_sha256": fake_sha(version)}
    if assessment is not None:
        card["assessment"] = assessment
    (out / CARD_FILE).write_text(json.dumps(card))
    return str(out)
