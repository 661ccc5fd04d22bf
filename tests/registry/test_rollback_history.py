"""A roll-back goes back through the activation history, as a deploy history does: A, B then C
activated, two roll-backs give C -> B -> A, never C -> B -> C. A version rolled back from is not
offered by a roll-back again until it is activated explicitly (through the promotion gate)."""
from __future__ import annotations

import pytest

from audit.models import AuditEvent
from classifier import lifecycle, registry
from classifier.models import ModelVersion
from tests.support.gate_helpers import fake_sha, stand_in_artifact, stored_gate

pytestmark = pytest.mark.django_db
PASSWORD = "x-very-long-pass-1"


def _activated(root, name: str) -> ModelVersion:
    """A ready version with stand-in model files (loadable, with the image checks), activated now."""
    return registry.activate(ModelVersion.objects.create(
        version=name, status="ready", target_sensitivity=0.9, artifact_path=stand_in_artifact(root, name),
        sha256=fake_sha(name)))


@pytest.fixture
def history(tmp_path) -> tuple[ModelVersion, ModelVersion, ModelVersion]:
    """A, then B, then C activated: C is active."""
    return _activated(tmp_path, "A"), _activated(tmp_path, "B"), _activated(tmp_path, "C")


def _active() -> ModelVersion:
    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


def _roll_back(reason: str = "bad flags") -> ModelVersion:
    """A roll-back as the confirmation page offers it."""
    current, target = lifecycle.rollback_choice()
    assert target is not None, "nothing offered"
    return lifecycle.rollback(user=None, expected_active_pk=current.pk, target_pk=target.pk, reason=reason)


def test_rolling_back_twice_goes_further_back_not_forward_again(history):
    a, b, c = history
    assert lifecycle.rollback_choice() == (c, b)
    assert _roll_back() == b
    assert lifecycle.rollback_choice() == (b, a)  # not C, the version just rolled back from
    assert _roll_back() == a
    assert _active() == a
    assert lifecycle.rollback_choice() == (a, None)  # B and C were both rolled back from
    trail = [(e.old_values["active"], e.new_values["active"])
             for e in AuditEvent.objects.filter(action="rollback").order_by("pk")]
    assert trail == [("C", "B"), ("B", "A")]


def test_the_version_rolled_back_from_is_refused_as_a_target_even_when_posted(history):
    a, b, c = history
    _roll_back()
    with pytest.raises(lifecycle.LifecycleError, match="would now re-activate A, not C"):
        lifecycle.rollback(user=None, expected_active_pk=b.pk, target_pk=c.pk, reason="forward again")
    assert _active() == b and AuditEvent.objects.filter(action="rollback").count() == 1


def test_a_stale_page_is_still_refused(history):
    """The page of the first roll-back, posted again, names C as active: refused, nothing changed."""
    a, b, c = history
    page = {"expected_active_pk": c.pk, "target_pk": b.pk, "reason": "twice"}
    lifecycle.rollback(user=None, **page)
    with pytest.raises(lifecycle.LifecycleError, match="The active version is now B, not C"):
        lifecycle.rollback(user=None, **page)
    assert _active() == b and AuditEvent.objects.filter(action="rollback").count() == 1


def test_activating_the_version_rolled_back_from_explicitly_makes_it_a_target_again(history, django_user_model):
    a, b, c = history
    _roll_back()
    assert lifecycle.rollback_choice() == (b, a)
    # C fixed (or judged fine after all): activated again through the gate, against B, active now
    ModelVersion.objects.filter(pk=c.pk).update(metrics={"gate": stored_gate(
        allowed=True, active=b.version, active_sha256=b.sha256, candidate=c.version)})
    c.refresh_from_db()
    admin = django_user_model.objects.create_superuser("root", password=PASSWORD)
    lifecycle.activate_version(version=c, user=admin)
    assert _active() == c
    assert lifecycle.rollback_choice() == (c, b)  # B was active before C's new activation
    assert lifecycle.rolled_back_from(ModelVersion.objects.get(pk=c.pk)) is None
    assert _roll_back() == b
    assert lifecycle.rollback_choice() == (b, a)


def test_a_version_activated_after_a_roll_back_rolls_back_to_the_one_active_before_it(history, tmp_path):
    """C -> B (roll-back), then D activated: a roll-back from D returns to B, then to A."""
    a, b, c = history
    _roll_back()
    d = _activated(tmp_path, "D")
    assert lifecycle.rollback_choice() == (d, b)
    assert _roll_back() == b
    assert lifecycle.rollback_choice() == (b, a)


def test_the_confirmation_page_names_the_versions_it_passes_over(client, django_user_model, history):
    a, b, c = history
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD))
    first = client.get("/admin/classifier/modelversion/rollback/").content.decode()
    assert "Yes, roll back to B" in first and 'id="rollback-skipped"' not in first
    _roll_back()
    page = client.get("/admin/classifier/modelversion/rollback/").content.decode()
    assert "Yes, roll back to A" in page
    assert 'id="rollback-skipped"' in page and f'/admin/classifier/modelversion/{c.pk}/change/">C</a>' in page
    assert lifecycle.rollback_skipped(b, a) == [c]
    _roll_back()
    assert lifecycle.rollback_skipped(a, None) == [b, c]  # most recently activated first
    response = client.get("/admin/classifier/modelversion/rollback/", follow=True).content.decode()
    assert "There is no earlier active version to roll back to" in response
