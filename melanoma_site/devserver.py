"""Run the whole app on one machine: (embedded) Redis, migrations, demo accounts, web, workers.

``python -m melanoma_site.devserver`` (what ``./run.sh`` calls). A child that dies (the embedded
Redis, a worker, the web server) is restarted after a back-off that doubles while it keeps dying
(1 s up to 60 s); the others keep running. Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal
closed) stop every process it started. Re-running is safe: migrations and demo accounts are
idempotent (with ``DJANGO_ENV=production`` no demo accounts are made), and the children a killed
run left behind (listed in ``var/devserver-PORT.pids``) are stopped first; while that run itself is
alive, a second one on its port refuses to start. DEBUG is off unless the environment turns it on,
so error pages are the app's own (never Django's debug page with its URL list). The web server's
access log leaves out query strings (search terms may be patient identifiers) and the Referer
(`ACCESS_LOG_FORMAT`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# gunicorn's default without the query string (%(r)s and %(q)s carry it: a search's ?q= may be a
# patient identifier) and without the Referer (%(f)s: the previous page's URL, query included)
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
# the signals that stop the supervisor and, through it, every child (each runs in a session of its
# own, so neither Ctrl-C nor a closing terminal reaches them directly)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
                "--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT,
                "--control-socket", str(var / f"gunicorn-{port}.ctl")],
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


def _say(message: str, stream=None) -> None:
    """Print, ignoring a terminal that is gone (after SIGHUP a write fails): stopping must go on."""
    try:
        print(message, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def _start_marker(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc): with the pid, it names one
    process, never a later one that was given the same pid. "exited" once it has finished (a zombie
    included); None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "exited" if Path("/proc/self/stat").exists() else None
    fields = stat.rpartition(")")[2].split()  # the fields after the command name, from the third
    return "exited" if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished; else field 22


def _alive(pid: int, marker: str | None) -> bool | None:
    """Whether the recorded process still runs: True, False, or None when it cannot be told (a
    process with that pid runs, but this system has no /proc to tell whether it is the same one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: the pid was reused
        return False
    now = _start_marker(pid)
    if now == "exited":
        return False
    if now is None or marker is None:
        return None
    return now == marker


class PidFile:
    """``var/devserver-PORT.pids``: this supervisor and its children, so that a run whose supervisor
    was killed outright (SIGKILL, a crash) leaves nothing running that the next run does not stop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, children: dict[str, "Child"]) -> None:
        entries = {"supervisor": {"pid": os.getpid(), "start": _start_marker(os.getpid())}, "children": {
            name: {"pid": c.process.pid, "start": _start_marker(c.process.pid), "group": c.own_group}
            for name, c in children.items() if c.process is not None and c.process.poll() is None}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(entries))
        staging.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def clear_leftovers(self, grace: float = 15.0) -> str | None:
        """Stop the children a previous run left running; returns why this run must not start
        instead (that run's supervisor is alive, or a listed process cannot be told apart from an
        unrelated one), or None."""
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        supervisor = entries.get("supervisor") or {}
        if supervisor.get("pid") and supervisor["pid"] != os.getpid() and _alive(supervisor["pid"],
                                                                              supervisor.get("start")) is not False:
            return (f"another run (pid {supervisor['pid']}) is serving this port with this var directory; "
                    f"stop it first, or delete {self.path} if it is not that")
        leftovers = {name: e for name, e in (entries.get("children") or {}).items()
                     if _alive(e["pid"], e.get("start")) is not False}
        unsure = [f"{name} (pid {e['pid']})" for name, e in leftovers.items() if _alive(e["pid"], e.get("start")) is None]
        if unsure:
            return (f"processes of an earlier run may still be running: {', '.join(unsure)}; stop them, then delete "
                    f"{self.path}")
        if leftovers:
            listed = ", ".join(f"{name} (pid {entry['pid']})" for name, entry in leftovers.items())
            _say(f"Stopping what an earlier run left running: {listed}.", sys.stderr)
            _signal_leftovers(leftovers, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(e["pid"], e.get("start")) for e in leftovers.values()):
                time.sleep(0.1)
            _signal_leftovers({n: e for n, e in leftovers.items() if _alive(e["pid"], e.get("start"))}, signal.SIGKILL)
        self.remove()
        return None


def _signal_leftovers(leftovers: dict[str, dict], signum: int) -> None:
    """Signal each leftover, with its process group when it led one (gunicorn's and Celery's workers)."""
    for entry in leftovers.values():
        try:
            if entry.get("group"):
                os.killpg(entry["pid"], signum)
            else:
                os.kill(entry["pid"], signum)
        except (ProcessLookupError, PermissionError):
            pass


RESTART_BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a child up this long counts as healthy again: its back-off starts over


class Child:
    """One supervised process: how to start it, and its restart back-off."""

    def __init__(self, name: str, start, *, own_group: bool = True) -> None:
        self.name, self._start = name, start
        self.own_group = own_group  # started with start_new_session: it leads a process group
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
    """Start everything and supervise it until Ctrl-C, SIGTERM or SIGHUP, restarting any child that dies."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "melanoma_site.settings")
    env.setdefault("DEBUG", "0")
    var = Path(env.get("SECONDLOOK_VAR_DIR", BASE_DIR / "var"))
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    # settings.PRODUCTION's test: this supervisor loads no Django settings of its own
    production = env.get("DJANGO_ENV", "development") == "production"
    children: dict[str, Child] = {}
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)
    # owner-only when created here: it holds the SQLite database, the uploads and the broker's data
    # (an existing one is left as it is)
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid_file = PidFile(var / f"devserver-{port}.pids")
    refusal = pid_file.clear_leftovers()
    if refusal:
        _say(f"Not starting: {refusal}.", sys.stderr)
        return 1
    try:
        if not env.get("REDIS_URL"):
            from melanoma_site.embedded_redis import start_embedded_redis

            redis_port = int(env.get("EMBEDDED_REDIS_PORT", "6380"))
            children["redis"] = Child("redis", lambda: start_embedded_redis(var / "redis", port=redis_port)[0],
                                      own_group=False)
            try:
                children["redis"].start()
            except RuntimeError as exc:  # e.g. its port is another Redis's: never share that one's queues
                _say(f"Not starting: {exc}.", sys.stderr)
                return 1
            pid_file.write(children)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            print(f"Embedded Redis on {env['REDIS_URL']}", flush=True)
        _manage("migrate", "--noinput", env=env)
        _manage("collectstatic", "--noinput", "--verbosity", "0", env=env)
        if not production:  # the command refuses there: no demo superuser with a printed password
            _manage("setup_demo", env=env)
        _manage("register_default_model", env=env)
        for name, command in _services(env, host, port).items():
            if stopping:
                break
            # Children ignore Ctrl-C from the terminal: this process stops them in order.
            children[name] = Child(name, lambda command=command: subprocess.Popen(
                command, cwd=BASE_DIR, env=env, start_new_session=True))
            children[name].start()
            pid_file.write(children)
        if not stopping:
            print(f"\n{env.get('SITE_NAME', 'SecondLook')} is running at http://{host}:{port}/  (Ctrl-C stops it)\n",
                  flush=True)
        while not stopping:
            now = time.monotonic()
            before = {name: c.process for name, c in children.items()}
            for child in children.values():
                child.check(now)
            if any(c.process is not before[name] for name, c in children.items()):  # one was restarted
                pid_file.write(children)
            time.sleep(0.5)
        return 0
    finally:
        _say("Stopping…")
        running = {name: c.process for name, c in children.items() if c.process is not None}
        _stop({name: p for name, p in running.items() if name != "redis"})
        _stop({name: p for name, p in running.items() if name == "redis"})
        pid_file.remove()
        _say("Stopped.")


if __name__ == "__main__":
    sys.exit(main())
