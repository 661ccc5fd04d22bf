import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mlcore.labels import CLASSES, HAM_TO_CLASSES, mask_from_classes
from training.model import LAST_CONV, augment_batch, build_model, set_loss


def test_ambiguous_label_loss_matches_formula():
    logits = np.array([[1.0, 0.2, -0.5, 2.0, 0.3, 0.0, 1.2, 0.7, -1.0]], np.float32)
    p = np.exp(logits) / np.exp(logits).sum()
    m = mask_from_classes(HAM_TO_CLASSES["bkl"])[None]
    got = float(set_loss(0.0)(tf.constant(m), tf.constant(logits))[0])
    allowed = [CLASSES.index(c) for c in HAM_TO_CLASSES["bkl"]]
    assert got == pytest.approx(-np.log(p[0, allowed].sum()), rel=1e-5)
    # single label = ordinary cross-entropy
    m1 = mask_from_classes({"melanoma"})[None]
    got1 = float(set_loss(0.0)(tf.constant(m1), tf.constant(logits))[0])
    assert got1 == pytest.approx(-np.log(p[0, 3]), rel=1e-5)


def test_loss_gradient_does_not_prefer_one_allowed_class():
    logits = tf.Variable(np.zeros((1, 9), np.float32))
    m = tf.constant(mask_from_classes(HAM_TO_CLASSES["akiec"])[None])
    with tf.GradientTape() as tape:
        loss = set_loss(0.0)(m, logits)
    g = tape.gradient(loss, logits).numpy()[0]
    a, s = CLASSES.index("actinic keratosis"), CLASSES.index("squamous cell carcinoma")
    assert g[a] == pytest.approx(g[s]) and g[a] < 0


def test_malignancy_term_adds_the_group_cross_entropy():
    from mlcore.labels import MALIGNANT_INDICES

    logits = np.array([[1.0, 0.2, -0.5, 2.0, 0.3, 0.0, 1.2, 0.7, -1.0]], np.float32)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    p_mal = p[list(MALIGNANT_INDICES)].sum()
    for classes, group_nll in ((HAM_TO_CLASSES["mel"], -np.log(p_mal)),
                               (HAM_TO_CLASSES["akiec"], -np.log(p_mal)),  # two malignant classes
                               (HAM_TO_CLASSES["bkl"], -np.log(1.0 - p_mal)),  # two benign ones
                               (HAM_TO_CLASSES["nv"], -np.log(1.0 - p_mal))):
        m = mask_from_classes(classes)[None]
        plain = float(set_loss(0.05)(tf.constant(m), tf.constant(logits))[0])
        got = float(set_loss(0.05, malignancy_weight=0.5)(tf.constant(m), tf.constant(logits))[0])
        assert got == pytest.approx(plain + 0.5 * group_nll, rel=1e-5), classes
    # a label set that mixes the groups has no malignant/benign target: nothing is added
    mixed = mask_from_classes({"melanoma", "nevus"})[None]
    assert float(set_loss(0.0, malignancy_weight=2.0)(tf.constant(mixed), tf.constant(logits))[0]) == \
        pytest.approx(float(set_loss(0.0)(tf.constant(mixed), tf.constant(logits))[0]), rel=1e-6)


def test_malignancy_weight_is_validated():
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="malignancy_weight"):
        TrainConfig(malignancy_weight=-1.0)


def test_model_shapes_and_last_conv():
    m = build_model(32, width=8, stages=(1, 1))
    out = m(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 9)
    assert m.get_layer(LAST_CONV) is not None
    assert m.output.dtype == "float32"


