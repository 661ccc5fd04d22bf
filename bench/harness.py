"""Start the real app for benchmarks and load tests, and drive it over HTTP like a browser would.

``App`` runs, in a private var dir: an embedded Redis (or ``redis_url``), ``migrate``, the demo
accounts (``setup_demo``, whose printed password we read), the default model registration,
gunicorn, and N ``celery worker -Q inference`` processes (concurrency 1 each, like
``melanoma_site.devserver``), optionally beat. The database is a fresh SQLite file in the var dir
unless ``database_url`` is given.

``Client`` is one logged-in browser session (requests + CSRF token parsed from the forms).
``verify_db`` asks the app's own ORM (``manage.py shell``) for the no-loss / no-duplicate invariants.

No timings are asserted here; callers print them.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image
from urllib3.util.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
HEALTH_TOKEN = secrets.token_hex(16)  # the detailed /health/ of the app this harness starts
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def free_port() -> int:
    from melanoma_site.embedded_redis import free_port as _free_port

    return _free_port()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank-with-interpolation percentile (numpy's default); None for no data."""
    return None if not values else float(np.percentile(np.asarray(values, dtype=float), q))


def lesion_image(seed: int, size: tuple[int, int] = (384, 288)) -> bytes:
    """A distinct, dermoscopy-like JPEG (skin background, dark irregular blob, mild noise).

    The seed is also written into a pixel stripe, so two seeds never give the same pixels
    (the app rejects same-pixel uploads as duplicates).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    skin = np.array([220, 170, 140], np.float32) + rng.normal(0, 8, 3)
    img = np.broadcast_to(skin, (h, w, 3)).copy()
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    rx, ry = w * rng.uniform(0.12, 0.3), h * rng.uniform(0.12, 0.3)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6.28)) + 0.08 * np.sin(7 * angle)
    inside = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) < wobble ** 2
    lesion_colour = np.array([90, 55, 40], np.float32) + rng.normal(0, 15, 3)
    img[inside] = lesion_colour
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    img[0, :32] = np.frombuffer(int(seed).to_bytes(32, "big", signed=False), np.uint8)[:, None]
    buffer = io.BytesIO()
    Image.fromarray(img, "RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


# --- the app -------------------------------------------------------------------------------------

@dataclass
class App:
    """The real app on loopback. Use as a context manager; ``stop()`` ends every process it started."""

    inference_workers: int = 1
    var_dir: Path | None = None
    database_url: str | None = None
    redis_url: str | None = None
    model_dir: Path | None = None
    web_workers: int = 2
    web_threads: int = 4
    beat: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    keep_var: bool = False
    quiet: bool = True

    def __post_init__(self) -> None:
        self._own_var = self.var_dir is None
        self.var_dir = Path(self.var_dir or tempfile.mkdtemp(prefix="secondlook-bench-"))
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.passwords: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self._logs: list = []

    # lifecycle
    def __enter__(self) -> "App":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "App":
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECONDLOOK_VAR_DIR")}
        env.update(
            DJANGO_SETTINGS_MODULE="melanoma_site.settings",
            DJANGO_ENV="development",
            DEBUG="0",
            SECONDLOOK_VAR_DIR=str(self.var_dir),
            MEDIA_ROOT=str(self.var_dir / "media"),
            SECONDLOOK_MODEL_DIR=str(Path(self.model_dir or ROOT / "classifier" / "shipped_model").resolve()),
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            LOG_LEVEL="WARNING",
            HEALTH_TOKEN=HEALTH_TOKEN,
            HEALTH_CACHE_SECONDS="0",
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        self.env = env
        try:
            if self.redis_url:
                env["REDIS_URL"] = self.redis_url
            else:
                from melanoma_site.embedded_redis import start_embedded_redis

                self.processes["redis"], env["REDIS_URL"] = start_embedded_redis(self.var_dir / "redis")
            self.manage("migrate", "--noinput")
            out = self.manage("setup_demo", "--reset-passwords")
            self.passwords = dict(re.findall(r"username:\s*(\S+)\s+password:\s*(\S+)", out))
            self.manage("register_default_model")
            self._spawn("web", [PYTHON, "-m", "gunicorn", "melanoma_site.wsgi", "--bind", f"127.0.0.1:{self.port}",
                                "--workers", str(self.web_workers), "--threads", str(self.web_threads),
                                "--timeout", "120"])
            for _ in range(self.inference_workers):
                self.add_inference_worker(wait=False)
            if self.beat:
                self._spawn("beat", [PYTHON, "-m", "celery", "-A", "melanoma_site", "beat", "--loglevel", "WARNING",
                                     "--schedule", str(self.var_dir / "celerybeat-schedule")])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def manage(self, *args: str) -> str:
        result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.var_dir / f"{name}.log", "ab")
        self._logs.append(log)
        self.started_at[name] = time.monotonic()
        process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes[name] = process
        return process

    def worker_names(self) -> list[str]:
        return sorted(name for name in self.processes if name.startswith("inference"))

    def add_inference_worker(self, wait: bool = True) -> str:
        name = f"inference{len(self.worker_names()) + 1}"
        self._spawn(name, [PYTHON, "-m", "celery", "-A", "melanoma_site", "worker", "-Q", "inference,rescoring",
                           "-n", f"{name}@%h", "--concurrency", "1", "--loglevel", "INFO",
                           "--without-gossip", "--without-mingle"])
        if wait:
            self.wait_ready()
        return name

    def health(self) -> dict:
        return requests.get(f"{self.base_url}/health/", timeout=10,
                            headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}).json()

    def wait_ready(self, timeout: float = 180.0) -> dict:
        """Until the web server answers and every inference worker is listed by /health/."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                body = self.health()
                workers = body["workers"]["inference"].get("workers", [])
                if all(any(w.startswith(f"{n}@") for w in workers) for n in self.worker_names()):
                    return body
                last = body
            except (requests.RequestException, ValueError) as exc:
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"app not ready within {timeout}s: {last}\n{self.tail_logs()}")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}\n{self.tail_logs()}")

    def tail_logs(self, chars: int = 2500) -> str:
        parts = []
        for log in sorted(self.var_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def worker_rss_mb(self) -> dict[str, dict[str, float]]:
        """Memory of each inference worker's process tree (parent + pool children), MiB: summed RSS
        (counts pages the forked child shares with its parent twice) and summed PSS (counts them once)."""
        result = {}
        for name in self.worker_names():
            try:
                parent = psutil.Process(self.processes[name].pid)
                tree = [p for p in [parent] + parent.children(recursive=True) if p.is_running()]
                result[name] = {
                    "rss": round(sum(p.memory_info().rss for p in tree) / 2**20, 1),
                    "pss": round(sum(p.memory_full_info().pss for p in tree) / 2**20, 1),
                }
            except psutil.NoSuchProcess:
                result[name] = {"rss": float("nan"), "pss": float("nan")}
        return result

    def celery_stats(self) -> dict[str, int]:
        """Tasks executed per inference worker (``celery inspect stats``)."""
        out = subprocess.run([PYTHON, "-m", "celery", "-A", "melanoma_site", "inspect", "stats", "-j", "-t", "3"],
                             cwd=ROOT, env=self.env, capture_output=True, text=True)
        match = re.search(r"\{.*\}", out.stdout, re.S)
        try:
            stats = json.loads(match.group(0)) if match else {}
        except ValueError:
            stats = {}
        return {name.split("@")[0]: int(s.get("total", {}).get("cases.tasks.score_image", 0))
                for name, s in stats.items()}

    def verify_db(self, case_ids: list[int]) -> dict:
        """No-loss / no-duplicate invariants straight from the database, through the app's ORM."""
        code = f"""
import json
from django.db.models import Count
from cases.models import LesionImage, Prediction
from classifier.registry import active_version
case_ids = {list(case_ids)!r}
images = LesionImage.objects.filter(lesion__case_id__in=case_ids)
preds = Prediction.objects.filter(image__in=images)
active = active_version()

def pct(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 4) if values else None

def server_side(preds):
    # Where the time goes, from the rows' own timestamps: waiting (created -> claimed by a worker),
    # running (claimed -> stored, incl. image decode and Grad-CAM), and the model's predict call.
    rows = list(preds.filter(status="done").values_list("created_at", "started_at", "finished_at", "inference_ms"))
    wait = [(s - c).total_seconds() for c, s, f, m in rows]
    run = [(f - s).total_seconds() for c, s, f, m in rows]
    model = [m / 1000 for c, s, f, m in rows if m is not None]
    return {{name: {{"p50": pct(v, 50), "p95": pct(v, 95)}} for name, v in
             (("queue_wait", wait), ("task_run", run), ("model_predict", model))}}
per_pair = preds.values("image_id", "model_version_id").annotate(n=Count("id"))
print("VERIFY" + json.dumps({{
    "images": images.count(),
    "distinct_sha256": images.values("sha256").distinct().count(),
    "predictions": preds.count(),
    "by_status": {{row["status"]: row["n"] for row in preds.values("status").annotate(n=Count("id"))}},
    "max_per_image_and_version": max([row["n"] for row in per_pair], default=0),
    "images_without_active_prediction": images.exclude(predictions__model_version=active).count(),
    "errors": list(preds.exclude(error="").values_list("error", flat=True)[:5]),
    "attempts_over_1": preds.filter(attempts__gt=1).count(),
    "server_side_s": server_side(preds),
}}))
"""
        out = self.manage("shell", "-c", code)
        return json.loads(out.split("VERIFY", 1)[1].strip().splitlines()[0])

    def stop(self) -> None:
        order = [n for n in self.processes if n != "redis"] + [n for n in self.processes if n == "redis"]
        for group in ([n for n in order if n != "redis"], [n for n in order if n == "redis"]):
            for name in group:
                process = self.processes[name]
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, signal.SIGTERM) if name != "redis" else process.terminate()
                    except ProcessLookupError:
                        pass
            for name in group:
                process = self.processes[name]
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(process.pid, signal.SIGKILL) if name != "redis" else process.kill()
                    except ProcessLookupError:
                        pass
                    process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._own_var and not self.keep_var:
            shutil.rmtree(self.var_dir, ignore_errors=True)


