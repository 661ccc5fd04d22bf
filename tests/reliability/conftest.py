"""Fixtures for the reliability tests: the cases helpers, a private media folder, the tiny model
registered and active, and a world of clinics and users."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(fast_passwords, media_root) -> None:
    """Every test here: its own empty media folder and fast password hashing (tests/conftest.py)."""


@pytest.fixture
def unit_version(db):
    """An active model version without an artifact, for tests that never score."""
    from classifier.models import ModelVersion

    return ModelVersion.objects.create(version="unit-test-v1", status=ModelVersion.Status.ACTIVE,
                                       artifact_path="/nonexistent/model", melanoma_threshold=0.5,
                                       malignancy_threshold=0.6)


@pytest.fixture
def world(db, unit_version):
    from tests.support.case_helpers import World

    return World()


@pytest.fixture
def child_env_for_tests(request):
    """``child_env`` from tests/conftest.py (conftest modules are not importable by name)."""
    for plugin in request.config.pluginmanager.get_plugins():
        if callable(getattr(plugin, "child_env", None)) and hasattr(plugin, "WorkerProcess"):
            return plugin.child_env
    raise RuntimeError("tests/conftest.py is not loaded")
