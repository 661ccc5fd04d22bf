"""The clinical-context adjustment: features, fitting, the no-context guarantee, the card round trip."""
from __future__ import annotations

import numpy as np
import pytest

from mlcore.clinical import (FEATURES, ClinicalAdjustment, ClinicalContext, ClinicalContextError, features,
                               fit_adjustment, prior_ratio, site_group)
from training.data import ImageRecord
from mlcore.labels import CLASSES, NUM_CLASSES, mask_from_classes

MEL = CLASSES.index("melanoma")


def test_ham_localizations_and_app_sites_map_to_the_same_groups():
    assert site_group("back") == site_group("posterior torso") == "posterior torso"
    assert site_group("Scalp") == site_group("head/neck") == "head/neck"
    assert site_group("trunk") == site_group("lateral torso") == "torso"
    assert site_group("acral") == "palms/soles"
    assert site_group("unknown") is None and site_group(None) is None


def test_unknown_values_contribute_nothing():
    x = features([ClinicalContext(), ClinicalContext(sex="other", site="unknown"),
                  ClinicalContext(age=50, sex="female", site="back")])
    assert x.shape == (3, len(FEATURES))
    assert not x[0].any() and not x[1].any()
    # age 50 is the centre: its two age features are 0, sex and site are one-hot
    assert x[2].tolist().count(1.0) == 2 and x[2][:2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kwargs,message", [
    ({"age": -3}, "outside"), ({"age": 140}, "outside"), ({"sex": "m"}, "sex 'm'"), ({"site": "elbow"}, "elbow"),
])
def test_bad_context_values_are_refused(kwargs, message):
    with pytest.raises(ClinicalContextError, match=message):
        ClinicalContext(**kwargs)


def test_training_records_with_unusable_values_count_as_unknown():
    rec = ImageRecord(path="x.jpg", isic_id="ISIC_1", lesion_id="L1", allowed=frozenset({"nevus"}),
                      source="ham10000", age=None, sex="unknown", site="some new place")
    assert ClinicalContext.of_record(rec) == ClinicalContext()


