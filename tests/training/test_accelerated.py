"""training.accelerated: the data pack, the NumPy augmentation, fit-pack, load_fitted, finish and
the fit-pack CLI, on tiny synthetic images (32 px) and a tiny scratch network."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("cv2")

from training.accelerated import (PACK_FIXED, _ids_digest, augment_images, finish, fit_pack, load_fitted,
                                  read_pack, write_pack)
from training.config import TrainConfig
from training.testing import synthetic_images

SIZE = 32
N_TRAIN, N_VAL, N_TEST = 48, 18, 9
OFF = dict(aug_rotate=False, aug_zoom=0.0, aug_zoom_out=0.0, aug_color=0.0, aug_device=0.0, aug_hair=0.0)


def tiny_cfg(**changes) -> TrainConfig:
    cfg = TrainConfig(backbone="scratch", width=8, stages=(1,), image_size=SIZE, epochs=2, batch_size=8,
                      mixed_precision="fp32", time_budget_min=0, average_tail=0.0,
                      colour_constancy="shades_of_gray", learning_rate=3e-3, seed=5, source_balance=0.5)
    return dataclasses.replace(cfg, **changes)


def _dihedral8(img: np.ndarray) -> list[np.ndarray]:
    out = []
    for t in (img, img.transpose(1, 0, 2)):
        out += [t, t[:, ::-1], t[::-1], t[::-1, ::-1]]
    return out


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)


# --- augment_images ----------------------------------------------------------------------------

def test_augment_keeps_shape_dtype_and_range():
    x = _images()
    y = augment_images(x, np.random.default_rng(0), TrainConfig(image_size=SIZE))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 255.0
    assert not np.array_equal(y, x.astype(np.float32))


def test_augment_is_deterministic_per_seed_and_varies_across_seeds():
    x, cfg = _images(), TrainConfig(image_size=SIZE, aug_hair=0.5)
    from training.model import hair_masks

    bank = hair_masks(count=8, size=SIZE)
    a = augment_images(x, np.random.default_rng(11), cfg, bank)
    b = augment_images(x, np.random.default_rng(11), cfg, bank)
    c = augment_images(x, np.random.default_rng(12), cfg, bank)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_augment_with_everything_off_is_a_dihedral_transform():
    x = _images(n=16, seed=3)
    cfg = TrainConfig(image_size=SIZE, **OFF)
    seen = set()
    for seed in range(4):
        y = augment_images(x, np.random.default_rng(seed), cfg)
        for i in range(len(x)):
            errs = [np.abs(y[i] - d.astype(np.float32)).max() for d in _dihedral8(x[i])]
            k = int(np.argmin(errs))
            assert errs[k] <= 1.0, f"image {i} (seed {seed}) is no flip/transpose of its input"
            seen.add(k)
    assert len(seen) >= 6  # the flips really are random: most of the 8 transforms occur


@pytest.mark.parametrize("bank_size", [SIZE, 48])  # 48: the bank is resized to the images
def test_augment_hair_darkens_some_pixels(bank_size):
    from training.model import hair_masks

    x = np.full((8, SIZE, SIZE, 3), 220, np.uint8)
    bank = hair_masks(count=8, size=bank_size)
    bank_before = bank.copy()
    cfg = TrainConfig(image_size=SIZE, **{**OFF, "aug_hair": 1.0})
    y = augment_images(x, np.random.default_rng(0), cfg, bank)
    assert y.shape == x.shape and y.min() >= 0.0
    darker = y < 220.0 - 20.0
    assert darker.any(axis=(1, 2, 3)).all()  # hairs on every image (aug_hair=1.0)
    assert (y <= 220.0 + 1e-3).all()  # hairs only darken
    assert darker.mean() < 0.5  # strands, not a dark image
    np.testing.assert_array_equal(bank, bank_before)  # the shared bank is not altered
    # without a bank (or with aug_hair=0) there are no hairs
    np.testing.assert_allclose(augment_images(x, np.random.default_rng(0), cfg), 220.0, atol=1e-3)
    cfg0 = TrainConfig(image_size=SIZE, **OFF)
    np.testing.assert_allclose(augment_images(x, np.random.default_rng(0), cfg0, bank), 220.0, atol=1e-3)


# --- the pack ----------------------------------------------------------------------------------

def _fake_prepare_data(shift: int = 0):
    """A stand-in for training.train.prepare_data: synthetic train, val and test images of a
    fixed split (``shift`` renames the images, i.e. another split)."""
    from mlcore.labels import ham_code_of
    from training.data import ImageRecord
    from training.train import PreparedData

    def prepare(cfg, data_root, cache_dir, **_):
        n = N_TRAIN + N_VAL + N_TEST
        images, masks, sets = synthetic_images(n, size=cfg.image_size, seed=21)
        ids = [f"SYN_{i + shift:04d}" for i in range(n)]
        records = [ImageRecord(path="", isic_id=ids[i], lesion_id=ids[i], allowed=s,
                               source=("isic-9class", "ham10000")[i % 3 == 0], ham_code=ham_code_of(s))
                   for i, s in enumerate(sets)]
        split = {"train": ids[:N_TRAIN], "val": ids[N_TRAIN:N_TRAIN + N_VAL], "test": ids[N_TRAIN + N_VAL:]}
        sl = {"train": slice(0, N_TRAIN), "val": slice(N_TRAIN, N_TRAIN + N_VAL),
              "test": slice(N_TRAIN + N_VAL, None)}
        return PreparedData(None, split, records, images, masks, sl, {})

    return prepare


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(pack path, write_pack summary, the fake prepared data) for `tiny_cfg`."""
    import training.train

    prepare = _fake_prepare_data()
    path = tmp_path_factory.mktemp("pack") / "sub" / "tiny.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.train, "prepare_data", prepare)
        summary = write_pack(tiny_cfg(), tmp_path_factory.mktemp("data"), None, path)
    return path, summary, prepare(tiny_cfg(), None, None)