@pytest.mark.parametrize("size", [32, 36])  # 36: odd feature-map sizes after striding
def test_stride4_stem_halves_the_feature_maps(size):
    m2 = build_model(size, width=8, stages=(1, 1))
    m4 = build_model(size, width=8, stages=(1, 1), stem_stride=4)
    assert m4(np.zeros((2, size, size, 3), np.float32)).shape == (2, 9)
    s2 = m2.get_layer(LAST_CONV).output.shape[1]
    s4 = m4.get_layer(LAST_CONV).output.shape[1]
    assert s4 == -(-s2 // 2)


def test_unknown_stem_stride_is_refused():
    with pytest.raises(ValueError, match="stem_stride"):
        build_model(32, width=8, stages=(1, 1), stem_stride=3)


def test_augmentation_keeps_shape_and_range():
    x = tf.constant(np.random.default_rng(0).integers(0, 255, (4, 24, 24, 3)).astype(np.float32))
    y = augment_batch(x, tf.random.Generator.from_seed(1))
    assert y.shape == x.shape
    assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255


@pytest.mark.slow
def test_weight_average_of_the_schedule_tail_is_kept_only_if_better_on_validation():
    from dataclasses import replace

    from training.testing import synthetic_images, tiny_config
    from training.train import fit_model

    cfg = replace(tiny_config(seed=3), epochs=3, average_tail=1.0)  # 1.0: every epoch joins the average
    x_tr, m_tr, _ = synthetic_images(96, seed=3)
    x_va, m_va, _ = synthetic_images(48, seed=4)
    model, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0)
    avg = history["weight_average"]
    assert avg["epochs"] == len(history["loss"]) == 3
    assert isinstance(avg["used"], bool)
    best_score = max(np.mean([a, b, c]) for a, b, c in zip(
        history["val_melanoma_auc"], history["val_malignancy_auc"], history["val_balanced_accuracy_7"]))
    assert avg["used"] == (np.mean([avg["val_melanoma_auc"], avg["val_malignancy_auc"],
                                    avg["val_balanced_accuracy_7"]]) > best_score)
    assert model.output.shape[-1] == 9


def test_progressive_size_grows_to_full_size_and_stays_there():
    from training.model import progressive_size

    sizes = [progressive_size(p / 10, full=160, smallest=96, until=0.5) for p in range(11)]
    assert sizes[0] == 96 and sizes[5:] == [160] * 6
    assert sizes == sorted(sizes) and all(s % 32 == 0 for s in sizes)
    assert progressive_size(0.0, full=160, smallest=0, until=0.5) == 160  # off


def test_dataset_resizes_batches_to_the_size_variable():
    from training.model import make_train_dataset
    from training.testing import synthetic_images

    x, m, _ = synthetic_images(8, size=32)
    size = tf.Variable(16, dtype=tf.int32)
    ds = make_train_dataset(x, m, np.ones(8, np.float32), batch_size=4, seed=0, size_var=size)
    assert next(iter(ds))[0].shape[1:3] == (16, 16)
    size.assign(32)
    assert next(iter(ds))[0].shape[1:3] == (32, 32)


def test_training_dataset_turns_tf_data_autotuning_off():
    """Keras makes one iterator per epoch; with tf.data autotuning on, releasing it waited for the
    autotuner's sleep (10-30 s of idle CPU at most epoch ends of a real run), and the pipeline's
    parallelism is fixed anyway."""
    from training.model import make_train_dataset
    from training.testing import synthetic_images

    x, m, _ = synthetic_images(8, size=32)
    ds = make_train_dataset(x, m, np.ones(8, np.float32), batch_size=4, seed=0)
    assert ds.options().autotune.enabled is False
    assert sum(int(b[0].shape[0]) for b in ds) == 8  # still yields every image once per epoch


@pytest.mark.slow
def test_progressive_resizing_trains_small_first_and_exports_the_full_size():
    from dataclasses import replace

    from training.testing import synthetic_images, tiny_config
    from training.train import fit_model

    cfg = replace(tiny_config(seed=5), image_size=64, epochs=4, progressive_min_size=32, progressive_until=0.5)
    x_tr, m_tr, _ = synthetic_images(64, size=64, seed=5)
    x_va, m_va, _ = synthetic_images(32, size=64, seed=6)
    model, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0)
    assert history["train_size"][0] == 32 and history["train_size"][-1] == 64
    assert tuple(model.input.shape[1:]) == (64, 64, 3)  # the exported model keeps the fixed size
    assert len(history["val_melanoma_auc"]) == 4


