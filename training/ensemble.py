"""Ensembles: several CNNs trained on the same lesion split, combined into one Keras model that
averages their logits.

The combined model is an ordinary Keras model (input -> member_0, member_1, ... -> mean), so
everything that takes a model (calibration, the clinical offset, the fast runners, the promotion
gate) takes an ensemble unchanged; Grad-CAM explains it through every member's last conv layer
(``conv_members``). Its weights are stored as float16 inside ``model.keras`` (half the size; the
stock Keras loader reads them into float32 variables), and the ensemble is calibrated and
evaluated on exactly those rounded weights, so the figures describe what ships.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from mlcore.keras_model import MEMBER_PREFIX
from training.time_limits import TIME_LIMIT_EXCEPTIONS, is_time_limit  # noqa: F401  (re-exported)

COMBINE_LAYER = "logits_mean"
WEIGHTS_ENTRY = "model.weights.h5"  # the weights file inside a .keras archive


class EnsembleError(ValueError):
    """The members cannot be combined (different splits, input sizes or classes)."""


class EnsembleMemberFailed(RuntimeError):
    """Training one member of an ensemble failed; the message names the member and the reason."""


def combine(models: Sequence, *, name: str = "ensemble"):
    """One Keras model whose logits are the mean of ``models``' logits (each a copy of a member,
    renamed ``member_<i>`` so that layer names stay unique)."""
    import keras

    if len(models) < 2:
        raise EnsembleError("an ensemble needs at least two members")
    shapes = {tuple(m.input_shape[1:]) for m in models}
    if len(shapes) != 1:
        raise EnsembleError(f"members take different inputs: {sorted(shapes)}")
    members = []
    for i, m in enumerate(models):
        copy = keras.Model.from_config({**m.get_config(), "name": f"{MEMBER_PREFIX}{i}"})
        copy.set_weights(m.get_weights())
        members.append(copy)
    inp = keras.Input(next(iter(shapes)), name="image")
    out = keras.layers.Average(name=COMBINE_LAYER, dtype="float32")([m(inp) for m in members])
    return keras.Model(inp, out, name=name)


def round_to_half(keras_model) -> None:
    """Round every float32 weight to float16 in place: the values ``save_half`` stores."""
    keras_model.set_weights([w.astype(np.float16).astype(w.dtype) if w.dtype == np.float32 else w
                             for w in keras_model.get_weights()])


def _half_weights_file(data: bytes) -> bytes:
    """A Keras weights .h5 with every float32 dataset stored as float16 (attributes kept)."""
    import h5py

    out = io.BytesIO()
    with h5py.File(io.BytesIO(data), "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(dict(src.attrs))

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                arr = obj[()]
                ds = dst.create_dataset(name, data=arr.astype(np.float16) if arr.dtype == np.float32 else arr)
            else:
                ds = dst.require_group(name)
            ds.attrs.update(dict(obj.attrs))

        src.visititems(copy)
    return out.getvalue()


def save_half(keras_model, path: Path) -> None:
    """Save like ``model.save(path)``, with float16 weights (loads with ``keras.models.load_model``
    into float32 variables; exact for a model that went through ``round_to_half``)."""
    path = Path(path)
    full = path.with_name(path.stem + ".full.keras")
    keras_model.save(full)
    try:
        with zipfile.ZipFile(full) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                dst.writestr(info, _half_weights_file(data) if info.filename == WEIGHTS_ENTRY else data)
    finally:
        full.unlink(missing_ok=True)


def member_summary(loaded) -> dict:
    """What the ensemble's model card records of one member artifact (a LoadedModel)."""
    card = loaded.card
    tr = card.get("training", {})
    m = card.get("metrics", {})
    return {
        "version": loaded.version,
        "model_sha256": card.get("model_sha256"),
        "config": tr.get("config"),
        "best_epoch": tr.get("best_epoch"),
        "epochs_run": tr.get("epochs_run"),
        "train_minutes": tr.get("train_minutes"),
        "total_minutes": tr.get("total_minutes"),
        "precision_policy": tr.get("precision_policy"),
        "clinical_context": bool(card.get("clinical_context")),
        "test_alone": {k: m.get(k) for k in ("melanoma_auc", "malignancy_auc", "balanced_accuracy_7")},
        "validation_alone": {k: card.get("validation", {}).get(k) for k in ("melanoma_auc", "malignancy_auc")},
    }


