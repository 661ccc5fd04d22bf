"""Loading refuses what would silently serve a model unlike its card: a declared out-of-domain
detector that cannot be built, a test-time augmentation override the card was not fitted with;
and a card re-assessed in place is loaded again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcore import model_store
from mlcore.artifact import CARD_FILE, sha256_file


def _copy(src: Path, dst: Path, **card_changes) -> Path:
    shutil.copytree(src, dst)
    card = json.loads((dst / CARD_FILE).read_text()) | card_changes
    (dst / CARD_FILE).write_text(json.dumps(card))
    return dst


def test_a_declared_detector_the_network_cannot_feed_is_refused_at_load(tiny_model_dir, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    np.savez(model_dir / "ood.npz", threshold=np.float32(1.0))
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["assessment"] = {"quality": {"thresholds": {}},
                          "ood": {"file": "ood.npz", "sha256": sha256_file(model_dir / "ood.npz")}}
    (model_dir / CARD_FILE).write_text(json.dumps(card))
    monkeypatch.setattr("mlcore.ood.has_feature_layer", lambda keras_model: False)  # e.g. a re-built network
    with pytest.raises(model_store.ModelLoadError, match="declares an out-of-domain detector, but the network "
                                                         "has no feature layer 'gap'"):
        model_store.load_model(model_dir)


def test_a_tta_override_the_card_was_not_fitted_with_is_refused_at_load(tiny_model_dir, inference_options):
    fitted = json.loads((tiny_model_dir / CARD_FILE).read_text())["tta"]
    other = "flip2" if fitted != "flip2" else "none"
    inference_options(tta=other)
    with pytest.raises(model_store.ModelLoadError, match=f"SECONDLOOK_TTA={other} differs from the test-time "
                                                         f"augmentation '{fitted}'"):
        model_store.load_model(tiny_model_dir)
    inference_options(tta=fitted)  # the card's own mode, set explicitly, is served
    assert model_store.load_model(tiny_model_dir).tta == fitted


def test_a_card_rewritten_in_place_is_loaded_again(tiny_model_dir, tmp_path):
    model_dir = _copy(tiny_model_dir, tmp_path / "model")
    model_store.clear_cache()
    try:
        first = model_store.get_model(model_dir)
        assert model_store.get_model(model_dir) is first
        # as `python -m training assess` rewrites it: model.keras unchanged, the card's checks new
        card = json.loads((model_dir / CARD_FILE).read_text()) | {"assessment": {"quality": {"thresholds": {}},
                                                                               "ood": None}}
        (model_dir / CARD_FILE).write_text(json.dumps(card))
        again = model_store.get_model(model_dir)
        assert again is not first and again.assessment == card["assessment"]
        assert len(model_store._CACHE) == 1
    finally:
        model_store.clear_cache()
