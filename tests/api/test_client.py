"""The Python client and its command line, against a running app (live server), using only the
public API; end to end with a real Celery worker scoring the uploads."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest
import requests

from secondlook_client import ApiError, SecondLookClient
from tests.api.conftest import issue_token
from tests.support.case_helpers import World
from tests.support.imagegen import jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str, url: str, token: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter with no Django settings in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(SECONDLOOK_URL=url, SECONDLOOK_TOKEN=token, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "secondlook_client", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


@pytest.fixture
def served(live_server, transactional_db, media_root, fast_passwords, monkeypatch):
    from classifier.models import ModelVersion

    ModelVersion.objects.create(version="client-test-v1", status=ModelVersion.Status.ACTIVE,
                                artifact_path="/nonexistent/model", melanoma_threshold=0.5, malignancy_threshold=0.6)
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    world = World()
    return world, SecondLookClient(live_server.url, issue_token(world.clin_a))


@pytest.mark.slow
def test_client_creates_records_and_pages_through_lists(served, settings):
    world, client = served
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "PAGE_SIZE": 2}
    assert client.me()["clinic"]["name"] == "Clinic A"
    for n in range(4):
        client.create_patient(identifier=f"PX-{n}", birth_year=1980 + n, sex="female")
    assert [p["identifier"] for p in client.patients()] == ["PA-1", "PX-0", "PX-1", "PX-2", "PX-3"]
    with pytest.raises(ApiError) as refused:
        client.create_patient(identifier="PX-0", birth_year=1980)
    assert refused.value.status == 400 and "already has a patient" in refused.value.detail["identifier"][0]
    with pytest.raises(ApiError) as hidden:
        client.fhir(case=world.case_b.pk)
    assert hidden.value.status == 404


@pytest.mark.slow
def test_cli_refuses_a_bad_token_and_missing_files_clearly(served, live_server, tmp_path):
    bad = _cli("whoami", url=live_server.url, token="sl_wrong")
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr and "Invalid token." in bad.stderr
    missing = _cli("upload", "--lesion", "1", str(tmp_path / "nope.jpg"), url=live_server.url, token="x")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_token = _cli("whoami", url=live_server.url, token="")
    assert no_token.returncode == 2 and "token is required" in no_token.stderr


def test_client_imports_without_django():
    probe = "import sys, secondlook_client, secondlook_client.__main__; print('django' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_upload_and_results_end_to_end_through_a_worker(live_server, media_root, fast_passwords, use_tiny_model,
                                                         celery_worker_process, tmp_path):
    from classifier.registry import activate, register_artifact

    version = activate(register_artifact(use_tiny_model))
    world = World()
    token = issue_token(world.clin_a)
    client = SecondLookClient(live_server.url, token)
    patient = client.create_patient(identifier="API-7", birth_year=1961, sex="male")
    case = client.create_case(patient=patient["id"], clinical_question="Changing lesion on the back?")
    lesion = client.create_lesion(case=case["id"], anatomic_site="posterior torso")
    good, bad = tmp_path / "back-1.jpg", tmp_path / "notes.txt"
    good.write_bytes(jpeg(size=(96, 96), seed=3))
    bad.write_text("not an image")

    uploaded = _cli("upload", "--lesion", str(lesion["id"]), str(good), str(bad), url=live_server.url, token=token)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "accepted   back-1.jpg -> image" in uploaded.stdout
    assert "rejected   notes.txt: Only JPEG" in uploaded.stdout

    started = time.monotonic()
    rows = client.results(case=case["id"], wait=90, poll=0.5)
    assert rows and rows[0]["status"] == "done", (rows, celery_worker_process.log_path.read_text()[-3000:])
    assert time.monotonic() - started < 90
    assert rows[0]["model_version"] == version.version and 0.0 <= rows[0]["melanoma_probability"] <= 1.0

    out_csv = tmp_path / "results.csv"
    written = _cli("results", "--case", str(case["id"]), "--csv", str(out_csv), url=live_server.url, token=token)
    assert written.returncode == 0, written.stderr
    with out_csv.open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 1 and table[0]["status"] == "done" and table[0]["anatomic_site"] == "posterior torso"
    assert float(table[0]["melanoma_probability"]) == pytest.approx(rows[0]["melanoma_probability"])


@pytest.mark.slow
def test_client_follows_a_lesion_over_visits_and_fetches_the_fhir_bundle(served):
    from datetime import date

    from fhir.resources.R4B.bundle import Bundle

    world, client = served
    first = client.create_case(patient=world.patient_a.pk, clinical_question="Baseline", visit_date="2025-06-02")
    assert first["visit_date"] == "2025-06-02"
    seen = client.create_lesion(case=first["id"], anatomic_site="lower extremity", description="left shin")
    later = client.create_case(patient=world.patient_a.pk, clinical_question="Follow-up", visit_date=date(2026, 1, 5))
    assert later["visit_date"] == "2026-01-05"
    again = client.create_lesion(case=later["id"], same_as=seen["patient_lesion"]["id"])
    assert again["patient_lesion"]["id"] == seen["patient_lesion"]["id"]
    assert again["anatomic_site"] == "lower extremity"
    history = client.lesion_history(patient_lesion=seen["patient_lesion"]["id"])
    assert [row["case"] for row in history] == [first["id"], later["id"]]
    with pytest.raises(ApiError) as foreign:
        client.create_lesion(case=later["id"], same_as=world.lesion_b.tracked.pk)
    assert foreign.value.status == 400 and "same_as" in foreign.value.detail
    with pytest.raises(ValueError):
        client.create_lesion(case=later["id"])

    bundle = Bundle.model_validate(client.fhir(case=later["id"]))
    structures = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "BodyStructure"]
    assert [s.location.text for s in structures] == ["Lower extremity"]


def _not_assessable_image(world):
    from classifier.models import ModelVersion
    from django.utils import timezone

    from cases.models import Prediction
    from tests.support.case_helpers import make_image

    image = make_image(world)
    Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="done",
                              melanoma_probability=0.9, malignancy_score=0.95, flagged=True,
                              flag_reasons=["Model could not assess this image: image too dark"], assessable=False,
                              assessment_notes=["image too dark"], finished_at=timezone.now())
    return image


@pytest.mark.slow
def test_results_csv_leaves_the_scores_of_an_unassessable_image_empty(served, live_server, tmp_path):
    world, _ = served
    image = _not_assessable_image(world)
    out_csv = tmp_path / "results.csv"
    written = _cli("results", "--case", str(world.case_a.pk), "--csv", str(out_csv), url=live_server.url,
                   token=issue_token(world.clin_a))
    assert written.returncode == 0, written.stderr
    with out_csv.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["image"] == str(image.pk) and row["status"] == "done"
    assert (row["melanoma_probability"], row["malignancy_score"], row["flagged"]) == ("", "", "True")
    assert row["assessable"] == "False" and row["assessment_notes"] == "image too dark"
    assert row["melanoma_threshold"] == "0.5"


def test_result_rows_drop_scores_a_server_sent_for_an_unassessable_image():
    from secondlook_client import result_rows

    image = {"id": 7, "lesion": 3, "latest_prediction": {
        "status": "done", "melanoma_probability": 0.9, "malignancy_score": 0.95, "flagged": True,
        "assessable": False, "assessment_notes": ["image too dark"], "model_version": {"version": "v1"}}}
    scored = {**image, "id": 8, "latest_prediction": {**image["latest_prediction"], "assessable": True}}
    rows = result_rows([image, scored], {3: {"case": 1, "anatomic_site": "posterior torso"}})
    assert [rows[0][k] for k in ("melanoma_probability", "malignancy_score", "flagged")] == [None, None, True]
    assert rows[0]["assessment_notes"] == "image too dark" and rows[0]["model_version"] == "v1"
    assert rows[1]["melanoma_probability"] == 0.9 and rows[1]["flagged"] is True


@pytest.mark.slow
def test_results_csv_leaves_flagged_and_assessable_empty_for_an_image_without_a_result(served, live_server,
                                                                                      tmp_path):
    from classifier.models import ModelVersion

    from cases.models import Prediction
    from tests.support.case_helpers import make_image

    world, _ = served
    version = ModelVersion.objects.get()
    failed = Prediction.objects.create(image=make_image(world, sha="f" * 64), model_version=version,
                                       status="failed", error="worker died", attempts=3)
    waiting = Prediction.objects.create(image=make_image(world, sha="9" * 64), model_version=version)
    assert (failed.flagged, failed.assessable) == (False, True)  # the record's defaults, not a result
    out_csv = tmp_path / "results.csv"
    written = _cli("results", "--case", str(world.case_a.pk), "--csv", str(out_csv), url=live_server.url,
                   token=issue_token(world.clin_a))
    assert written.returncode == 0, written.stderr
    with out_csv.open() as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    row = rows[str(failed.image_id)]
    assert row["status"] == "failed" and row["error"] == "worker died"
    assert (row["flagged"], row["assessable"], row["assessment_notes"]) == ("", "", "")
    assert (row["melanoma_probability"], row["malignancy_score"]) == ("", "")
    assert row["model_version"] == "client-test-v1" and row["melanoma_threshold"] == "0.5"
    pending = rows[str(waiting.image_id)]
    assert (pending["status"], pending["flagged"], pending["assessable"]) == ("pending", "", "")


def test_result_rows_give_no_flag_for_a_prediction_an_older_server_sent_unfinished():
    from secondlook_client import result_rows

    defaults = {"melanoma_probability": None, "malignancy_score": None, "flagged": False, "assessable": True,
                "assessment_notes": [], "model_version": {"version": "v1"}}
    images = [{"id": 7, "lesion": 3, "current_prediction": {**defaults, "status": "failed", "error": "worker died"}},
              {"id": 8, "lesion": 3, "current_prediction": {**defaults, "status": "running"}},
              {"id": 9, "lesion": 3, "current_prediction": None}]
    rows = result_rows(images, {3: {"case": 1, "anatomic_site": "posterior torso"}})
    assert [row["status"] for row in rows] == ["failed", "running", "not scored"]
    for row in rows:
        assert (row["flagged"], row["assessable"], row["assessment_notes"]) == (None, None, None), row
    assert rows[0]["error"] == "worker died" and rows[0]["model_version"] == "v1"


def test_result_rows_take_the_result_in_force_not_a_waiting_re_score():
    from secondlook_client import result_rows

    done = {"status": "done", "melanoma_probability": 0.3, "malignancy_score": 0.4, "flagged": True,
            "assessable": True, "model_version": {"version": "v1"}}
    image = {"id": 7, "lesion": 3, "latest_prediction": {"status": "pending", "model_version": {"version": "v2"}},
             "current_prediction": done}
    [row] = result_rows([image], {3: {"case": 1, "anatomic_site": "posterior torso"}})
    assert (row["status"], row["melanoma_probability"], row["model_version"]) == ("done", 0.3, "v1")


class _FakeResponse:
    def __init__(self, status_code: int, body: dict, headers: dict | None = None) -> None:
        self.status_code, self._body, self.headers = status_code, body, headers or {}
        self.text = str(body)

    def json(self) -> dict:
        return self._body


class _RateLimitedOnceSession:
    """Answers 429 to the first call and 201 after; keeps each request's encoded body, prepared
    exactly as requests would send it (file objects are read while encoding)."""

    def __init__(self) -> None:
        self.headers: dict = {}
        self.bodies: list[bytes] = []

    def request(self, method: str, url: str, *, timeout: float, **kwargs) -> _FakeResponse:
        self.bodies.append(requests.Request(method, url, **kwargs).prepare().body)
        if len(self.bodies) == 1:
            return _FakeResponse(429, {"detail": "Request was throttled."}, {"Retry-After": "0"})
        return _FakeResponse(201, {"accepted": [{"name": "mole.jpg", "image": 1, "error": ""}], "duplicates": [],
                                   "rejected": [], "scoring_unavailable": ""})


def test_an_upload_retried_after_a_429_sends_the_files_again(tmp_path):
    content = jpeg(seed=7)
    (tmp_path / "mole.jpg").write_bytes(content)
    session = _RateLimitedOnceSession()
    client = SecondLookClient("http://secondlook.invalid", "sl_token", session=session)
    outcome = client.upload(lesion=3, paths=[tmp_path / "mole.jpg"])
    assert outcome["accepted"][0]["name"] == "mole.jpg"
    assert len(session.bodies) == 2
    for body in session.bodies:
        assert content in body and b'filename="mole.jpg"' in body and b"image/jpeg" in body


class _ScriptedSession:
    """Answers each call with the next scripted response; records the URLs it was asked for."""

    def __init__(self, *responses: _FakeResponse) -> None:
        self.headers: dict = {}
        self.urls: list[str] = []
        self.responses = list(responses)

    def request(self, method: str, url: str, *, timeout: float, **kwargs) -> _FakeResponse:
        self.urls.append(url)
        return self.responses.pop(0)


def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped(monkeypatch):
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from secondlook_client.client import MAX_RETRY_WAIT, retry_after_seconds

    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    monkeypatch.setattr("secondlook_client.client.datetime", type("FrozenNow", (datetime,), {
        "now": classmethod(lambda cls, tz=None: now)}))
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=20), usegmt=True)) == 20.0
    assert retry_after_seconds("Wed, 01 May 2024 12:00:05 -0000") == 5.0  # a date without a zone is GMT
    assert retry_after_seconds(format_datetime(now - timedelta(minutes=1), usegmt=True)) == 0.0  # already past
    assert retry_after_seconds("86400") == retry_after_seconds("inf") == MAX_RETRY_WAIT
    assert retry_after_seconds(None) == retry_after_seconds("soon") == retry_after_seconds("nan") == 1.0
    assert retry_after_seconds("-3") == 0.0


def test_a_429_with_a_retry_after_date_waits_and_tries_again(monkeypatch):
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    slept: list[float] = []
    monkeypatch.setattr("secondlook_client.client.time.sleep", slept.append)
    later = format_datetime(datetime.now(timezone.utc) + timedelta(hours=2), usegmt=True)
    session = _ScriptedSession(_FakeResponse(429, {"detail": "Request was throttled."}, {"Retry-After": later}),
                               _FakeResponse(200, {"username": "clin_a"}))
    client = SecondLookClient("http://secondlook.invalid", "sl_token", session=session)
    assert client.me() == {"username": "clin_a"}
    assert slept == [60.0] and len(session.urls) == 2  # two hours asked: the wait is capped


def test_a_next_link_to_another_server_is_followed_on_the_base_url_only():
    """The token goes only to base_url: a ``next`` link naming another scheme, host or port is
    read for its path and query."""
    session = _ScriptedSession(
        _FakeResponse(200, {"results": [{"id": 1}], "next": "http://attacker.example:8443/api/v1/patients/?page=2"}),
        _FakeResponse(200, {"results": [{"id": 2}], "next": None}))
    client = SecondLookClient("https://secondlook.example.org/", "sl_token", session=session)
    assert [row["id"] for row in client.paginate("patients/")] == [1, 2]
    assert session.urls == ["https://secondlook.example.org/api/v1/patients/",
                            "https://secondlook.example.org/api/v1/patients/?page=2"]


@pytest.mark.parametrize("failure", [requests.ConnectionError("Connection refused"),
                                     requests.Timeout("Read timed out. (read timeout=30.0)")])
def test_the_cli_says_in_one_line_that_the_server_did_not_answer(monkeypatch, capsys, failure):
    from secondlook_client.__main__ import main

    def fail(self, method, url, **kwargs):
        raise failure

    monkeypatch.setattr(requests.Session, "request", fail)
    assert main(["--url", "http://secondlook.invalid", "--token", "sl_token", "whoami"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: no answer from http://secondlook.invalid ({type(failure).__name__}): {failure}\n")


@pytest.mark.slow
def test_the_cli_reports_an_unreachable_server_without_a_traceback():
    from melanoma_site.embedded_redis import free_port

    refused = _cli("whoami", url=f"http://127.0.0.1:{free_port()}", token="sl_token")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: no answer from http://127.0.0.1:") and refused.stderr.count("\n") == 1