def test_write_pack_summary_and_contents(packed):
    path, summary, data = packed
    ids = list(data.split["train"]) + list(data.split["val"])
    assert summary["train"] == N_TRAIN and summary["val"] == N_VAL
    assert summary["bytes"] == path.stat().st_size > 0
    assert summary["split_digest"] == _ids_digest(ids)
    with np.load(path) as z:
        assert len(z["offsets"]) == N_TRAIN + N_VAL + 1  # no test image in the pack
        assert z["offsets"][-1] == len(z["encoded"])
        assert z["masks"].dtype == np.uint8


def test_read_pack_round_trip(packed):
    from training.train import class_weights_for, source_balance_weights

    path, summary, data = packed
    pack = read_pack(path, threads=2)
    n = N_TRAIN + N_VAL
    assert pack["x_train"].shape == (N_TRAIN, SIZE, SIZE, 3) and pack["x_val"].shape == (N_VAL, SIZE, SIZE, 3)
    assert pack["x_train"].dtype == np.uint8
    # WebP is lossy (the synthetic images carry per-pixel noise, its worst case), but close; RGB
    # order is kept (a swapped channel order would be far off)
    decoded = np.concatenate([pack["x_train"], pack["x_val"]]).astype(np.float32)
    mae = np.abs(decoded - data.images[:n].astype(np.float32)).mean()
    assert mae < 9.0, mae
    swapped = np.abs(decoded - data.images[:n, ..., ::-1].astype(np.float32)).mean()
    assert swapped > 4 * mae
    np.testing.assert_array_equal(pack["m_train"], data.masks[:N_TRAIN])
    np.testing.assert_array_equal(pack["m_val"], data.masks[N_TRAIN:n])
    assert pack["m_train"].dtype == np.float32
    cfg = tiny_cfg()
    m_tr = data.masks[:N_TRAIN]
    w = class_weights_for(m_tr, cfg.class_weight_power) * source_balance_weights(
        m_tr, [r.source for r in data.records[:N_TRAIN]], cfg.source_balance)
    np.testing.assert_allclose(pack["w_train"], w / w.mean(), rtol=1e-5)
    assert pack["w_train"].mean() == pytest.approx(1.0, rel=1e-5)
    assert list(pack["sources"]) == [r.source for r in data.records[:n]]
    assert TrainConfig.from_dict(pack["config"]) == cfg
    assert pack["split_digest"] == summary["split_digest"]


# --- fit_pack and load_fitted ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(packed, tmp_path_factory):
    """(pack, config, out dir, history) of a fit_pack run on the tiny pack."""
    pack = read_pack(packed[0], threads=2)
    cfg = TrainConfig.from_dict(pack["config"])
    out = tmp_path_factory.mktemp("fitted")
    history = fit_pack(pack, cfg, out, "tiny", threads=2, log_file=out / "fit.log")
    return pack, cfg, out, history