def check_compatible(members: Sequence) -> None:
    """Members must share the lesion split, input size and classes (LoadedModels)."""
    first = members[0]
    for m in members[1:]:
        for what, a, b in (("lesion split", first.card.get("split_ids"), m.card.get("split_ids")),
                           ("input size", first.input_size, m.input_size),
                           ("framing", first.framing, m.framing),
                           ("classes", first.classes, m.classes)):
            if a != b:
                raise EnsembleError(f"{m.version} and {first.version} differ in their {what}: "
                                    "an ensemble's members must be trained on the same split "
                                    "(train them with the same split_seed)")


def build_ensemble(member_dirs: Sequence[Path], out_dir: Path, data_root: Path, cache_dir: Path | None,
                   *, version: str | None = None, audit=None, assess: bool | None = None,
                   tta: str | None = None) -> dict:
    """Combine trained member artifacts into one ensemble artifact: mean of the members' logits,
    weights rounded to float16, then the clinical offset (training split), temperature and
    thresholds (validation) refitted and the held-out test split evaluated, exactly as
    ``python -m training recalibrate`` does for one model. ``audit`` (default: the audit of all
    of ``data_root``) must hold the records the members were split from. ``assess`` (default: as
    the members' config says) also fits the ensemble's quality checks, out-of-domain detector and
    prediction sets from the same pass over the splits. ``tta`` (default: the first member's mode)
    sets the views the ensemble is served with; "none" gives two members the cost of one network
    with flip2."""
    from .config import TrainConfig
    from .recalibrate import refit_and_export

    members, model, ensemble, history = load_ensemble(member_dirs)
    cfg = TrainConfig.from_dict(members[0].card["training"]["config"])
    cfg.split_seed = cfg.effective_split_seed
    if tta is not None:
        cfg.tta = tta
    default_version = "ens{}-{}".format(len(members), "+".join(m.version for m in members))
    return refit_and_export(
        model, cfg, members[0].card["split_ids"], Path(out_dir), data_root, cache_dir,
        input_size=members[0].input_size, history=history,
        version=version or default_version, data_sources=members[0].card.get("data_sources"),
        ensemble=ensemble, audit=audit, assess=cfg.assessment if assess is None else assess)


def load_ensemble(member_dirs: Sequence[Path]):
    """(members as LoadedModels, the combined model with float16-rounded weights, the card's
    ``ensemble`` entry, the members' training histories) from member artifact directories."""
    from mlcore.model_store import load_model

    members = [load_model(Path(d)) for d in member_dirs]
    check_compatible(members)
    model = combine([m.keras_model for m in members])
    round_to_half(model)
    histories = []
    for d in member_dirs:
        metrics_file = Path(d) / "metrics.json"
        histories.append(json.loads(metrics_file.read_text()).get("history", {}) if metrics_file.is_file() else {})
    ensemble = {"combine": "mean of the members' logits", "weights_storage": "float16",
                "members": [member_summary(m) for m in members]}
    return members, model, ensemble, {"members": histories}


def member_config(base, seed: int, split_seed: int):
    """``base`` (a TrainConfig) with a member's own seed, on the shared lesion split; a member is
    served with one view unless ``base`` names a mode (an ensemble already averages networks, and
    "auto" choosing flip2 per member would double its cost)."""
    from .config import TTA_AUTO, TrainConfig

    tta = "none" if base.tta == TTA_AUTO else base.tta
    return TrainConfig.from_dict({**base.to_dict(), "seed": int(seed), "split_seed": int(split_seed), "tta": tta})


