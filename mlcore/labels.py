"""Label constants shared by training, evaluation and the app (single source of truth)."""
from __future__ import annotations

from typing import Iterable

import numpy as np

# The nine folder classes, alphabetical, spelled exactly like the ISIC-9class folders.
CLASSES: tuple[str, ...] = (
    "actinic keratosis",
    "basal cell carcinoma",
    "dermatofibroma",
    "melanoma",
    "nevus",
    "pigmented benign keratosis",
    "seborrheic keratosis",
    "squamous cell carcinoma",
    "vascular lesion",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

# The seven HAM10000 dx codes and the folder classes each one stands for.
HAM_CODES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM_TO_CLASSES: dict[str, frozenset[str]] = {
    "akiec": frozenset({"actinic keratosis", "squamous cell carcinoma"}),
    "bcc": frozenset({"basal cell carcinoma"}),
    "bkl": frozenset({"pigmented benign keratosis", "seborrheic keratosis"}),
    "df": frozenset({"dermatofibroma"}),
    "mel": frozenset({"melanoma"}),
    "nv": frozenset({"nevus"}),
    "vasc": frozenset({"vascular lesion"}),
}
CLASS_TO_HAM: dict[str, str] = {c: code for code, cs in HAM_TO_CLASSES.items() for c in cs}

MELANOMA = "melanoma"
# Malignancy score = P(mel) + P(bcc) + P(scc) + P(ak) (mel, bcc, akiec in HAM terms).
MALIGNANT_CLASSES: frozenset[str] = frozenset(
    {"melanoma", "basal cell carcinoma", "squamous cell carcinoma", "actinic keratosis"}
)
MALIGNANT_HAM_CODES: frozenset[str] = frozenset({"mel", "bcc", "akiec"})

MELANOMA_INDEX = CLASS_INDEX[MELANOMA]
MALIGNANT_INDICES: tuple[int, ...] = tuple(sorted(CLASS_INDEX[c] for c in MALIGNANT_CLASSES))


def mask_from_classes(classes: Iterable[str]) -> np.ndarray:
    """Multi-hot float32 mask (len 9) of the allowed classes."""
    m = np.zeros(NUM_CLASSES, dtype=np.float32)
    for c in classes:
        m[CLASS_INDEX[c]] = 1.0
    return m


def classes_from_mask(mask: np.ndarray) -> frozenset[str]:
    return frozenset(CLASSES[i] for i in np.flatnonzero(np.asarray(mask) > 0.5))


def ham_code_of(classes: Iterable[str]) -> str:
    """HAM code of an allowed-class set (all classes must map to the same code)."""
    codes = {CLASS_TO_HAM[c] for c in classes}
    if len(codes) != 1:
        raise ValueError(f"classes {sorted(classes)} do not map to one HAM code")
    return codes.pop()


def ham_membership_matrix() -> np.ndarray:
    """(9, 7) 0/1 matrix: probs9 @ M -> probabilities of the 7 HAM codes."""
    m = np.zeros((NUM_CLASSES, len(HAM_CODES)), dtype=np.float32)
    for j, code in enumerate(HAM_CODES):
        for c in HAM_TO_CLASSES[code]:
            m[CLASS_INDEX[c], j] = 1.0
    return m


def is_malignant(classes: Iterable[str]) -> bool:
    """True when every allowed class is malignant (well defined for all our label sets)."""
    cs = set(classes)
    return bool(cs) and cs <= MALIGNANT_CLASSES


def label_key(classes: Iterable[str]) -> str:
    """Readable label: a single class name or 'a|b' for an ambiguous set."""
    return "|".join(sorted(classes))