# --- a browser session --------------------------------------------------------------------------

class Client:
    """One logged-in user over HTTP: the real login, forms, CSRF tokens and redirects."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        # a kept-alive connection the server closed while this client idled is reset on reuse;
        # GETs are safe to resend (as browsers do), POSTs are not retried
        retry = Retry(total=3, connect=3, read=3, status=0, backoff_factor=0.2,
                      allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)
        self.session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
        self.session.headers["Referer"] = base_url + "/"
        self._login(username, password)

    def _url(self, path: str) -> str:
        return self.base_url + path

    def token(self, path: str) -> str:
        response = self.session.get(self._url(path), timeout=60)
        response.raise_for_status()
        match = CSRF_RE.search(response.text)
        if not match:
            raise RuntimeError(f"no CSRF token on {path}")
        return match.group(1)

    def _post(self, path: str, data: dict, files=None, token_from: str | None = None) -> requests.Response:
        data = dict(data, csrfmiddlewaretoken=self.token(token_from or path))
        return self.session.post(self._url(path), data=data, files=files, allow_redirects=False, timeout=120)

    def _login(self, username: str, password: str) -> None:
        response = self._post("/accounts/login/", {"username": username, "password": password})
        if response.status_code != 302:
            raise RuntimeError(f"login as {username} failed ({response.status_code})")

    @staticmethod
    def _id_from(response: requests.Response, pattern: str) -> int:
        location = response.headers.get("Location", "")
        match = re.search(pattern, location)
        if response.status_code != 302 or not match:
            raise RuntimeError(f"unexpected response {response.status_code} Location={location!r}: {response.text[:500]}")
        return int(match.group(1))

    def create_patient(self, identifier: str) -> int:
        r = self._post("/patients/new/", {"identifier": identifier, "birth_year": "1970", "sex": "female",
                                          "fitzpatrick_type": "2"})
        return self._id_from(r, r"/patients/(\d+)/")

    def create_case(self, patient_id: int, question: str = "Benchmark: changing mole?") -> int:
        r = self._post(f"/patients/{patient_id}/cases/new/", {"clinical_question": question, "notes": ""})
        return self._id_from(r, r"/cases/(\d+)/")

    def create_lesion(self, case_id: int, site: str = "posterior torso") -> int:
        r = self._post(f"/cases/{case_id}/lesions/new/", {"anatomic_site": site, "description": "bench"},
                       token_from=f"/cases/{case_id}/")
        return self._id_from(r, r"#lesion-(\d+)")

    def new_lesion(self, identifier: str) -> tuple[int, int]:
        """A fresh patient, case and lesion through the real forms; returns (case_id, lesion_id)."""
        case_id = self.create_case(self.create_patient(identifier))
        return case_id, self.create_lesion(case_id)

    def upload(self, lesion_id: int, name: str, content: bytes, token: str | None = None) -> requests.Response:
        """POST one image to the lesion's upload form; 302 means it was stored."""
        token = token or self.token(f"/lesions/{lesion_id}/")
        return self.session.post(self._url(f"/lesions/{lesion_id}/"),
                                 data={"kind": "dermoscopic", "csrfmiddlewaretoken": token},
                                 files={"images": (name, content, "image/jpeg")}, allow_redirects=False, timeout=120)

    def status(self, case_id: int) -> dict:
        response = self.session.get(self._url(f"/cases/{case_id}/status.json"), timeout=60)
        response.raise_for_status()
        return response.json()


