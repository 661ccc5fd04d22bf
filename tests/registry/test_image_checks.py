"""A version whose model card lacks the fitted image checks (quality thresholds; the out-of-domain
detector where its network has the feature layer) cannot be activated: without them every image,
blurry or not dermoscopic at all, would be scored as if the model could judge it. The promotion
gate shows the check as a named row and reason."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from classifier import lifecycle, registry
from classifier.models import ModelVersion
from classifier.promotion import (IMAGE_CHECKS, IMAGE_CHECKS_PASSED, GateResult, image_checks_problem,
                                  with_image_checks)
from mlcore.artifact import CARD_FILE, MODEL_FILE, sha256_file
from mlcore.model_store import keras_file_has_feature_layer
from tests.support.gate_helpers import FITTED_CHECKS, fake_sha, stand_in_artifact, stored_gate

QUALITY_ONLY = {"quality": FITTED_CHECKS["quality"], "ood": None}


def _candidate(shipped, name: str, artifact_path: str | None, sha256: str | None = None) -> ModelVersion:
    """A ready version whose stored comparison with ``shipped`` passes."""
    sha256 = sha256 or fake_sha(name)
    return ModelVersion.objects.create(
        version=name, status="ready", target_sensitivity=0.9, artifact_path=artifact_path or "", sha256=sha256,
        metrics={"gate": stored_gate(allowed=True, active=shipped.version, active_sha256=shipped.sha256,
                                     candidate=name, candidate_sha256=sha256)})


def _keras_zip(path: Path, layers: list[dict]) -> Path:
    """A ``model.keras`` with only its config: a functional model of ``layers``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": layers}}))
    return path


def _layer(name: str, cls: str = "Dense", layers: list[dict] | None = None) -> dict:
    config = {"name": name} | ({"layers": layers} if layers is not None else {})
    return {"class_name": cls, "name": name, "config": config}


@pytest.mark.django_db
def test_a_version_whose_card_lacks_the_image_checks_is_refused_by_the_gate_and_activation(
        use_tiny_assessed_model, tmp_path, admin_client):
    shipped = registry.ensure_default_registered()
    unchecked = _candidate(shipped, "unchecked", stand_in_artifact(tmp_path, "unchecked", assessment=None))
    gate = lifecycle.gate_for(unchecked)
    assert not gate.allowed
    assert gate.reasons[0].startswith("Image checks: its model card has no fitted image checks")
    row = next(r for r in gate.rows if r["key"] == IMAGE_CHECKS)
    assert row["gated"] and row["passed"] is False
    with pytest.raises(lifecycle.LifecycleError, match="Promotion gate refused: Image checks"):
        lifecycle.activate_version(version=unchecked)
    assert ModelVersion.objects.get(status="active").pk == shipped.pk
    page = admin_client.get(f"/admin/classifier/modelversion/{unchecked.pk}/change/").content.decode()
    assert "Image checks (quality, out-of-domain) in the model card" in page
    assert "its model card has no fitted image checks" in page

    checked = _candidate(shipped, "checked", stand_in_artifact(tmp_path, "checked"))
    gate = lifecycle.gate_for(checked)
    assert gate.allowed and gate.reasons[-1] == IMAGE_CHECKS_PASSED
    lifecycle.activate_version(version=checked)
    assert ModelVersion.objects.get(status="active").pk == checked.pk


@pytest.mark.django_db
def test_activation_reads_the_image_checks_once_before_locking_the_active_row(use_tiny_assessed_model, tmp_path, monkeypatch):
    """Reading them may fetch the model from storage: not while the active row is locked."""
    from django.db import connection

    shipped = registry.ensure_default_registered()
    checked = _candidate(shipped, "checked-once", stand_in_artifact(tmp_path, "checked-once"))
    calls, real = [], lifecycle.image_checks_of

    def counted(version):
        calls.append(len(connection.atomic_blocks))
        return real(version)

    monkeypatch.setattr(lifecycle, "image_checks_of", counted)
    outside = len(connection.atomic_blocks)  # the test's own transaction
    lifecycle.activate_version(version=checked)
    assert ModelVersion.objects.get(status="active").pk == checked.pk
    assert calls == [outside]  # once, and not inside activation's transaction


