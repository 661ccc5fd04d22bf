"""load_model refuses a card whose temperature, flag thresholds or conformal probability floor is
not a usable number: each is applied to every image, so a hand-edited value would otherwise change
every result silently."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlcore import model_store
from mlcore.artifact import CARD_FILE

SHIPPED = Path(__file__).resolve().parents[2] / "classifier" / "shipped_model"
NAN, INF = float("nan"), float("inf")


def _edited_copy(tmp_path: Path, edit) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED, model_dir)
    card = json.loads((model_dir / CARD_FILE).read_text())
    edit(card)
    (model_dir / CARD_FILE).write_text(json.dumps(card))  # NaN / Infinity as Python's json writes them
    return model_dir


def _set(*keys_and_value):
    *keys, last, value = keys_and_value

    def edit(card: dict) -> None:
        d = card
        for k in keys:
            d = d[k]
        d[last] = value
    return edit


@pytest.mark.parametrize("value", [NAN, INF, -0.9, 0.0, "warm", None])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(tmp_path, value):
    model_dir = _edited_copy(tmp_path, _set("temperature", value))
    with pytest.raises(model_store.ModelLoadError, match="temperature .* is not a finite number > 0"):
        model_store.load_model(model_dir)


@pytest.mark.parametrize("name", ["melanoma", "malignancy"])
@pytest.mark.parametrize("value", [NAN, INF, -0.01, 1.5, "high", None])
def test_a_flag_threshold_outside_0_1_or_not_a_number_is_refused(tmp_path, name, value):
    model_dir = _edited_copy(tmp_path, _set("thresholds", name, value))
    with pytest.raises(model_store.ModelLoadError, match=f"{name} threshold .* is not a finite number within"):
        model_store.load_model(model_dir)


def test_missing_thresholds_are_refused(tmp_path):
    model_dir = _edited_copy(tmp_path, _set("thresholds", None))
    with pytest.raises(model_store.ModelLoadError, match="thresholds None are not a mapping"):
        model_store.load_model(model_dir)


@pytest.mark.parametrize("value", [NAN, -INF, -0.01, 1.01, "low"])
def test_a_conformal_floor_outside_0_1_or_not_a_number_is_refused(tmp_path, value):
    model_dir = _edited_copy(tmp_path, _set("assessment", "conformal", "probability_floor", value))
    with pytest.raises(model_store.ModelLoadError, match="conformal probability floor .* is not a finite number"):
        model_store.load_model(model_dir)


def test_the_boundary_values_are_accepted_by_the_check():
    card = json.loads((SHIPPED / CARD_FILE).read_text())
    card["thresholds"] = {"melanoma": 0.0, "malignancy": 1.0}
    card["assessment"]["conformal"]["probability_floor"] = 0.0  # fit_threshold's "every class" floor
    model_store.check_calibration(card, SHIPPED)
    card["assessment"]["conformal"]["probability_floor"] = None  # no prediction sets
    model_store.check_calibration(card, SHIPPED)
    del card["assessment"]
    model_store.check_calibration(card, SHIPPED)


def test_the_shipped_model_passes_the_check_and_still_loads():
    card = json.loads((SHIPPED / CARD_FILE).read_text())
    model_store.check_calibration(card, SHIPPED)
    m = model_store.load_model(SHIPPED)
    assert m.temperature == card["temperature"]
    assert m.thresholds.to_dict() == card["thresholds"]
