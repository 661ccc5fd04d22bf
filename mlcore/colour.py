"""Colour constancy: Shades of Gray (Finlayson & Trezzi 2004), the first step inside the model.

Each dermatoscope lights the skin with its own illuminant; Shades of Gray estimates it per image as
the Minkowski p-norm of each channel and divides it out, so that an image from another device
reaches the CNN with a neutral cast. It is a layer of the Keras model (after the training
augmentation, before the rescaling), so training, validation, the app's inference, the LiteRT
conversion and Grad-CAM all run the very same operation; `shades_of_gray` is the NumPy reference
the parity test checks the layer against. No Django here.
"""
from __future__ import annotations

import functools

import numpy as np

MODES = ("none", "shades_of_gray")
DEFAULT_P = 6.0
_EPS = 1e-6


def shades_of_gray(rgb: np.ndarray, p: float = DEFAULT_P) -> np.ndarray:
    """RGB (H, W, 3) or (N, H, W, 3), 0..255 -> float32 0..255 with the illuminant divided out.

    The illuminant estimate e_c = mean(x_c ** p) ** (1/p) is scaled to unit length times sqrt(3),
    so a neutral (grey) illuminant leaves the image unchanged."""
    x = np.asarray(rgb, dtype=np.float32)
    batched = x.ndim == 4
    if not batched:
        x = x[None]
    xn = x / 255.0
    e = np.power(np.mean(np.power(xn + _EPS, p), axis=(1, 2), keepdims=True), 1.0 / p)
    e = e / (np.sqrt(np.sum(e * e, axis=-1, keepdims=True)) + _EPS) * np.sqrt(3.0)
    y = np.clip(x / (e + _EPS), 0.0, 255.0).astype(np.float32)
    return y if batched else y[0]


@functools.cache
def layer_class():
    """The Keras layer (registered for saving/loading as ``secondlook>ShadesOfGray``). Call this
    before loading a model that may contain it."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="secondlook")
    class ShadesOfGray(keras.layers.Layer):
        """Per-image Shades of Gray colour constancy, computed in float32."""

        def __init__(self, p: float = DEFAULT_P, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.p = float(p)

        def call(self, x):
            x = ops.cast(x, "float32")
            xn = x / 255.0
            e = ops.power(ops.mean(ops.power(xn + _EPS, self.p), axis=(1, 2), keepdims=True), 1.0 / self.p)
            e = e / (ops.sqrt(ops.sum(e * e, axis=-1, keepdims=True)) + _EPS) * float(np.sqrt(3.0))
            return ops.clip(x / (e + _EPS), 0.0, 255.0)

        def get_config(self):
            return {**super().get_config(), "p": self.p}

    return ShadesOfGray


def apply_layer(x, mode: str, p: float = DEFAULT_P):
    """Add the colour-constancy layer named by ``mode`` to a Keras tensor (``none``: unchanged)."""
    if mode not in MODES:
        raise ValueError(f"unknown colour constancy {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "none":
        return x
    return layer_class()(p=p, name="colour_constancy")(x)
