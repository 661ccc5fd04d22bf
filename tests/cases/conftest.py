"""Fixtures for the cases app: two clinics, users of every role, records, a private media folder."""
from __future__ import annotations


import pytest
from tests.support.case_helpers import World
from classifier.models import ModelVersion
from classifier.registry import activate, register_artifact


@pytest.fixture(autouse=True)
def _isolated(fast_passwords, media_root) -> None:
    """Every test here: its own empty media folder and fast password hashing (tests/conftest.py)."""


@pytest.fixture
def dispatched(monkeypatch) -> list[int]:
    """Record scoring dispatches instead of talking to the broker."""
    sent: list[int] = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sent.append(pk) or True)
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


@pytest.fixture
def tiny_version(use_tiny_model):
    """The tiny model registered and active; thresholds 0 so every image is flagged."""
    version = activate(register_artifact(use_tiny_model))
    version.melanoma_threshold = version.malignancy_threshold = 0.0
    version.save()
    return version


@pytest.fixture
def people(db, tiny_version):
    return World()
