"""The boundaries of the fitted image checks: the conformal floor keeps the image that sets it in
its own set and reaches its coverage on the calibration images for any n; the out-of-domain
threshold lets at least its target share of validation images pass."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mlcore import conformal, ood


def _calibration(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n)
    masks = np.eye(k)[rng.integers(0, k, n)]
    return probs, masks


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_the_floor_covers_the_target_share_of_its_own_calibration_images_for_small_n(coverage):
    for n in range(1, 41):
        for seed in range(3):
            probs, masks = _calibration(n, 4, seed=100 * n + seed)
            floor = conformal.fit_threshold(probs, masks, coverage=coverage)
            res = conformal.coverage_and_size(probs, masks, floor)
            assert res["coverage"] >= coverage, (n, seed, floor, res)
            if math.ceil((n + 1) * coverage) > n:  # too few images for the level: every class
                assert floor == 0.0 and res["mean_set_size"] == 4, (n, floor)
            else:
                true_p = (probs * masks).sum(axis=1)
                assert floor in true_p  # an image's own probability, not 1 - (1 - p)


def test_the_image_that_sets_the_floor_is_in_its_own_set():
    # 9 images at 90 %: k = ceil(10 * 0.9) = 9, the floor is the smallest true-class probability,
    # 0.3, whose 1 - (1 - 0.3) rounds to 0.30000000000000004; its true class is not its top class
    n, coverage = 9, 0.9
    true_p = np.array([0.3, 0.32, 0.34, 0.36, 0.38, 0.4, 0.42, 0.44, 0.46])
    probs = np.stack([true_p, 1.0 - true_p, np.zeros(n)], axis=1)
    masks = np.tile([1.0, 0.0, 0.0], (n, 1))
    assert 1.0 - (1.0 - 0.3) > 0.3
    floor = conformal.fit_threshold(probs, masks, coverage=coverage)
    assert floor == 0.3
    sets = conformal.prediction_sets(probs, floor)
    assert sets[0, 0]  # the boundary image keeps its true class
    assert conformal.coverage_and_size(probs, masks, floor)["coverage"] == 1.0


def test_too_few_calibration_images_put_every_class_in_every_set():
    probs, masks = _calibration(8, 5, seed=1)  # ceil(9 * 0.9) = 9 > 8
    floor = conformal.fit_threshold(probs, masks, coverage=0.9)
    assert floor == 0.0
    assert conformal.prediction_sets(probs, floor).all()


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 19, 20, 33, 101])
def test_at_least_the_target_share_of_validation_scores_passes_the_ood_threshold(n, target):
    scores = np.random.default_rng(n).gamma(2.0, 1.0, n)
    threshold = ood.threshold_for(scores, target)
    assert threshold in scores  # an observed score, not a value between two
    # inference calls a score > threshold unfamiliar (mlcore.inference): <= passes
    assert (scores <= threshold).mean() >= target, (n, target, threshold)


def test_the_ood_threshold_on_ten_scores_at_95_percent_is_the_largest():
    scores = np.arange(10.0)
    assert ood.threshold_for(scores, 0.95) == 9.0  # linear interpolation gave 8.55: only 90 % pass
