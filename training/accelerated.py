"""Train the network on an accelerator from a data pack, then finish the artifact here.

The accelerator machine lent to some sessions has JAX and no TensorFlow, no network, and takes a
working tree of at most 64 MiB. So the run is split in three steps, each a plain function:

1. `write_pack` (here): the very audit, lesion-level split and decoded images `training.train`
   uses (`prepare_data`), the training and validation images WebP-encoded at the training size,
   their label masks and sample weights, into one ``.npz``.
2. `fit_pack` (there, ``KERAS_BACKEND=jax``): the same Keras network, bundled ImageNet weights,
   loss, optimiser and cosine schedule as `training.train.fit_model`, the augmentation ported to
   NumPy/OpenCV (`augment_images`, run in threads), the best validation epoch kept (or the average
   of the annealed tail, when that scores better). Writes the weights and the history.
3. `finish` (here): rebuilds the split from the data (checked against the pack), loads the weights
   and hands the network to `training.train.train`, which calibrates, fits the clinical context,
   evaluates on the held-out split with lesion-level CIs, exports and fits the assessment, exactly
   as for a network trained on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .config import TrainConfig

# what a pack's images and split already fix (fit-pack may not override them)
PACK_FIXED = frozenset({"image_size", "framing", "seed", "split_seed", "val_fraction", "test_fraction",
                        "class_weight_power", "source_balance"})
# WebP at 90 keeps the pack of ~9,000 160-px images near 30 MB (JPEG at 94: 63 MB), inside the
# accelerator's 64 MiB working tree together with the repository
WEBP_QUALITY = 90


def _ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def write_pack(cfg: TrainConfig, data_root: Path, cache_dir: Path | None, out: Path, *,
               quality: int = WEBP_QUALITY) -> dict:
    """Write the training and validation images of ``cfg``'s split to ``out`` (see the module
    docstring); returns a summary (images, bytes, the split's digest)."""
    import cv2

    from .train import class_weights_for, prepare_data, source_balance_weights

    data = prepare_data(cfg, Path(data_root), cache_dir)
    n_tr = len(data.split["train"])
    n = n_tr + len(data.split["val"])
    blobs = []
    for img in data.images[:n]:
        ok, buf = cv2.imencode(".webp", img[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise ValueError("WebP encoding failed")
        blobs.append(buf.ravel())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    m_train = data.masks[:n_tr]
    weights = class_weights_for(m_train, cfg.class_weight_power)
    if cfg.source_balance > 0:
        weights = weights * source_balance_weights(m_train, [r.source for r in data.records[:n_tr]],
                                                   cfg.source_balance)
        weights = (weights / weights.mean()).astype(np.float32)
    ids = list(data.split["train"]) + list(data.split["val"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, encoded=np.concatenate(blobs), offsets=offsets, n_train=np.int64(n_tr),
             masks=data.masks[:n].astype(np.uint8), weights=weights,
             sources=np.array([r.source for r in data.records[:n]]),
             config=np.array(json.dumps(cfg.to_dict())), split_digest=np.array(_ids_digest(ids)))
    return {"train": n_tr, "val": n - n_tr, "bytes": out.stat().st_size, "split_digest": _ids_digest(ids)}


def read_pack(path: Path, threads: int = 8) -> dict:
    """The pack's arrays with its images decoded: x_train, m_train, w_train, x_val, m_val, config."""
    import cv2

    with np.load(path) as z:
        enc, off = z["encoded"], z["offsets"]
        n_tr = int(z["n_train"])
        masks = z["masks"].astype(np.float32)
        out = {"w_train": z["weights"], "config": json.loads(str(z["config"])),
               "split_digest": str(z["split_digest"]), "sources": z["sources"]}

    def decode(i: int) -> np.ndarray:
        return cv2.imdecode(enc[off[i]:off[i + 1]], cv2.IMREAD_COLOR)[..., ::-1]

    with ThreadPoolExecutor(threads) as ex:
        images = np.stack(list(ex.map(decode, range(len(off) - 1))))
    out.update(x_train=images[:n_tr], m_train=masks[:n_tr], x_val=images[n_tr:], m_val=masks[n_tr:])
    return out


def augment_images(images: np.ndarray, rng: np.random.Generator, cfg: TrainConfig,
                   hair_bank: np.ndarray | None = None) -> np.ndarray:
    """uint8 (B, H, W, 3) -> augmented float32 0..255: a NumPy/OpenCV port of
    `training.model.augment_batch` (same transforms, same ranges, same probabilities) for a
    machine without TensorFlow."""
    import cv2

    b, h, w = images.shape[:3]
    x = np.empty(images.shape, np.float32)
    zoom, zoom_out = cfg.aug_zoom, cfg.aug_zoom_out
    for i in range(b):
        img = images[i]
        if rng.random() < 0.5:
            img = img.transpose(1, 0, 2)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
        ang = rng.uniform(-math.pi, math.pi) if cfg.aug_rotate else 0.0
        scale = 1.0 - rng.uniform(0.0, zoom)
        if zoom_out > 0 and rng.random() < 0.3:
            scale = 1.0 + rng.uniform(0.0, zoom_out)
        shift = abs(1.0 - scale) * 0.5
        tx, ty = rng.uniform(-1, 1) * shift * w, rng.uniform(-1, 1) * shift * h
        c, s = math.cos(ang) * scale, math.sin(ang) * scale
        cx, cy = w / 2.0, h / 2.0
        # output pixel -> input pixel, as ImageProjectiveTransformV3 takes it
        m = np.array([[c, -s, cx - c * cx + s * cy + tx], [s, c, cy - s * cx - c * cy + ty]], np.float64)
        x[i] = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)
    u = lambda lo, hi, shape=(b, 1, 1, 1): rng.uniform(lo, hi, shape).astype(np.float32)  # noqa: E731
    if cfg.aug_hair > 0 and hair_bank is not None:
        alpha = hair_bank[rng.integers(0, len(hair_bank), b)]
        flip = rng.random(b) < 0.5
        alpha[flip] = alpha[flip].transpose(0, 2, 1)
        if alpha.shape[1:] != (h, w):
            alpha = np.stack([cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA) for a in alpha])
        alpha = alpha[..., None] * np.where(u(0, 1) < cfg.aug_hair, u(0.6, 1.0), 0.0)
        colour = u(10.0, 70.0) * np.array([1.0, 0.8, 0.65], np.float32)
        x = x * (1.0 - alpha) + colour * alpha
    device = cfg.aug_device
    if device > 0:
        k1 = np.array([0.05, 0.24, 0.42, 0.24, 0.05], np.float32)
        blurred = np.stack([cv2.sepFilter2D(xi, -1, k1, k1, borderType=cv2.BORDER_CONSTANT) for xi in x])
        amount = np.where(u(0, 1) < 0.3 * device, u(0.0, 1.0), 0.0)
        x = x + (blurred - x) * amount
        yy = (np.arange(h) + 0.5) / h * 2.0 - 1.0
        xx = (np.arange(w) + 0.5) / w * 2.0 - 1.0
        r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)[None, :, :, None].astype(np.float32)
        v = np.where(u(0, 1) < 0.4 * device, u(0.2, 1.0), 0.0)
        power = u(2.0, 6.0)
        x = x * np.clip(1.0 - v * np.power(r / 1.41421356, power) * 1.6, 0.0, 1.0)
    col = cfg.aug_color
    if col > 0:
        bright = u(-col, col) * 255.0
        contrast = 1.0 + u(-col, col)
        sat = 1.0 + u(-col, col)
        chan = 1.0 + u(-col / 2, col / 2, (b, 1, 1, 3))
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * contrast + mean + bright
        gray = x.mean(axis=3, keepdims=True)
        x = ((x - gray) * sat + gray) * chan
    if device > 0:
        x = np.clip(x, 0.0, 255.0)
        temp = u(-0.25, 0.25) * device
        x = x * np.concatenate([1.0 + temp, np.ones_like(temp), 1.0 - temp], axis=3)
        gamma = np.exp(u(math.log(0.7), math.log(1.4)) * device)
        x = 255.0 * np.power(np.clip(x / 255.0, 0.0, 1.0), gamma)
    return np.clip(x, 0.0, 255.0).astype(np.float32)


def _log(msg: str, log_file: Path | None) -> None:
    print(msg, flush=True)
    if log_file is not None:
        with open(log_file, "a") as f:
            f.write(msg + "\n")


def fit_pack(pack: dict, cfg: TrainConfig, out_dir: Path, name: str, *, deadline: float | None = None,
             threads: int = 12, log_file: Path | None = None) -> dict:
    """Train ``cfg``'s network on a `read_pack` result with the current Keras backend; writes
    ``<name>.weights.npz`` (by variable path) and ``<name>.history.json`` to ``out_dir`` and
    returns the history. ``deadline`` (time.time()) ends the run early, keeping the best epoch."""
    import keras

    from .backbone import assign_backbone, load_backbone_weights
    from .model import hair_masks, set_loss, set_precision
    from .train import _accumulate_average, _try_average, _val_metrics, scheduled_lr, selection_score

    if cfg.distill_from or cfg.offset_in_loss_from:
        raise ValueError("distill_from and offset_in_loss_from are not supported on the accelerator path; "
                         "train with `python -m training train`")
    t0 = time.time()
    keras.utils.set_random_seed(cfg.seed)
    policy = set_precision(cfg.mixed_precision)
    model = cfg.build_model()
    if cfg.backbone == "mobilenet_v2":
        assign_backbone(model, load_backbone_weights())
    x_tr, m_tr, w_tr, x_va, m_va = (pack[k] for k in ("x_train", "m_train", "w_train", "x_val", "m_val"))
    steps = len(x_tr) // cfg.batch_size
    budget = cfg.time_budget_min * 60.0
    opt = keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, clipnorm=5.0)
    model.compile(optimizer=opt, loss=set_loss(cfg.label_smoothing, malignancy_weight=cfg.malignancy_weight))

    def progress(step_fraction: float) -> float:
        """Steps done, or time spent when the budget runs out first, as `fit_model` counts it."""
        return min(max(step_fraction, (time.time() - t0) / budget) if budget > 0 else step_fraction, 1.0)

    hair = hair_masks(size=cfg.image_size) if cfg.aug_hair > 0 else None
    history: dict = {"loss": [], "val_loss": [], "val_melanoma_auc": [], "val_malignancy_auc": [],
                     "val_balanced_accuracy_7": [], "lr": [], "epoch_seconds": [], "train_size": []}
    best = {"score": -math.inf, "epoch": 0, "weights": None}
    avg = {"avg": None, "n_avg": 0}
    pool = ThreadPoolExecutor(threads)

    def batch(epoch: int, i: int, order: np.ndarray):
        idx = np.sort(order[i * cfg.batch_size:(i + 1) * cfg.batch_size])
        rng = np.random.default_rng((cfg.seed, epoch, i))
        return augment_images(x_tr[idx], rng, cfg, hair), m_tr[idx], w_tr[idx]

    def logits_of(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(model.predict_on_batch(x[j:j + 256].astype(np.float32)), np.float32)
                               for j in range(0, len(x), 256)])

    stopped = False
    for epoch in range(cfg.epochs):
        te = time.time()
        order = np.random.default_rng((cfg.seed, epoch)).permutation(len(x_tr))
        futures = [pool.submit(batch, epoch, i, order) for i in range(min(threads * 2, steps))]
        losses = []
        for i in range(steps):
            x, m, w = futures[i].result()
            if len(futures) < steps:
                futures.append(pool.submit(batch, epoch, len(futures), order))
            # train_on_batch reads the optimiser's variables on every call (on JAX too), so the
            # learning rate set here is the one this step uses
            lr = scheduled_lr(cfg, epoch * steps + i, steps, cfg.epochs, progress)
            opt.learning_rate.assign(lr)
            losses.append(float(model.train_on_batch(x, m, sample_weight=w)))
        vm = _val_metrics(logits_of(x_va), m_va)
        for k in ("val_loss", "val_melanoma_auc", "val_malignancy_auc", "val_balanced_accuracy_7"):
            history[k].append(vm[k])
        history["loss"].append(float(np.mean(losses)))
        history["lr"].append(lr)
        history["train_size"].append(cfg.image_size)
        history["epoch_seconds"].append(time.time() - te)
        sc = selection_score(vm)
        mark = ""
        if sc > best["score"]:
            best.update(score=sc, epoch=epoch + 1, weights=[np.array(v) for v in model.get_weights()])
            mark = " *best*"
        if cfg.average_tail > 0 and lr <= cfg.average_tail * cfg.learning_rate:
            _accumulate_average(avg, model.get_weights())
        _log(f"[epoch {epoch + 1}/{cfg.epochs}] {name} loss={history['loss'][-1]:.4f} val_loss={vm['val_loss']:.4f} "
             f"mel_auc={vm['val_melanoma_auc']:.4f} malig_auc={vm['val_malignancy_auc']:.4f} "
             f"bacc7={vm['val_balanced_accuracy_7']:.4f} lr={lr:.2e} epoch_s={time.time() - te:.1f} "
             f"elapsed_min={(time.time() - t0) / 60:.1f}{mark}", log_file)
        next_end = time.time() + history["epoch_seconds"][-1]  # when another epoch would end
        if epoch + 1 < cfg.epochs and ((budget > 0 and next_end - t0 > budget)
                                       or (deadline is not None and next_end > deadline)):
            _log(f"[train] {name}: stopping after epoch {epoch + 1} (time budget)", log_file)
            stopped = True
            break
    pool.shutdown()
    model.set_weights(best["weights"])
    if avg["n_avg"] >= 2:
        history["weight_average"] = wa = _try_average(model, avg, best["score"], x_va, m_va)
        _log(f"[train] {name}: weight average of {wa['epochs']} epochs mel_auc={wa['val_melanoma_auc']:.4f} "
             f"used={wa['used']}", log_file)
    history.update(best_epoch=best["epoch"], train_seconds=time.time() - t0, precision_policy=policy,
                   stopped_early=stopped, backend=keras.backend.backend(), config=cfg.to_dict(),
                   split_digest=pack["split_digest"], accelerator=_accelerator())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / f"{name}.weights.npz", **{v.path: np.asarray(v.numpy(), np.float32) for v in model.weights})
    (out_dir / f"{name}.history.json").write_text(json.dumps(history, indent=1, default=float))
    return history


