"""Parity of the fast inference runners (mlcore.runners) with the Keras reference model."""
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlcore.keras_model import TTA_MODES
from mlcore.scoring import softmax_with_temperature

SHIPPED = Path(__file__).resolve().parents[2] / "classifier" / "shipped_model"


def _probs(logits, t):
    return softmax_with_temperature(logits, t)


def _check(model_dir, n, engines, inference_options):
    from mlcore.runners import build_runner
    from mlcore.model_store import load_model
    from mlcore.keras_model import predict_logits

    m = load_model(model_dir)
    s = m.input_size
    x = np.random.default_rng(0).integers(0, 256, (n, s, s, 3)).astype(np.float32)
    for tta in TTA_MODES:
        ref = _probs(predict_logits(m.keras_model, x, tta=tta), m.temperature)
        for engine, prec, tol in engines:
            r = build_runner(m.keras_model, s, sha256=m.sha256, engine=engine, precision=prec)
            assert r.engine == engine and r.precision == prec, (r.engine, r.precision)
            got = _probs(r.logits(x, tta=tta), m.temperature)
            err = float(np.abs(got - ref).max())
            assert err <= tol, (engine, prec, tta, err)
    # the public path uses the runner, with TTA folded into the batch (switched after loading, as
    # bench/inference.py does: SECONDLOOK_TTA other than the card's mode is refused at load)
    m2 = load_model(model_dir)
    inference_options(tta="dihedral8")
    assert m2.tta == "dihedral8"
    np.testing.assert_allclose(m2.predict_logits(x), m2.predict_logits_reference(x), atol=1e-4)


FAST_ENGINES = [("tf", "fp32", 1e-4), ("tflite", "fp32", 1e-4), ("tf", "bf16", 1e-2)]


@pytest.mark.slow
def test_fast_paths_match_keras_on_tiny_model(tiny_model_dir, inference_options, tmp_path):
    inference_options(cache_dir=tmp_path / "model-cache")
    _check(tiny_model_dir, 5, FAST_ENGINES, inference_options)


@pytest.mark.slow
def test_fast_paths_match_keras_on_shipped_model(inference_options, tmp_path):
    inference_options(cache_dir=tmp_path / "model-cache")
    t = time.perf_counter()
    _check(SHIPPED, 3, FAST_ENGINES, inference_options)
    assert time.perf_counter() - t < 120


BF16_REAL_IMAGE_ATOL = 1e-2  # max |probability difference| bf16 vs the float32 Keras model


def _real_images(data_dir, n_per_source=32):
    """Real dermoscopic JPEGs: n from HAM10000 and n from the ISIC 9-class set (fixed sample)."""
    import random

    from mlcore.preprocess import decode_image

    rng = random.Random(0)
    files = []
    for pattern, root in (("*.jpg", data_dir / "ham10000" / "images"), ("**/*.jpg", data_dir / "isic-9class")):
        found = sorted(root.glob(pattern))
        assert len(found) >= n_per_source, (root, len(found))
        files += rng.sample(found, n_per_source)
    return [decode_image(f.read_bytes(), target_size=112) for f in files]


@pytest.mark.data
@pytest.mark.slow
def test_bf16_path_matches_keras_on_real_images(data_dir, inference_options, tmp_path):
    """Random pixels barely move the logits; real lesions are where bfloat16 rounding showed
    (0.08 with the whole model in bf16, ~0.005 with the float32 stem)."""
    from mlcore.runners import build_runner
    from mlcore.model_store import load_model
    from mlcore.preprocess import prepare_batch

    inference_options(cache_dir=tmp_path / "model-cache")
    m = load_model(SHIPPED)
    x = prepare_batch(_real_images(data_dir), m.input_size)
    assert len(x) == 64
    ref = _probs(m.predict_logits_reference(x), m.temperature)
    r = build_runner(m.keras_model, m.input_size, sha256=m.sha256, engine="tf", precision="bf16")
    assert (r.engine, r.precision) == ("tf", "bf16")
    got = _probs(r.logits(x, tta=m.tta), m.temperature)
    err = float(np.abs(got - ref).max())
    assert err <= BF16_REAL_IMAGE_ATOL, err


def test_tta_setting_overrides_card(tiny_model_dir, inference_options):
    from mlcore.model_store import load_model

    m = load_model(tiny_model_dir)
    inference_options(tta="none")
    assert m.tta == "none"
    with pytest.raises(ValueError, match="SECONDLOOK_TTA"):
        inference_options(tta="bogus")


def test_reduced_jpeg_decode_is_exact_for_small_images_and_close_for_large():
    from mlcore.preprocess import decode_image, prepare_batch

    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.save(buf, "JPEG")
    data = buf.getvalue()
    assert np.array_equal(decode_image(data, target_size=112), decode_image(data))
    big = small.resize((2000, 1500), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    full = prepare_batch([decode_image(buf.getvalue())], 112)
    red = prepare_batch([decode_image(buf.getvalue(), target_size=112)], 112)
    assert decode_image(buf.getvalue(), target_size=112).shape[1] >= 448
    assert np.abs(full - red).mean() < 1.0


@pytest.mark.parametrize("stem_stride,stem", [(2, {"stem_conv"}), (4, {"stem0_conv", "stem_conv"})])
def test_bf16_clone_keeps_the_whole_stem_in_float32(stem_stride, stem):
    from mlcore.runners import _fp32_stem
    from training.model import build_model

    kept = _fp32_stem(build_model(32, width=8, stages=(1, 1), stem_stride=stem_stride).get_config())
    assert stem | {"rescale", "stem_relu"} <= kept
    assert not any(name.startswith("s0b0") for name in kept)


def test_bf16_clone_of_the_model_with_its_domain_features_keeps_their_float32_casts():
    """The out-of-domain feature groups are cast to float32 inside the graph; the bfloat16 clone
    must leave those casts alone (a policy name is not a dtype) and still agree with float32."""
    from mlcore.ood import with_features
    from mlcore.runners import _bf16_clone, _fp32_stem
    from training.config import TrainConfig

    model = with_features(TrainConfig(backbone="mobilenet_v2", image_size=64, mixed_precision="fp32").build_model())
    config = model.get_config()
    assert any(layer["class_name"] == "Cast" for layer in config["layers"])
    kept = _fp32_stem(config)
    assert {"Conv1", "expanded_conv_project_BN", "block_11_add"} <= kept and not kept & {"block_12_expand", "logits"}
    clone = _bf16_clone(model)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    got = np.asarray(clone(x, training=False))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=0.5)


@pytest.mark.slow
def test_a_tampered_converted_model_is_converted_again_not_served(tiny_model_dir, inference_options, tmp_path):
    from mlcore.model_store import load_model
    from mlcore.runners import build_runner

    cache = tmp_path / "model-cache"
    inference_options(cache_dir=cache)
    m = load_model(tiny_model_dir)
    x = np.random.default_rng(0).uniform(0, 255, (2, m.input_size, m.input_size, 3)).astype(np.float32)
    build_runner(m.keras_model, m.input_size, sha256=m.sha256, engine="tflite", precision="fp32")
    [converted] = cache.glob("*.tflite")
    good = converted.read_bytes()
    converted.write_bytes(good[:-64] + b"\0" * 64)  # replaced behind the app's back
    runner = build_runner(m.keras_model, m.input_size, sha256=m.sha256, engine="tflite", precision="fp32")
    assert converted.read_bytes() == good
    np.testing.assert_allclose(runner(x), m.predict_logits_reference(x), atol=1e-3)
