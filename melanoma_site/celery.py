"""The Celery app. Workers: ``celery -A melanoma_site worker -Q inference,rescoring`` (uploads first,
then re-scoring: queue_order_strategy "priority") and ``celery -A melanoma_site worker -Q training
--concurrency 1``; /health/ reports a queue that no worker consumes.

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
