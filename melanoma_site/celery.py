"""The Celery app. Workers: ``celery -A melanoma_site worker -Q inference,rescoring -n inference@%h``
(uploads first, then re-scoring: queue_order_strategy "priority") and ``celery -A melanoma_site worker
-Q training --concurrency 1 -n training@%h``; /health/ reports a queue that no worker consumes.

Every worker needs a node name (``-n``) of its own: without one each is ``celery@HOST``, so two on
one host answer under one name. /health/ then sees one of them only (a queue reported without a
worker, 503 for ever), and each worker's start re-queues the predictions its live namesake is
scoring (``cases.tasks._resume_after_restart``). A worker that finds a namesake at start logs a warning.

Nothing here imports TensorFlow: models load lazily inside the forked child that runs a task.
"""
import logging
import os
import threading

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "melanoma_site.settings")

log = logging.getLogger(__name__)

app = Celery("melanoma_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("inference"), Queue("rescoring"), Queue("training"))
app.autodiscover_tasks()


def warn_if_node_name_taken(hostname: str, timeout: float = 2.0) -> bool:
    """Warn when another live worker process answers to ``hostname``; True when one does.

    Each reply to ``stats`` carries its worker's pid, so this process's own reply (if its event
    loop answers in time) is told apart from a namesake's. Best effort: a broker that cannot be
    asked is no reason to stop a worker."""
    try:
        replies = app.control.broadcast("stats", destination=[hostname], reply=True, timeout=timeout) or []
    except Exception as exc:
        log.info("could not check whether another worker is named %s (%s: %s)", hostname, type(exc).__name__, exc)
        return False
    pids = {info.get("pid") for reply in replies for name, info in reply.items()
            if name == hostname and isinstance(info, dict)}
    others = sorted(str(pid) for pid in pids - {os.getpid()})
    if others:
        log.warning("another live worker is named %s (pid %s): give each worker its own name with -n (e.g. "
                    "-n inference@%%h, -n training@%%h). Until then /health/ sees only one of them, and each "
                    "one's start re-queues what the other is scoring.", hostname, ", ".join(others))
        return True
    return False


@worker_ready.connect
def _check_node_name(sender=None, **kwargs) -> None:
    """Look for a namesake in the background: the worker's start must not wait for the replies."""
    hostname = getattr(sender, "hostname", "") or ""
    if hostname:
        threading.Thread(target=warn_if_node_name_taken, args=(hostname,), name="node-name-check",
                         daemon=True).start()
