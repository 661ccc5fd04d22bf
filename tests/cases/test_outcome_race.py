"""Two first results (or two corrections of one result) entered at the same moment: the database
keeps one and the other gets the form's message, with nothing half-saved."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from cases import outcomes
from cases.models import Outcome
from cases.outcomes import current_outcome, record_outcome

pytestmark = pytest.mark.django_db


def _enter(world, **changes) -> Outcome:
    values = dict(user=world.clin_a, lesion=world.lesion_a, diagnosis="melanoma",
                  diagnosis_date=timezone.localdate(), report_reference="HP-1")
    return record_outcome(**(values | changes))


def test_the_database_refuses_a_second_first_result_for_a_lesion(world):
    first = _enter(world)
    with pytest.raises(IntegrityError), transaction.atomic():
        Outcome.objects.create(lesion=world.lesion_a, diagnosis="nevus", diagnosis_date=first.diagnosis_date,
                               report_reference="HP-2", entered_by=world.clin_a)


def test_a_first_result_that_loses_the_race_is_refused_with_the_forms_message(world, monkeypatch):
    first = _enter(world)
    # the competing request read "no result yet" just before the other one saved
    real_current = outcomes.current_outcome
    reads = iter([None])
    monkeypatch.setattr(outcomes, "current_outcome", lambda lesion: next(reads, real_current(lesion)))
    with pytest.raises(ValidationError) as refused:
        _enter(world, diagnosis="nevus", report_reference="HP-2")
    assert "already has a result" in " ".join(refused.value.messages)
    assert list(Outcome.objects.filter(lesion=world.lesion_a)) == [first]


def test_a_correction_that_loses_the_race_is_refused_and_the_winner_stays_current(world, monkeypatch):
    first = _enter(world)
    winner = _enter(world, diagnosis="nevus", report_reference="HP-2", supersedes=first, reason="lab amended")
    real_current = outcomes.current_outcome
    reads = iter([first])  # the loser still saw the first result as current
    monkeypatch.setattr(outcomes, "current_outcome", lambda lesion: next(reads, real_current(lesion)))
    with pytest.raises(ValidationError) as refused:
        _enter(world, diagnosis="nevus", report_reference="HP-3", supersedes=first, reason="typo")
    assert "corrected meanwhile" in " ".join(refused.value.messages)
    assert current_outcome(world.lesion_a) == winner
    assert Outcome.objects.filter(lesion=world.lesion_a).count() == 2


def test_when_only_the_database_sees_the_race_the_refusal_is_the_same(world, monkeypatch):
    first = _enter(world)
    real_current = outcomes.current_outcome
    reads = iter([None])
    monkeypatch.setattr(outcomes, "current_outcome", lambda lesion: next(reads, real_current(lesion)))
    # both requests validated before either saved: full_clean passed, the unique index refuses
    monkeypatch.setattr(Outcome, "full_clean", lambda self, *a, **k: None)
    with pytest.raises(ValidationError) as refused:
        _enter(world, diagnosis="nevus", report_reference="HP-2")
    assert "already has a result" in " ".join(refused.value.messages)
    assert list(Outcome.objects.filter(lesion=world.lesion_a)) == [first]
