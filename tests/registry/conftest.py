"""Fixtures for the registry tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def use_tiny_assessed_model(settings, tiny_assessed_model_dir) -> Path:
    """Point the app's default model at the tiny model with its fitted image checks, which the
    default registration asks for before activating it (`registry.ensure_default_registered`)."""
    settings.SECONDLOOK_MODEL_DIR = tiny_assessed_model_dir
    return tiny_assessed_model_dir
