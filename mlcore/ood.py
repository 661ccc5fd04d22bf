"""Out-of-domain detection on the model's own features (no Django).

The CNN's penultimate layer (global average pooling, ``gap``) describes what it sees, and three
block outputs below it (each channel's spatial mean and standard deviation) describe colour and
texture. For each of these feature groups we
fit, on the training split, one Gaussian per HAM code with a shared, Ledoit-Wolf-shrunk covariance
(Lee et al., 2018, "A simple unified framework for detecting out-of-distribution samples", which
also combines layers); a group's distance is the smallest squared Mahalanobis distance to a class
mean, divided by its validation median, and an image's out-of-domain score is the largest over the
groups. The threshold is the validation quantile that lets ``OOD_PASS_TARGET`` (95 %) of in-domain
validation images pass: a larger score marks the image as unfamiliar.

The scoring model (``with_features``) outputs the logits and the features as one tensor, so the
fast runners (LiteRT, tf.function) evaluate both in the forward pass they already do. For an
ensemble (``training.ensemble``) the groups are every member's, one after the other: an image is
unfamiliar when any member finds it unusual at any depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_PASS_TARGET = 0.95
# the penultimate layer, and three block outputs below it (spatial mean and standard deviation per
# channel): early layers see colour and texture statistics (text, charts, flat colours), the last
# one the lesion classes
FEATURE_LAYER = "gap"
# (the residual CNN's names, then MobileNetV2's at the same depths: a model has one set)
INTERMEDIATE_LAYERS = ("s0b0_out", "s1b1_out", "s2b1_out", "block_2_add", "block_5_add", "block_12_add")
STATS_FILE = "ood.npz"


def has_feature_layer(keras_model) -> bool:
    """Whether the model, or each of an ensemble's members, has the penultimate layer the detector reads."""
    return bool(_feature_models(keras_model))


def _feature_models(keras_model) -> list:
    """The model itself when it has the feature layer, else each ensemble member that has it (in
    order); empty when there is none."""
    from mlcore.keras_model import conv_members

    try:
        return [m for m, _ in conv_members(keras_model, FEATURE_LAYER)]
    except ValueError:
        return []


def _layer_or_none(keras_model, name: str):
    try:
        return keras_model.get_layer(name)
    except ValueError:
        return None


def with_features(keras_model):
    """A Keras model computing ``concat([logits, pooled block outputs..., penultimate features])``
    from the same input (for each block output the model has, its channels' spatial mean and
    standard deviation). For an ensemble: the mean of its members' logits, then each member's
    feature groups in member order, so that every member's view of the image is checked."""
    import keras

    models = _feature_models(keras_model)
    if models == [keras_model]:
        return _single_with_features(keras_model)
    from mlcore.labels import NUM_CLASSES

    inp = keras.Input(keras_model.input_shape[1:], name="image")
    outs = [_single_with_features(m)(inp) for m in models]
    logits = keras.layers.Average(dtype="float32", name="logits_mean")([o[:, :NUM_CLASSES] for o in outs])
    out = keras.layers.Concatenate(axis=-1, dtype="float32", name="logits_and_features")(
        [logits, *[o[:, NUM_CLASSES:] for o in outs]])
    return keras.Model(inp, out, name=f"{keras_model.name}_with_features")


def _single_with_features(keras_model):
    import keras

    ops = keras.ops
    pooled = []
    for name in INTERMEDIATE_LAYERS:
        layer = _layer_or_none(keras_model, name)
        if layer is not None:
            # per channel the spatial mean and standard deviation: colour and texture statistics
            x = ops.cast(layer.output, "float32")
            mean = ops.mean(x, axis=(1, 2))
            std = ops.sqrt(ops.maximum(ops.mean(ops.square(x), axis=(1, 2)) - ops.square(mean), 0.0) + 1e-6)
            pooled.append(ops.concatenate([mean, std], axis=-1))
    feats = keras.ops.cast(keras_model.get_layer(FEATURE_LAYER).output, "float32")
    out = keras.layers.Concatenate(axis=-1, dtype="float32", name="logits_and_features")(
        [keras.ops.cast(keras_model.output, "float32"), *pooled, feats])
    return keras.Model(keras_model.input, out, name=f"{keras_model.name}_with_features")


def feature_widths(keras_model) -> list[int]:
    """The widths of the feature groups ``with_features`` appends after the logits, in order (an
    ensemble: each member's groups, member after member)."""
    widths = []
    for m in _feature_models(keras_model):
        widths += [2 * int(layer.output.shape[-1]) for name in INTERMEDIATE_LAYERS
                   if (layer := _layer_or_none(m, name)) is not None]
        widths.append(int(m.get_layer(FEATURE_LAYER).output.shape[-1]))
    return widths


