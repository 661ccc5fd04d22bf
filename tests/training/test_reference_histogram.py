"""The validation histogram of the melanoma probability: the reference of the admin's drift check."""
from __future__ import annotations

import numpy as np

from mlcore.scoring import SCORE_HISTOGRAM_KEY, score_bin, score_histogram


def test_fixed_bins_include_both_ends():
    assert [score_bin(p) for p in (0.0, 0.0999, 0.1, 0.55, 0.9, 1.0)] == [0, 0, 1, 5, 9, 9]
    assert score_histogram([0.0, 0.05, 0.95, 1.0, 0.5]) == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def test_calibration_records_the_validation_histogram():
    from training.config import TrainConfig
    from training.train import calibrate_logits

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 9))
    masks = np.zeros((200, 9), dtype=bool)
    masks[np.arange(200), rng.integers(0, 9, size=200)] = True
    validation = calibrate_logits(logits, masks, TrainConfig(bootstrap=20))["validation"]
    counts = validation[SCORE_HISTOGRAM_KEY]
    assert len(counts) == 10 and sum(counts) == 200


def test_the_shipped_card_carries_it():
    import json
    from pathlib import Path

    metrics = json.loads((Path(__file__).resolve().parents[2] / "classifier/shipped_model/metrics.json").read_text())
    assert len(metrics[SCORE_HISTOGRAM_KEY]) == 10 and sum(metrics[SCORE_HISTOGRAM_KEY]) == 1597  # the validation split
