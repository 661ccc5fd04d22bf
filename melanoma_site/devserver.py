"""Run the whole app on one machine: (embedded) Redis, migrations, demo accounts, web, workers.

``python -m melanoma_site.devserver`` (what ``./run.sh`` calls). A child that dies (the embedded
Redis, a worker, the web server) is restarted after a back-off that doubles while it keeps dying
(1 s up to 60 s); the others keep running. Ctrl-C stops every process it started. Re-running is
safe: migrations and demo accounts are idempotent. DEBUG is off unless the environment turns it
on, so error pages are the app's own (never Django's debug page with its URL list).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


def _services(env: dict[str, str], host: str, port: int) -> dict[str, list[str]]:
    var = Path(env.get("SECONDLOOK_VAR_DIR", BASE_DIR / "var"))
    celery = [PYTHON, "-m", "celery", "-A", "melanoma_site"]
    return {
        # a control socket of this instance's own: the default path is shared by every gunicorn
        # of the user, so stopping one instance would remove another's
        "web": [PYTHON, "-m", "gunicorn", "melanoma_site.wsgi", "--bind", f"{host}:{port}",
                "--workers", env.get("WEB_CONCURRENCY", "2"), "--threads", "4", "--timeout", "60",
                "--access-logfile", "-", "--control-socket", str(var / f"gunicorn-{port}.ctl")],
        # interactive uploads first, re-scoring when none waits (queue_order_strategy "priority")
        "inference-worker": celery + ["worker", "-Q", "inference,rescoring", "-n", "inference@%h", "--concurrency",
                                     env.get("INFERENCE_CONCURRENCY", "1"), "--loglevel", "INFO"],
        "training-worker": celery + ["worker", "-Q", "training", "-n", "training@%h", "--concurrency", "1",
                                    "--loglevel", "INFO"],
        "beat": celery + ["beat", "--loglevel", "INFO", "--schedule", str(var / "celerybeat-schedule")],
    }


def _stop(processes: dict[str, subprocess.Popen], grace: float = 15.0) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


RESTART_BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a child up this long counts as healthy again: its back-off starts over


class Child:
    """One supervised process: how to start it, and its restart back-off."""

    def __init__(self, name: str, start) -> None:
        self.name, self._start = name, start
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at: float | None = None

    def start(self) -> None:
        self.process = self._start()
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> None:
        """Notice a death and schedule the restart; restart when its back-off has passed."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                print(f"Restarting {self.name}.", file=sys.stderr, flush=True)
                try:
                    self.start()
                except Exception as exc:  # e.g. the port is still taken: try again later
                    print(f"{self.name} did not start ({exc}).", file=sys.stderr, flush=True)
                    self._schedule(now)
            return
        if self.process is not None and self.process.poll() is not None:
            if now - self.started_at >= STABLE_AFTER_S:
                self.failures = 0
            self._schedule(now)
            print(f"{self.name} exited with code {self.process.returncode}; restarting it in "
                  f"{self.restart_at - now:.0f} s (the rest keeps running).", file=sys.stderr, flush=True)

    def _schedule(self, now: float) -> None:
        self.restart_at = now + min(RESTART_BACKOFF_MAX_S, 2.0 ** self.failures)
        self.failures += 1


def main() -> int:
    """Start everything and supervise it until Ctrl-C, restarting any child that dies."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "melanoma_site.settings")
    env.setdefault("DEBUG", "0")
    var = Path(env.get("SECONDLOOK_VAR_DIR", BASE_DIR / "var"))
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    children: dict[str, Child] = {}
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if not env.get("REDIS_URL"):
            from melanoma_site.embedded_redis import start_embedded_redis

            redis_port = int(env.get("EMBEDDED_REDIS_PORT", "6380"))
            children["redis"] = Child("redis", lambda: start_embedded_redis(var / "redis", port=redis_port)[0])
            children["redis"].start()
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            print(f"Embedded Redis on {env['REDIS_URL']}", flush=True)
        _manage("migrate", "--noinput", env=env)
        _manage("collectstatic", "--noinput", "--verbosity", "0", env=env)
        _manage("setup_demo", env=env)
        _manage("register_default_model", env=env)
        for name, command in _services(env, host, port).items():
            # Children ignore Ctrl-C from the terminal: this process stops them in order.
            children[name] = Child(name, lambda command=command: subprocess.Popen(
                command, cwd=BASE_DIR, env=env, start_new_session=True))
            children[name].start()
        print(f"\n{env.get('SITE_NAME', 'SecondLook')} is running at http://{host}:{port}/  (Ctrl-C stops it)\n",
              flush=True)
        while not stopping:
            now = time.monotonic()
            for child in children.values():
                child.check(now)
            time.sleep(0.5)
        return 0
    finally:
        print("Stopping…", flush=True)
        running = {name: c.process for name, c in children.items() if c.process is not None}
        _stop({name: p for name, p in running.items() if name != "redis"})
        _stop({name: p for name, p in running.items() if name == "redis"})
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