def _logits(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_on_batch(x.astype(np.float32)), np.float32)


def test_fit_pack_writes_weights_and_history(fitted):
    pack, cfg, out, history = fitted
    assert (out / "tiny.weights.npz").is_file()
    saved = json.loads((out / "tiny.history.json").read_text())
    for k in ("loss", "val_loss", "val_melanoma_auc", "val_malignancy_auc", "val_balanced_accuracy_7", "lr",
              "epoch_seconds", "train_size"):
        assert len(saved[k]) == 2, k
    assert all(math.isfinite(v) for v in saved["loss"] + saved["val_loss"])
    assert saved["best_epoch"] in (1, 2)
    assert saved["train_size"] == [SIZE, SIZE]
    assert saved["split_digest"] == pack["split_digest"]
    assert TrainConfig.from_dict(saved["config"]) == cfg
    assert saved["stopped_early"] is False and saved["precision_policy"] == "float32"
    assert "weight_average" not in saved  # average_tail=0: off
    # the learning rate of each epoch's last step: warm-up over the first epoch (6 steps), then cosine
    steps = N_TRAIN // cfg.batch_size
    assert saved["lr"][0] == pytest.approx(cfg.learning_rate)
    assert saved["lr"][1] == pytest.approx(cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps)))
    assert saved["best_epoch"] == history["best_epoch"]
    assert (out / "fit.log").read_text().count("[epoch ") == 2


def test_load_fitted_restores_the_saved_best_epoch(fitted):
    from training.train import _val_metrics, selection_score

    pack, cfg, out, history = fitted
    model = load_fitted(cfg, out / "tiny.weights.npz")
    with np.load(out / "tiny.weights.npz") as z:
        saved = {k: z[k] for k in z.files}
    assert len(saved) == len(model.weights)  # one entry per variable: the paths are unique
    for v in model.weights:
        np.testing.assert_array_equal(np.asarray(v.numpy()), saved[v.path])
    assert all(v.dtype == "float32" for v in model.weights)
    # they are the trained weights, not the initialisation
    fresh = cfg.build_model()
    assert any(not np.array_equal(np.asarray(a.numpy()), saved[a.path]) for a in fresh.weights)
    # and they are the best epoch's: its validation figures come out again
    best = history["best_epoch"] - 1
    vm = _val_metrics(_logits(model, pack["x_val"]), pack["m_val"])
    assert vm["val_loss"] == pytest.approx(history["val_loss"][best], rel=1e-4, abs=1e-5)
    assert selection_score(vm) == pytest.approx(max(selection_score({k: history[k][e] for k in vm})
                                                    for e in range(2)), abs=1e-6)
    # a second load predicts the same
    np.testing.assert_allclose(_logits(load_fitted(cfg, out / "tiny.weights.npz"), pack["x_val"]),
                               _logits(model, pack["x_val"]), rtol=1e-6, atol=1e-6)