def test_validation_while_the_input_grows_runs_every_kth_epoch_and_always_at_full_size():
    from dataclasses import replace

    from training.testing import tiny_config
    from training.train import validates_epoch

    cfg = replace(tiny_config(), image_size=64, progressive_min_size=32, validate_growing_every=3)
    assert [validates_epoch(e, 32, cfg) for e in range(1, 7)] == [False, False, True, False, False, True]
    assert all(validates_epoch(e, 64, cfg) for e in range(1, 7))
    assert all(validates_epoch(e, 32, replace(cfg, validate_growing_every=1)) for e in range(1, 7))


@pytest.mark.slow
def test_skipped_validation_epochs_are_recorded_as_missing_and_never_chosen():
    from dataclasses import replace

    from training.testing import synthetic_images, tiny_config
    from training.train import fit_model

    cfg = replace(tiny_config(seed=5), image_size=64, epochs=5, progressive_min_size=32, progressive_until=0.9,
                  validate_growing_every=2)
    x_tr, m_tr, _ = synthetic_images(64, size=64, seed=5)
    x_va, m_va, _ = synthetic_images(32, size=64, seed=6)
    _, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0)
    validated = [v == v for v in history["val_loss"]]
    expected = [size == 64 or epoch % 2 == 0 for epoch, size in enumerate(history["train_size"], start=1)]
    assert validated == expected and not all(validated)
    assert validated[history["best_epoch"] - 1]
    assert len(history["loss"]) == 5 and all(v == v for v in history["loss"])


def test_patience_counts_only_at_full_size_once_the_learning_rate_has_annealed():
    from dataclasses import replace

    from training.testing import tiny_config
    from training.train import PATIENCE_FROM_LR_FRACTION, counts_for_patience

    cfg = replace(tiny_config(), image_size=64, learning_rate=1e-2)
    tail = PATIENCE_FROM_LR_FRACTION * 1e-2
    assert counts_for_patience(64, tail, cfg) and counts_for_patience(64, 0.0, cfg)
    assert not counts_for_patience(64, tail * 1.01, cfg)  # still high: the schedule has not annealed
    assert not counts_for_patience(32, 0.0, cfg)  # progressive resizing still growing


def test_patience_counts_only_epochs_at_the_full_size():
    from training.train import BestEpoch

    best = BestEpoch(patience=2)
    assert best.update(0.5, 1, count=False)
    # progressive resizing still growing: no new best, but patience is not used up
    for epoch in (2, 3, 4):
        assert not best.update(0.4, epoch, count=False)
    assert not best.exhausted and best.since == 0
    assert best.update(0.6, 5) and best.epoch == 5
    assert not best.update(0.6, 6)  # equal is not better
    assert not best.exhausted
    best.update(0.1, 7)
    assert best.exhausted and best.epoch == 5 and best.score == 0.6


def test_hair_occlusion_draws_thin_dark_strands_on_the_chosen_share_of_images():
    import tensorflow as tf

    from training.model import augment_batch, hair_masks

    bank = hair_masks(count=8, size=64, seed=1)
    assert bank.shape == (8, 64, 64) and bank.dtype == np.float32
    assert 0.0 <= bank.min() and bank.max() <= 1.0
    assert all(0.002 < (m > 0.5).mean() < 0.5 for m in bank)  # thin strands, never a blot
    bright = tf.constant(np.full((16, 64, 64, 3), 230.0, np.float32))
    plain = augment_batch(bright, tf.random.Generator.from_seed(0), rotate=False, zoom=0.0, color=0.0).numpy()
    haired = augment_batch(bright, tf.random.Generator.from_seed(0), rotate=False, zoom=0.0, color=0.0,
                           hair=1.0, hair_bank=tf.constant(bank)).numpy()
    assert np.allclose(plain, 230.0)
    darkened = (haired.min(axis=(1, 2, 3)) < 120.0).mean()
    assert darkened == 1.0 and haired.mean() > 150.0  # every image has dark hairs; most skin untouched


