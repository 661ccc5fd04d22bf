"""SecondLook project package: settings, URLs, health checks, the development supervisor and
the Celery app (exposed here so `@shared_task` binds to it). The top layer: it may import every
other package; none imports it."""
from .celery import app as celery_app

__all__ = ("celery_app",)