def members_dir_for(out_dir: Path) -> Path:
    """Where the members of the ensemble ``out_dir`` are trained: ``<out_dir>.members``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".members")


def train_members(seeds: Sequence[int], members_dir: Path, data_root: Path, cache_dir: Path | None,
                  overrides: dict | None = None, *, split_seed: int | None = None,
                  verbose: int = 1) -> list[Path]:
    """Train one default-config model per seed (plus ``overrides``) on the split of ``split_seed``
    (default: the first seed) into ``members_dir/seed<seed>``; a member already there is kept."""
    from .artifact import CARD_FILE
    from .config import TrainConfig
    from .train import train

    split_seed = seeds[0] if split_seed is None else split_seed
    base = TrainConfig.from_dict({**TrainConfig().to_dict(), **(overrides or {})})
    out = []
    for seed in seeds:
        d = Path(members_dir) / f"seed{seed}"
        if not (d / CARD_FILE).is_file():
            train(member_config(base, seed, split_seed), data_root, d, cache_dir, verbose=verbose)
        out.append(d)
    return out


def audit_of(data_root: Path, cache_dir: Path | None, *, sources: Sequence[str] | None = None,
             extra_records: Sequence = ()):
    """The data audit ``training.train.train`` runs for these ``sources`` and ``extra_records``:
    the records its split ids refer to (the image hashes come from the cache by then)."""
    from .audit import audit_records
    from .data import load_sources

    return audit_records(load_sources(data_root, sources, extra_records),
                         cache_file=(Path(cache_dir) / "image_hashes.json") if cache_dir else None, progress=False)


def train_ensemble(cfg, seeds: Sequence[int], data_root: Path, out_dir: Path, cache_dir: Path | None, *,
                   version: str | None = None, sources: Sequence[str] | None = None, extra_records: Sequence = (),
                   on_progress: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, verbose: int = 0) -> Path:
    """Train one member per seed with the config ``cfg`` and the same data (``sources``,
    ``extra_records``: as ``training.train.train``), all on the lesion split of ``cfg.split_seed``
    (default: the first seed), into ``members_dir_for(out_dir)``; combine them into the ensemble
    artifact ``out_dir`` (``build_ensemble``) and, when ``cfg.assessment``, fit its image checks.

    ``on_progress`` gets each member's progress with ``member``/``members`` and its phase as
    "member i/n (seed s): ..."; ``should_stop`` is polled during each member and between them
    (training.train.TrainingCancelled). A member that fails raises EnsembleMemberFailed.
    """
    from .train import TrainingCancelled, train

    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise EnsembleError(f"an ensemble needs at least two members with distinct seeds, not {seeds}")
    n, out_dir = len(seeds), Path(out_dir)
    split_seed = seeds[0] if cfg.split_seed is None else cfg.split_seed
    durations: list[float] = []

    def emit(progress: dict) -> None:
        if on_progress is not None:
            on_progress(progress)

    def stop_requested() -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled("training cancelled on request")

    def member_progress(i: int, seed: int) -> Callable[[dict], None]:
        def send(progress: dict) -> None:
            progress = {**progress, "phase": f"member {i}/{n} (seed {seed}): {progress.get('phase', '')}",
                        "member": i, "members": n}
            if progress.get("eta_s") is not None:  # this member's, plus the members still to train
                per_member = sum(durations) / len(durations) if durations else cfg.time_budget_min * 60.0
                progress["eta_s"] = progress["eta_s"] + (n - i) * per_member
            emit(progress)
        return send

    member_dirs = []
    for i, seed in enumerate(seeds, 1):
        stop_requested()
        started = time.time()
        d = members_dir_for(out_dir) / f"seed{seed}"
        try:
            train(member_config(cfg, seed, split_seed), data_root, d, cache_dir,
                  version=f"{version}-member{i}-seed{seed}" if version else None, verbose=verbose, sources=sources,
                  extra_records=extra_records, on_progress=member_progress(i, seed), should_stop=should_stop)
        except TrainingCancelled:
            raise
        except Exception as exc:
            if is_time_limit(exc):  # the task's own limit, not this member's fault: its handler says so
                raise
            raise EnsembleMemberFailed(f"member {i}/{n} (seed {seed}) failed: {type(exc).__name__}: {exc}") from exc
        durations.append(time.time() - started)
        member_dirs.append(d)
    stop_requested()
    emit({"phase": f"combining the {n} members into one model", "members": n})
    audit = audit_of(data_root, cache_dir, sources=sources, extra_records=extra_records)
    build_ensemble(member_dirs, out_dir, data_root, cache_dir, version=version, audit=audit, assess=cfg.assessment)
    return out_dir
