"""``python -m melanoma_site.devserver`` starts everything, serves pages and stops cleanly on Ctrl-C."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from melanoma_site.embedded_redis import free_ports

ROOT = Path(__file__).resolve().parents[2]


def _alive_redis(child: psutil.Process) -> bool:
    """A live redis child; one that exits while we look at it is simply not."""
    try:
        return "redis" in child.name() and child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
@pytest.mark.slow
def test_devserver_starts_everything_and_stops_on_ctrl_c(tmp_path, tiny_assessed_model_dir):
    port, redis_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port), SECONDLOOK_VAR_DIR=str(tmp_path / "var"),
               SECONDLOOK_MODEL_DIR=str(tiny_assessed_model_dir), WEB_CONCURRENCY="1")
    log = open(tmp_path / "devserver.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "melanoma_site.devserver"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/health/", timeout=3)
                body = response.json()
                if response.status_code == 200:
                    break
            except (requests.RequestException, ValueError):  # not up yet, or still warming up
                pass
            time.sleep(1)
        assert body and body["status"] == "ok", (body, (tmp_path / "devserver.log").read_text()[-4000:])
        login = requests.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=5)
        assert login.status_code == 200 and "Log in" in login.text
        # DEBUG is off: an unknown page is the app's own 404, without Django's list of every URL
        missing = requests.get(f"http://127.0.0.1:{port}/no-such-page/", timeout=5)
        assert missing.status_code == 404 and "Not found" in missing.text and "URLconf" not in missing.text
        # a child that dies is restarted; the rest (the web server here) keeps serving
        redis_child = next(c for c in psutil.Process(process.pid).children() if "redis" in c.name())
        redis_child.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            redis_now = [c for c in psutil.Process(process.pid).children()
                         if c.pid != redis_child.pid and _alive_redis(c)]
            if redis_now:
                break
            time.sleep(0.5)
        assert redis_now, (tmp_path / "devserver.log").read_text()[-3000:]
        assert process.poll() is None
        assert requests.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=5).status_code == 200
        assert "redis exited" in (tmp_path / "devserver.log").read_text()
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 5  # redis, web, two workers, beat
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if process.poll() is None:
            # its children run in sessions of their own: a failed test must not leave them behind
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
    output = (tmp_path / "devserver.log").read_text()
    assert "password:" in output  # demo credentials printed on first run


def test_each_instance_has_its_own_gunicorn_control_socket(tmp_path):
    """The default control socket is one path per user: stopping one instance would remove another's."""
    from melanoma_site.devserver import _services

    first = _services({"SECONDLOOK_VAR_DIR": str(tmp_path / "a")}, "127.0.0.1", 8001)["web"]
    second = _services({"SECONDLOOK_VAR_DIR": str(tmp_path / "b")}, "127.0.0.1", 8002)["web"]
    sockets = [cmd[cmd.index("--control-socket") + 1] for cmd in (first, second)]
    assert sockets[0] != sockets[1] and all(s.startswith(str(tmp_path)) for s in sockets)


class _Started(Exception):
    """Raised where the supervisor would start the services: the steps before it are what is checked."""


@pytest.mark.parametrize("environment, makes_demo_accounts", [("development", True), ("production", False)])
def test_no_demo_accounts_in_production_and_a_new_var_dir_is_owner_only(tmp_path, monkeypatch, environment,
                                                                        makes_demo_accounts):
    import stat

    from melanoma_site import devserver
    from melanoma_site.embedded_redis import free_port

    steps = []

    def services(env, host, port):
        raise _Started

    monkeypatch.setattr(devserver, "STOP_SIGNALS", ())  # leave this process's own handlers alone
    monkeypatch.setattr(devserver, "_manage", lambda *args, env: steps.append(args[0]))
    monkeypatch.setattr(devserver, "_services", services)
    monkeypatch.setenv("DJANGO_ENV", environment)
    monkeypatch.setenv("SECONDLOOK_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # no embedded Redis
    monkeypatch.setenv("PORT", str(free_port()))
    with pytest.raises(_Started):
        devserver.main()
    assert ("setup_demo" in steps) is makes_demo_accounts
    assert steps[0] == "migrate" and steps[-1] == "register_default_model"
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700


def test_a_taken_embedded_redis_port_stops_the_start_with_the_reason(tmp_path, monkeypatch, capsys):
    import socket

    from melanoma_site import devserver
    from melanoma_site.embedded_redis import free_ports

    port, redis_port = free_ports(2)
    monkeypatch.setattr(devserver, "STOP_SIGNALS", ())
    monkeypatch.setattr(devserver, "_manage", lambda *args, env: pytest.fail("went on after the refusal"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("SECONDLOOK_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("PORT", str(port))
    monkeypatch.setenv("EMBEDDED_REDIS_PORT", str(redis_port))
    with socket.socket() as other:  # another checkout's ./run.sh, say
        other.bind(("127.0.0.1", redis_port))
        other.listen()
        assert devserver.main() == 1
    err = capsys.readouterr().err
    assert f"port {redis_port}" in err and "EMBEDDED_REDIS_PORT" in err
