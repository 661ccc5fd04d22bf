"""Every prediction records the sha256 of the model card it was made with: a version's card can be
re-assessed in place (`python -m training assess`: new image checks, out-of-domain threshold or
prediction-set floor, model.keras unchanged), and two scores "by the same version" made before and
after it must stay distinguishable for an audit."""
from __future__ import annotations

import io
import json
import shutil

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from cases import scoring
from cases.models import LesionImage, Prediction
from classifier.registry import activate, register_artifact
from mlcore import model_store
from mlcore.artifact import CARD_FILE, sha256_file
from tests.api.conftest import issue_token
from training.testing import synthetic_images

# scores real images with the tiny assessed model (trained once per session, then loaded)
pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def model_dir(tiny_assessed_model_dir, tmp_path, settings):
    """A copy of the tiny assessed artifact, registered and active, whose card the test may rewrite."""
    settings.SECONDLOOK_MODELS_IN_STORAGE = False
    settings.VAR_DIR = tmp_path / "var"
    copy = tmp_path / "model"
    shutil.copytree(tiny_assessed_model_dir, copy)
    model_store.clear_cache()
    yield copy
    model_store.clear_cache()


def _prediction(world, version, seed: int, kind: str = "dermoscopic") -> Prediction:
    """A waiting prediction of a synthetic in-domain image (of the class the tiny model calls nevus)."""
    pixels = synthetic_images(5, seed=seed)[0][4]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    name = default_storage.save("lesion-images/card.png", ContentFile(buf.getvalue()))
    image = LesionImage.objects.create(lesion=world.lesion_a, file=name, sha256=f"{seed:064x}", size_bytes=10,
                                       width=pixels.shape[1], height=pixels.shape[0], kind=kind,
                                       uploaded_by=world.clin_a)
    return Prediction.objects.create(image=image, model_version=version)


def _reassess_in_place(model_dir) -> dict:
    """As `python -m training assess` does: the card's checks rewritten, model.keras (and its sha256) kept."""
    card = json.loads((model_dir / CARD_FILE).read_text())
    conformal = card["assessment"]["conformal"]
    conformal["probability_floor"] = float(conformal["probability_floor"]) / 2 + 1e-4
    (model_dir / CARD_FILE).write_text(json.dumps(card, indent=1))
    return card


def test_both_loading_paths_carry_the_card_sha(model_dir):
    expected = sha256_file(model_dir / CARD_FILE)
    assert model_store.load_model(model_dir).card_sha256 == expected
    assert model_store.get_model(model_dir).card_sha256 == expected


def test_a_score_records_its_card_and_keeps_it_after_the_card_is_reassessed(world, model_dir, client):
    version = activate(register_artifact(model_dir))
    old_sha = sha256_file(model_dir / CARD_FILE)
    pending = _prediction(world, version, seed=2)
    assert pending.model_card_sha256 == ""  # not scored yet

    first = _prediction(world, version, seed=3)
    assert scoring.run_prediction(prediction_id=first.pk).startswith("done")
    first.refresh_from_db()
    assert first.status == "done" and first.model_card_sha256 == old_sha

    card = _reassess_in_place(model_dir)
    new_sha = sha256_file(model_dir / CARD_FILE)
    assert new_sha != old_sha and card["model_sha256"] == version.sha256
    second = _prediction(world, version, seed=4)
    assert scoring.run_prediction(prediction_id=second.pk).startswith("done")
    second.refresh_from_db()
    first.refresh_from_db()
    assert second.model_version_id == first.model_version_id == version.pk
    assert second.model_card_sha256 == new_sha
    assert first.model_card_sha256 == old_sha  # the earlier score keeps the card it was made with
    pending.refresh_from_db()
    assert pending.model_card_sha256 == ""

    # shown to auditors: the API answer and the Prediction admin page
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(world.clin_a)}")
    answer = api.get(f"/api/v1/predictions/{first.pk}/")
    assert answer.status_code == 200 and answer.json()["model_card_sha256"] == old_sha
    rows = {row["id"]: row["model_card_sha256"] for row in api.get("/api/v1/predictions/").json()["results"]}
    assert rows[first.pk] == old_sha and rows[second.pk] == new_sha and rows[pending.pk] == ""
    client.force_login(world.admin)
    page = client.get(f"/admin/cases/prediction/{second.pk}/change/")
    assert page.status_code == 200 and new_sha in page.content.decode()


def test_an_image_the_model_could_not_assess_records_the_card_too(world, model_dir):
    version = activate(register_artifact(model_dir))
    pred = _prediction(world, version, seed=5, kind="clinical")  # a clinical photo: not for the dermoscopy model
    assert scoring.run_prediction(prediction_id=pred.pk) == "done (model could not assess)"
    pred.refresh_from_db()
    assert not pred.assessable and pred.model_card_sha256 == sha256_file(model_dir / CARD_FILE)
