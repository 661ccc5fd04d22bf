"""Knowledge distillation: the mixed loss, the teacher's soft targets, what the card records."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mlcore.labels import CLASSES, HAM_TO_CLASSES, NUM_CLASSES, mask_from_classes
from training.config import TrainConfig
from training.model import set_loss


def _nll(logits, allowed):
    p = np.exp(logits) / np.exp(logits).sum()
    return -np.log(p[allowed].sum()), -np.log(p)


def test_distilled_loss_mixes_the_set_valued_loss_with_the_teachers_cross_entropy():
    logits = np.array([[1.0, 0.2, -0.5, 2.0, 0.3, 0.0, 1.2, 0.7, -1.0]], np.float32)
    mask = mask_from_classes(HAM_TO_CLASSES["bkl"])[None]
    soft = np.array([[0.05, 0.05, 0.1, 0.4, 0.1, 0.1, 0.1, 0.05, 0.05]], np.float32)
    set_nll, neg_log_p = _nll(logits[0], [CLASSES.index(c) for c in HAM_TO_CLASSES["bkl"]])
    got = float(set_loss(0.0, 0.3)(tf.constant(np.concatenate([mask, soft], 1)), tf.constant(logits))[0])
    assert got == pytest.approx(0.7 * set_nll + 0.3 * float(soft[0] @ neg_log_p), rel=1e-5)


def test_with_weight_one_the_teacher_alone_pulls_and_its_own_distribution_is_the_minimum():
    soft = np.array([[0.05, 0.05, 0.1, 0.4, 0.1, 0.1, 0.1, 0.05, 0.05]], np.float32)
    mask = mask_from_classes({"nevus"})[None]
    logits = tf.Variable(np.log(soft))
    with tf.GradientTape() as tape:
        loss = set_loss(0.0, 1.0)(tf.constant(np.concatenate([mask, soft], 1)), logits)
    assert np.abs(tape.gradient(loss, logits).numpy()).max() < 1e-6


@pytest.mark.parametrize("kwargs,message", [({"distill_tta": "flip3"}, "distill_tta"),
                                            ({"distill_weight": 0.0}, "distill_weight"),
                                            ({"distill_weight": 1.5}, "distill_weight")])
def test_bad_distillation_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_a_distilled_run_learns_from_the_teachers_views_and_its_card_names_the_teacher(tiny_model_dir, tmp_path):
    from mlcore.artifact import read_card
    from mlcore.keras_model import predict_logits
    from mlcore.model_store import load_model
    from mlcore.scoring import softmax_with_temperature
    from training.distill import teacher_probabilities
    from training.testing import make_tiny_model_dir, synthetic_images

    teacher = load_model(tiny_model_dir)
    x, _, _ = synthetic_images(8, seed=5)
    probs, record = teacher_probabilities(tiny_model_dir, x, tta="flip2")
    expected = softmax_with_temperature(predict_logits(teacher.keras_model, x, tta="flip2"), 1.0)
    assert np.allclose(probs, expected, atol=1e-6) and probs.shape == (8, NUM_CLASSES)
    assert record == {"version": teacher.version, "sha256": teacher.sha256, "tta": "flip2"}
    with pytest.raises(ValueError, match="px"):
        teacher_probabilities(tiny_model_dir, np.zeros((2, teacher.input_size + 8, teacher.input_size + 8, 3),
                                                       np.uint8), tta="none")

    student = make_tiny_model_dir(tmp_path / "student", seed=1, distill_from=str(tiny_model_dir),
                                  distill_tta="flip2", distill_weight=0.5)
    card = read_card(student)
    assert card["training"]["distilled_from"] == record | {"weight": 0.5}
    assert card["training"]["config"]["distill_from"] == str(tiny_model_dir)
    assert f"distilled from `{teacher.version}`" in (student / "model_card.md").read_text()
    assert json.loads((student / "model_card.json").read_text())["version"] != teacher.version
