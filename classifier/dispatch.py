"""Publishing Celery tasks from a web request without ever holding it: one fresh connection that
fails fast when the broker is down (the caller's sweep or a later task is the retry)."""
from __future__ import annotations

from celery import current_app
from django.conf import settings


def broker_connection():
    """A connection that fails fast when Redis is down.

    Celery's default publish retries the connection for seconds, which would stall the request;
    a fresh connection also follows the current broker_url rather than a pooled one.
    """
    timeout = settings.BROKER_PUBLISH_TIMEOUT_S
    options = dict(current_app.conf.broker_transport_options or {}, socket_timeout=timeout,
                   socket_connect_timeout=timeout)
    return current_app.connection_for_write(connect_timeout=timeout, transport_options=options)


def send(task: str, args: list, *, connection, queue: str | None = None) -> None:
    """Publish ``task`` by name on ``connection`` with one connection try and no publish retry
    (raises when the broker is down: the caller decides what a lost send means)."""
    connection.ensure_connection(max_retries=0)
    current_app.send_task(task, args=args, queue=queue, connection=connection, retry=False)
