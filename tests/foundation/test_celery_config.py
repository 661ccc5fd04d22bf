"""Celery is configured the way production needs it."""
import pytest
from django.conf import settings

from melanoma_site.celery import app


def test_queues_and_routing():
    assert {q.name for q in app.conf.task_queues} == {"inference", "rescoring", "training"}
    assert app.conf.task_default_queue == "inference"
    assert app.amqp.router.route({}, "classifier.tasks.train_model")["queue"].name == "training"
    assert app.amqp.router.route({}, "cases.tasks.score_image")["queue"].name == "inference"
    assert app.amqp.router.route({}, "cases.tasks.rescore_images")["queue"].name == "rescoring"
    assert app.amqp.router.route({}, "classifier.tasks.warm_model")["queue"].name == "inference"
    # a worker of both queues drains the interactive one first
    assert app.conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_reliability_options():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_soft_time_limit < app.conf.task_time_limit
    # Redis must not redeliver a task that is still running, even the longest training run.
    assert app.conf.broker_transport_options["visibility_timeout"] > settings.TRAINING_TIME_LIMIT


def test_the_visibility_timeout_outlasts_the_largest_ensemble_run():
    """An ensemble run's task gets N times the single run's time limit (N members trained in a
    row): Redis must not hand even the largest one to a second training worker while it runs."""
    from classifier import ensemble_training

    app.loader.import_default_modules()
    _, largest = ensemble_training.time_limits_s(ensemble_training.MAX_MEMBERS)
    assert largest == settings.LONGEST_TASK_TIME_LIMIT > settings.TRAINING_TIME_LIMIT
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout > largest
    assert all(timeout > (task.time_limit or app.conf.task_time_limit)
               for name, task in app.tasks.items() if not name.startswith("celery."))


def test_beat_messages_expire_before_the_next_is_sent():
    """While workers are down, each periodic sweep's message lapses before beat sends the next, so
    a restarted worker finds one sweep waiting, not hours of them; each entry names a real task."""
    from celery.beat import ScheduleEntry

    app.loader.import_default_modules()
    assert set(app.conf.beat_schedule) >= {"sweep-unqueued-predictions", "fail-stale-training-runs",
                                           "fail-stale-rescoring-jobs"}
    for name, entry in app.conf.beat_schedule.items():
        scheduled = ScheduleEntry(name=name, app=app, **entry)
        interval = scheduled.schedule.run_every.total_seconds()
        assert entry["task"] in app.tasks, name
        assert 0 < scheduled.options["expires"] < interval, name


def test_every_registered_task_has_time_limits():
    app.loader.import_default_modules()
    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert ours, "no project tasks were autodiscovered"
    for name, task in ours.items():
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        hard = task.time_limit or app.conf.task_time_limit
        assert soft and hard and soft < hard, name


def test_tensorflow_not_imported_by_worker_parent():
    """Importing the Celery app and all task modules must not import TensorFlow (workers fork)."""
    import subprocess
    import sys

    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE','melanoma_site.settings');"
        "django.setup(); from melanoma_site.celery import app; app.loader.import_default_modules();"
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_an_inference_worker_reserves_one_task_per_process():
    """Prefetch 1 with late acks: a worker of "inference,rescoring" holds no re-scoring task
    beyond those it is running, so an upload that arrives later is the next task it takes
    (queue_order_strategy "priority"). Built as the dev server starts it, never started."""
    from melanoma_site.devserver import _services

    command = _services({"INFERENCE_CONCURRENCY": "3"}, "127.0.0.1", 8000)["inference-worker"]
    assert not any(arg.startswith(("--prefetch-multiplier", "-O")) for arg in command)  # nothing overrides it
    queues = command[command.index("-Q") + 1].split(",")
    worker = app.WorkController(hostname="inference@test", pool_cls="prefork", queues=queues,
                                concurrency=int(command[command.index("--concurrency") + 1]))
    assert worker.consumer.prefetch_multiplier == 1
    assert worker.consumer.initial_prefetch_count == 3  # one per process, none waiting behind them


def test_a_worker_warns_when_another_live_worker_has_its_node_name(monkeypatch, caplog):
    """Two workers named alike (no -n: both celery@HOST) hide each other from /health/, and each
    start re-queues what its namesake is scoring: the one that starts second says so."""
    import os

    from melanoma_site import celery as celery_module

    replies = []
    monkeypatch.setattr(app.control, "broadcast", lambda command, **kwargs: replies)
    replies[:] = [{"celery@web1": {"pid": os.getpid()}}]  # its own answer only
    assert celery_module.warn_if_node_name_taken("celery@web1") is False
    replies[:] = [{"celery@web1": {"pid": os.getpid()}}, {"celery@web1": {"pid": 4242}}]
    with caplog.at_level("WARNING", logger="melanoma_site.celery"):
        assert celery_module.warn_if_node_name_taken("celery@web1") is True
    assert "celery@web1" in caplog.text and "4242" in caplog.text and "-n inference@%h" in caplog.text

    def unreachable(command, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(app.control, "broadcast", unreachable)
    assert celery_module.warn_if_node_name_taken("celery@web1") is False  # never stops a worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_second_worker_of_the_same_name_warns_at_start(celery_worker_process, tmp_path):
    import time

    first = celery_worker_process
    second = type(first)("training", first.env, tmp_path / "second.log", first.name)  # the same -n
    second.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "another live worker is named" not in second.log_path.read_text():
            time.sleep(0.5)
        log = second.log_path.read_text()
        assert f"another live worker is named {first.name}@" in log and f"pid {first.process.pid}" in log, log[-3000:]
    finally:
        second.stop()
    assert "another live worker is named" not in first.log_path.read_text()  # it started alone
