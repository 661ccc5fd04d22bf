"""After the training loop (and when an artifact is recalibrated or an ensemble combined) each split
goes through the network once: the clinical offset, the calibration, the evaluation and the
assessment read the same outputs (training.train.SplitOutputs), and the assessment fitted from them
is the one a fresh scoring of the saved artifact gives."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.support.training_data import make_fake_dataset


def _numbers(value, path=""):
    """Every number in a JSON-like value, by its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}/{i}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def test_training_and_recalibrating_score_each_split_once_and_assess_as_a_fresh_pass_would(tmp_path, monkeypatch):
    import training.assessment
    from training.assessment import ASSESSMENT_FILE, assess_artifact
    from training.nondermoscopic import build as build_nondermoscopic
    from training.recalibrate import recalibrate
    from training.testing import tiny_config
    from training.train import train

    data = make_fake_dataset(tmp_path / "data", per_class=12)
    scored = []
    real = training.assessment.logits_and_features

    def counting(model, images, *args, **kwargs):
        scored.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(training.assessment, "logits_and_features", counting)
    cfg = replace(tiny_config(seed=3), epochs=2, tta="auto")
    out = train(cfg, data, tmp_path / "out", None, verbose=0)
    card = json.loads((out / "model_card.json").read_text())
    n = {k: len(v) for k, v in card["split_ids"].items()}
    assert card["tta"] in ("none", "flip2")  # "auto" resolved on validation
    # one call per set of images (each call scores all of the served views): validation twice (one
    # view, then the mirror image: choosing the TTA), training and test once, then only the images
    # the splits do not hold (no PH2 here: the non-dermoscopic set)
    assert sorted(scored) == sorted([n["val"], n["val"], n["train"], n["test"], len(build_nondermoscopic())])

    # recalibrating (here: switching the served views) scores each split once as well, the
    # assessment included
    scored.clear()
    other = "none" if card["tta"] == "flip2" else "flip2"
    recalibrate(out, tmp_path / "recalibrated", data, None, tta=other)
    assert sorted(scored) == sorted([n["train"], n["val"], n["test"], len(build_nondermoscopic())])

    monkeypatch.setattr(training.assessment, "logits_and_features", real)
    for artifact in (out, tmp_path / "recalibrated"):
        _same_assessment(json.loads((artifact / ASSESSMENT_FILE).read_text()),
                         json.loads(json.dumps(assess_artifact(artifact, data, None, write=False))))


def _same_assessment(saved: dict, fresh: dict) -> None:
    """The assessment fitted from the shared outputs is the one a fresh scoring gives."""
    saved_numbers, fresh_numbers = dict(_numbers(saved)), dict(_numbers(fresh))
    fitted = set(fresh_numbers)
    assert len(fitted) > 20 and fitted <= set(saved_numbers)
    assert any(k.startswith("/quality") for k in fitted) and any(k.startswith("/conformal") for k in fitted)
    for key in fitted:
        assert saved_numbers[key] == pytest.approx(fresh_numbers[key], rel=1e-3, abs=1e-4), key
    assert np.isfinite(list(fresh_numbers.values())).all()
