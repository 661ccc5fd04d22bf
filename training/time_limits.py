"""Recognising a task queue's soft time limit without importing the task queue (this package is
plain ML code): broad ``except Exception`` blocks around per-file work must let it through, or a
limit that fires while one image is decoded is recorded as an unreadable image."""
from __future__ import annotations

# Celery's (billiard's) soft time limit exception, known by name.
TIME_LIMIT_EXCEPTIONS = frozenset({"SoftTimeLimitExceeded"})


def is_time_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is a task queue's soft time limit (a class of that name in its MRO): it must
    reach the task, which reports the limit."""
    return any(cls.__name__ in TIME_LIMIT_EXCEPTIONS for cls in type(exc).__mro__)