def test_source_balance_gives_every_collection_the_same_weighted_class_mix():
    from training.train import source_balance_weights

    mel, nv = mask_from_classes({"melanoma"}), mask_from_classes({"nevus"})
    # collection A: half melanomas (like the ISIC-archive copies), B: one in ten
    masks = np.stack([mel] * 50 + [nv] * 50 + [mel] * 20 + [nv] * 180)
    sources = ["A"] * 100 + ["B"] * 200
    w = source_balance_weights(masks, sources, 1.0)
    assert w.mean() == pytest.approx(1.0, abs=1e-6)
    is_mel = masks[:, CLASSES.index("melanoma")] > 0
    src = np.asarray(sources)
    share = {s: w[(src == s) & is_mel].sum() / w[src == s].sum() for s in ("A", "B")}
    assert share["A"] == pytest.approx(share["B"], abs=1e-6) == pytest.approx(70 / 300, abs=1e-6)
    assert np.allclose(source_balance_weights(masks, sources, 0.0), 1.0)
    with pytest.raises(ValueError, match="sources for"):
        source_balance_weights(masks, sources[:-1], 1.0)


def test_a_warm_start_is_recorded_by_version_and_sha256_and_a_missing_file_is_refused(tmp_path):
    import hashlib
    import json

    from training.train import describe_warm_start

    artifact = tmp_path / "v3"
    artifact.mkdir()
    (artifact / "model.keras").write_bytes(b"weights")
    (artifact / "model_card.json").write_text(json.dumps({"version": "cnn160-v3"}))
    assert describe_warm_start(artifact / "model.keras") == {
        "file": "model.keras", "sha256": hashlib.sha256(b"weights").hexdigest(), "version": "cnn160-v3",
        "keeps_split": False}
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        describe_warm_start(tmp_path / "gone.keras")


def test_a_run_warm_started_from_an_artifact_keeps_its_split(tmp_path):
    import json

    from training.config import TrainConfig
    from training.train import describe_warm_start, warm_start_split

    artifact = tmp_path / "active"
    artifact.mkdir()
    (artifact / "model.keras").write_bytes(b"weights")
    (artifact / "model_card.json").write_text(json.dumps({"version": "v3", "split_ids": {
        "train": ["A", "B"], "val": ["C", "D"], "test": ["E"]}}))
    assert describe_warm_start(artifact / "model.keras")["keeps_split"] is True
    cfg = TrainConfig(pretrained=str(artifact / "model.keras"))
    assert warm_start_split(cfg) == {"A": "train", "B": "train", "C": "val", "D": "val", "E": "test"}
    # the audit merged D into A and E into C: the kept images carry the most protective split
    assert warm_start_split(cfg, {"A": ["D"], "C": ["E"]}) == {"A": "train", "B": "train", "C": "val"}
    assert warm_start_split(TrainConfig()) == {}
    bare = tmp_path / "w.weights.h5"
    bare.write_bytes(b"w")
    assert warm_start_split(TrainConfig(pretrained=str(bare))) == {}
    # a network trained afresh can keep that split without its weights; a folder with no card is refused
    assert warm_start_split(TrainConfig(split_from=str(artifact))) == warm_start_split(cfg)
    with pytest.raises(FileNotFoundError, match="split_from"):
        warm_start_split(TrainConfig(split_from=str(tmp_path)))


def test_the_finishing_counts_every_pass_after_the_loop_at_the_served_views():
    from dataclasses import replace

    from training.config import TrainConfig
    from training.train import ASSESSMENT_EXTRA_IMAGES, finishing_passes

    cfg = TrainConfig(tta="none")  # average_tail > 0, clinical offset, assessment
    n = 7000, 1500, 1400
    # each split once (the assessment reuses those outputs), plus PH2 and the non-dermoscopic set
    assert finishing_passes(cfg, *n) == 1500 + (7000 + 1500 + 1400) + ASSESSMENT_EXTRA_IMAGES
    flip2 = finishing_passes(replace(cfg, tta="flip2"), *n)
    assert flip2 == 1500 + 2 * (9900 + ASSESSMENT_EXTRA_IMAGES)
    # the assessment alone still needs the training split's features
    assert finishing_passes(replace(cfg, clinical_context=False), *n) == finishing_passes(cfg, *n)
    # auto (the default): two passes over validation to choose, reused by the calibration; then
    # flip2's views at worst: as many passes as flip2 itself
    assert finishing_passes(TrainConfig(), *n) == flip2
    bare = replace(cfg, average_tail=0.0, clinical_context=False, assessment=False)
    assert finishing_passes(bare, *n) == 1500 + 1400


