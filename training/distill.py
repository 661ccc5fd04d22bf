"""Soft targets for knowledge distillation: a teacher artifact's class probabilities on the
training images, which the student's loss mixes with the labels (``training.model.set_loss``).

A teacher served with more test-time views than the budget allows (v3.1 with ``dihedral8``) can
pass what those views add to a student served with fewer. The teacher's clinical offset and
temperature are left out: the student learns from images alone and gets its own offset after.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def teacher_probabilities(teacher_dir: Path, images: np.ndarray, *, tta: str,
                          batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """(N, classes) float32 softmax(logits) of the artifact at ``teacher_dir`` on ``images`` (the
    training batch's uint8 or float 0..255 pixels, at the teacher's input size) averaged over
    ``tta``'s views, and what a model card records of the teacher (version, model sha256, views)."""
    from mlcore.keras_model import predict_logits
    from mlcore.model_store import load_model
    from mlcore.scoring import softmax_with_temperature

    teacher = load_model(Path(teacher_dir))
    if images.shape[1] != teacher.input_size:
        raise ValueError(f"the teacher reads {teacher.input_size} px images, the training images are "
                         f"{images.shape[1]} px")
    logits = predict_logits(teacher.keras_model, images, batch_size=batch_size, tta=tta)
    record = {"version": teacher.version, "sha256": teacher.sha256, "tta": tta}
    return softmax_with_temperature(logits, 1.0).astype(np.float32), record
