"""A small generated training dataset in the public layouts and a frozen benchmark drawn from it,
for tests that run a real (tiny) training or audit."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore.labels import CLASS_TO_HAM, CLASSES
from training.testing import synthetic_images


def make_fake_dataset(root: Path, per_class: int = 30) -> Path:
    """Both public layouts, small: ISIC class folders and a HAM10000 image folder + metadata CSV
    (no clinical context)."""
    n = per_class * len(CLASSES)
    images, _, _ = synthetic_images(n, size=48, seed=7)
    ham_rows = []
    for i, pixels in enumerate(images):
        cls = CLASSES[i % len(CLASSES)]
        if i % 2:
            folder = root / "isic-9class" / ("Test" if i % 10 == 1 else "Train") / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"ISIC_{9000000 + i}.jpg", quality=95)
        else:
            folder = root / "ham10000" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            image_id = f"ISIC_{8000000 + i}"
            Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=95)
            ham_rows.append({"lesion_id": f"HAM_{i // 4:07d}_{cls[:3]}", "image_id": image_id,
                             "dx": CLASS_TO_HAM[cls], "dx_type": "histo", "age": "", "sex": "unknown",
                             "localization": "unknown"})
    return write_ham_metadata(root, ham_rows)


def make_fake_ham(root: Path, n_lesions: int = 12) -> Path:
    """A HAM10000-layout folder only: two 24 px noise images per lesion, half melanomas."""
    (root / "ham10000" / "images").mkdir(parents=True)
    rows = []
    for i in range(2 * n_lesions):
        image_id = f"ISIC_{7000000 + i}"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            root / "ham10000" / "images" / f"{image_id}.jpg")
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": image_id, "dx": ("mel", "nv")[(i // 2) % 2],
                     "dx_type": "histo", "age": "55", "sex": "male", "localization": "back"})
    return write_ham_metadata(root, rows)


def write_ham_metadata(root: Path, rows: list[dict]) -> Path:
    """``root/ham10000/HAM10000_metadata.csv`` from ``rows``; returns ``root``."""
    with open(root / "ham10000" / "HAM10000_metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_fake_benchmark(data: Path, out: Path, version: str = "fake-v1") -> Path:
    """A frozen benchmark for the generated dataset, made the way frozen-v1 was: the held-out
    lesions of a split. Training keeps them out; the gate scores both models on them."""
    from training.audit import run_audit
    from training.benchmark import images_of_split, write_benchmark
    from training.splits import split_by_lesion

    audit = run_audit(data, None, progress=False)
    held_out = split_by_lesion(audit.records, audit.groups, seed=0, test_fraction=0.3)["test"]
    write_benchmark(out, version, images_of_split(audit.records, audit.groups, held_out), {"from": "generated data"})
    return out
