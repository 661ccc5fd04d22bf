"""Training loop, calibration, thresholds and export of a versioned artifact."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .config import TrainConfig
from mlcore.clinical import contexts_of
from mlcore.labels import HAM_CODES, ham_membership_matrix

log = logging.getLogger(__name__)


def _emit(msg: str) -> None:
    print(msg, flush=True)


# A long step (hashing or decoding thousands of images on a cold cache, an epoch on a CPU) reports
# its phase again at least this often: the registry fails a run after 15 minutes without progress.
HEARTBEAT_SECONDS = 60.0


def heartbeat(report: Callable[[dict], None] | None, progress: dict) -> Callable[..., None]:
    """A hook for a long step: each call re-reports ``progress`` (with the call's keyword
    arguments, e.g. how many images are done) when HEARTBEAT_SECONDS have passed since the last."""
    last = time.monotonic()

    def beat(*_, **extra) -> None:
        nonlocal last
        now = time.monotonic()
        if report is not None and now - last >= HEARTBEAT_SECONDS:
            last = now
            report(progress | extra)

    return beat


def _counting(beat: Callable[..., None]) -> Callable[[int, int], None]:
    """``beat`` as an ``on_item(done, total)`` hook of the image loaders."""
    return lambda done, total: beat(done=done, of=total)


def class_weights_for(masks: np.ndarray, power: float) -> np.ndarray:
    """Per-sample weight = (N / (K * n_code))**power by HAM code (7 groups), mean 1."""
    codes = (masks @ ham_membership_matrix()).argmax(1)
    counts = np.bincount(codes, minlength=len(HAM_CODES)).astype(float)
    k = max((counts > 0).sum(), 1)
    w_code = np.where(counts > 0, (len(codes) / (k * np.clip(counts, 1, None))) ** power, 0.0)
    w = w_code[codes]
    return (w / w.mean()).astype(np.float32)


SOURCE_WEIGHT_RANGE = (0.1, 10.0)  # a rare (source, code) cell may not dominate the loss


def describe_warm_start(weights_file: Path) -> dict:
    """What a model card records of the weights a run started from: the file, its sha256 and, when
    it is an artifact's model file, that artifact's version. A configured file that is missing is
    an error, not a silent start from ImageNet."""
    from mlcore.artifact import CARD_FILE, read_card, sha256_file

    if not weights_file.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {weights_file}")
    card = read_card(weights_file.parent, required=("version",)) if (weights_file.parent / CARD_FILE).is_file() else {}
    return {"file": weights_file.name, "sha256": sha256_file(weights_file), "version": card.get("version"),
            "keeps_split": "split_ids" in card}


def split_source(cfg: TrainConfig) -> Path | None:
    """The artifact directory whose lesion split the run keeps: ``split_from``, else the warm start's."""
    if cfg.split_from:
        return Path(cfg.split_from)
    return Path(cfg.pretrained).parent if cfg.pretrained else None


def warm_start_split(cfg: TrainConfig, aliases: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """ISIC id -> split of the artifact ``cfg.split_from`` names, else of the one ``cfg.pretrained``
    was trained on (empty when the run starts from ImageNet; a bare weights file is refused by
    `started_from`): such a run keeps that split, so no image its network (or the model it is
    compared with) learned from lands in this run's validation or test split. Ids the audit has
    merged into another image (``aliases``: kept id -> merged ids) pin the image they were merged
    into; an image that was in training anywhere stays in training."""
    from mlcore.artifact import CARD_FILE, read_card

    model_dir = split_source(cfg)
    if model_dir is None:
        return {}
    if not (model_dir / CARD_FILE).is_file():
        if cfg.split_from:
            raise FileNotFoundError(f"split_from: {model_dir} has no {CARD_FILE} recording its split")
        return {}
    root = {merged: kept for kept, ids in (aliases or {}).items() for merged in ids}
    order = {"train": 0, "val": 1, "test": 2}
    pinned: dict[str, str] = {}
    for split, ids in read_card(model_dir, required=("split_ids",))["split_ids"].items():
        for i in ids:
            key = root.get(i, i)
            if key not in pinned or order[split] < order[pinned[key]]:
                pinned[key] = split
    return pinned


def started_from(cfg: TrainConfig) -> dict[str, Path]:
    """The artifacts whose networks this run builds on: the warm start, the distillation teacher and
    the source of the offset inside the loss. Each must have a model card recording its split: a
    bare weights file could have learnt anything, the frozen benchmark's lesions included, and
    nothing could check it (``BenchmarkLeakError`` then, before any image is read)."""
    from mlcore.artifact import CARD_FILE

    from .benchmark import BenchmarkLeakError

    dirs = {"warm start": Path(cfg.pretrained).parent if cfg.pretrained else None,
            "teacher": Path(cfg.distill_from) if cfg.distill_from else None,
            "offset source": Path(cfg.offset_in_loss_from) if cfg.offset_in_loss_from else None}
    dirs = {role: d for role, d in dirs.items() if d is not None}
    for role, d in dirs.items():
        if not (d / CARD_FILE).is_file():
            raise BenchmarkLeakError(
                f"the {role} ({d}) has no {CARD_FILE}, so what it was trained on cannot be checked against the "
                "frozen benchmark: start from a trained artifact's directory (its model file and model card)")
    return dirs


def fitted_ids(model_dir: Path, aliases: Mapping[str, Sequence[str]] | None = None) -> set[str]:
    """The image ids (as the audit keeps them) an artifact was trained or validated on."""
    from mlcore.artifact import read_card

    root = {merged: kept for kept, ids in (aliases or {}).items() for merged in ids}
    split_ids = read_card(model_dir, required=("split_ids",))["split_ids"]
    return {root.get(i, i) for s in ("train", "val") for i in split_ids.get(s, [])}


def source_balance_weights(masks: np.ndarray, sources, power: float) -> np.ndarray:
    """Per-sample weight (P(code) / P(code | source))**power by HAM code, clipped to
    SOURCE_WEIGHT_RANGE, mean 1: a collection whose images are mostly melanomas (the ISIC-archive
    copies: 54 % of its training images) no longer teaches "looks like this collection = melanoma"."""
    codes = (masks @ ham_membership_matrix()).argmax(1)
    sources = np.asarray(sources, dtype=object)
    if len(sources) != len(codes):
        raise ValueError(f"{len(sources)} sources for {len(codes)} images")
    overall = np.bincount(codes, minlength=len(HAM_CODES)) / len(codes)
    w = np.ones(len(codes), dtype=np.float64)
    for source in set(sources):
        rows = sources == source
        within = np.bincount(codes[rows], minlength=len(HAM_CODES)) / rows.sum()
        w[rows] = (overall[codes[rows]] / within[codes[rows]]) ** power
    w = np.clip(w, *SOURCE_WEIGHT_RANGE)
    return (w / w.mean()).astype(np.float32)


def scheduled_lr(cfg: TrainConfig, step: int, steps_per_epoch: int, epochs: int,
                 progress: Callable[[float], float] = lambda p: p) -> float:
    """Linear warm-up over ``cfg.warmup_epochs``, then a cosine decay over ``progress`` of the
    fraction of post-warm-up steps done (``progress`` may also count time spent of a budget)."""
    total = max(epochs * steps_per_epoch, 1)
    warm = max(cfg.warmup_epochs * steps_per_epoch, 1)
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    prog = progress((step - warm) / max(total - warm, 1))
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * prog))


