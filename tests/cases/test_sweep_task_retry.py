"""The periodic sweep has no retry of its own: beat sends the next one (every SWEEP_INTERVAL_SECONDS),
so a sweep that meets a database or broker outage fails once instead of running again at once."""
from __future__ import annotations

from django.db import OperationalError

from cases import tasks


def test_a_failed_sweep_is_not_retried_beat_sends_the_next(monkeypatch):
    calls = []

    def down(**kwargs):
        calls.append(kwargs)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(tasks, "sweep", down)
    result = tasks.sweep_pending.apply()
    assert result.failed() and isinstance(result.result, OperationalError)
    assert len(calls) == 1  # no retries (they were 2 more runs, each as soon as the last failed)
    assert not getattr(tasks.sweep_pending, "autoretry_for", ())
