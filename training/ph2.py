"""The PH2 external test set (another hospital, another dermatoscope): loading only.

PH2 is a TEST set. Nothing here may feed training, calibration, thresholds or the choice between
candidates: `training.train` never reads it, and the only callers are the reports
(`bench/quality.py`, `training.assessment.report`). No Django here.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcore.labels import mask_from_classes

PH2_DIR = "ph2"
DX_TO_CLASS = {"mel": "melanoma", "nv": "nevus"}


@dataclass(frozen=True)
class PH2Image:
    image_id: str
    path: str
    dx: str  # mel | nv
    diagnosis: str  # common nevus | atypical nevus | melanoma

    @property
    def lesion_id(self) -> str:
        return self.image_id  # one image per lesion in PH2


def load_ph2(data_root: Path) -> list[PH2Image]:
    """The PH2 images and labels under ``data_root/ph2``; raises FileNotFoundError without them."""
    root = Path(data_root) / PH2_DIR
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} is missing (PH2 external test set)")
    out = []
    with labels.open(newline="") as fh:
        for row in csv.DictReader(fh):
            image_id = row["image_id"].strip()
            dx = row["dx"].strip()
            if dx not in DX_TO_CLASS:
                raise ValueError(f"{labels}: unknown dx {dx!r} for {image_id}")
            out.append(PH2Image(image_id, str(root / "images" / f"{image_id}.jpg"), dx,
                                (row.get("diagnosis") or "").strip()))
    return out


def ph2_masks(images: list[PH2Image]) -> np.ndarray:
    return np.stack([mask_from_classes({DX_TO_CLASS[i.dx]}) for i in images])
