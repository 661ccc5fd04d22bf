"""Grad-CAM (mlcore.explain) caches its compiled gradient function per LoadedModel."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from mlcore.model_store import load_model

    return load_model(tiny_model_dir)


def _uncached_gradcam(model, image, class_name):
    """The former implementation: a new Keras model and an eager tape on every call."""
    import keras
    import tensorflow as tf
    from PIL import Image

    from mlcore.imageio import as_rgb_array
    from mlcore.preprocess import prepare_batch

    img = as_rgb_array(image)
    idx = model.classes.index(class_name)
    km = model.keras_model
    grad_model = keras.Model(km.inputs, [km.get_layer(model.last_conv_layer).output, km.output])
    x = tf.convert_to_tensor(prepare_batch([img], model.input_size))
    with tf.GradientTape() as tape:
        conv, logits = grad_model(x, training=False)
        tape.watch(conv)
        score = tf.cast(logits, tf.float32)[:, idx]
    grads = tape.gradient(score, conv)
    conv, grads = np.asarray(conv, np.float32)[0], np.asarray(grads, np.float32)[0]
    cam = np.maximum((conv * grads.mean(axis=(0, 1))).sum(-1), 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    h, wd = img.shape[:2]
    cam_img = Image.fromarray((cam * 255).astype(np.uint8)).resize((wd, h), Image.BILINEAR)
    return np.asarray(cam_img, np.float32) / 255.0


def test_cached_gradcam_matches_uncached_and_builds_once(tiny):
    from mlcore.explain import gradcam

    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    for img in imgs:
        for cls in ("melanoma", "nevus", tiny.classes[0]):
            np.testing.assert_allclose(gradcam(tiny, img, cls), _uncached_gradcam(tiny, img, cls), atol=1e-5)
    assert len(tiny._gradcam_fns) == 1
    fn = next(iter(tiny._gradcam_fns.values()))
    gradcam(tiny, imgs[0], "melanoma")
    assert next(iter(tiny._gradcam_fns.values())) is fn
    # one trace for all classes and calls (the class index is a tensor argument)
    assert fn.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError):
        gradcam(tiny, imgs[0], "not a class")
