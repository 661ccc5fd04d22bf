"""Grad-CAM heatmaps on the layer named in the card (default 'last_conv')."""
from __future__ import annotations

import io

import cv2
import numpy as np

from .framing import crop_box
from .imageio import as_rgb_array
from .preprocess import prepare_batch

CROP_OUTLINE = (255, 255, 255)  # the frame of a lesion-cropping model's input on the overlay


def _gradcam_fn(model):
    """The compiled (conv activations, d score / d conv) function for ``model``, built once per
    LoadedModel and Keras model and cached on the model object (built under the model's lock).

    Both are lists with one entry per CNN: one for a single model, one per member for an
    ensemble (training.ensemble), whose score is the mean of its members' logits."""
    key = (id(model.keras_model), model.last_conv_layer, model.input_size)
    cache = model.__dict__.setdefault("_gradcam_fns", {})
    fn = cache.get(key)
    if fn is not None:
        return fn
    with model._lock:
        fn = cache.get(key)
        if fn is None:
            import keras
            import tensorflow as tf

            from mlcore.keras_model import conv_members

            grad_models = [keras.Model(m.inputs, [layer.output, m.output])
                           for m, layer in conv_members(model.keras_model, model.last_conv_layer)]
            s = model.input_size

            @tf.function(input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32),
                                          tf.TensorSpec([], tf.int32)])
            def fn(x, idx):
                convs, scores = [], []
                with tf.GradientTape() as tape:
                    for gm in grad_models:
                        conv, logits = gm(x, training=False)
                        tape.watch(conv)
                        convs.append(conv)
                        scores.append(tf.gather(tf.cast(logits, tf.float32), idx, axis=1))
                    score = tf.add_n(scores) / len(scores)
                grads = tape.gradient(score, convs)
                return convs, grads

            fn._grad_models = grad_models  # keep the functional models alive with the function
            cache.clear()  # one Keras model per LoadedModel: drop functions of a replaced one
            cache[key] = fn
    return fn


def gradcam(model, image: np.ndarray, class_name: str = "melanoma") -> np.ndarray:
    """Heatmap (H x W float32 in 0..1, at the image's own size) of evidence for `class_name`.

    For an ensemble the channels of every member's last conv layer count together (the class
    score is the mean of the members' logits), so the map shows the evidence of the whole model."""
    return _gradcam_in_box(model, as_rgb_array(image), class_name)[0]


def _gradcam_in_box(model, img: np.ndarray, class_name: str):
    """(heatmap at the image's size, the (x0, y0, x1, y1) part of the image the model saw)."""
    import tensorflow as tf
    from PIL import Image

    if class_name not in model.classes:
        raise ValueError(f"unknown class {class_name!r}")
    idx = model.classes.index(class_name)
    fn = _gradcam_fn(model)
    h, wd = img.shape[:2]
    # the lesion is located once; cropping here is exactly what the model's framing does
    x0, y0, x1, y1 = crop_box(img, model.framing)
    x = tf.convert_to_tensor(prepare_batch([img[y0:y1, x0:x1]], model.input_size))
    with model._lock:
        convs, grads = fn(x, tf.constant(idx, tf.int32))
    cam = None
    for conv, grad in zip(convs, grads):
        conv = np.asarray(conv, np.float32)[0]
        w = np.asarray(grad, np.float32)[0].mean(axis=(0, 1))
        part = (conv * w).sum(-1)
        cam = part if cam is None else cam + part
    cam = np.maximum(cam, 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    # the map covers what the model saw: the lesion crop when the model frames one (mlcore.framing)
    cam_img = Image.fromarray((cam * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    full = np.zeros((h, wd), np.float32)
    full[y0:y1, x0:x1] = np.asarray(cam_img, np.float32) / 255.0
    return full, (x0, y0, x1, y1)


def _colormap(h: np.ndarray) -> np.ndarray:
    """Simple jet-like colormap without matplotlib: 0..1 -> RGB uint8."""
    r = np.clip(1.5 - np.abs(4 * h - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * h - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * h - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def gradcam_overlay_png(model, image: np.ndarray, class_name: str = "melanoma", alpha: float = 0.45,
                        fmt: str = "PNG", max_size: int = 1024) -> bytes:
    """Heatmap blended on the image, encoded as PNG (or JPEG with fmt='JPEG')."""
    from PIL import Image

    img = as_rgb_array(image)
    if max(img.shape[:2]) > max_size:
        s = max_size / max(img.shape[:2])
        img = np.asarray(Image.fromarray(img).resize((max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))),
                                                     Image.BILINEAR))
    heat, (x0, y0, x1, y1) = _gradcam_in_box(model, img, class_name)
    blend = (img.astype(np.float32) * (1 - alpha * heat[..., None]) +
             _colormap(heat).astype(np.float32) * alpha * heat[..., None])
    pixels = np.clip(blend, 0, 255).astype(np.uint8)
    if model.framing == "lesion":  # outline what the model looked at
        cv2.rectangle(pixels, (x0, y0), (x1 - 1, y1 - 1), CROP_OUTLINE, max(1, round(max(img.shape[:2]) / 300)))
    out = Image.fromarray(pixels)
    buf = io.BytesIO()
    out.save(buf, format=fmt)
    return buf.getvalue()
