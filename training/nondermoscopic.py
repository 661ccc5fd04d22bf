"""A reproducible set of clearly non-dermoscopic images, built from images that packages ship
(scikit-image, scikit-learn and Matplotlib sample data) plus rendered ones (text pages, charts,
flat colours, gradients, noise). It measures how often the out-of-domain detector and the quality
checks catch images that are not dermoscopy at all. Nothing is downloaded. No Django here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SKIMAGE_NAMES = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "page", "text",
    "moon", "horse", "coins", "brick", "grass", "gravel", "clock", "checkerboard", "logo",
    "colorwheel", "retina", "immunohistochemistry", "cell", "shepp_logan_phantom",
    "microaneurysms", "motorcycle_left:image", "stereo_motorcycle:0",
)


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def _skimage_images() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    out = []
    for spec in SKIMAGE_NAMES:
        name, _, index = spec.partition(":")
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = fn()
        except Exception:  # an image this scikit-image version would download: skip it
            continue
        if index and isinstance(img, tuple):
            img = img[int(index)]
        out.append((f"skimage-{name}", _rgb(img)))
    return out


def _other_package_images() -> list[tuple[str, np.ndarray]]:
    out = []
    from sklearn.datasets import load_sample_images

    ds = load_sample_images()
    for name, img in zip(ds.filenames, ds.images):
        out.append((f"sklearn-{Path(name).stem}", _rgb(img)))
    import matplotlib

    from mlcore.imageio import decode_file

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for fname in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        p = sample / fname
        if p.is_file():
            # the app's decode (alpha composited on white, EXIF and ICC applied): PIL's convert("RGB")
            # drops the alpha and shows whatever lies under transparent pixels (the logos are RGBA)
            out.append((f"matplotlib-{p.stem}", decode_file(p)))
    return out


def _rendered_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i, (bg, fg) in enumerate([((255, 255, 255), (0, 0, 0)), ((250, 245, 230), (30, 30, 90)),
                                  ((20, 20, 20), (230, 230, 230))]):
        im = Image.new("RGB", (400, 300), bg)
        d = ImageDraw.Draw(im)
        for line in range(14):
            d.text((12, 8 + line * 20), f"Referral letter {i}.{line}: patient seen for follow-up, "
                   "dermoscopy requested", fill=fg)
        out.append((f"rendered-text-{i}", np.asarray(im)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for i, kind in enumerate(("line", "bar", "scatter")):
        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        x = np.arange(20)
        if kind == "line":
            ax.plot(x, np.cumsum(rng.normal(size=20)))
        elif kind == "bar":
            ax.bar(x, rng.uniform(1, 5, 20))
        else:
            ax.scatter(rng.normal(size=50), rng.normal(size=50))
        ax.set_title(f"chart {kind}")
        fig.canvas.draw()
        out.append((f"rendered-chart-{kind}", np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
        plt.close(fig)
    for name, colour in [("white", (255, 255, 255)), ("black", (0, 0, 0)), ("grey", (128, 128, 128)),
                         ("red", (220, 30, 30)), ("green", (30, 160, 60)), ("blue", (40, 60, 200)),
                         ("skin-tone", (224, 172, 140)), ("brown", (120, 80, 50))]:
        out.append((f"flat-{name}", np.full((224, 224, 3), colour, np.uint8)))
    g = np.linspace(0, 255, 224, dtype=np.float64)
    out.append(("gradient-horizontal", _rgb(np.repeat(g[None, :], 224, 0))))
    out.append(("gradient-colour", np.stack([np.repeat(g[None, :], 224, 0), np.repeat(g[:, None], 224, 1),
                                             np.full((224, 224), 128.0)], axis=2).astype(np.uint8)))
    out.append(("noise-uniform-rgb", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    out.append(("noise-gaussian-grey", _rgb(np.clip(rng.normal(128, 50, (224, 224)), 0, 255))))
    out.append(("noise-salt-pepper", _rgb((rng.uniform(size=(224, 224)) > 0.5).astype(np.uint8) * 255)))
    out.append(("noise-coloured-blobs", _rgb(np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((28, 28, 1))))))
    return out


def build(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) pairs; the same list every time for a given package set."""
    return _skimage_images() + _other_package_images() + _rendered_images(seed)