def _accelerator() -> str:
    try:
        import jax

        return ", ".join(sorted({d.device_kind for d in jax.devices()}))
    except Exception:  # noqa: BLE001 - another backend: no device name to report
        return "cpu"


def load_fitted(cfg: TrainConfig, weights: Path):
    """A float32 model of ``cfg`` with the weights `fit_pack` wrote (matched by variable path)."""
    from .model import set_precision

    set_precision("fp32")
    model = cfg.build_model()
    with np.load(weights) as z:
        saved = {k: z[k] for k in z.files}
    missing = [v.path for v in model.weights if v.path not in saved]
    if missing:
        raise ValueError(f"{len(missing)} variables missing from {weights}, e.g. {missing[:3]}")
    for v in model.weights:
        if tuple(v.shape) != saved[v.path].shape:
            raise ValueError(f"{v.path}: shape {saved[v.path].shape} != {tuple(v.shape)}")
        v.assign(saved[v.path])
    return model


def finish(weights: Path, history_file: Path, data_root: Path, out_dir: Path, cache_dir: Path | None,
           version: str | None = None) -> Path:
    """Calibrate, evaluate, export and assess a network `fit_pack` trained (see the module
    docstring); refuses weights trained on another split than this data gives."""
    from .train import prepare_data, train

    history = json.loads(Path(history_file).read_text())
    cfg = TrainConfig.from_dict(history.pop("config"))
    data = prepare_data(cfg, Path(data_root), cache_dir)
    ids = list(data.split["train"]) + list(data.split["val"])
    if _ids_digest(ids) != history["split_digest"]:
        raise ValueError("the weights were trained on another split than this data gives")
    model = load_fitted(cfg, weights)
    return train(cfg, Path(data_root), Path(out_dir), cache_dir, version=version, fitted=(model, history),
                 data=data)
