"""The bundled default model is activated on first start (and after an upgrade that took the
active model's files away) only under the rule of every activation: its card must have the image
checks (`lifecycle.image_checks_of`). One without them is registered, ready, and not activated,
with the reason logged, raised, printed by the start-up command and kept in its notes."""
from __future__ import annotations

import io
import json
import logging
import shutil

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from classifier import artifact_store, lifecycle, registry
from classifier.models import ModelVersion
from mlcore.artifact import CARD_FILE
from tests.support.gate_helpers import stand_in_artifact

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(settings, tmp_path):
    """Models kept on this host only, its copies under tmp_path."""
    settings.SECONDLOOK_MODELS_IN_STORAGE = False
    settings.VAR_DIR = tmp_path / "var"
    return settings


def _bundle(settings, tmp_path, source) -> None:
    """Lay ``source`` out as the bundled default model directory."""
    bundled = tmp_path / "bundled"
    shutil.rmtree(bundled, ignore_errors=True)
    shutil.copytree(source, bundled)
    settings.SECONDLOOK_MODEL_DIR = bundled


def test_a_default_model_without_image_checks_is_registered_but_not_activated(host, tmp_path, caplog):
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "unchecked-default", assessment=None))
    with caplog.at_level(logging.ERROR, logger="classifier.registry"):
        with pytest.raises(registry.DefaultModelRefused, match="unchecked-default .* was registered but not "
                                                                 "activated: it lacks the image checks") as refused:
            registry.ensure_default_registered()
    assert "its model card has no fitted image checks" in str(refused.value)
    assert "unchecked-default" in caplog.text and "lacks the image checks" in caplog.text
    version = ModelVersion.objects.get(version="unchecked-default")
    assert version.status == ModelVersion.Status.READY and "Not activated: " in version.notes
    assert not ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exists()
    assert not AuditEvent.objects.filter(action="activate").exists()

    # every caller asks again while nothing is active (the upload path, the sweep): same answer, noted once
    with pytest.raises(registry.DefaultModelRefused):
        registry.active_version()
    version.refresh_from_db()
    assert version.notes.count("Not activated: ") == 1
    assert ModelVersion.objects.count() == 1


def test_the_start_up_command_refuses_it_in_words(host, tmp_path):
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "unchecked-default", assessment=None))
    with pytest.raises(CommandError, match="No active model version. The default model unchecked-default"):
        call_command("register_default_model", stdout=io.StringIO())
    assert not ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exists()


def test_a_default_model_whose_card_cannot_be_read_for_its_checks_is_refused(host, tmp_path, monkeypatch):
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "lost-card"))

    def unreadable(version):
        raise artifact_store.ArtifactUnavailable("the storage cannot be reached")

    monkeypatch.setattr(artifact_store, "card_of", unreadable)
    with pytest.raises(registry.DefaultModelRefused, match="its model card cannot be read"):
        registry.ensure_default_registered()
    assert not ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exists()


def test_a_default_model_with_its_image_checks_is_activated_and_audited(host, tmp_path):
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "checked-default"))
    out = io.StringIO()
    call_command("register_default_model", stdout=out)
    assert "Active model: checked-default" in out.getvalue()
    version = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    assert version.version == "checked-default" and "Not activated" not in version.notes
    assert AuditEvent.objects.get(action="activate").new_values["active"] == "checked-default"


def test_the_shipped_model_has_its_image_checks(settings):
    """The real bundled model passes the rule, so the app still starts with it."""
    from pathlib import Path

    shipped = Path(settings.BASE_DIR) / "classifier" / "shipped_model"
    card = json.loads((shipped / CARD_FILE).read_text())
    version = ModelVersion(version=card["version"], artifact_path=str(shipped), sha256=card["model_sha256"])
    assert lifecycle.image_checks_of(version) is None


def test_an_upgrade_does_not_put_a_bundled_model_without_image_checks_in_place_of_an_unloadable_one(host, tmp_path):
    """The active bundled version's files were replaced and no copy kept: the new bundled model would
    be activated in its place, but not without its image checks. It waits, ready, with the reason."""
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "old-release"))
    old = registry.ensure_default_registered()
    shutil.rmtree(tmp_path / "var" / "model-store")  # as registered by a release that kept no copy
    _bundle(host, tmp_path, stand_in_artifact(tmp_path, "new-release", assessment=None))
    assert not artifact_store.loadable(old)

    out = io.StringIO()
    call_command("register_default_model", stdout=out)
    new = ModelVersion.objects.get(version="new-release")
    assert new.status == ModelVersion.Status.READY and "lacks the image checks" in new.notes
    assert "lacks the image checks" in out.getvalue()
    assert ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE) == old  # nothing changed for it
    event = AuditEvent.objects.order_by("pk").last()
    assert event.action == "create" and event.new_values["version"] == "new-release"
    assert "not activated in place of old-release" in event.new_values["reason"]
    assert AuditEvent.objects.filter(action="activate").count() == 1  # the first start's only
