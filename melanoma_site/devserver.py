"""Run the whole app on one machine: (embedded) Redis, migrations, demo accounts, web, workers.

``python -m melanoma_site.devserver`` (what ``./run.sh`` calls). Ctrl-C stops every process it
started. Re-running is safe: migrations and demo accounts are idempotent.
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
        "web": [PYTHON, "-m", "gunicorn", "melanoma_site.wsgi", "--bind", f"{host}:{port}",
                "--workers", env.get("WEB_CONCURRENCY", "2"), "--threads", "4", "--timeout", "60",
                "--access-logfile", "-"],
        "inference-worker": celery + ["worker", "-Q", "inference", "-n", "inference@%h", "--concurrency",
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


def main() -> int:
    """Start everything and supervise it until Ctrl-C or until one process dies."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "melanoma_site.settings")
    var = Path(env.get("SECONDLOOK_VAR_DIR", BASE_DIR / "var"))
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    processes: dict[str, subprocess.Popen] = {}
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if not env.get("REDIS_URL"):
            from melanoma_site.embedded_redis import start_embedded_redis

            processes["redis"], env["REDIS_URL"] = start_embedded_redis(
                var / "redis", port=int(env.get("EMBEDDED_REDIS_PORT", "6380"))
            )
            print(f"Embedded Redis on {env['REDIS_URL']}", flush=True)
        _manage("migrate", "--noinput", env=env)
        _manage("collectstatic", "--noinput", "--verbosity", "0", env=env)
        _manage("setup_demo", env=env)
        _manage("register_default_model", env=env)
        for name, command in _services(env, host, port).items():
            # Children ignore Ctrl-C from the terminal: this process stops them in order.
            processes[name] = subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
        print(f"\n{env.get('SITE_NAME', 'SecondLook')} is running at http://{host}:{port}/  (Ctrl-C stops it)\n",
              flush=True)
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; stopping everything.", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        print("Stopping…", flush=True)
        _stop({name: p for name, p in processes.items() if name != "redis"})
        _stop({name: p for name, p in processes.items() if name == "redis"})
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
