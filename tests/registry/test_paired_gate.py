"""The paired promotion gate on synthetic per-image scores (several images per lesion): plain
functions, no Django, no model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from classifier import promotion
from classifier.promotion import (GateResult, evaluate_gate, lesion_weights, paired_gate, weighted_auc,
                                  weighted_ece)
from mlcore.labels import CLASSES, mask_from_classes
from tests.support.gate_helpers import MEL, scored, synthetic_set, with_melanoma
from training.benchmark.scoring import ImageSet
from training.evaluate import expected_calibration_error, targets

RESAMPLES = 300  # the default is 1000; fewer keep these tests fast and change no conclusion here


@pytest.fixture(scope="module")
def data():
    return synthetic_set()


def _row(result: GateResult, key: str) -> dict:
    return next(r for r in result.rows if r["key"] == key)


def test_identical_models_pass_with_zero_differences(data):
    images, probs = data
    result = paired_gate(scored(images, probs), scored(images, probs, version="act"), n_resamples=RESAMPLES)
    assert result.allowed, result.reasons
    for key in ("melanoma_sensitivity", "melanoma_auc", "malignancy_auc", "ece"):
        row = _row(result, key)
        assert row["gated"] and row["passed"]
        assert row["difference"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0
    assert _row(result, "ece")["candidate"] < promotion.MAX_ECE
    assert len(result.reasons) == 5  # four rules and the subgroups
    assert all(r["gated"] and r["passed"] for r in result.subgroups)
    assert {r["attribute"] for r in result.subgroups} == {"source", "sex", "age"}
    json.dumps(result.to_dict())  # what metrics["gate"] stores


def test_a_candidate_clearly_worse_on_sensitivity_is_refused_with_the_reason(data):
    images, probs = data
    # same scores, a much higher melanoma threshold: sensitivity falls, the AUCs do not move
    result = paired_gate(scored(images, probs, melanoma_threshold=0.6), scored(images, probs, version="act"),
                         n_resamples=RESAMPLES)
    assert not result.allowed
    row = _row(result, "melanoma_sensitivity")
    assert not row["passed"] and row["difference"] < -0.1 and row["ci_low"] < -promotion.MAX_SENSITIVITY_DROP
    reason = next(r for r in result.reasons if r.startswith("Melanoma sensitivity"))
    assert "not shown to be non-inferior" in reason and "95 % CI" in reason
    assert _row(result, "melanoma_auc")["passed"] and _row(result, "malignancy_auc")["passed"]


def test_auc_non_inferiority_uses_the_lower_bound_of_the_paired_difference(data):
    images, probs = data
    rng = np.random.default_rng(5)
    mel = probs[:, MEL]
    noisy = with_melanoma(probs, np.clip(mel + rng.normal(0, 0.25, len(mel)) * (mel < 0.5), 1e-4, 0.999))
    worse = paired_gate(scored(images, noisy), scored(images, probs, version="act"), n_resamples=RESAMPLES)
    row = _row(worse, "melanoma_auc")
    assert row["difference"] < -0.02 and row["ci_low"] < -promotion.MAX_AUC_DROP and not row["passed"]
    assert not worse.allowed and any(r.startswith("Melanoma AUC") and "not shown" in r for r in worse.reasons)
    # a tiny change is non-inferior: paired, the interval of the difference is narrow
    slightly = with_melanoma(probs, np.clip(mel + rng.normal(0, 0.002, len(mel)), 1e-4, 0.999))
    close = paired_gate(scored(images, slightly), scored(images, probs, version="act"), n_resamples=RESAMPLES)
    row = _row(close, "melanoma_auc")
    assert row["passed"] and -0.01 < row["ci_low"] <= row["difference"] <= row["ci_high"] < 0.01


def test_a_subgroup_collapse_is_refused_and_small_groups_are_reported_not_gated(data):
    images, probs = data
    old = np.asarray(images.groups["age"]) == "70+"
    rng = np.random.default_rng(9)
    collapsed = with_melanoma(probs, np.where(old, rng.uniform(0.01, 0.99, len(old)), probs[:, MEL]))
    result = paired_gate(scored(images, collapsed), scored(images, probs, version="act"), n_resamples=RESAMPLES)
    row = next(r for r in result.subgroups if (r["attribute"], r["value"]) == ("age", "70+"))
    assert row["gated"] and not row["passed"] and row["difference"] < -promotion.MAX_SUBGROUP_AUC_DROP
    assert not result.allowed
    assert any(r.startswith("Subgroups losing") and "age 70+" in r for r in result.reasons)

    # the same collapse in a group with fewer than MIN_SUBGROUP_MELANOMAS melanomas: reported only
    mel = targets(images.masks)["melanoma"]
    rare = np.zeros(len(mel), bool)
    rare_lesions = sorted(set(images.lesion_ids[mel]))[:5] + sorted(set(images.lesion_ids[~mel]))[:30]
    rare[np.isin(images.lesion_ids, rare_lesions)] = True
    groups = dict(images.groups, source=np.where(rare, "rare", images.groups["source"]).astype(object))
    small = ImageSet(images.name, images.content_sha256, images.image_ids, images.lesion_ids, images.masks, groups)
    scrambled = with_melanoma(probs, np.where(rare, rng.uniform(0.01, 0.99, len(rare)), probs[:, MEL]))
    result = paired_gate(scored(small, scrambled), scored(small, probs, version="act"), n_resamples=RESAMPLES)
    row = next(r for r in result.subgroups if (r["attribute"], r["value"]) == ("source", "rare"))
    assert row["melanoma_lesions"] == 5 and row["melanomas"] > 5  # several images per lesion
    assert not row["gated"] and row["passed"] is None
    assert result.allowed, result.reasons


def test_the_bootstrap_resamples_lesions_not_images():
    weights = lesion_weights(np.array(["a", "a", "a", "b", "c", "c"]), 200, seed=1)
    assert weights.shape == (200, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 4] == weights[:, 5]).all()
    assert (weights[:, [0, 3, 4]].sum(1) == 3).all()  # three lesions drawn per resample

    # one melanoma lesion photographed 60 times, which the candidate misses on every image; 40
    # other melanoma lesions, one image each, both models find. Image by image that is 60 of 100
    # melanoma images, a tight interval; lesion by lesion it is 1 of 41 draws, a wide one.
    n_other, n_neg = 40, 300
    lesion_ids = np.array(["BIG"] * 60 + [f"M{i}" for i in range(n_other)] + [f"N{i}" for i in range(n_neg)])
    classes = ["melanoma"] * (60 + n_other) + ["nevus"] * n_neg
    masks = np.stack([mask_from_classes({c}) for c in classes])
    mel_active = np.r_[np.full(60 + n_other, 0.8), np.full(n_neg, 0.05)]
    mel_candidate = mel_active.copy()
    mel_candidate[:60] = 0.1
    base = np.tile(np.eye(len(CLASSES))[CLASSES.index("nevus")] * 0.9 + 0.1 / len(CLASSES), (len(classes), 1))

    def ci_width(units: np.ndarray) -> float:
        images = ImageSet("t", "0", np.array([f"I{i}" for i in range(len(units))]), units, masks,
                          {"source": np.array(["x"] * len(units), dtype=object)})
        result = paired_gate(scored(images, with_melanoma(base, mel_candidate), melanoma_threshold=0.5),
                             scored(images, with_melanoma(base, mel_active), melanoma_threshold=0.5, version="act"),
                             n_resamples=RESAMPLES)
        row = _row(result, "melanoma_sensitivity")
        assert row["difference"] == pytest.approx(-0.6)
        return row["ci_high"] - row["ci_low"]

    by_lesion = ci_width(lesion_ids)
    by_image = ci_width(np.array([f"I{i}" for i in range(len(lesion_ids))]))
    assert by_lesion > 3 * by_image, (by_lesion, by_image)


def test_deterministic_for_a_seed(data):
    images, probs = data
    rng = np.random.default_rng(3)
    other = with_melanoma(probs, np.clip(probs[:, MEL] + rng.normal(0, 0.03, len(probs)), 1e-4, 0.999))
    run = lambda seed: paired_gate(scored(images, other), scored(images, probs, version="act"),
                                   n_resamples=RESAMPLES, seed=seed).to_dict()
    first = run(7)
    assert run(7) == first
    assert first["bootstrap"] == {"resamples": RESAMPLES, "seed": 7, "unit": "lesion", "interval": "95 % percentile",
                                  "difference": "candidate - active"}
    assert run(8)["rows"] != first["rows"]


def test_weighted_metrics_equal_scikit_learn_and_the_training_ece(data):
    images, probs = data
    rng = np.random.default_rng(0)
    y = targets(images.masks)["melanoma"]
    scores = np.round(probs[:, MEL], 2)  # ties
    weights = rng.integers(0, 4, (5, len(y))).astype(float)
    got = weighted_auc(y, scores, weights)
    want = [roc_auc_score(y, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    t = targets(images.masks)
    ece = expected_calibration_error(probs[t["single"]], t["cls9"][t["single"]])[0]
    assert weighted_ece(probs, images.masks, np.ones((1, len(y))))[0] == pytest.approx(ece, abs=1e-12)
    # integer weights = repeating those images
    w = weights[0]
    rep = np.repeat(np.arange(len(y)), w.astype(int))
    ece_rep = expected_calibration_error(probs[rep][t["single"][rep]], t["cls9"][rep][t["single"][rep]])[0]
    assert weighted_ece(probs, images.masks, w[None])[0] == pytest.approx(ece_rep, abs=1e-12)


def test_the_first_model_needs_calibration_and_the_target_sensitivity(data):
    images, probs = data
    ok = paired_gate(scored(images, probs, melanoma_threshold=0.01), None, target_sensitivity=0.9, n_resamples=50)
    assert ok.allowed and ok.active is None and not ok.subgroups
    low = paired_gate(scored(images, probs, melanoma_threshold=0.6), None, target_sensitivity=0.9, n_resamples=50)
    assert not low.allowed and any("below the target 0.90" in r for r in low.reasons)


def test_ph2_is_reported_beside_the_benchmark_and_never_gated(data):
    images, probs = data
    ph2 = ImageSet("PH2", "1" * 64, images.image_ids[:200], images.image_ids[:200], images.masks[:200],
                   {"source": np.array(["ph2"] * 200, dtype=object)})
    awful = with_melanoma(probs[:200], np.full(200, 0.5))
    result = paired_gate(scored(images, probs), scored(images, probs, version="act"),
                         external=(scored(ph2, awful), scored(ph2, probs[:200], version="act")), n_resamples=RESAMPLES)
    assert result.allowed
    assert {r["key"] for r in result.external} == {"melanoma_auc", "melanoma_sensitivity", "melanoma_specificity"}
    assert all(r["dataset"] == "PH2" and not r["gated"] for r in result.external)


def test_models_scored_on_different_images_cannot_be_compared(data):
    images, probs = data
    other = ImageSet(images.name, images.content_sha256, images.image_ids[::-1], images.lesion_ids[::-1],
                     images.masks[::-1], images.groups)
    with pytest.raises(ValueError, match="same images"):
        paired_gate(scored(images, probs), scored(other, probs[::-1], version="act"))


def test_a_stored_result_is_read_back_against_the_registry(data):
    images, probs = data
    stored = json.loads(json.dumps(paired_gate(scored(images, probs), scored(images, probs, version="act"),
                                               n_resamples=promotion.BOOTSTRAP_RESAMPLES).to_dict()))
    assert stored["format"] == promotion.GATE_FORMAT and stored["active"]["version"] == "act"
    result = evaluate_gate(stored, active_version="act", benchmark_version="synthetic-v0",
                           candidate_sha256="cand" * 8, active_sha256="act" * 8)
    assert result.allowed and result.rows == stored["rows"] and result.subgroups == stored["subgroups"]
    stale = evaluate_gate(stored, active_version="newer")
    assert not stale.allowed and "re-run the comparison" in stale.reasons[0]
    other_benchmark = evaluate_gate(stored, active_version="act", benchmark_version="frozen-v2")
    assert not other_benchmark.allowed and "frozen-v2" in other_benchmark.reasons[0]