def test_load_fitted_refuses_missing_or_misshapen_variables(fitted, tmp_path):
    _, cfg, out, _ = fitted
    with np.load(out / "tiny.weights.npz") as z:
        saved = {k: z[k] for k in z.files}
    first = sorted(saved)[0]
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in saved.items() if k != first})
    with pytest.raises(ValueError, match="missing"):
        load_fitted(cfg, tmp_path / "missing.npz")
    kernel = next(k for k, v in saved.items() if v.ndim == 4)
    np.savez(tmp_path / "shape.npz", **{**saved, kernel: np.zeros(saved[kernel].shape[:-1] + (1,), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        load_fitted(cfg, tmp_path / "shape.npz")
    # another architecture's weights are refused too
    with pytest.raises(ValueError):
        load_fitted(dataclasses.replace(cfg, width=16), out / "tiny.weights.npz")


def test_fit_pack_keeps_the_tail_average_only_if_it_scores_better(packed, tmp_path):
    from training.train import _val_metrics, selection_score

    pack = read_pack(packed[0], threads=2)
    # average_tail=1.0: every epoch after the warm-up (the first) joins the average
    cfg = dataclasses.replace(TrainConfig.from_dict(pack["config"]), average_tail=1.0, epochs=3)
    history = fit_pack(pack, cfg, tmp_path, "avg", threads=2)
    avg = history["weight_average"]
    assert avg["epochs"] >= 2 and isinstance(avg["used"], bool)
    best_score = max(selection_score({k: history[k][e] for k in ("val_loss", "val_melanoma_auc",
                                                                  "val_malignancy_auc", "val_balanced_accuracy_7")})
                     for e in range(3))
    assert avg["used"] == (selection_score(avg) > best_score)
    saved = json.loads((tmp_path / "avg.history.json").read_text())
    assert saved["weight_average"] == pytest.approx(avg)
    # the weights written are the average's when it is used, else the best epoch's
    vm = _val_metrics(_logits(load_fitted(cfg, tmp_path / "avg.weights.npz"), pack["x_val"]), pack["m_val"])
    expected = avg["val_loss"] if avg["used"] else history["val_loss"][history["best_epoch"] - 1]
    assert vm["val_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


# --- finish ------------------------------------------------------------------------------------

def test_finish_hands_the_fitted_network_to_train(fitted, monkeypatch, tmp_path):
    import training.train

    pack, cfg, out, history = fitted
    calls = {}

    def fake_train(cfg_, data_root, out_dir, cache_dir, version=None, fitted=None, **kw):
        calls.update(cfg=cfg_, out_dir=out_dir, version=version, fitted=fitted)
        return out_dir

    monkeypatch.setattr(training.train, "prepare_data", _fake_prepare_data())
    monkeypatch.setattr(training.train, "train", fake_train)
    res = finish(out / "tiny.weights.npz", out / "tiny.history.json", tmp_path, tmp_path / "art", None,
                 version="v-test")
    assert res == tmp_path / "art" and calls["version"] == "v-test"
    assert calls["cfg"] == cfg
    model, hist = calls["fitted"]
    assert "config" not in hist and hist["train_seconds"] == history["train_seconds"]
    assert hist["best_epoch"] == history["best_epoch"]
    ref = load_fitted(cfg, out / "tiny.weights.npz")
    np.testing.assert_allclose(_logits(model, pack["x_val"]), _logits(ref, pack["x_val"]), rtol=1e-6, atol=1e-6)


def test_finish_refuses_weights_of_another_split(fitted, monkeypatch, tmp_path):
    import training.train

    _, _, out, _ = fitted
    monkeypatch.setattr(training.train, "prepare_data", _fake_prepare_data(shift=1))
    monkeypatch.setattr(training.train, "train", lambda *a, **k: pytest.fail("train must not run"))
    with pytest.raises(ValueError, match="another split"):
        finish(out / "tiny.weights.npz", out / "tiny.history.json", tmp_path, tmp_path / "art", None)


# --- the fit-pack CLI --------------------------------------------------------------------------

@pytest.mark.parametrize("override", ["image_size=64", "split_seed=3", "val_fraction=0.2"])
def test_fit_pack_cli_refuses_overriding_what_the_pack_fixes(packed, tmp_path, monkeypatch, capsys, override):
    import training.accelerated
    from training.__main__ import main

    assert override.partition("=")[0] in PACK_FIXED
    monkeypatch.setattr(training.accelerated, "fit_pack", lambda *a, **k: pytest.fail("fit_pack must not run"))
    with pytest.raises(SystemExit) as exc:
        main(["fit-pack", "--pack", str(packed[0]), "--out", str(tmp_path), "--name", "x", "--set", override])
    assert exc.value.code == 2
    assert "the pack fixes " + override.partition("=")[0] in capsys.readouterr().err


def test_fit_pack_cli_trains_with_the_packs_config_and_other_overrides(packed, tmp_path, monkeypatch):
    import training.accelerated
    from training.__main__ import main

    calls = {}

    def fake_fit(pack, cfg, out, name, **kw):
        calls.update(pack=pack, cfg=cfg, out=out, name=name, **kw)

    monkeypatch.setattr(training.accelerated, "fit_pack", fake_fit)
    rc = main(["fit-pack", "--pack", str(packed[0]), "--out", str(tmp_path), "--name", "m1", "--set", "epochs=3",
               "--set", "learning_rate=0.01", "--deadline", "123.5", "--threads", "2"])
    assert rc == 0
    assert calls["cfg"] == dataclasses.replace(tiny_cfg(), epochs=3, learning_rate=0.01)
    assert calls["name"] == "m1" and calls["out"] == tmp_path
    assert calls["deadline"] == 123.5 and calls["threads"] == 2
    assert calls["pack"]["split_digest"] == packed[1]["split_digest"]
