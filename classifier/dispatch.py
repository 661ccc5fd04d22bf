"""Publishing Celery tasks from a web request without ever holding it: one fresh connection that
fails fast when the broker is down (the caller's sweep or a later task is the retry)."""
from __future__ import annotations

import logging
from typing import Callable

from celery import current_app
from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)


def broker_connection():
    """A connection that fails fast when Redis is down.

    Celery's default publish retries the connection for seconds, which would stall the request;
    a fresh connection also follows the current broker_url rather than a pooled one.
    """
    timeout = settings.BROKER_PUBLISH_TIMEOUT_S
    options = dict(current_app.conf.broker_transport_options or {}, socket_timeout=timeout,
                   socket_connect_timeout=timeout)
    return current_app.connection_for_write(connect_timeout=timeout, transport_options=options)


def send(task: str, args: list, *, connection, queue: str | None = None, **options) -> None:
    """Publish ``task`` by name on ``connection`` with one connection try and no publish retry
    (raises when the broker is down: the caller decides what a lost send means). ``options`` go to
    ``send_task`` (e.g. the time limits of one run)."""
    connection.ensure_connection(max_retries=0)
    current_app.send_task(task, args=args, queue=queue, connection=connection, retry=False, **options)


def publish(task: str, args: list, **options) -> None:
    """Publish ``task`` on a fresh, fail-fast connection (raises when the broker is down)."""
    with broker_connection() as connection:
        send(task, args, connection=connection, **options)


def on_commit_or_fail(publish_job: Callable[[], None], *, on_failure: Callable[[Exception], None]) -> None:
    """Once the current transaction commits, call ``publish_job``; when it raises (the broker is
    down), log it and call ``on_failure(exc)``, which records what the lost send means (a job
    marked failed with the reason), instead of raising into a request whose writes are committed."""
    def run() -> None:
        try:
            publish_job()
        except Exception as exc:
            log.warning("could not queue a job after commit (%s: %s)", type(exc).__name__, exc)
            on_failure(exc)

    transaction.on_commit(run)


def broker_down_reason(exc: Exception, what: str) -> str:
    """The words a job that could not be queued shows in the admin."""
    return (f"{what} could not be queued: the message broker (Redis) did not answer "
            f"({type(exc).__name__}: {exc}). Nothing ran; start it again once the broker is back.")
