"""The Celery app. Workers: ``celery -A melanoma_site worker -Q inference`` and ``-Q training``.

Nothing here imports TensorFlow: models load lazily inside the forked child that runs a task.
"""
import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "melanoma_site.settings")

app = Celery("melanoma_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("inference"), Queue("rescoring"), Queue("training"))
app.autodiscover_tasks()
