"""Running a saved Keras model of this project: loading it (custom layers registered), the test-time
augmentation views, reference batched prediction and the ensemble's members (TensorFlow is
imported inside the functions so that importing this module stays cheap)."""
from __future__ import annotations

import numpy as np

TTA_MODES = ("none", "flip2", "flip4", "dihedral8")
# views per image, the first ones of dihedral_views: flip2 = the image and its mirror image (left to
# right), flip4 = the image and its three flips (no transposes), half of dihedral8's cost
TTA_VIEWS = {"none": 1, "flip2": 2, "flip4": 4, "dihedral8": 8}
# the name prefix of an ensemble's member sub-models (training.ensemble builds them)
MEMBER_PREFIX = "member_"


def load_keras_model(path):
    """Load a saved Keras model of this project (its custom layers registered first), uncompiled."""
    import keras

    from mlcore.colour import layer_class

    layer_class()
    return keras.models.load_model(path, compile=False)


def dihedral_views(x: np.ndarray, count: int = 8) -> list[np.ndarray]:
    """The first ``count`` of the 8 flips/rotations of a (N, H, W, C) square batch: the image, its
    horizontal, vertical and double flip, then the same of its transpose."""
    views = []
    for t in (x, np.swapaxes(x, 1, 2)):
        views += [t, t[:, :, ::-1], t[:, ::-1], t[:, ::-1, ::-1]]
    return views[:count]


def predict_logits(model, images: np.ndarray, batch_size: int = 128, tta: str = "none") -> np.ndarray:
    """float32 logits; tta 'flip2' / 'flip4' / 'dihedral8' averages the logits over the first 2 / 4 / 8
    dihedral views."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown tta mode {tta!r}")
    out = []
    for i in range(0, len(images), batch_size):
        xb = np.asarray(images[i:i + batch_size], dtype=np.float32)
        if TTA_VIEWS[tta] > 1:
            views = [np.ascontiguousarray(v) for v in dihedral_views(xb, TTA_VIEWS[tta])]
            out.append(np.mean([np.asarray(model(v, training=False), np.float32) for v in views], axis=0))
        else:
            out.append(np.asarray(model(xb, training=False), dtype=np.float32))
    if not out:
        return np.zeros((0, 9), np.float32)
    return np.concatenate(out).astype(np.float32)


def conv_members(keras_model, layer_name: str) -> list:
    """[(model, its layer ``layer_name``)]: the model itself when it has that layer, else each
    ensemble member (in order), whose logits the ensemble averages."""
    def layer_of(model):
        try:
            return model.get_layer(layer_name)
        except ValueError:
            return None

    if layer_of(keras_model) is not None:
        return [(keras_model, layer_of(keras_model))]
    found = [(m, layer_of(m)) for m in keras_model.layers
             if m.name.startswith(MEMBER_PREFIX) and hasattr(m, "get_layer") and layer_of(m) is not None]
    if not found:
        raise ValueError(f"no layer {layer_name!r} in the model or its ensemble members")
    return found
