"""Ensembles (training.ensemble): one Keras model averaging several CNNs' logits, stored in float16,
loaded, scored, explained and run by the fast runners like a single model."""
import json
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains and converts several small models



@pytest.fixture(scope="module")
def member_dirs(tiny_model_dir, tmp_path_factory):
    from training.testing import make_tiny_model_dir

    return [tiny_model_dir, make_tiny_model_dir(tmp_path_factory.mktemp("tiny-member-1"), seed=1)]


@pytest.fixture(scope="module")
def ensemble_dir(member_dirs, tmp_path_factory):
    from training.testing import make_tiny_ensemble_dir

    return make_tiny_ensemble_dir(tmp_path_factory.mktemp("tiny-ensemble"), member_dirs, plots=True)


def _images(n, size=32, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_combined_logits_are_the_mean_of_the_members(member_dirs):
    from mlcore.model_store import load_model
    from mlcore.keras_model import conv_members
    from training.ensemble import COMBINE_LAYER, combine
    from mlcore.keras_model import predict_logits

    members = [load_model(d).keras_model for d in member_dirs]
    ens = combine(members)
    x = _images(6)
    want = np.mean([predict_logits(m, x) for m in members], axis=0)
    np.testing.assert_allclose(predict_logits(ens, x), want, atol=1e-5)
    assert ens.layers[-1].name == COMBINE_LAYER
    assert [m.name for m, _ in conv_members(ens, "last_conv")] == ["member_0", "member_1"]
    # a single model explains through its own layer
    assert conv_members(members[0], "last_conv")[0][0] is members[0]
    with pytest.raises(ValueError, match="no layer"):
        conv_members(ens, "no_such_layer")


def test_one_member_or_different_splits_are_refused(member_dirs, tmp_path):
    from mlcore.model_store import load_model
    from training.ensemble import EnsembleError, check_compatible, combine

    a, b = (load_model(d) for d in member_dirs)
    with pytest.raises(EnsembleError, match="at least two"):
        combine([a.keras_model])
    b.card = dict(b.card, split_ids={**b.card["split_ids"], "test": b.card["split_ids"]["test"][:-1]})
    with pytest.raises(EnsembleError, match="lesion split"):
        check_compatible([a, b])
    b = load_model(member_dirs[1])
    b.card = dict(b.card, framing="lesion")  # members must see the same crop of an image
    with pytest.raises(EnsembleError, match="framing"):
        check_compatible([a, b])


def _weight_bytes(path) -> int:
    """Bytes of the weight arrays inside a .keras archive."""
    import io

    import h5py

    from training.ensemble import WEIGHTS_ENTRY

    total = []
    with h5py.File(io.BytesIO(zipfile.ZipFile(path).read(WEIGHTS_ENTRY)), "r") as f:
        f.visititems(lambda _, obj: total.append(obj.nbytes) if isinstance(obj, h5py.Dataset) else None)
    return sum(total)


def test_half_precision_file_is_half_the_size_and_loads_exactly(member_dirs, tmp_path):
    from mlcore.model_store import load_model
    from training.ensemble import combine, round_to_half, save_half
    from mlcore.keras_model import load_keras_model

    ens = combine([load_model(d).keras_model for d in member_dirs])
    full, half = tmp_path / "full.keras", tmp_path / "half.keras"
    ens.save(full)
    round_to_half(ens)
    save_half(ens, half)
    sizes = [_weight_bytes(p) for p in (full, half)]
    assert sizes[1] == sizes[0] // 2, sizes  # every weight is float32 -> float16
    loaded = load_keras_model(half)
    assert all(w.dtype == np.float32 for w in loaded.get_weights())  # float32 in memory
    for got, want in zip(loaded.get_weights(), ens.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert not list(tmp_path.glob("*.full.keras"))  # the temporary full-precision file is gone


def test_ensemble_artifact_loads_predicts_and_records_its_members(ensemble_dir, member_dirs):
    from mlcore.model_store import load_model
    from mlcore.keras_model import predict_logits
    from mlcore.scoring import softmax_with_temperature
    from training.testing import synthetic_images

    m = load_model(ensemble_dir)
    card = json.loads((ensemble_dir / "model_card.json").read_text())
    assert card["name"].endswith("ensemble")
    assert [x["version"] for x in card["ensemble"]["members"]] == ["tiny-test-0", "tiny-test-1"]
    assert card["ensemble"]["weights_storage"] == "float16"
    assert card["training"]["train_minutes"] == pytest.approx(
        sum(x["train_minutes"] for x in card["ensemble"]["members"]))
    md = (ensemble_dir / "model_card.md").read_text()
    assert "## Training (ensemble)" in md and "member 1: `tiny-test-1`, seed 1" in md
    assert (ensemble_dir / "plots" / "training_curves.png").stat().st_size > 0
    x, _, _ = synthetic_images(12, seed=5)
    preds = m.predict(list(x))
    assert all(p.model_version == m.version for p in preds)
    # the scores are the calibrated softmax of the mean of the members' logits
    members = [load_model(d).keras_model for d in member_dirs]
    mean = np.mean([predict_logits(k, x.astype(np.float32)) for k in members], axis=0)
    want = softmax_with_temperature(mean, m.temperature)[:, m.classes.index("melanoma")]
    got = np.array([p.melanoma_probability for p in preds])
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16 weights: a small difference


def test_ensemble_gradcam_counts_every_members_evidence(ensemble_dir):
    import keras
    import tensorflow as tf

    from mlcore.explain import gradcam
    from mlcore.model_store import load_model
    from mlcore.preprocess import prepare_batch

    m = load_model(ensemble_dir)
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    heat = gradcam(m, img, "melanoma")
    assert heat.shape == (40, 50) and 0 <= heat.min() and heat.max() <= 1
    # reference: one tape over the whole ensemble, gradients of its own output wrt both last convs
    idx = m.classes.index("melanoma")
    km = m.keras_model
    outs = [km.get_layer(f"member_{i}").get_layer("last_conv").output for i in range(2)]
    probes = [keras.Model(km.get_layer(f"member_{i}").inputs, [outs[i], km.get_layer(f"member_{i}").output])
              for i in range(2)]
    x = tf.convert_to_tensor(prepare_batch([img], m.input_size))
    with tf.GradientTape() as tape:
        pairs = [p(x, training=False) for p in probes]
        for conv, _ in pairs:
            tape.watch(conv)
        score = tf.reduce_mean(tf.stack([lg[:, idx] for _, lg in pairs]), axis=0)
    np.testing.assert_allclose(score.numpy(), km(x, training=False).numpy()[:, idx], atol=1e-5)
    grads = tape.gradient(score, [c for c, _ in pairs])
    cam = sum((np.asarray(c)[0] * np.asarray(g)[0].mean(axis=(0, 1))).sum(-1) for (c, _), g in zip(pairs, grads))
    cam = np.maximum(cam, 0)
    from PIL import Image

    cam = cam / cam.max() if cam.max() > 0 else cam
    want = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((50, 40), Image.BILINEAR),
                      np.float32) / 255.0
    np.testing.assert_allclose(heat, want, atol=1e-5)


def test_fast_runners_match_keras_on_an_ensemble(ensemble_dir, inference_options, tmp_path):
    from mlcore.runners import build_runner
    from mlcore.model_store import load_model
    from mlcore.keras_model import predict_logits

    inference_options(cache_dir=tmp_path / "model-cache")
    m = load_model(ensemble_dir)
    x = _images(5)
    ref = predict_logits(m.keras_model, x)
    for engine, prec, tol in (("tf", "fp32", 1e-4), ("tflite", "fp32", 1e-4), ("tf", "bf16", 0.1)):
        r = build_runner(m.keras_model, m.input_size, sha256=m.sha256, engine=engine, precision=prec,
                         model_path=ensemble_dir / "model.keras", model_sha256=m.sha256)
        assert (r.engine, r.precision) == (engine, prec)
        assert float(np.abs(r.logits(x) - ref).max()) <= tol


def test_ensemble_cli_needs_two_members(tiny_model_dir, tmp_path, capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit):
        main(["ensemble", "--out", str(tmp_path / "e"), "--members", str(tiny_model_dir)])
    assert "at least two members" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ensemble", "--out", str(tmp_path / "e"), "--seeds", "1", "2", "--set", "no_such_key=1"])
    assert "unknown config key no_such_key" in capsys.readouterr().err


def test_split_seed_trains_another_seed_on_the_same_split():
    from training.config import TrainConfig

    assert TrainConfig().effective_split_seed == TrainConfig().seed
    cfg = TrainConfig(seed=2026, split_seed=1234)
    assert cfg.effective_split_seed == 1234
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_ensemble_gets_an_out_of_domain_detector_over_every_members_features(member_dirs, tmp_path,
                                                                               inference_options):
    from mlcore import ood
    from mlcore.keras_model import predict_logits
    from mlcore.model_store import load_model
    from training.testing import make_tiny_ensemble_dir

    members = [load_model(d).keras_model for d in member_dirs]
    ens_dir = make_tiny_ensemble_dir(tmp_path / "ens", member_dirs, assessed=True)
    m = load_model(ens_dir)
    assert ood.has_feature_layer(m.keras_model)
    widths = ood.feature_widths(m.keras_model)
    assert widths == ood.feature_widths(members[0]) + ood.feature_widths(members[1])
    x = _images(4)
    both = np.asarray(ood.with_features(m.keras_model)(x, training=False))
    # the logits are the ensemble's own, then each member's feature groups in order
    np.testing.assert_allclose(both[:, :9], predict_logits(m.keras_model, x), atol=1e-5)
    assert both.shape[1] == 9 + sum(widths)
    for i, k in enumerate(members):
        start = 9 + sum(ood.feature_widths(members[0])) * i
        own = np.asarray(ood.with_features(k)(x, training=False))[:, 9:]
        np.testing.assert_allclose(both[:, start:start + own.shape[1]], own, atol=2e-2)  # float16 weights
    detector = m.ood_detector
    assert detector is not None and len(detector.parts) == len(widths)
    inference_options(cache_dir=tmp_path / "model-cache")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    (pred,) = m.predict([noise])
    assert pred.assessment["ood"]["threshold"] == pytest.approx(detector.threshold, abs=1e-3)


@pytest.mark.parametrize("tta", [None, "none", "dihedral8"])
def test_build_ensemble_serves_the_views_it_is_given(member_dirs, tmp_path, monkeypatch, tta):
    """``--tta none`` lets two members cost what one network with flip2 costs; without it the
    first member's mode is kept."""
    import training.recalibrate
    from mlcore.model_store import load_model
    from training.ensemble import build_ensemble

    seen = {}

    def record(model, cfg, *args, **kwargs):
        seen["tta"] = cfg.tta
        return {}

    monkeypatch.setattr(training.recalibrate, "refit_and_export", record)
    build_ensemble(member_dirs, tmp_path / "ens", tmp_path, None, tta=tta)
    first = load_model(member_dirs[0]).card["training"]["config"]["tta"]
    assert seen["tta"] == (first if tta is None else tta)
