"""The supervisor behind ``./run.sh`` stops its children on SIGHUP as on Ctrl-C, stops what a killed
run left behind, and keeps query strings and referers out of the access log.

No real service is started: the children are small Python sleepers standing in for them.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melanoma_site import devserver
from melanoma_site.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="tells processes apart through /proc")

# a child that starts a grandchild in its own process group (as gunicorn its workers), then waits
SLEEPER = ("import subprocess, sys, time; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)")

SUPERVISOR = f"""
import sys
from melanoma_site import devserver
devserver._manage = lambda *args, env: None
devserver._services = lambda env, host, port: {{name: [sys.executable, "-c", {SLEEPER!r}] for name in ("web", "beat")}}
sys.exit(devserver.main())
"""


def _gone(pid: int) -> bool:
    return devserver._alive(pid, None) is False


def _wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_hang_up_stops_every_child_like_ctrl_c(tmp_path, signum):
    """The children run in sessions of their own: a closing terminal's SIGHUP reaches only the
    supervisor, which must stop them (it used to die at once and leave them all running)."""
    var = tmp_path / "var"
    port = free_port()
    env = dict(os.environ, SECONDLOOK_VAR_DIR=str(var), PORT=str(port), REDIS_URL="redis://127.0.0.1:1/0")
    log = tmp_path / "supervisor.log"  # a file, not a pipe: the sleepers inherit it and outlive the test's read
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR], cwd=ROOT, env=env,
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    pid_file = var / f"devserver-{port}.pids"
    children = []
    try:
        assert _wait_until(lambda: pid_file.exists() and len(json.loads(pid_file.read_text())["children"]) == 2)
        children = [entry["pid"] for entry in json.loads(pid_file.read_text())["children"].values()]
        assert all(not _gone(pid) for pid in children)
        time.sleep(0.5)  # the loop is running
        supervisor.send_signal(signum)
        assert supervisor.wait(timeout=30) == 0, log.read_text()
        assert _wait_until(lambda: all(_gone(pid) for pid in children)), "children left running"
        assert not pid_file.exists()
        assert "Stopped." in log.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in children:
            for member in _group_members(pid):
                os.kill(member, signal.SIGKILL)


def _leftover(tmp_path) -> subprocess.Popen:
    """A child of a run whose supervisor was killed: its own group, with a grandchild in it."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    assert _wait_until(lambda: len(_group_members(process.pid)) == 2)
    return process


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def _pid_file_of_a_killed_run(path, child_pid: int, child_start: str):
    """A PID file as a supervisor killed outright leaves it: itself gone, its web child listed."""
    path.write_text(json.dumps({
        "supervisor": {"pid": _dead_pid(), "start": "1"},
        "children": {"web": {"pid": child_pid, "start": child_start, "group": True}},
    }))
    return path


def test_the_next_start_stops_what_a_killed_run_left_running(tmp_path):
    leftover = _leftover(tmp_path)
    pid_file = tmp_path / "devserver-8000.pids"
    try:
        _pid_file_of_a_killed_run(pid_file, leftover.pid, devserver._start_marker(leftover.pid))
        assert devserver.PidFile(pid_file).clear_leftovers(grace=10) is None
        assert _wait_until(lambda: _group_members(leftover.pid) == [], timeout=10)  # its grandchild too
        assert not pid_file.exists()
    finally:
        for member in _group_members(leftover.pid):
            os.kill(member, signal.SIGKILL)
        leftover.wait()


def test_a_process_that_merely_reuses_a_listed_pid_is_left_alone(tmp_path):
    unrelated = _leftover(tmp_path)
    pid_file = tmp_path / "devserver-8000.pids"
    try:
        _pid_file_of_a_killed_run(pid_file, unrelated.pid, "1")  # started at another time
        assert devserver.PidFile(pid_file).clear_leftovers(grace=1) is None
        assert unrelated.poll() is None and len(_group_members(unrelated.pid)) == 2
    finally:
        for member in _group_members(unrelated.pid):
            os.kill(member, signal.SIGKILL)
        unrelated.wait()


def test_a_second_run_on_the_same_port_refuses_while_the_first_supervises(tmp_path):
    pid_file = tmp_path / "devserver-8000.pids"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file.write_text(json.dumps({"supervisor": {"pid": running.pid,
                                                       "start": devserver._start_marker(running.pid)},
                                        "children": {}}))
        refusal = devserver.PidFile(pid_file).clear_leftovers(grace=1)
        assert refusal and f"pid {running.pid}" in refusal and running.poll() is None
        assert pid_file.exists()
    finally:
        running.kill()
        running.wait()


def test_the_access_log_carries_neither_query_strings_nor_referers(tmp_path):
    """A search's ?q= may be a patient identifier; the Referer is the previous page's full URL."""
    web = devserver._services({"SECONDLOOK_VAR_DIR": str(tmp_path)}, "127.0.0.1", 8001)["web"]
    log_format = web[web.index("--access-logformat") + 1]
    from gunicorn.glogging import Logger
    from gunicorn.config import Config

    class Response:
        status, sent, headers = "200 OK", 12, []

    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/patients/?q=PAT-0042", "PATH_INFO": "/patients/",
               "QUERY_STRING": "q=PAT-0042", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.5",
               "HTTP_REFERER": "https://secondlook.example.org/patients/?q=PAT-0042", "HTTP_USER_AGENT": "probe"}
    config = Config()
    config.set("access_log_format", log_format)
    from datetime import timedelta

    atoms = Logger(config).atoms(Response(), type("Req", (), {"headers": []})(), environ, timedelta(seconds=0.01))
    line = log_format % atoms
    assert '"GET /patients/ HTTP/1.1" 200' in line and "probe" in line
    assert "PAT-0042" not in line
