"""Fixtures for tests that start training runs without a broker (import them into the test module)."""
from __future__ import annotations

import pytest


@pytest.fixture
def data_here(settings, tmp_path):
    """A training data directory holding an (empty) ham10000 folder, with models and cache beside it."""
    (tmp_path / "data" / "ham10000").mkdir(parents=True)
    settings.SECONDLOOK_DATA_DIR = tmp_path / "data"
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    return tmp_path / "data"


@pytest.fixture
def sent(monkeypatch) -> list:
    """The training tasks sent to the broker, with their options."""
    calls: list = []
    monkeypatch.setattr("classifier.lifecycle.enqueue_training",
                        lambda pk, **options: calls.append(("classifier.tasks.train_model", [pk], options)))
    return calls
