"""An artifact re-assessed in place (`python -m training assess MODEL`: the card, assessment.json
and ood.npz rewritten, model.keras unchanged) reaches the storage when registered again, and a
worker's host copy with the older card is fetched again."""
from __future__ import annotations

import json
import shutil

import pytest

from classifier import artifact_store
from classifier.registry import register_artifact
from mlcore.artifact import CARD_FILE


@pytest.mark.django_db
def test_a_reassessed_card_is_published_again_and_refreshes_the_host_copy(tiny_model_dir, tmp_path, settings,
                                                                          media_root):
    settings.SECONDLOOK_MODELS_IN_STORAGE = True
    settings.VAR_DIR = tmp_path / "var"
    release = tmp_path / "release" / "model"
    shutil.copytree(tiny_model_dir, release)
    kept = tmp_path / "kept"
    shutil.copytree(release, kept)
    version = register_artifact(release)
    stored = media_root / artifact_store.storage_prefix(version.sha256)
    shutil.rmtree(release)  # a worker host: no registered directory, its own copy from the storage
    host = artifact_store.local_dir(version)
    assert host == artifact_store.host_copy(version.sha256)
    assert "assessment" not in json.loads((host / CARD_FILE).read_text())

    # re-assessed in place on the host that holds it, then registered again
    shutil.copytree(kept, release)
    card = json.loads((release / CARD_FILE).read_text()) | {"assessment": {"quality": {"thresholds": {}},
                                                                           "ood": None}}
    (release / CARD_FILE).write_text(json.dumps(card))
    (release / "assessment.json").write_text(json.dumps(card["assessment"]))
    written = register_artifact(release) and artifact_store.publish(release, version.sha256)
    assert written == []  # nothing left to write: registering again published the new files
    assert json.loads((stored / CARD_FILE).read_text()) == card
    assert json.loads((stored / "assessment.json").read_text()) == card["assessment"]
    # replaced, not saved beside under another name
    assert not [p.name for p in stored.iterdir() if p.name.startswith(("model_card_", "assessment_"))]

    shutil.rmtree(release)
    assert artifact_store.card_of(version)["assessment"] == card["assessment"]  # the stored card, not the old copy's
    host = artifact_store.local_dir(version)
    assert json.loads((host / CARD_FILE).read_text()) == card  # the host copy was fetched again
    assert artifact_store.local_dir(version) == host  # and is kept while the cards match
    assert not [p for p in host.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
