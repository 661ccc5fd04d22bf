"""The frozen benchmark: a verified file, kept out of every training split (training refuses it),
and scored per image through the app's inference path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.training_data import make_fake_ham
from training import benchmark as bm
from training.benchmark import (Benchmark, BenchmarkError, BenchmarkImage, BenchmarkLeakError, check_not_in_training,
                                frozen_groups, load_benchmark, write_benchmark)
from training.data import ImageRecord
from training.splits import split_by_lesion

SHIPPED_CARD = Path(__file__).resolve().parents[2] / "classifier" / "shipped_model" / "model_card.json"


def _records(n: int = 300) -> list[ImageRecord]:
    out = []
    for i in range(n):
        cls = ["melanoma", "nevus", "basal cell carcinoma"][i % 3 if i < 150 else 1]
        out.append(ImageRecord(path="", isic_id=f"I{i:04d}", lesion_id=f"L{i // 3}", allowed=frozenset({cls}),
                               source="x"))
    return out


def _benchmark(tmp_path: Path, rows: list[tuple[str, str, str, str]], version: str = "test-v0") -> Benchmark:
    return write_benchmark(tmp_path / f"{version}.json", version, [BenchmarkImage(*r) for r in rows], {"made": "test"})


def test_the_committed_benchmark_is_the_shipped_models_held_out_split():
    b = load_benchmark(bm.benchmark_file(bm.CURRENT_VERSION))
    card = json.loads(SHIPPED_CARD.read_text())
    assert b.version == "frozen-v1" and len(b.content_sha256) == 64
    assert sorted(b.image_ids) == sorted(card["split_ids"]["test"])
    assert (len(b.images), b.n_lesions) == (1596, 1242)
    # frozen: it keeps the provenance of the model it was drawn from (v2), and each shipped model
    # since records that it was kept out of its training and validation
    assert b.created_from["model_version"] == "cnn160-20261201-1105-184d47d4"
    assert card["benchmark"]["version"] == b.version and card["benchmark"]["content_sha256"] == b.content_sha256
    assert card["benchmark"]["kept_out_of"] == ["train", "val"]
    assert not b.image_ids & set(card["split_ids"]["train"] + card["split_ids"]["val"])
    assert {i.source for i in b.images} <= {"isic-9class", "ham10000", "ham10000-more", "ham10000+isic-9class",
                                            "ham10000-more+isic-9class"}


def test_an_edited_benchmark_file_is_refused(tmp_path):
    original = bm.benchmark_file(bm.CURRENT_VERSION).read_text()
    edited = tmp_path / "frozen-v1.json"
    edited.write_text(original.replace('"ISIC_0000005", "ISIC_0000005"', '"ISIC_0000006", "ISIC_0000006"', 1))
    with pytest.raises(BenchmarkError, match="was edited"):
        load_benchmark(edited)


def test_the_split_pins_benchmark_lesions_to_test_for_every_seed(tmp_path):
    recs = _records()
    bench = _benchmark(tmp_path, [("I0003", "L1", "L1", "x"), ("I0150", "L50", "L50", "x")])
    frozen = frozen_groups(bench, recs)
    assert frozen == {"L1", "L50"}  # the lesion of a benchmark image, whichever of its images is listed
    for seed in range(6):
        split = split_by_lesion(recs, seed=seed, test_only=frozen)
        for lesion in ("L1", "L50"):
            members = {r.isic_id for r in recs if r.lesion_id == lesion}
            assert members <= set(split["test"]), (seed, lesion)
        assert sum(map(len, split.values())) == len(recs)
        assert 30 < len(split["test"]) < 60  # the test share does not grow


def test_pinning_the_test_split_a_seed_draws_anyway_changes_nothing():
    recs = _records()
    for seed in (1, 1234):
        plain = split_by_lesion(recs, seed=seed)
        test_groups = {r.lesion_id for r in recs if r.isic_id in set(plain["test"])}
        assert split_by_lesion(recs, seed=seed, test_only=test_groups) == plain


def test_a_forced_benchmark_lesion_in_training_data_raises(tmp_path):
    recs = _records()
    bench = _benchmark(tmp_path, [("I0003", "L1", "L1", "x")])
    by_id = {r.isic_id: r for r in recs}
    check_not_in_training(bench, {"train": [by_id["I0000"]], "val": []})  # another lesion: fine
    for leaked in (by_id["I0003"], by_id["I0004"]):  # the benchmark image, another image of its lesion
        with pytest.raises(BenchmarkLeakError, match="evaluation-only"):
            check_not_in_training(bench, {"train": [leaked]})
    # a near-duplicate grouped with it by the audit, and an identical image under another id
    with pytest.raises(BenchmarkLeakError, match="val images"):
        check_not_in_training(bench, {"val": [by_id["I0100"]]}, groups={"I0100": "G"}, frozen={"G"})
    twin = ImageRecord(path="", isic_id="I9999", lesion_id="L9999", allowed=frozenset({"nevus"}), source="x")
    with pytest.raises(BenchmarkLeakError):
        check_not_in_training(bench, {"train": [twin]}, aliases={"I9999": ["I0003"]})


class _Stop(Exception):
    pass


@pytest.mark.parametrize("role", ["pretrained", "distill_from", "offset_in_loss_from"])
def test_a_run_refuses_to_build_on_a_network_that_learnt_a_benchmark_lesion(tmp_path, monkeypatch, role):
    """The benchmark pins a lesion to test even when the warm start trained on it: the candidate
    would then be compared on what it had learnt. Teachers and offset sources likewise."""
    import training.cache
    from training.testing import tiny_config
    from training.train import train

    def stop(*args, **kwargs):
        raise _Stop

    data = make_fake_ham(tmp_path / "data")
    bench = _benchmark(tmp_path, [("ISIC_7000000", "HAM_0000000", "HAM_0000000", "ham10000")])
    start = tmp_path / "start"
    start.mkdir()
    (start / "model.weights.h5").write_bytes(b"not read: the run stops before")
    (start / "model_card.json").write_text(json.dumps({"version": "start-v1", "split_ids": {
        "train": ["ISIC_7000001"], "val": [], "test": []}}))  # the benchmark lesion's second image
    cfg = tiny_config()
    setattr(cfg, role, str(start / "model.weights.h5") if role == "pretrained" else str(start))
    monkeypatch.setattr(training.cache, "load_images", stop)
    with pytest.raises(BenchmarkLeakError, match=r"(warm start|teacher|offset source) .*train/val"):
        train(cfg, data, tmp_path / "out", None, benchmark=bench, verbose=0)
    # the same artifact, having trained on another lesion, is fine
    (start / "model_card.json").write_text(json.dumps({"version": "start-v1", "split_ids": {
        "train": [], "val": [], "test": []}}))
    with pytest.raises(_Stop):
        train(cfg, data, tmp_path / "out", None, benchmark=bench, verbose=0)


def test_a_run_refuses_to_build_on_weights_whose_training_data_is_unknown(tmp_path, monkeypatch):
    """A bare weights file (no model card beside it) could have learnt a benchmark lesion, and
    nothing could tell: the run is refused before any image is decoded."""
    import training.cache
    from training.testing import tiny_config
    from training.train import train

    def stop(*args, **kwargs):
        raise _Stop

    data = make_fake_ham(tmp_path / "data")
    bench = _benchmark(tmp_path, [("ISIC_7000000", "HAM_0000000", "HAM_0000000", "ham10000")])
    bare = tmp_path / "downloaded" / "model.weights.h5"
    bare.parent.mkdir()
    bare.write_bytes(b"not read: the run stops before")
    cfg = tiny_config()
    cfg.pretrained = str(bare)
    monkeypatch.setattr(training.cache, "load_images", stop)
    with pytest.raises(BenchmarkLeakError, match=r"warm start .* has no model_card.json"):
        train(cfg, data, tmp_path / "out", None, benchmark=bench, verbose=0)


def test_training_keeps_the_benchmark_out_and_refuses_a_forced_split(tmp_path, monkeypatch):
    import training.cache
    import training.splits
    from training.testing import tiny_config
    from training.train import train

    data = make_fake_ham(tmp_path / "data")
    bench = _benchmark(tmp_path, [("ISIC_7000000", "HAM_0000000", "HAM_0000000", "ham10000")])
    made = {}
    real_split = training.splits.split_by_lesion

    def spy(*args, **kwargs):
        made.update(real_split(*args, **kwargs))
        return dict(made)

    def stop(*args, **kwargs):  # the images are loaded after the split is checked: stop there
        raise _Stop

    # a dermatologist-reviewed upload of a benchmark image (one grey level brighter, another file):
    # a near-duplicate, so the audit groups it with the benchmark lesion
    pixels = np.asarray(Image.open(data / "ham10000" / "images" / "ISIC_7000000.jpg")).astype(int)
    Image.fromarray(np.clip(pixels + 1, 0, 255).astype(np.uint8)).save(tmp_path / "review-1.png")
    review = ImageRecord(path=str(tmp_path / "review-1.png"), isic_id="REVIEW_0000001", lesion_id="app-patient-1",
                         allowed=frozenset({"melanoma"}), source="review", ham_code="mel")
    monkeypatch.setattr(training.splits, "split_by_lesion", spy)
    monkeypatch.setattr(training.cache, "load_images", stop)
    with pytest.raises(_Stop):
        train(tiny_config(), data, tmp_path / "out", None, benchmark=bench, verbose=0, extra_records=[review])
    held_out = {"ISIC_7000000", "ISIC_7000001", "REVIEW_0000001"}  # both images of the lesion, and the upload
    assert held_out <= set(made["test"])
    assert not held_out & set(made["train"] + made["val"])

    def leaky(records, groups=None, **kwargs):  # a split that ignores the benchmark
        return {"train": sorted(r.isic_id for r in records), "val": [], "test": []}

    monkeypatch.setattr(training.splits, "split_by_lesion", leaky)
    with pytest.raises(BenchmarkLeakError, match="frozen benchmark test-v0"):
        train(tiny_config(), data, tmp_path / "out", None, benchmark=bench, verbose=0)


def test_recalibrating_on_a_split_that_holds_benchmark_lesions_is_refused(tmp_path, monkeypatch):
    from training.audit import AuditResult
    from training.recalibrate import _keep_benchmark_out

    recs = _records(30)
    bench = _benchmark(tmp_path, [("I0003", "L1", "L1", "x")])
    monkeypatch.setattr(bm, "current_benchmark", lambda: bench)
    audit = AuditResult(records=recs, groups={r.isic_id: r.lesion_id for r in recs}, report={})
    ids = [r.isic_id for r in recs]
    kept = _keep_benchmark_out(audit, {"train": ids[6:], "val": ids[:3], "test": ids[3:6]})
    assert kept["version"] == "test-v0" and kept["images_in_test"] == 1 and kept["kept_out_of"] == ["train", "val"]
    with pytest.raises(BenchmarkLeakError):
        _keep_benchmark_out(audit, {"train": ids[3:], "val": ids[:3], "test": []})


def test_the_model_card_says_which_benchmark_was_kept_out(tiny_model_dir):
    from mlcore.artifact import read_card
    from training.artifact import card_markdown

    card = read_card(tiny_model_dir)
    card["benchmark"] = {"version": "frozen-v1", "content_sha256": "a" * 64, "lesions": 1242,
                         "kept_out_of": ["train", "val"], "images_in_test": 1596}
    assert "frozen benchmark `frozen-v1`" in card_markdown(card) and "kept out of train and val" in card_markdown(card)


# ----------------------------------------------------------------------------- with the real data
@pytest.mark.data
def test_the_default_split_of_the_real_data_is_unchanged_and_keeps_the_benchmark_out(data_dir):
    from training.audit import run_audit
    from training.config import TrainConfig, cache_dir

    audit = run_audit(data_dir, cache_dir(), progress=False)
    bench = load_benchmark(bm.benchmark_file(bm.CURRENT_VERSION))
    frozen = frozen_groups(bench, audit.records, audit.groups, audit.aliases)
    split = split_by_lesion(audit.records, audit.groups, seed=TrainConfig().seed, test_only=frozen)
    assert split == json.loads(SHIPPED_CARD.read_text())["split_ids"]
    other = split_by_lesion(audit.records, audit.groups, seed=2026, test_only=frozen)
    assert bench.image_ids <= set(other["test"])


@pytest.mark.data
def test_scoring_returns_per_image_scores_for_a_small_benchmark_subset(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    from training.benchmark.scoring import benchmark_images, score

    full = load_benchmark(bm.benchmark_file(bm.CURRENT_VERSION))
    pick = [i for i in full.images if i.source == "ham10000"][:2] + [i for i in full.images if i.source == "isic-9class"][:2]
    small = write_benchmark(tmp_path / "small.json", "small-v0", pick, {"from": "frozen-v1"})
    from training.config import cache_dir

    images = benchmark_images(data_dir, cache_dir(), small)  # the suite's audit cache: audited once per run
    scored = score(tiny_model_dir, images, tmp_path / "cache")
    assert scored.probs.shape == (4, 9) and np.allclose(scored.probs.sum(1), 1, atol=1e-5)
    rows = scored.rows()
    assert [r["image_id"] for r in rows] == [i.image_id for i in small.images]
    assert [r["lesion_id"] for r in rows] == [i.group for i in small.images]
    assert {r["source"] for r in rows} == {"ham10000", "isic-9class"}
    assert all({"sex", "age", "melanoma_probability", "malignancy_score", "assessable"} <= set(r) for r in rows)
    assert scored.model_version == "tiny-test-0"

    # cached per model and benchmark: the second call does not load the model
    import mlcore.model_store

    monkeypatch.setattr(mlcore.model_store, "load_model", lambda *a, **k: pytest.fail("scored again"))
    again = score(tiny_model_dir, images, tmp_path / "cache")
    np.testing.assert_array_equal(again.probs, scored.probs)
    assert len(list((tmp_path / "cache" / "benchmark-scores").glob("small-v0-*.npz"))) == 1


@pytest.mark.data
def test_a_benchmark_image_missing_from_the_data_is_an_error(data_dir, tmp_path):
    from training.benchmark.scoring import benchmark_images

    ghost = write_benchmark(tmp_path / "ghost.json", "ghost-v0", [BenchmarkImage("ISIC_9999999", "X", "X", "ham10000")],
                            {"from": "nowhere"})
    from training.config import cache_dir

    with pytest.raises(BenchmarkError, match="not in the data"):
        benchmark_images(data_dir, cache_dir(), ghost)


@pytest.mark.data
def test_the_gate_command_prints_the_paired_table(data_dir, tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    full = load_benchmark(bm.benchmark_file(bm.CURRENT_VERSION))
    write_benchmark(tmp_path / "small.json", "small-v0", full.images[::100], {"from": "frozen-v1"})
    from training.config import cache_dir

    env = dict(os.environ, SECONDLOOK_BENCHMARK_FILE=str(tmp_path / "small.json"), SECONDLOOK_DATA_DIR=str(data_dir),
               SECONDLOOK_CACHE_DIR=str(cache_dir()))
    r = subprocess.run([sys.executable, "-m", "classifier", "gate", "--candidate", str(tiny_model_dir), "--active",
                        str(tiny_model_dir), "--bootstrap", "50", "--no-external", "--plot", str(tmp_path / "roc.png"),
                        "--json", str(tmp_path / "gate.json")], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode in (0, 1), r.stderr[-2000:]  # 1: the gate refuses (a tiny model on real images)
    assert "frozen benchmark small-v0" in r.stdout and "Melanoma AUC" in r.stdout and "95 % CI of diff" in r.stdout
    stored = json.loads((tmp_path / "gate.json").read_text())
    assert stored["benchmark"]["images"] == 16 and (tmp_path / "roc.png").is_file()
    assert all(row["difference"] in (0, None) for row in stored["rows"])


def test_a_pinned_split_keeps_every_image_where_it_was_and_deals_out_only_new_lesions():
    recs = _records(300)
    old = split_by_lesion(recs[:240], seed=1234)
    pinned = {i: name for name, ids in old.items() for i in ids}
    for seed in (1234, 7):  # another seed moves only the new lesions
        new = split_by_lesion(recs, seed=seed, pinned=pinned)
        for name, ids in old.items():
            assert set(ids) <= set(new[name]), (seed, name)
        assert sorted(sum(new.values(), [])) == sorted(r.isic_id for r in recs)
        assert 35 < len(new["test"]) < 55 and 35 < len(new["val"]) < 55  # the shares still hold
    assert split_by_lesion(recs[:240], seed=1234, pinned=pinned) == old


def test_a_lesion_with_any_image_the_network_trained_on_stays_in_training():
    recs = _records(30)
    lesion = [r for r in recs if r.lesion_id == "L2"]  # three images
    pinned = {lesion[0].isic_id: "test", lesion[1].isic_id: "train"}
    split = split_by_lesion(recs, seed=0, pinned=pinned)
    assert {r.isic_id for r in lesion} <= set(split["train"])
    # a frozen benchmark lesion goes to test whatever a pin says (training refuses it later)
    assert {r.isic_id for r in lesion} <= set(split_by_lesion(recs, seed=0, pinned=pinned, test_only={"L2"})["test"])
