import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training.labels import CLASSES, HAM_TO_CLASSES, mask_from_classes
from training.model import LAST_CONV, augment_batch, build_model, set_loss


def test_ambiguous_label_loss_matches_formula():
    logits = np.array([[1.0, 0.2, -0.5, 2.0, 0.3, 0.0, 1.2, 0.7, -1.0]], np.float32)
    p = np.exp(logits) / np.exp(logits).sum()
    m = mask_from_classes(HAM_TO_CLASSES["bkl"])[None]
    got = float(set_loss(0.0)(tf.constant(m), tf.constant(logits))[0])
    allowed = [CLASSES.index(c) for c in HAM_TO_CLASSES["bkl"]]
    assert got == pytest.approx(-np.log(p[0, allowed].sum()), rel=1e-5)
    # single label = ordinary cross-entropy
    m1 = mask_from_classes({"melanoma"})[None]
    got1 = float(set_loss(0.0)(tf.constant(m1), tf.constant(logits))[0])
    assert got1 == pytest.approx(-np.log(p[0, 3]), rel=1e-5)


def test_loss_gradient_does_not_prefer_one_allowed_class():
    logits = tf.Variable(np.zeros((1, 9), np.float32))
    m = tf.constant(mask_from_classes(HAM_TO_CLASSES["akiec"])[None])
    with tf.GradientTape() as tape:
        loss = set_loss(0.0)(m, logits)
    g = tape.gradient(loss, logits).numpy()[0]
    a, s = CLASSES.index("actinic keratosis"), CLASSES.index("squamous cell carcinoma")
    assert g[a] == pytest.approx(g[s]) and g[a] < 0


def test_model_shapes_and_last_conv():
    m = build_model(32, width=8, stages=(1, 1))
    out = m(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 9)
    assert m.get_layer(LAST_CONV) is not None
    assert m.output.dtype == "float32"


@pytest.mark.parametrize("size", [32, 36])  # 36: odd feature-map sizes after striding
def test_stride4_stem_halves_the_feature_maps(size):
    m2 = build_model(size, width=8, stages=(1, 1))
    m4 = build_model(size, width=8, stages=(1, 1), stem_stride=4)
    assert m4(np.zeros((2, size, size, 3), np.float32)).shape == (2, 9)
    s2 = m2.get_layer(LAST_CONV).output.shape[1]
    s4 = m4.get_layer(LAST_CONV).output.shape[1]
    assert s4 == -(-s2 // 2)


def test_unknown_stem_stride_is_refused():
    with pytest.raises(ValueError, match="stem_stride"):
        build_model(32, width=8, stages=(1, 1), stem_stride=3)


def test_augmentation_keeps_shape_and_range():
    x = tf.constant(np.random.default_rng(0).integers(0, 255, (4, 24, 24, 3)).astype(np.float32))
    y = augment_batch(x, tf.random.Generator.from_seed(1))
    assert y.shape == x.shape
    assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255


def test_weight_average_of_the_schedule_tail_is_kept_only_if_better_on_validation():
    from dataclasses import replace

    from training.testing import synthetic_images, tiny_config
    from training.train import fit_model

    cfg = replace(tiny_config(seed=3), epochs=3, average_tail=1.0)  # 1.0: every epoch joins the average
    x_tr, m_tr, _ = synthetic_images(96, seed=3)
    x_va, m_va, _ = synthetic_images(48, seed=4)
    model, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0)
    avg = history["weight_average"]
    assert avg["epochs"] == len(history["loss"]) == 3
    assert isinstance(avg["used"], bool)
    best_score = max(np.mean([a, b, c]) for a, b, c in zip(
        history["val_melanoma_auc"], history["val_malignancy_auc"], history["val_balanced_accuracy_7"]))
    assert avg["used"] == (np.mean([avg["val_melanoma_auc"], avg["val_malignancy_auc"],
                                    avg["val_balanced_accuracy_7"]]) > best_score)
    assert model.output.shape[-1] == 9