def test_the_loop_budget_is_the_configs_capped_by_what_the_run_budget_leaves():
    from training.train import loop_budget_s

    assert loop_budget_s(3300.0, remaining_s=None) == 3300.0
    assert loop_budget_s(0.0, remaining_s=None) == 0.0  # no budget at all
    assert loop_budget_s(3300.0, remaining_s=2900.0) == 2900.0
    assert loop_budget_s(3300.0, remaining_s=4000.0) == 3300.0
    assert loop_budget_s(0.0, remaining_s=2900.0) == 2900.0
    # spent: still a budget (stop after this epoch), never 0 (which would mean none)
    assert 0 < loop_budget_s(3300.0, remaining_s=-50.0) <= 1e-3


def test_a_run_budget_the_finishing_would_overrun_ends_the_loop_after_the_first_epoch():
    import time
    from dataclasses import replace

    from training.testing import synthetic_images, tiny_config
    from training.train import fit_model

    cfg = replace(tiny_config(seed=3), epochs=3)
    x_tr, m_tr, _ = synthetic_images(64, seed=3)
    x_va, m_va, _ = synthetic_images(32, seed=4)
    _, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0,
                           run_deadline=time.time() + 3600, finish_passes=1e12)
    assert len(history["loss"]) == 1  # 1e12 image passes cannot fit in the hour left
    assert history["finish_estimate_s"] > 3600 and history["run_budget_s"] == cfg.run_budget_min * 60
    assert 0 < history["loop_budget_s"] <= 1e-3
    _, history = fit_model(cfg, x_tr, m_tr, x_va, m_va, verbose=0,
                           run_deadline=time.time() + 3600, finish_passes=10.0)
    assert len(history["loss"]) == 3  # a small finishing leaves the loop all its epochs
    assert 3000 < history["loop_budget_s"] <= 3600


def test_the_card_states_the_run_budget_and_the_runs_final_wall_clock_time(tmp_path):
    from mlcore.artifact import read_card, write_card
    from training.artifact import _budget_minutes, card_markdown, record_total_minutes
    from training.testing import make_tiny_model_dir

    assert _budget_minutes({"loss": []}) is None  # a run without a run budget says nothing of one
    budget = _budget_minutes({"run_budget_s": 3600.0, "loop_budget_s": 2850.0, "finish_estimate_s": 672.0})
    assert budget == {"run": 60.0, "loop": 47.5, "finishing_estimate": 11.2}
    model_dir = make_tiny_model_dir(tmp_path / "m", seed=1)
    card = read_card(model_dir)
    card["training"]["budget_minutes"] = budget
    write_card(model_dir, card)
    record_total_minutes(model_dir, 58.5 * 60)  # after the assessment, the run's real end
    assert read_card(model_dir)["training"]["total_minutes"] == 58.5
    text = (model_dir / "model_card.md").read_text()
    assert "58.500 min in all (run budget 60.000 min: 47.500 min for the loop, 11.200 min set aside" in text
    assert text == card_markdown(read_card(model_dir))