def _data(n=900, seed=0):
    """Image logits that know nothing about melanoma beyond noise; melanoma patients are older."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 85, n)
    p_mel = 1 / (1 + np.exp(-(ages - 60) / 6))
    is_mel = rng.random(n) < p_mel
    labels = np.where(is_mel, MEL, rng.choice([c for c in range(NUM_CLASSES) if c != MEL], n))
    masks = np.stack([mask_from_classes({CLASSES[c]}) for c in labels])
    logits = rng.normal(0, 0.3, (n, NUM_CLASSES)).astype(np.float32)
    contexts = [ClinicalContext(age=float(a), sex="female", site="back") for a in ages]
    return logits, masks, contexts


def test_fit_learns_that_age_raises_melanoma_and_leaves_unknown_context_unchanged():
    logits, masks, contexts = _data()
    adj = fit_adjustment(logits, masks, contexts, l2=1e-3)
    assert adj.weights.shape == (len(FEATURES), NUM_CLASSES)
    old, young = ClinicalContext(age=80), ClinicalContext(age=25)
    z = adj.apply(np.zeros((2, NUM_CLASSES), np.float32), [old, young])
    assert z[0, MEL] - z[0].mean() > z[1, MEL] - z[1].mean() + 1.0
    same = np.arange(18, dtype=np.float32).reshape(2, 9)
    assert np.array_equal(adj.apply(same, [ClinicalContext(), ClinicalContext(site="unknown")]), same)
    assert np.array_equal(adj.apply(same, None), same)


def test_fit_lowers_the_set_valued_loss_and_respects_sample_weights():
    from mlcore.scoring import set_nll, softmax_with_temperature

    logits, masks, contexts = _data(seed=1)
    adj = fit_adjustment(logits, masks, contexts, l2=1e-3)
    before = set_nll(softmax_with_temperature(logits, 1.0), masks)
    after = set_nll(softmax_with_temperature(adj.apply(logits, contexts), 1.0), masks)
    assert after < before - 0.05
    w = np.where(masks[:, MEL] > 0.5, 0.0, 1.0)  # weight 0 on melanomas: nothing pulls melanoma up
    no_mel = fit_adjustment(logits, masks, contexts, sample_weight=w, l2=1e-3)
    assert no_mel.apply(np.zeros((1, 9), np.float32), [ClinicalContext(age=80)])[0, MEL] < 0


def test_prior_ratio_is_the_context_likelihood_ratio_without_the_class_prior():
    # melanoma odds 3:7 in men, 1:9 in women, 1:4 where sex is unknown (the intercept's images)
    rng = np.random.default_rng(0)
    nev = CLASSES.index("nevus")
    contexts, labels = [], []
    for sex, p_mel, n in (("male", 0.3, 3000), ("female", 0.1, 3000), (None, 0.2, 3000)):
        contexts += [ClinicalContext(sex=sex)] * n
        labels += list(np.where(rng.random(n) < p_mel, MEL, nev))
    masks = np.stack([mask_from_classes({CLASSES[c]}) for c in labels])
    adj = prior_ratio(masks, contexts, l2=1e-6)
    z = adj.apply(np.zeros((3, NUM_CLASSES), np.float32),
                  [ClinicalContext(sex="male"), ClinicalContext(sex="female"), ClinicalContext()])
    log_odds = z[:, MEL] - z[:, nev]
    # the offset is the odds relative to the intercept's images, not the odds themselves
    assert log_odds[0] == pytest.approx(np.log(3 / 7) - np.log(1 / 4), abs=0.1)
    assert log_odds[1] == pytest.approx(np.log(1 / 9) - np.log(1 / 4), abs=0.1)
    assert log_odds[2] == 0.0
    # without the intercept the same fit puts the class prior into the sex features: the odds themselves
    joint = fit_adjustment(np.zeros(masks.shape), masks, contexts, l2=1e-6)
    zj = joint.apply(np.zeros((1, NUM_CLASSES), np.float32), [ClinicalContext(sex="male")])[0]
    assert zj[MEL] - zj[nev] == pytest.approx(np.log(3 / 7), abs=0.1)


def test_card_round_trip_and_mismatched_features_are_refused():
    adj = ClinicalAdjustment(weights=np.arange(len(FEATURES) * NUM_CLASSES, dtype=float).reshape(-1, NUM_CLASSES) / 100)
    again = ClinicalAdjustment.from_dict(adj.to_dict())
    assert np.allclose(again.weights, adj.weights)
    bad = adj.to_dict() | {"features": list(FEATURES)[:-1]}
    with pytest.raises(ValueError, match="features differ"):
        ClinicalAdjustment.from_dict(bad)
    with pytest.raises(ValueError, match="3 clinical contexts for 1 images"):
        adj.apply(np.zeros((1, 9)), [ClinicalContext()] * 3)


def test_the_probes_cross_fitted_offset_scores_each_fold_with_an_offset_it_did_not_fit_on():
    """bench/validation_probe.py --offset val-crossfit: a row's offset never sees that row's label,
    and the offset still learns what the context says (older patients: melanoma)."""
    from sklearn.metrics import roc_auc_score

    from bench.validation_probe import crossfit_offset
    from training.config import TrainConfig
    from training.testing import synthetic_contexts

    n = 200
    sets = [{"melanoma"} if i % 3 == 0 else {"nevus"} for i in range(n)]
    masks = np.stack([mask_from_classes(s) for s in sets])
    contexts = synthetic_contexts(sets)
    lesions = np.arange(n) // 2  # two images per lesion: a lesion stays in one fold
    raw = np.zeros((n, NUM_CLASSES), np.float32)
    out = crossfit_offset(raw, masks, contexts, lesions, TrainConfig())

    is_mel = np.array(["melanoma" in s for s in sets])
    known = np.array([c.known for c in contexts])
    assert roc_auc_score(is_mel[known], out[known, MEL]) > 0.9
    np.testing.assert_allclose(out[~known], raw[~known])  # no context: no offset

    flipped = masks.copy()
    rows = np.flatnonzero(lesions == 0)  # relabel one lesion: only the other folds' offsets may move
    flipped[rows] = mask_from_classes({"nevus"})
    again = crossfit_offset(raw, flipped, contexts, lesions, TrainConfig())
    np.testing.assert_allclose(again[rows], out[rows], atol=1e-6)
    assert np.abs(again - out).max() > 1e-4