class DoneWatcher:
    """One thread polls each case's status.json and records when each prediction is first seen done.

    Cases are dropped from the round as soon as every expected prediction is finished, so the
    polling cost falls as the run completes.
    """

    def __init__(self, client: Client, interval: float = 0.2) -> None:
        self.client, self.interval = client, interval
        self.expected: dict[int, int] = {}  # case -> number of images expected
        self.seen_done: dict[int, float] = {}  # prediction id -> monotonic time first seen done
        self.last: dict[int, dict] = {}
        self.failed: dict[int, str] = {}
        self.polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, case_id: int, expected: int) -> None:
        with self._lock:
            self.expected[case_id] = expected

    def start(self) -> "DoneWatcher":
        self._thread.start()
        return self

    def _finished(self, case_id: int) -> bool:
        body = self.last.get(case_id)
        if not body:
            return False
        items = body["predictions"]
        return len(items) >= self.expected[case_id] and all(p["status"] in ("done", "failed") for p in items)

    def poll_once(self) -> None:
        with self._lock:
            cases = [c for c in self.expected if not self._finished(c)]
        for case_id in cases:
            body = self.client.status(case_id)
            self.polls += 1
            now = time.monotonic()
            for p in body["predictions"]:
                if p["status"] == "done":
                    self.seen_done.setdefault(p["id"], now)
                elif p["status"] == "failed":
                    self.failed.setdefault(p["id"], p.get("html", "")[:300])
            with self._lock:
                self.last[case_id] = body

    def all_finished(self) -> bool:
        with self._lock:
            return all(self._finished(c) for c in self.expected)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except requests.RequestException:
                pass
            self._stop.wait(self.interval)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_finished():
                return True
            time.sleep(0.1)
        return self.all_finished()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_scored(client: Client, case_id: int, count: int, timeout: float = 120.0, interval: float = 0.05) -> float:
    """Poll one case until it has ``count`` predictions, all done; returns the time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.status(case_id)["predictions"]
        if len(items) >= count and all(p["status"] == "done" for p in items):
            return time.monotonic()
        failed = [p for p in items if p["status"] == "failed"]
        if failed:
            raise RuntimeError(f"prediction failed: {failed[0]['html'][:400]}")
        time.sleep(interval)
    raise TimeoutError(f"case {case_id}: {count} predictions not done within {timeout}s")


def burst(app: App, *, uploads: int, clients: int, tag: str, seed_base: int, timeout: float = 1800.0,
          poll_interval: float = 0.2) -> dict:
    """``uploads`` distinct images from ``clients`` concurrent sessions, one case per session.

    Each session uploads sequentially into its own case, so within a case the k-th image id is the
    k-th upload: that maps every upload to its prediction without trusting anything but the app.
    Returns figures plus the violations found (empty when nothing was lost or duplicated).
    """
    password = app.passwords["clinician"]
    sessions = [Client(app.base_url, "clinician", password) for _ in range(clients)]
    lesions = [s.new_lesion(f"BENCH-{tag}-{i}") for i, s in enumerate(sessions)]
    share = [uploads // clients + (1 if i < uploads % clients else 0) for i in range(clients)]
    watcher = DoneWatcher(Client(app.base_url, "clinician", password), interval=poll_interval)
    for (case_id, _), n in zip(lesions, share):
        watcher.watch(case_id, n)
    sent: dict[int, list[tuple[float, float, int]]] = {i: [] for i in range(clients)}  # (start, end, http status)
    errors: list[str] = []

    def run_client(i: int) -> None:
        session, (_, lesion_id) = sessions[i], lesions[i]
        token = session.token(f"/lesions/{lesion_id}/")
        for k in range(share[i]):
            seed = seed_base + sum(share[:i]) + k
            data = lesion_image(seed)
            start = time.monotonic()
            try:
                r = session.upload(lesion_id, f"{tag}-{seed:06d}.jpg", data, token=token)
                status = r.status_code
                if status != 302:
                    errors.append(f"upload {tag}-{seed} answered {status}: {r.text[:200]}")
            except requests.RequestException as exc:
                status = -1
                errors.append(f"upload {tag}-{seed}: {exc}")
            sent[i].append((start, time.monotonic(), status))

    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_uploaded = time.monotonic()
    finished = watcher.wait(timeout)
    t_done = time.monotonic()
    watcher.stop()
    watcher.poll_once()  # a final consistent view

    latencies, violations = [], list(errors)
    if not finished:
        violations.append(f"not every prediction finished within {timeout}s")
    scored_at = []
    for i, (case_id, _) in enumerate(lesions):
        items = sorted(watcher.last[case_id]["predictions"], key=lambda p: p["image"])
        images = [p["image"] for p in items]
        if len(images) != len(set(images)):
            violations.append(f"case {case_id}: an image has more than one prediction in status.json")
        if len(items) != share[i]:
            violations.append(f"case {case_id}: {len(items)} predictions for {share[i]} uploads")
        for (start, _end, _status), p in zip(sent[i], items):
            if p["status"] != "done":
                violations.append(f"prediction {p['id']} is {p['status']}")
                continue
            seen = watcher.seen_done.get(p["id"])
            if seen is not None:
                latencies.append(seen - start)
                scored_at.append(seen)
    case_ids = [c for c, _ in lesions]
    db = app.verify_db(case_ids)
    if db["images"] != uploads:
        violations.append(f"database has {db['images']} images for {uploads} uploads")
    if db["distinct_sha256"] != db["images"]:
        violations.append("duplicate images stored")
    if db["predictions"] != uploads or db["by_status"].get("done", 0) != uploads:
        violations.append(f"predictions by status {db['by_status']} for {uploads} uploads")
    if db["max_per_image_and_version"] != 1:
        violations.append(f"an image has {db['max_per_image_and_version']} predictions for one model version")
    if db["images_without_active_prediction"]:
        violations.append(f"{db['images_without_active_prediction']} images have no prediction by the active model")
    upload_times = [end - start for s in sent.values() for start, end, _ in s]
    scoring_span = (max(scored_at) - t0) if scored_at else None
    return {
        "uploads": uploads,
        "clients": clients,
        "accepted_http_302": sum(1 for s in sent.values() for *_, st in s if st == 302),
        "upload_phase_s": round(t_uploaded - t0, 3),
        "uploads_per_s": round(uploads / (t_uploaded - t0), 2),
        "all_scored_s": round(scoring_span, 3) if scoring_span else None,
        "images_scored_per_min": round(len(scored_at) / scoring_span * 60, 1) if scoring_span else None,
        "upload_request_p50_s": _r(percentile(upload_times, 50)),
        "upload_request_p95_s": _r(percentile(upload_times, 95)),
        "upload_to_score_p50_s": _r(percentile(latencies, 50)),
        "upload_to_score_p95_s": _r(percentile(latencies, 95)),
        "upload_to_score_max_s": _r(max(latencies) if latencies else None),
        "status_polls": watcher.polls,
        "poll_interval_s": poll_interval,
        "waited_s": round(t_done - t_uploaded, 3),
        "db": db,
        "case_ids": case_ids,
        "violations": violations,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
