import numpy as np
import pytest

from mlcore.labels import CLASSES, HAM_TO_CLASSES, MALIGNANT_CLASSES, mask_from_classes
from mlcore.scoring import (Thresholds, fit_temperature, flag_decision, malignancy_score,
                              melanoma_probability, set_nll, softmax_with_temperature,
                              threshold_for_sensitivity)


def test_classes_alphabetical_and_exact():
    assert list(CLASSES) == sorted(CLASSES)
    assert len(CLASSES) == 9
    assert CLASSES[3] == "melanoma"
    assert HAM_TO_CLASSES["akiec"] == {"actinic keratosis", "squamous cell carcinoma"}
    assert MALIGNANT_CLASSES == {"melanoma", "basal cell carcinoma", "squamous cell carcinoma",
                                 "actinic keratosis"}


def test_scores_from_probabilities():
    p = np.full((1, 9), 0.0)
    p[0, CLASSES.index("melanoma")] = 0.3
    p[0, CLASSES.index("basal cell carcinoma")] = 0.2
    p[0, CLASSES.index("actinic keratosis")] = 0.1
    p[0, CLASSES.index("nevus")] = 0.4
    assert melanoma_probability(p)[0] == pytest.approx(0.3)
    assert malignancy_score(p)[0] == pytest.approx(0.6)


def test_temperature_softmax_sums_to_one_and_flattens():
    z = np.array([[4.0, 1.0, 0, 0, 0, 0, 0, 0, 0]])
    p1 = softmax_with_temperature(z, 1.0)
    p2 = softmax_with_temperature(z, 3.0)
    assert p1.sum() == pytest.approx(1.0) and p2.sum() == pytest.approx(1.0)
    assert p2.max() < p1.max()


def test_temperature_lowers_nll_on_overconfident_toy():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 9, n)
    logits = rng.normal(0, 1, (n, 9))
    logits[np.arange(n), y] += 1.5
    logits *= 6.0  # grossly over-confident
    masks = np.eye(9)[y]
    t = fit_temperature(logits, masks)
    assert t > 2.0
    assert set_nll(softmax_with_temperature(logits, t), masks) < set_nll(softmax_with_temperature(logits, 1), masks)


def test_threshold_is_highest_reaching_target_sensitivity():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.85])
    pos = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    t = threshold_for_sensitivity(scores, pos, 0.9)
    assert t == pytest.approx(0.2)  # 9 of 10 positives are >= 0.2
    assert (scores[pos] >= t).mean() >= 0.9
    # any higher threshold misses the target
    higher = scores[pos][scores[pos] > t]
    assert all((scores[pos] >= h).mean() < 0.9 for h in higher)
    assert threshold_for_sensitivity(scores, pos, 1.0) == pytest.approx(0.1)


def test_flag_decision_reasons():
    th = Thresholds(melanoma=0.31, malignancy=0.5)
    d = flag_decision(0.42, 0.4, th)
    assert d.flagged and len(d.reasons) == 1 and "melanoma probability 0.42" in d.reasons[0]
    d = flag_decision(0.1, 0.6, th)
    assert d.flagged and "malignancy score" in d.reasons[0]
    assert not flag_decision(0.1, 0.1, th).flagged
    assert len(flag_decision(0.5, 0.9, th).reasons) == 2


def test_set_nll_uses_summed_probability_of_allowed_classes():
    p = np.zeros((1, 9))
    p[0, CLASSES.index("actinic keratosis")] = 0.3
    p[0, CLASSES.index("squamous cell carcinoma")] = 0.5
    p[0, CLASSES.index("nevus")] = 0.2
    m = mask_from_classes(HAM_TO_CLASSES["akiec"])[None]
    assert set_nll(p, m) == pytest.approx(-np.log(0.8))
