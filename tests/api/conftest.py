"""Fixtures for the API tests: the two-clinic world with an API token per user."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from api.models import ApiToken
from tests.support.case_helpers import World


@pytest.fixture(autouse=True)
def _isolated(fast_passwords, media_root) -> None:
    """Own media folder, fast hashing, and empty throttle counters for every test."""
    cache.clear()


@pytest.fixture
def dispatched(monkeypatch) -> list[int]:
    """Record scoring dispatches instead of talking to the broker."""
    sent: list[int] = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sent.append(pk) or True)
    return sent


def issue_token(user, **fields) -> str:
    """A token for the user, as the admin issues it; returns the secret."""
    token = ApiToken(user=user, name="tests", **fields)
    key = token.issue()
    token.save()
    return key


class Clients:
    """An API client per user of the world, each authenticated by its own token."""

    def __init__(self, world: World) -> None:
        self.world = world
        for name in ("clin_a", "clin_b", "derm", "derm2", "norole", "admin"):
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(getattr(world, name))}")
            setattr(self, name, client)
        self.anonymous = APIClient()


@pytest.fixture
def world(db) -> World:
    from classifier.models import ModelVersion

    ModelVersion.objects.create(version="unit-test-v1", status=ModelVersion.Status.ACTIVE,
                                artifact_path="/nonexistent/model", melanoma_threshold=0.5, malignancy_threshold=0.6)
    return World()


@pytest.fixture
def api(world) -> Clients:
    return Clients(world)


@pytest.fixture
def queued(world):
    """Clinic A's lesion flagged and waiting for review, with a scored image."""
    from classifier.models import ModelVersion
    from cases.models import Lesion, Prediction
    from tests.support.case_helpers import make_image

    image = make_image(world)
    Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="done", melanoma_probability=0.8,
                              malignancy_score=0.9, flagged=True, finished_at=image.uploaded_at)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    return world.case_a
