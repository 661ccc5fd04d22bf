"""Knowledge distillation and training with a fixed clinical offset in the loss: the loss, the targets,
what the card records."""
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


def test_an_offset_in_the_loss_is_added_to_the_logits_before_the_loss_and_after_a_teachers_targets():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32)
    offset = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32)
    soft = rng.dirichlet(np.ones(NUM_CLASSES), size=4).astype(np.float32)
    mask = np.stack([mask_from_classes(HAM_TO_CLASSES[c]) for c in ("bkl", "mel", "nv", "akiec")])
    plain = set_loss(0.05)(tf.constant(mask), tf.constant(logits + offset)).numpy()
    got = set_loss(0.05, offset=True)(tf.constant(np.concatenate([mask, offset], 1)), tf.constant(logits)).numpy()
    assert np.allclose(got, plain, atol=1e-5)
    both = set_loss(0.0, 0.5, offset=True)(tf.constant(np.concatenate([mask, soft, offset], 1)), tf.constant(logits))
    ref = set_loss(0.0, 0.5)(tf.constant(np.concatenate([mask, soft], 1)), tf.constant(logits + offset))
    assert np.allclose(both.numpy(), ref.numpy(), atol=1e-5)


def test_a_run_trained_with_an_artifacts_offset_records_it_and_refuses_an_artifact_without_one(
        tiny_model_dir, tmp_path):
    import shutil

    from mlcore.artifact import read_card
    from mlcore.clinical import ClinicalAdjustment, ClinicalContext
    from training.artifact import save_card
    from training.testing import make_tiny_model_dir
    from training.train import offset_in_loss

    card = read_card(tiny_model_dir)
    contexts = [ClinicalContext(age=80, sex="male", site="back"), ClinicalContext()]
    offset, record = offset_in_loss(tiny_model_dir, contexts, 2)
    expected = ClinicalAdjustment.from_dict(card["clinical_context"]).apply(np.zeros((2, NUM_CLASSES)), contexts)
    assert np.allclose(offset, expected) and not offset[1].any() and offset[0].any()
    assert record == {"version": card["version"], "images_with_context": 1}
    with pytest.raises(ValueError, match="2 clinical contexts for 3"):
        offset_in_loss(tiny_model_dir, contexts, 3)

    student = make_tiny_model_dir(tmp_path / "student", seed=2, offset_in_loss_from=str(tiny_model_dir))
    trained = read_card(student)["training"]["offset_in_loss"]
    assert trained["version"] == card["version"] and 0 < trained["images_with_context"] < 270
    assert f"clinical offset of `{card['version']}`" in (student / "model_card.md").read_text()

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    save_card(bare, read_card(bare) | {"clinical_context": None})
    with pytest.raises(ValueError, match="no clinical-context offset"):
        offset_in_loss(bare, contexts, 2)