def _val_metrics(logits: np.ndarray, masks: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from .evaluate import targets
    from mlcore.scoring import malignancy_score, melanoma_probability, set_nll, softmax_with_temperature

    p = softmax_with_temperature(logits, 1.0)
    t = targets(masks)
    out = {"val_loss": set_nll(p, masks)}
    for k, y, s in (("val_melanoma_auc", t["melanoma"], melanoma_probability(p)),
                    ("val_malignancy_auc", t["malignant"], malignancy_score(p))):
        out[k] = float(roc_auc_score(y, s)) if y.any() and (~y).any() else float("nan")
    out["val_balanced_accuracy_7"] = float(balanced_accuracy_score(t["ham7"], (p @ ham_membership_matrix()).argmax(1)))
    return out


def selection_score(m: dict) -> float:
    vals = [m["val_melanoma_auc"], m["val_malignancy_auc"], m["val_balanced_accuracy_7"]]
    vals = [v for v in vals if v == v]
    return float(np.mean(vals)) if vals else -m["val_loss"]


class BestEpoch:
    """The best validation score so far, its epoch, and the patience count: epochs without a new
    best, counted only for epochs that ``count`` (at the full input size; while progressive
    resizing still grows the input, validation at the full size lags behind for a reason)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.score = -math.inf
        self.epoch = 0
        self.since = 0

    def update(self, score: float, epoch: int, *, count: bool = True) -> bool:
        """Record an epoch's score; True when it is the new best."""
        if score > self.score:
            self.score, self.epoch, self.since = score, epoch, 0
            return True
        if count:
            self.since += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.since >= self.patience


# early-stopping patience starts counting once the learning rate has decayed to this fraction
# of its peak: the cosine schedule follows the time budget, and stopping before it anneals cuts
# off the epochs the best models come from
PATIENCE_FROM_LR_FRACTION = 0.2


def counts_for_patience(size: int, lr: float, cfg: TrainConfig) -> bool:
    """Whether an epoch without a new best uses up patience: at the full input size, with the
    learning rate in the tail of its schedule."""
    return size >= cfg.image_size and lr <= PATIENCE_FROM_LR_FRACTION * cfg.learning_rate


def validates_epoch(epoch: int, size: int, cfg: TrainConfig) -> bool:
    """Whether 1-based ``epoch``, trained at input ``size``, runs validation: always at the full
    size; while progressive resizing still grows the input, every ``validate_growing_every``-th."""
    if size >= cfg.image_size or cfg.validate_growing_every <= 1:
        return True
    return epoch % cfg.validate_growing_every == 0


SKIPPED_VALIDATION = {"val_loss": float("nan"), "val_melanoma_auc": float("nan"),
                      "val_malignancy_auc": float("nan"), "val_balanced_accuracy_7": float("nan")}


class TrainingCancelled(RuntimeError):
    """Raised when ``should_stop()`` asks a running training to stop."""


def fit_model(cfg: TrainConfig, x_train, m_train, x_val, m_val, *, verbose: int = 1,
              on_progress: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, sources=None, contexts=None,
              run_deadline: float | None = None, finish_passes: float = 0.0):
    """Train with bf16 (if enabled) and return (float32 model with the best-epoch weights, history).

    ``run_deadline`` (a ``time.time()``) is when the whole run must end: after each validation
    pass the loop's budget becomes what is left once ``finish_passes`` image passes (see
    `finishing_passes`) have been set aside, timed at the fastest validation pass so far (after
    its warm-up batch), so a slow first pass does not cut the budget for good.

    ``sources`` (one collection name per training image) is needed when ``cfg.source_balance``
    is on (`source_balance_weights`).
    ``contexts`` (one ``mlcore.clinical.ClinicalContext`` per training image) is needed when
    ``cfg.offset_in_loss_from`` is set.

    ``on_progress`` gets a dict per epoch (epoch, epochs, loss, validation metrics, eta_s);
    ``should_stop`` is polled every few batches and raises TrainingCancelled when it says so.
    """
    import keras

    import tensorflow as tf

    from mlcore.keras_model import predict_logits

    from .model import make_train_dataset, progressive_size, set_loss, set_precision

    keras.utils.set_random_seed(cfg.seed)
    policy = set_precision(cfg.mixed_precision)
    model = cfg.build_model(any_size=cfg.progressive)
    if cfg.backbone == "mobilenet_v2":
        from .backbone import assign_backbone, load_backbone_weights

        assign_backbone(model, load_backbone_weights())
    warm_start = None
    if cfg.pretrained:
        warm_start = describe_warm_start(Path(cfg.pretrained))
        model.load_weights(cfg.pretrained, skip_mismatch=True)
    weights = class_weights_for(m_train, cfg.class_weight_power)
    if cfg.source_balance > 0:
        if sources is None:
            raise ValueError("source_balance needs the source of every training image")
        weights = weights * source_balance_weights(m_train, sources, cfg.source_balance)
        weights = (weights / weights.mean()).astype(np.float32)
    y_train, target_records = loss_targets(cfg, x_train, m_train, contexts)
    size_var = tf.Variable(cfg.image_size, dtype=tf.int32, trainable=False) if cfg.progressive else None
    ds = make_train_dataset(x_train, y_train, weights, batch_size=cfg.batch_size, seed=cfg.seed,
                            rotate=cfg.aug_rotate, zoom=cfg.aug_zoom, color=cfg.aug_color,
                            zoom_out=cfg.aug_zoom_out, device=cfg.aug_device, hair=cfg.aug_hair,
                            size_var=size_var)
    steps_per_epoch = int(ds.cardinality().numpy())
    opt = keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 clipnorm=5.0)
    model.compile(optimizer=opt, loss=set_loss(cfg.label_smoothing, cfg.distill_weight if cfg.distill_from else 0.0,
                                               offset=bool(cfg.offset_in_loss_from),
                                               malignancy_weight=cfg.malignancy_weight))
    state = {"epochs": cfg.epochs, "weights": None, "avg": None, "n_avg": 0}
    best = BestEpoch(cfg.patience)
    history: dict[str, list] = {"loss": [], "val_loss": [], "val_melanoma_auc": [],
                                "val_malignancy_auc": [], "val_balanced_accuracy_7": [], "lr": [],
                                "epoch_seconds": [], "train_size": []}
    if warm_start:
        history["warm_start"] = warm_start
    history.update(target_records)
    t0 = time.time()
    state["budget"] = loop_budget_s(cfg.time_budget_min * 60.0,
                                    remaining_s=None if run_deadline is None else run_deadline - t0)
    if run_deadline is not None:
        history["run_budget_s"] = cfg.run_budget_min * 60.0

    def schedule_progress(step_fraction: float) -> float:
        """Progress through the schedule (0..1): steps done, or time spent when the budget runs out
        first, so the cosine decay and progressive resizing both complete within the budget."""
        prog = step_fraction
        if state["budget"] > 0:
            prog = max(prog, (time.time() - t0) / state["budget"])
        return min(prog, 1.0)

    class Cb(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            lr = scheduled_lr(cfg, state["epoch"] * steps_per_epoch + batch, steps_per_epoch,
                              state["epochs"], schedule_progress)
            self.model.optimizer.learning_rate.assign(lr)
            state["lr"] = lr

        def on_train_batch_end(self, batch, logs=None):
            state["beat"](batch=batch + 1, steps=steps_per_epoch)
            if should_stop is not None and batch % 10 == 0 and should_stop():
                raise TrainingCancelled("training cancelled on request")

        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch
            # within an epoch, the figures of the last one finished are reported again with the batch reached
            state["beat"] = heartbeat(on_progress, state.get("reported") or {
                "phase": "training", "epoch": epoch, "epochs": state["epochs"]})
            state["t_epoch"] = time.time()
            state["size"] = cfg.image_size
            if size_var is not None:
                state["size"] = progressive_size(schedule_progress(epoch / max(state["epochs"], 1)),
                                                 full=cfg.image_size, smallest=cfg.progressive_min_size,
                                                 until=cfg.progressive_until)
                size_var.assign(state["size"])

        def on_epoch_end(self, epoch, logs=None):
            validated = len(x_val) > 0 and validates_epoch(epoch + 1, state["size"], cfg)
            scored = validated or not len(x_val)  # without a validation set the training loss scores
            vm = dict(SKIPPED_VALIDATION)
            if validated:
                logits, seconds_per_image = timed_logits(self.model, x_val)
                vm = _val_metrics(logits, m_val)
            if validated and run_deadline is not None:
                # the fastest pass so far: the first one also warms the network up, and a pass that
                # shares the CPU with the input pipeline or a neighbour says little about the finishing
                state["per_image"] = min(state.get("per_image", math.inf), seconds_per_image)
                finish_s = FINISH_MARGIN * finish_passes * state["per_image"]
                budget = loop_budget_s(cfg.time_budget_min * 60.0, remaining_s=run_deadline - finish_s - t0)
                if "finish_estimate_s" not in history or abs(budget - state["budget"]) > 60:
                    _emit(f"[train] run budget {cfg.run_budget_min:g} min: finishing estimated at "
                          f"{finish_s / 60:.1f} min, so the loop gets {budget / 60:.1f} min")
                state["budget"] = budget
                history["finish_estimate_s"] = finish_s
            history["loss"].append(float(logs.get("loss", float("nan"))))
            for k, v in vm.items():
                history[k].append(v)
            history["lr"].append(float(state.get("lr", 0)))
            history["train_size"].append(int(state["size"]))
            dt = time.time() - state["t_epoch"]
            history["epoch_seconds"].append(dt)
            sc = selection_score(vm) if len(x_val) else -history["loss"][-1]
            mark = ""
            if scored and best.update(
                    sc, epoch + 1, count=counts_for_patience(state["size"], state.get("lr", 0.0), cfg)):
                state["weights"] = self.model.get_weights()
                mark = " *best*"
            if cfg.average_tail > 0 and state.get("lr", cfg.learning_rate) <= cfg.average_tail * cfg.learning_rate:
                _accumulate_average(state, self.model.get_weights())
            elapsed = time.time() - t0
            # adapt the planned number of epochs to the time budget after epoch 1
            # the LR schedule follows max(step, time) progress, so a slower CPU just means fewer
            # epochs with a completed cosine decay; no re-planning needed
            eta = (state["epochs"] - epoch - 1) * (elapsed / (epoch + 1))
            if state["budget"] > 0:
                eta = min(eta, max(state["budget"] - elapsed, 0.0))
            val_text = (f"val_loss={vm['val_loss']:.4f} mel_auc={vm['val_melanoma_auc']:.4f} "
                        f"malig_auc={vm['val_malignancy_auc']:.4f} bacc7={vm['val_balanced_accuracy_7']:.4f}"
                        if validated else "validation=skipped")
            _emit(f"[epoch {epoch + 1}/{state['epochs']}] loss={history['loss'][-1]:.4f} {val_text} "
                  f"lr={state.get('lr', 0):.2e} size={state['size']} epoch_s={dt:.0f} elapsed_min={elapsed / 60:.1f} "
                  f"eta_min={eta / 60:.1f}{mark}")
            state["reported"] = {"phase": "training", "epoch": epoch + 1, "epochs": state["epochs"],
                                 "loss": history["loss"][-1], "val_loss": vm["val_loss"],
                                 "val_melanoma_auc": vm["val_melanoma_auc"],
                                 "val_malignancy_auc": vm["val_malignancy_auc"],
                                 "val_balanced_accuracy_7": vm["val_balanced_accuracy_7"], "eta_s": eta,
                                 "best_epoch": best.epoch}
            if on_progress is not None:
                on_progress(state["reported"])
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training cancelled on request")
            if (epoch + 1 >= state["epochs"] or best.exhausted
                    or (state["budget"] > 0 and elapsed + dt > state["budget"])):
                if epoch + 1 < state["epochs"]:
                    _emit(f"[train] stopping after epoch {epoch + 1} (patience/time budget)")
                self.model.stop_training = True

    _emit(f"[train] policy={policy} train={len(x_train)} val={len(x_val)} steps/epoch={steps_per_epoch} "
          f"planned_epochs={cfg.epochs} params={model.count_params()}")
    model.fit(ds, epochs=cfg.epochs, verbose=verbose, callbacks=[Cb()], shuffle=False)
    if state["weights"] is not None:
        model.set_weights(state["weights"])
    if state["n_avg"] >= 2 and len(x_val):
        history["weight_average"] = _try_average(model, state, best.score, x_val, m_val)
    history["best_epoch"] = best.epoch
    history["train_seconds"] = time.time() - t0
    if run_deadline is not None:
        history["loop_budget_s"] = state["budget"]
    history["precision_policy"] = policy
    # float32 copy for export / inference
    set_precision("fp32")
    m32 = cfg.build_model()
    m32.set_weights(model.get_weights())
    return m32, history


# the finishing estimate's margin over (passes x measured seconds per validation image)
FINISH_MARGIN = 1.15
# PH2 and the non-dermoscopic set, which the assessment scores besides the three splits
ASSESSMENT_EXTRA_IMAGES = 250


def finishing_passes(cfg: TrainConfig, n_train: int, n_val: int, n_test: int) -> float:
    """Single-view image passes through the network after the training loop: the tail average's
    check on validation, then each split once at the config's test-time augmentation (training
    for the clinical offset and the assessment, validation for calibration, test for evaluation:
    `SplitOutputs` keeps the logits and features, so the assessment scores none of them again),
    and the assessment's PH2 and non-dermoscopic images."""
    from mlcore.keras_model import TTA_VIEWS

    from .config import TTA_AUTO

    # auto: two passes over validation to choose, which the calibration reuses; then (at worst)
    # flip2's two views
    views = TTA_VIEWS["flip2"] if cfg.tta == TTA_AUTO else TTA_VIEWS[cfg.tta]
    passes = (n_val if cfg.average_tail > 0 else 0) + (2 * n_val if cfg.tta == TTA_AUTO else views * n_val)
    passes += views * ((n_train if cfg.clinical_context or cfg.assessment else 0) + n_test)
    if cfg.assessment:
        passes += views * ASSESSMENT_EXTRA_IMAGES
    return float(passes)


class SplitOutputs:
    """The trained network's logits (before the clinical offset) and penultimate features per
    split, at the served test-time augmentation, each computed once on first use: the clinical
    offset, the calibration, the evaluation and the assessment all read the same pass."""

    def __init__(self, model, tta: str, images: dict[str, np.ndarray], known: dict | None = None) -> None:
        self.model, self.tta, self.images = model, tta, images
        self._done: dict[str, tuple[np.ndarray, np.ndarray | None]] = dict(known or {})

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        if name not in self._done:
            from .assessment import logits_and_features

            self._done[name] = logits_and_features(self.model, self.images[name], tta=self.tta)
        return self._done[name]

    def logits(self, name: str, *, clinical=None, records=None) -> np.ndarray:
        """The split's logits, plus the ``clinical`` adjustment for its ``records`` when given."""
        logits = self[name][0]
        if clinical is None:
            return logits
        return clinical.apply(logits, contexts_of(records))


def choose_tta(model, cfg: TrainConfig, x_val, m_val) -> tuple[TrainConfig, dict | None, tuple | None]:
    """Resolve ``cfg.tta`` "auto": serve the network with flip2 (the image and its mirror image,
    averaged) only when that raises the validation selection score over one view, else none;
    returns the config with the chosen mode, the record of the choice and the validation (logits,
    features) at the chosen mode (`SplitOutputs` reuses them). Other modes pass through:
    ``(cfg, None, None)``."""
    from mlcore.keras_model import dihedral_views

    from .assessment import logits_and_features
    from .config import TTA_AUTO

    if cfg.tta != TTA_AUTO:
        return cfg, None, None
    if not len(x_val):
        return replace(cfg, tta="none"), {"chosen": "none", "reason": "no validation images"}, None
    one = logits_and_features(model, x_val)
    # flip2's views are the image and its horizontal flip: one more pass, not two; the features
    # are averaged over the views as the app's runners average them
    mirror = logits_and_features(model, dihedral_views(x_val, 2)[1])
    both = tuple(None if a is None else (a + b) / 2.0 for a, b in zip(one, mirror))
    scores = {"none": selection_score(_val_metrics(one[0], m_val)),
              "flip2": selection_score(_val_metrics(both[0], m_val))}
    chosen = "flip2" if scores["flip2"] > scores["none"] else "none"
    _emit(f"[train] test-time augmentation: validation score none={scores['none']:.4f} "
          f"flip2={scores['flip2']:.4f} -> {chosen}")
    return replace(cfg, tta=chosen), {"chosen": chosen, "validation_scores": scores}, (both if chosen == "flip2" else one)


def timed_logits(model, images: np.ndarray, warm_up: int = 128) -> tuple[np.ndarray, float]:
    """The model's logits on ``images`` (one view) and the seconds per image it took, timed after
    the first ``warm_up`` images (the first batch also pays for the model's warm-up)."""
    from mlcore.keras_model import predict_logits

    if len(images) <= warm_up:
        t = time.time()
        logits = predict_logits(model, images)
        return logits, (time.time() - t) / max(len(images), 1)
    head = predict_logits(model, images[:warm_up])
    t = time.time()
    rest = predict_logits(model, images[warm_up:])
    return np.concatenate([head, rest]), (time.time() - t) / (len(images) - warm_up)


def loop_budget_s(config_budget_s: float, *, remaining_s: float | None) -> float:
    """The training loop's budget in seconds: the config's (0 = none), capped by ``remaining_s``,
    what the run's budget leaves the loop (None = no run budget; at least a millisecond, so a
    spent budget still means 'stop after this epoch' rather than 'no budget')."""
    if remaining_s is None:
        return config_budget_s
    remaining_s = max(remaining_s, 1e-3)
    return remaining_s if config_budget_s <= 0 else min(config_budget_s, remaining_s)


def _accumulate_average(state: dict, weights: list) -> None:
    """Running mean of the epoch-end weights, in float64."""
    n = state["n_avg"]
    if state["avg"] is None:
        state["avg"] = [np.asarray(w, np.float64) for w in weights]
    else:
        state["avg"] = [a + (np.asarray(w, np.float64) - a) / (n + 1) for a, w in zip(state["avg"], weights)]
    state["n_avg"] = n + 1


def _try_average(model, state: dict, best_score: float, x_val, m_val) -> dict:
    """Load the averaged weights; keep them only if they beat the best epoch on validation."""
    from mlcore.keras_model import predict_logits

    best = model.get_weights()
    model.set_weights([a.astype(w.dtype) for a, w in zip(state["avg"], best)])
    vm = _val_metrics(predict_logits(model, x_val), m_val)
    used = selection_score(vm) > best_score
    if not used:
        model.set_weights(best)
    _emit(f"[train] weight average of {state['n_avg']} epochs: mel_auc={vm['val_melanoma_auc']:.4f} "
          f"malig_auc={vm['val_malignancy_auc']:.4f} bacc7={vm['val_balanced_accuracy_7']:.4f} "
          f"-> {'used' if used else 'kept the best epoch'}")
    return {"epochs": state["n_avg"], **vm, "used": used}


def _auc_or_nan(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, bool)
    return float(roc_auc_score(y, s)) if y.any() and (~y).any() else float("nan")


def adjusted_logits(model, cfg: TrainConfig, images, *, clinical=None, contexts=None) -> np.ndarray:
    """The model's logits (with the config's test-time augmentation), plus the ``clinical``
    adjustment for ``contexts`` when given."""
    from mlcore.keras_model import predict_logits

    logits = predict_logits(model, images, tta=cfg.tta)
    return logits if clinical is None else clinical.apply(logits, contexts)


def calibrate(model, cfg: TrainConfig, x_val, m_val, *, clinical=None, contexts=None) -> dict:
    """Temperature (NLL on validation) + thresholds at target sensitivity (validation only), on
    ``adjusted_logits``."""
    return calibrate_logits(adjusted_logits(model, cfg, x_val, clinical=clinical, contexts=contexts), m_val, cfg)


def loss_targets(cfg: TrainConfig, x_train, m_train: np.ndarray, contexts=None) -> tuple[np.ndarray, dict]:
    """What the loss reads as ``y_true`` (``training.model.set_loss``): the label masks, then the
    teacher's probabilities when ``cfg.distill_from`` is set, then the clinical offset when
    ``cfg.offset_in_loss_from`` is; and what the model card records of each (history entries)."""
    parts, records = [m_train], {}
    if cfg.distill_from:
        from .distill import teacher_probabilities

        _emit(f"[train] teacher {cfg.distill_from} ({cfg.distill_tta}) scoring {len(x_train)} training images")
        soft, teacher = teacher_probabilities(Path(cfg.distill_from), x_train, tta=cfg.distill_tta)
        parts.append(soft)
        records["distilled_from"] = teacher | {"weight": cfg.distill_weight}
    if cfg.offset_in_loss_from:
        if contexts is None:
            raise ValueError("offset_in_loss_from needs the clinical context of every training image")
        offset, records["offset_in_loss"] = offset_in_loss(Path(cfg.offset_in_loss_from), contexts, len(m_train))
        parts.append(offset)
    return (np.concatenate(parts, axis=1) if len(parts) > 1 else m_train), records


def offset_in_loss(model_dir: Path, contexts, n: int) -> tuple[np.ndarray, dict]:
    """(n, classes) float32: the clinical offset of the artifact at ``model_dir`` for each training
    image's context (0 where unknown), and what the card records of it (version, images with
    context)."""
    from mlcore.artifact import read_card
    from mlcore.clinical import ClinicalAdjustment
    from mlcore.labels import NUM_CLASSES

    card = read_card(model_dir, required=("version",))
    if not card.get("clinical_context"):
        raise ValueError(f"{model_dir}: the model card has no clinical-context offset to train with")
    if len(contexts) != n:
        raise ValueError(f"{len(contexts)} clinical contexts for {n} training images")
    adj = ClinicalAdjustment.from_dict(card["clinical_context"])
    offset = adj.apply(np.zeros((n, NUM_CLASSES), np.float32), contexts)
    return offset, {"version": card["version"], "images_with_context": sum(c.known for c in contexts)}


def fit_clinical(cfg: TrainConfig, train_logits: np.ndarray, m_train, train_records):
    """The clinical-context adjustment (mlcore.clinical) fitted on the training split's logits
    (at the served test-time augmentation) with the CNN's class weights; None when the config
    turns it off."""
    if not cfg.clinical_context:
        return None
    from mlcore.clinical import fit_adjustment

    contexts = contexts_of(train_records)
    adj = fit_adjustment(train_logits, m_train, contexts,
                         sample_weight=class_weights_for(m_train, cfg.class_weight_power), l2=cfg.clinical_l2)
    _emit(f"[train] clinical context fitted on {sum(c.known for c in contexts)} of {len(contexts)} training images")
    return adj


def calibrate_logits(logits: np.ndarray, m_val, cfg: TrainConfig, lesions: np.ndarray | None = None) -> dict:
    """Temperature and thresholds from validation logits (see ``calibrate``). ``lesions`` (one id
    per image) makes the operating points' bootstrap resample lesions, not images; those figures
    are in-sample, since the thresholds are chosen on the same images."""
    from .evaluate import operating_point_report, targets
    from mlcore.scoring import (SCORE_HISTOGRAM_KEY, Thresholds, fit_temperature, malignancy_score,
                                melanoma_probability, score_histogram, set_nll, softmax_with_temperature,
                                threshold_for_sensitivity)

    temp = fit_temperature(logits, m_val)
    p1 = softmax_with_temperature(logits, 1.0)
    p = softmax_with_temperature(logits, temp)
    t = targets(m_val)
    mel, mal = melanoma_probability(p), malignancy_score(p)
    thr = Thresholds(melanoma=threshold_for_sensitivity(mel, t["melanoma"], cfg.target_sensitivity),
                     malignancy=threshold_for_sensitivity(mal, t["malignant"], cfg.target_sensitivity))
    return {
        "temperature": temp,
        "thresholds": thr,
        "validation": {
            "nll_before": set_nll(p1, m_val), "nll_after": set_nll(p, m_val),
            "target_sensitivity": cfg.target_sensitivity,
            "melanoma_auc": _auc_or_nan(t["melanoma"], mel),
            "malignancy_auc": _auc_or_nan(t["malignant"], mal),
            "tta": cfg.tta,
            # the reference the admin's monitoring compares production scores with (PSI)
            SCORE_HISTOGRAM_KEY: score_histogram(mel),
            "melanoma": operating_point_report(mel, t["melanoma"], thr.melanoma, cfg.bootstrap, cfg.seed, lesions),
            "malignancy": operating_point_report(mal, t["malignant"], thr.malignancy, cfg.bootstrap, cfg.seed + 1,
                                                 lesions),
            "bootstrap_unit": "image" if lesions is None else "lesion",
        },
    }


@dataclass
class PreparedData:
    """The audited records, their lesion-level split and the decoded images (train, val, test in
    that order; ``slices`` says where each split lies)."""

    audit: object
    split: dict
    records: list
    images: np.ndarray
    masks: np.ndarray
    slices: dict
    kept_out: dict


def _phase(on_progress, phase: str, **extra) -> None:
    if on_progress is not None:
        on_progress({"phase": phase, **extra})


def prepare_data(cfg: TrainConfig, data_root: Path, cache_dir: Path | None, *,
                 sources: Sequence[str] | None = None, extra_records: Sequence = (), benchmark=None,
                 on_progress: Callable[[dict], None] | None = None) -> PreparedData:
    """Audit, split by lesion (the frozen benchmark pinned to test) and decode the images: the
    data every training run starts from, the same for `train` and for a data pack
    (`training.accelerated`)."""
    from .audit import audit_records
    from .cache import load_images
    from .data import load_sources
    from mlcore.labels import mask_from_classes
    from .benchmark import check_not_in_training, current_benchmark, frozen_groups
    from .splits import split_by_lesion

    _phase(on_progress, "auditing data")
    load = load_sources(data_root, sources, extra_records)
    if not load.records:
        raise ValueError("no training images: check the data sources")
    audit = audit_records(load, cache_file=(Path(cache_dir) / "image_hashes.json") if cache_dir else None,
                          on_item=_counting(heartbeat(on_progress, {"phase": "auditing data"})))
    _emit(f"[train] audit: {json.dumps(audit.report['counts']['resolution'])} clean={len(audit.records)}")
    benchmark = benchmark or current_benchmark()
    frozen = frozen_groups(benchmark, audit.records, audit.groups, audit.aliases)
    pinned = warm_start_split(cfg, audit.aliases)
    split = split_by_lesion(audit.records, audit.groups, seed=cfg.effective_split_seed, val_fraction=cfg.val_fraction,
                            test_fraction=cfg.test_fraction, test_only=frozen, pinned=pinned)
    if pinned:
        _emit(f"[train] the split of {split_source(cfg)} kept for "
              f"{sum(i in pinned for ids in split.values() for i in ids)} images")
    by_id = {r.isic_id: r for r in audit.records}
    # the point where the training and validation sets are fixed: refuse any benchmark lesion
    check_not_in_training(benchmark, {s: [by_id[i] for i in split[s]] for s in ("train", "val")},
                          groups=audit.groups, frozen=frozen, aliases=audit.aliases)
    # and any network this run starts from or learns from that has already seen one: the benchmark
    # would pin such a lesion to test, and the candidate would be compared on what it has learnt
    for role, model_dir in started_from(cfg).items():
        seen = fitted_ids(model_dir, audit.aliases)
        check_not_in_training(benchmark, {f"{role} ({model_dir}) train/val": [by_id[i] for i in seen if i in by_id]},
                              groups=audit.groups, frozen=frozen, aliases=audit.aliases)
    kept_out = {**benchmark.summary(), "kept_out_of": ["train", "val"], "lesion_groups_in_data": len(frozen),
                "images_in_test": len(set(split["test"]) & benchmark.image_ids)}
    _emit(f"[train] frozen benchmark {benchmark.version}: {len(frozen)} lesion groups kept out of training")
    recs = [by_id[i] for s in ("train", "val", "test") for i in split[s]]
    _phase(on_progress, "loading images", images=len(recs))
    images = load_images([r.path for r in recs], cfg.image_size, cache_dir, framing=cfg.framing,
                         on_item=_counting(heartbeat(on_progress, {"phase": "loading images", "images": len(recs)})))
    masks = np.stack([mask_from_classes(r.allowed) for r in recs])
    n_tr, n_va = len(split["train"]), len(split["val"])
    sl = {"train": slice(0, n_tr), "val": slice(n_tr, n_tr + n_va), "test": slice(n_tr + n_va, None)}
    _emit("[train] split sizes: " + ", ".join(f"{k}={len(v)}" for k, v in split.items()))
    return PreparedData(audit, split, recs, images, masks, sl, kept_out)


def train(cfg: TrainConfig, data_root: Path, out_dir: Path, cache_dir: Path | None,
          version: str | None = None, verbose: int = 1, *, sources: Sequence[str] | None = None,
          extra_records: Sequence = (), on_progress: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, benchmark=None, fitted=None,
          data: PreparedData | None = None) -> Path:
    """Audit, split by lesion, train, calibrate, evaluate on the held-out split and export.

    ``sources`` keeps only those datasets ("isic-9class", "ham10000"); ``extra_records`` (e.g.
    dermatologist-reviewed images) join before the audit, so de-duplication and the lesion-level
    split apply to them too. The lesions of ``benchmark`` (default: the current frozen benchmark,
    ``training.benchmark``) are pinned to the test split and never trained, validated or
    calibrated on; the model card records which benchmark version was kept out. ``fitted``
    (model, history) skips the training loop: a network trained elsewhere on this very split
    (`training.accelerated`) is calibrated, evaluated and exported here; ``data`` is the
    `prepare_data` result when the caller already has it.
    """
    from .artifact import export_artifact
    from .evaluate import evaluate_probs
    from mlcore.scoring import SCORE_HISTOGRAM_KEY, softmax_with_temperature
    from .subgroups import lesion_ids_of, subgroup_labels

    t_start = time.time()
    _emit(f"[train] config {json.dumps(cfg.to_dict())}")

    def progress(phase: str, **extra) -> None:
        _phase(on_progress, phase, **extra)

    if data is None:
        data = prepare_data(cfg, data_root, cache_dir, sources=sources, extra_records=extra_records,
                            benchmark=benchmark, on_progress=on_progress)
    audit, split, recs, images, masks, sl, kept_out = (data.audit, data.split, data.records, data.images,
                                                       data.masks, data.slices, data.kept_out)
    if fitted is None:
        model, history = fit_model(cfg, images[sl["train"]], masks[sl["train"]], images[sl["val"]],
                                   masks[sl["val"]], verbose=verbose, on_progress=on_progress,
                                   should_stop=should_stop, sources=[r.source for r in recs[sl["train"]]],
                                   contexts=contexts_of(recs[sl["train"]]),
                                   run_deadline=t_start + cfg.run_budget_min * 60.0 if cfg.run_budget_min > 0 else None,
                                   finish_passes=finishing_passes(cfg, *(len(split[k]) for k in ("train", "val", "test"))))
    else:
        model, history = fitted
    progress("calibrating and evaluating")
    cfg, history["tta_choice"], val_outputs = choose_tta(model, cfg, images[sl["val"]], masks[sl["val"]])
    outputs = SplitOutputs(model, cfg.tta, {k: images[sl[k]] for k in ("train", "val", "test")},
                           known={"val": val_outputs} if val_outputs is not None else None)
    clinical = (fit_clinical(cfg, outputs.logits("train"), masks[sl["train"]], recs[sl["train"]])
                if cfg.clinical_context else None)
    cal = calibrate_logits(outputs.logits("val", clinical=clinical, records=recs[sl["val"]]), masks[sl["val"]], cfg,
                           lesions=lesion_ids_of(recs[sl["val"]], audit.groups))
    _emit(f"[train] temperature={cal['temperature']:.3f} thresholds={cal['thresholds'].to_dict()}")
    probs = softmax_with_temperature(outputs.logits("test", clinical=clinical, records=recs[sl["test"]]),
                                     cal["temperature"])
    metrics = evaluate_probs(probs, masks[sl["test"]], cal["thresholds"], cfg.bootstrap, cfg.seed,
                             groups=subgroup_labels(recs[sl["test"]]), lesions=lesion_ids_of(recs[sl["test"]], audit.groups))
    _emit("[train] TEST melanoma_auc={:.4f} malignancy_auc={:.4f} bacc7={:.4f} bacc9={:.4f} "
          "mel sens/spec={:.3f}/{:.3f}".format(
              metrics["melanoma_auc"], metrics["malignancy_auc"], metrics["balanced_accuracy_7"],
              metrics.get("balanced_accuracy_9", float("nan")),
              metrics["operating_points"]["melanoma"]["sensitivity"],
              metrics["operating_points"]["melanoma"]["specificity"]))
    # a network fitted elsewhere (``fitted``): its training time counts as well
    history["total_seconds"] = time.time() - t_start + (history.get("train_seconds", 0.0) if fitted else 0.0)
    metrics[SCORE_HISTOGRAM_KEY] = cal["validation"][SCORE_HISTOGRAM_KEY]  # the registry reads metrics
    out = export_artifact(
        model, Path(out_dir), cfg=cfg, temperature=cal["temperature"], thresholds=cal["thresholds"],
        validation=cal["validation"], metrics=metrics, history=history, audit_report=audit.report,
        split=split, test_probs=probs, test_masks=masks[sl["test"]], version=version,
        data_sources=sorted({src for r in audit.records for src in r.source.split("+")}), clinical=clinical,
        benchmark=kept_out)
    if cfg.assessment:
        progress("fitting the quality, out-of-domain and prediction-set checks")
        from mlcore.artifact import read_card
        from .assessment import assess, save as save_assessment

        assessment, detector = assess(model, read_card(out), {
            k: (recs[sl[k]], images[sl[k]]) for k in ("train", "val", "test")}, Path(data_root), outputs=outputs)
        save_assessment(out, assessment, detector)
        measured = assessment["measured"]
        _emit("[train] assessment: ood threshold={} test not assessable={:.3f} non-dermoscopic caught={}/{}".format(
            (assessment.get("ood") or {}).get("threshold"), measured["test"]["not_assessable_rate"],
            measured["non_dermoscopic"]["not_assessable"], measured["non_dermoscopic"]["images"]))
    total = time.time() - t_start + (history.get("train_seconds", 0.0) if fitted else 0.0)
    if cfg.assessment:
        from .artifact import record_total_minutes

        record_total_minutes(out, total)
    _emit(f"[train] exported {out} in {total / 60:.1f} min")
    return out