@dataclass
class _Part:
    """One feature group: class means, whitening (``W.T @ W`` = inverse shared covariance) and the
    validation median of its distances (so that the groups are comparable)."""

    start: int
    stop: int
    means: np.ndarray
    whiten: np.ndarray
    scale: float = 1.0

    def __post_init__(self) -> None:
        self.whiten = np.asarray(self.whiten, np.float32)
        self._white_means = np.asarray(self.means, np.float32) @ self.whiten.T  # once, not per image

    def distances(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features[:, self.start:self.stop], np.float32) @ self.whiten.T
        return ((z[:, None, :] - self._white_means[None, :, :]) ** 2).sum(-1).min(axis=1)


class MahalanobisDetector:
    """Per feature group, the smallest squared Mahalanobis distance to a class mean, divided by
    its validation median; the score is the largest of these (unusual at any depth)."""

    def __init__(self, parts: list[_Part], threshold: float = float("inf")):
        self.parts = parts
        self.threshold = float(threshold)

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float32)
        return np.max([p.distances(features) / p.scale for p in self.parts], axis=0)

    def unfamiliar(self, features: np.ndarray) -> np.ndarray:
        """Score above the threshold; a NaN score (``nan > t`` is False) is never called familiar.
        (The app itself fails such an image: mlcore.inference.non_finite_outputs.)"""
        return ~(self.score(features) <= self.threshold)

    def save(self, path: Path) -> None:
        arrays = {"threshold": np.float64(self.threshold), "n_parts": np.int64(len(self.parts))}
        for i, p in enumerate(self.parts):
            arrays.update({f"means_{i}": p.means.astype(np.float32), f"whiten_{i}": p.whiten.astype(np.float32),
                           f"span_{i}": np.array([p.start, p.stop], np.int64), f"scale_{i}": np.float64(p.scale)})
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "MahalanobisDetector":
        with np.load(path) as z:
            parts = [_Part(int(z[f"span_{i}"][0]), int(z[f"span_{i}"][1]), z[f"means_{i}"], z[f"whiten_{i}"],
                           float(z[f"scale_{i}"])) for i in range(int(z["n_parts"]))]
            threshold = float(z["threshold"])
        # every comparison with a NaN threshold is False: every image would pass as familiar
        if np.isnan(threshold) or not all(np.isfinite(p.scale) and p.scale > 0 for p in parts):
            raise ValueError(f"{path}: the out-of-domain threshold or a group's scale is not a positive number")
        return cls(parts, threshold=threshold)


def _fit_part(x: np.ndarray, labels: np.ndarray, start: int, stop: int) -> _Part:
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, np.float64)
    classes = sorted(set(labels.tolist()))
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = LedoitWolf().fit(centred).covariance_
    # whitening W with W.T @ W = cov^-1 (eigendecomposition: cov is symmetric positive definite)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-9)
    return _Part(start, stop, means.astype(np.float32), ((vecs / np.sqrt(vals)).T).astype(np.float32))


def fit(features: np.ndarray, labels, widths: list[int] | None = None,
        val_features: np.ndarray | None = None) -> MahalanobisDetector:
    """Fit one part per feature group (``widths``; default one group) on training-split features
    with their class labels; ``val_features`` sets each group's scale (its validation median)."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    widths = widths or [features.shape[1]]
    if sum(widths) != features.shape[1]:
        raise ValueError(f"feature widths {widths} do not add up to {features.shape[1]}")
    parts, start = [], 0
    for w in widths:
        parts.append(_fit_part(features[:, start:start + w], labels, start, start + w))
        start += w
    if val_features is not None:
        for p in parts:
            p.scale = float(np.median(p.distances(np.asarray(val_features, np.float32)))) or 1.0
    return MahalanobisDetector(parts)


def threshold_for(scores: np.ndarray, target: float = OOD_PASS_TARGET) -> float:
    """The score below which ``target`` of these (in-domain validation) images fall; raises
    ValueError on a NaN or infinite score (a NaN quantile would let every image pass)."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"cannot set an out-of-domain threshold from {scores.size} validation scores: "
                         f"{int((~np.isfinite(scores)).sum())} are NaN or infinite (or there are none)")
    # "higher": an observed score at or above the target rank, so at least ``target`` of them are
    # <= it (inference calls a score > threshold unfamiliar); linear interpolation lands between two
    # scores and lets slightly fewer pass
    return float(np.quantile(scores, target, method="higher"))
