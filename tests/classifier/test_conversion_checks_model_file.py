"""The LiteRT conversion subprocess reloads model.keras from disk: it must convert the file that was
verified at load (its sha256), never one swapped in since."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlcore.artifact import MODEL_FILE, sha256_file


def test_the_conversion_subprocess_refuses_a_file_of_another_sha256(tiny_model_dir, tmp_path):
    from mlcore.runners import _convert_main

    out = tmp_path / "converted.tflite"
    assert _convert_main([str(tiny_model_dir / MODEL_FILE), str(out), "--sha256", "0" * 64]) == 3
    assert not out.exists()


@pytest.mark.slow
def test_a_model_file_swapped_after_loading_is_not_converted(tiny_model_dir, inference_options, tmp_path, caplog):
    import keras

    from mlcore.model_store import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    inference_options(cache_dir=tmp_path / "model-cache", engine="tflite", precision="fp32")
    m = load_model(model_dir)
    x = np.random.default_rng(0).uniform(0, 255, (2, m.input_size, m.input_size, 3)).astype(np.float32)
    want = np.asarray(m.keras_model(x, training=False))

    # replaced behind the app's back, after the load verified it: same network, other weights
    other = keras.models.clone_model(m.keras_model)
    rng = np.random.default_rng(1)
    # kernels only: noise on batch-norm variances could make them negative (NaN logits)
    other.set_weights([w + rng.normal(0, 0.5, w.shape).astype(w.dtype) if w.ndim > 1 else w
                       for w in m.keras_model.get_weights()])
    other.save(model_dir / MODEL_FILE)
    assert sha256_file(model_dir / MODEL_FILE) != m.sha256
    assert np.abs(np.asarray(other(x, training=False)) - want).max() > 1e-2

    with caplog.at_level("WARNING", logger="mlcore.runners"):
        runner = m.runner()
    assert "does not match the loaded model" in caplog.text  # the subprocess refused the file
    # converted from the verified in-memory model: LiteRT kept (no self-check failure), same logits
    assert runner.engine == "tflite"
    np.testing.assert_allclose(runner(x), want, atol=1e-3)
