"""Fixtures for the cases app: two clinics, users of every role, records, a private media folder."""
from __future__ import annotations

from pathlib import Path

import pytest
from case_helpers import World
from classifier.models import ModelVersion


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    """Password hashing dominates fixture time otherwise; strength is not what these tests check."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path, monkeypatch) -> Path:
    """Every test writes images to its own empty folder (worker processes started by the test too)."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    monkeypatch.setenv("MEDIA_ROOT", str(root))
    return root


@pytest.fixture
def dispatched(monkeypatch) -> list[int]:
    """Record scoring dispatches instead of talking to the broker."""
    sent: list[int] = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk: sent.append(pk) or True)
    return sent


@pytest.fixture
def model_version(db) -> ModelVersion:
    """An active model version (no artifact: unit tests fake the classifier)."""
    return ModelVersion.objects.create(version="unit-test-v1", status=ModelVersion.Status.ACTIVE,
                                       artifact_path="/nonexistent/model", melanoma_threshold=0.5,
                                       malignancy_threshold=0.6)


@pytest.fixture
def world(db, model_version) -> World:
    return World()