@pytest.mark.django_db
def test_a_version_without_a_readable_card_is_refused(use_tiny_assessed_model):
    shipped = registry.ensure_default_registered()
    gate = lifecycle.gate_for(_candidate(shipped, "nowhere", None))
    assert not gate.allowed and "its model card cannot be read" in gate.reasons[0]


@pytest.mark.django_db
def test_the_out_of_domain_detector_is_required_where_the_network_has_its_feature_layer(
        use_tiny_assessed_model, tmp_path):
    shipped = registry.ensure_default_registered()
    # the tiny network has the feature layer: quality checks alone are not enough
    with_layer = Path(shutil.copytree(use_tiny_assessed_model, tmp_path / "with-layer"))
    card = json.loads((with_layer / CARD_FILE).read_text()) | {"assessment": QUALITY_ONLY}
    (with_layer / CARD_FILE).write_text(json.dumps(card))
    gate = lifecycle.gate_for(_candidate(shipped, "no-detector", str(with_layer), sha256=card["model_sha256"]))
    assert not gate.allowed
    assert "no out-of-domain detector (assessment.ood), though its network has the feature layer" in gate.reasons[0]

    # a network without it can have no detector: the quality checks are what it can have
    without = tmp_path / "without-layer"
    model_file = _keras_zip(without / MODEL_FILE, [_layer("image", "InputLayer"), _layer("logits")])
    sha = sha256_file(model_file)
    (without / CARD_FILE).write_text(json.dumps({"version": "old-net", "model_sha256": sha,
                                                 "assessment": QUALITY_ONLY}))
    gate = lifecycle.gate_for(_candidate(shipped, "old-net", str(without), sha256=sha))
    assert gate.allowed, gate.reasons


def test_the_feature_layer_is_read_from_the_model_file(tiny_model_dir, tmp_path):
    assert keras_file_has_feature_layer(tiny_model_dir / MODEL_FILE)
    assert not keras_file_has_feature_layer(_keras_zip(tmp_path / "a.keras", [_layer("image"), _layer("logits")]))
    member = _layer("member_0", "Functional", [_layer("image"), _layer("gap"), _layer("logits")])
    assert keras_file_has_feature_layer(_keras_zip(tmp_path / "b.keras", [_layer("image"), member]))
    other = _layer("backbone", "Functional", [_layer("gap")])  # only an ensemble's members count
    assert not keras_file_has_feature_layer(_keras_zip(tmp_path / "c.keras", [_layer("image"), other]))


def test_the_image_check_rule_on_cards():
    def never():
        raise AssertionError("asked whether the network has the feature layer")

    assert image_checks_problem({"assessment": FITTED_CHECKS}, never) is None
    assert "no fitted image checks" in image_checks_problem({}, never)
    assert "no fitted image checks" in image_checks_problem({"assessment": None}, never)
    assert "image-quality thresholds" in image_checks_problem({"assessment": {"ood": FITTED_CHECKS["ood"]}}, never)
    assert "names no detector file" in image_checks_problem(
        {"assessment": {"quality": FITTED_CHECKS["quality"], "ood": {"threshold": 1.0}}}, never)
    assert image_checks_problem({"assessment": QUALITY_ONLY}, lambda: False) is None
    assert "feature layer" in image_checks_problem({"assessment": QUALITY_ONLY}, lambda: True)

    refused = with_image_checks(GateResult(True, ["Measured."], rows=[{"key": "ece"}]), "its model card has none")
    assert not refused.allowed and refused.reasons == ["Image checks: its model card has none", "Measured."]
    assert refused.rows[-1]["key"] == IMAGE_CHECKS and refused.rows[-1]["passed"] is False