def test_auto_tta_serves_the_mirror_image_too_only_when_it_raises_the_validation_score():
    from dataclasses import replace

    from mlcore.keras_model import predict_logits
    from training.config import TrainConfig
    from training.ensemble import member_config
    from training.testing import synthetic_images, tiny_config
    from training.train import _val_metrics, choose_tta, selection_score

    cfg = replace(tiny_config(seed=2), tta="auto")
    model = cfg.build_model()
    x_va, m_va, _ = synthetic_images(48, seed=5)
    chosen_cfg, choice, (val_logits, val_features) = choose_tta(model, cfg, x_va, m_va)
    scores = choice["validation_scores"]
    assert chosen_cfg.tta == choice["chosen"] == ("flip2" if scores["flip2"] > scores["none"] else "none")
    # one extra pass scores exactly what the served flip2 mode would
    for mode in ("none", "flip2"):
        assert scores[mode] == pytest.approx(selection_score(_val_metrics(predict_logits(model, x_va, tta=mode), m_va)),
                                             abs=1e-6)
    # the calibration reuses the chosen mode's validation logits: the served mode's, to rounding
    np.testing.assert_allclose(val_logits, predict_logits(model, x_va, tta=chosen_cfg.tta), atol=1e-5)
    # and its features, averaged over the views as the app's runners (and the assessment) serve them
    from training.assessment import logits_and_features

    served_logits, served_features = logits_and_features(model, x_va, tta=chosen_cfg.tta)
    np.testing.assert_allclose(val_logits, served_logits, atol=1e-5)
    if served_features is None:
        assert val_features is None
    else:
        np.testing.assert_allclose(val_features, served_features, atol=1e-4)
    assert choose_tta(model, replace(cfg, tta="flip4"), x_va, m_va) == (replace(cfg, tta="flip4"), None, None)
    empty = choose_tta(model, cfg, x_va[:0], m_va[:0])
    assert empty[0].tta == "none" and empty[1]["chosen"] == "none" and empty[2] is None
    assert TrainConfig().tta == "auto"
    with pytest.raises(ValueError, match="tta must be one of"):
        TrainConfig(tta="flip3")
    # an ensemble averages its members already: "auto" members serve one view each
    assert member_config(cfg, 7, 1234).tta == "none"
    assert member_config(replace(cfg, tta="flip2"), 7, 1234).tta == "flip2"


def test_validation_passes_are_timed_after_the_warm_up_batch():
    from mlcore.keras_model import predict_logits
    from training.testing import synthetic_images, tiny_config
    from training.train import timed_logits

    model = tiny_config(seed=1).build_model()
    x, _, _ = synthetic_images(40, seed=6)
    for warm_up in (16, 128):  # timed after 16 images, or all of them when there are fewer
        logits, seconds = timed_logits(model, x, warm_up=warm_up)
        np.testing.assert_allclose(logits, predict_logits(model, x), atol=1e-5)
        assert seconds > 0


def test_fine_tuning_an_artifact_takes_its_own_settings_then_the_recipe(tmp_path):
    import json

    from training.config import FINE_TUNE_RECIPE, TrainConfig, fine_tune_config

    own = TrainConfig(image_size=128, width=24, seed=9, learning_rate=3e-3, colour_constancy="none").to_dict()
    (tmp_path / "model_card.json").write_text(json.dumps({"training": {"config": own}}))
    cfg = fine_tune_config(tmp_path, {"seed": 4})
    assert (cfg.image_size, cfg.width, cfg.colour_constancy) == (128, 24, "none")  # its network and preprocessing
    assert all(getattr(cfg, k) == v for k, v in FINE_TUNE_RECIPE.items())
    assert cfg.seed == 4 and cfg.pretrained == str(tmp_path / "model.keras")
    (tmp_path / "model_card.json").write_text(json.dumps({"training": {}}))
    with pytest.raises(ValueError, match="does not record its training settings"):
        fine_tune_config(tmp_path)


def test_restarting_an_artifact_unfreezes_every_block_with_its_own_offset_in_the_loss(tmp_path):
    import json

    from training.config import RESTART_RECIPE, TrainConfig, restart_config

    own = TrainConfig(image_size=128, seed=9, learning_rate=1e-3).to_dict()
    (tmp_path / "model_card.json").write_text(json.dumps({"training": {"config": own}}))
    cfg = restart_config(tmp_path, {"epochs": 2})
    assert cfg.image_size == 128 and cfg.epochs == 2
    assert all(getattr(cfg, k) == v for k, v in RESTART_RECIPE.items() if k != "epochs")
    assert cfg.freeze_blocks == 0 and cfg.learning_rate == RESTART_RECIPE["learning_rate"]
    assert cfg.offset_in_loss_from == str(tmp_path) and cfg.pretrained == str(tmp_path / "model.keras")
