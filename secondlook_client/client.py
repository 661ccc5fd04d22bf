"""The API client: one method per thing an integration does, pagination and errors handled."""
from __future__ import annotations

import math
import mimetypes
import time
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import requests

API = "/api/v1"
# the longest a 429 makes the client wait before it tries again, whatever Retry-After asks
MAX_RETRY_WAIT = 60.0
# prediction states that will not change without someone acting
SETTLED = {"done", "failed"}
RESULT_COLUMNS = ["case", "lesion", "anatomic_site", "image", "status", "melanoma_probability",
                  "melanoma_threshold", "malignancy_score", "malignancy_threshold", "flagged", "assessable",
                  "assessment_notes", "model_version", "error"]


class ApiError(Exception):
    """The API refused a call; ``status`` is the HTTP status, ``detail`` its JSON body (or text)."""

    def __init__(self, status: int, detail: Any, url: str) -> None:
        self.status, self.detail, self.url = status, detail, url
        super().__init__(f"HTTP {status} from {url}: {detail}")


class SecondLookClient:
    """Talks to one SecondLook server with one user's API token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        if not token:
            raise ValueError("An API token is required (ask an admin to issue one).")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": "application/json"})

    # --- plumbing -------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        """The URL of an API path (relative to /api/v1/), or of a link the server gave (a list's
        ``next``): its path and query on base_url. The token goes only to base_url, whatever
        server a link names (a proxy's internal address, or a server that wants it)."""
        link = urlsplit(path)
        if link.scheme or link.netloc:
            base = urlsplit(self.base_url)
            return urlunsplit((base.scheme, base.netloc, link.path, link.query, ""))
        return f"{self.base_url}{API}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, retries: int = 3, **kwargs) -> Any:
        """One call; a 429 waits for Retry-After (at most MAX_RETRY_WAIT seconds) and tries again
        (up to ``retries`` times). A network failure raises ``requests.RequestException``."""
        url = self._url(path)
        for attempt in range(retries + 1):
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            if response.status_code == 429 and attempt < retries:
                time.sleep(retry_after_seconds(response.headers.get("Retry-After")))
                continue
            break
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400 and not (response.status_code == 400 and _is_upload_result(body)):
            raise ApiError(response.status_code, body, url)
        return body

    def paginate(self, path: str, **params) -> Iterator[dict]:
        """Every row of a list endpoint, following its ``next`` links."""
        page = self.request("GET", path, params={k: v for k, v in params.items() if v is not None})
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            page = self.request("GET", page["next"])

    # --- records --------------------------------------------------------------------------
    def me(self) -> dict:
        return self.request("GET", "me/")

    def patients(self, q: str | None = None) -> list[dict]:
        return list(self.paginate("patients/", q=q))

    def create_patient(self, *, identifier: str, birth_year: int, sex: str = "unknown",
                       fitzpatrick_type: int | None = None) -> dict:
        return self.request("POST", "patients/", json={"identifier": identifier, "birth_year": birth_year, "sex": sex,
                                                       "fitzpatrick_type": fitzpatrick_type})

    def create_case(self, *, patient: int, clinical_question: str, notes: str = "",
                    visit_date: date | str | None = None) -> dict:
        """A case (visit); ``visit_date`` (a date or ``YYYY-MM-DD``) defaults to today on the server."""
        body = {"patient": patient, "clinical_question": clinical_question, "notes": notes}
        if visit_date is not None:
            body["visit_date"] = visit_date.isoformat() if isinstance(visit_date, date) else visit_date
        return self.request("POST", "cases/", json=body)

    def create_lesion(self, *, case: int, anatomic_site: str | None = None, description: str = "",
                      same_as: int | None = None) -> dict:
        """A lesion of a case. ``same_as`` (a ``patient_lesion`` id from an earlier visit) records the
        same lesion again, to follow it over visits; its site is then the one already known."""
        if anatomic_site is None and same_as is None:
            raise ValueError("Give anatomic_site, or same_as for a lesion seen at an earlier visit.")
        body: dict[str, Any] = {"case": case, "description": description}
        if anatomic_site is not None:
            body["anatomic_site"] = anatomic_site
        if same_as is not None:
            body["same_as"] = same_as
        return self.request("POST", "lesions/", json=body)

    def lesion_history(self, *, patient_lesion: int) -> list[dict]:
        """Every visit's record of one patient lesion (the ``patient_lesion.id`` of a lesion)."""
        return list(self.paginate("lesions/", patient_lesion=patient_lesion))

    def upload(self, *, lesion: int, paths: Iterable[str | Path], kind: str = "dermoscopic") -> dict:
        """Upload image files (JPEG, PNG, TIFF or DICOM) to a lesion; returns accepted, duplicates
        and rejected files with reasons. Raises ApiError only when the call itself is refused."""
        # the bytes, not open handles: a retry after a 429 sends the body again, and a handle
        # read to its end by the first attempt would send empty files
        files = [("images", (Path(p).name, Path(p).read_bytes(),
                             mimetypes.guess_type(str(p))[0] or "application/octet-stream")) for p in paths]
        return self.request("POST", f"lesions/{lesion}/images/", files=files, data={"kind": kind})

    def predictions(self, *, case: int | None = None, lesion: int | None = None) -> list[dict]:
        return list(self.paginate("predictions/", case=case, lesion=lesion))

    def results(self, *, case: int, wait: float = 0.0, poll: float = 2.0) -> list[dict]:
        """One row per image of the case with its result in force (`shown_prediction`); with ``wait``
        > 0, first wait up to that many seconds for every such prediction to be done or failed."""
        deadline = time.monotonic() + wait
        while True:
            images = list(self.paginate("images/", case=case))
            pending = [i for i in images if (shown_prediction(i) or {}).get("status") not in SETTLED]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        lesions = {row["id"]: row for row in self.paginate("lesions/", case=case)}
        return result_rows(images, lesions)

    def fhir(self, *, case: int) -> dict:
        """The case as a FHIR R4 (4.3, R4B) Bundle, as a dict."""
        return self.request("GET", f"cases/{case}/fhir/")

    # --- review queue ---------------------------------------------------------------------
    def queue(self) -> list[dict]:
        return list(self.paginate("queue/"))

    def claim(self, *, case: int) -> dict:
        return self.request("POST", f"cases/{case}/claim/")

    def release(self, *, case: int) -> dict:
        return self.request("POST", f"cases/{case}/release/")

    def review(self, *, case: int, reviews: list[dict], seen: dict[int, str] | None = None) -> list[dict]:
        """Review every flagged lesion of a claimed case. ``seen``: per lesion id, the lesion's
        ``fingerprint`` as it was when you reviewed it (``GET lesions/{id}/``); given, a lesion that
        changed since (a new image, a re-score) refuses the whole submission (409, nothing saved).
        Give it for every lesion or none (a review dict's own ``seen`` is kept)."""
        if seen is not None:
            reviews = [{**item, "seen": seen[item["lesion"]]} if "seen" not in item and item["lesion"] in seen
                       else item for item in reviews]
        return self.request("POST", f"cases/{case}/reviews/", json={"reviews": reviews})


def retry_after_seconds(value: str | None, *, default: float = 1.0, cap: float = MAX_RETRY_WAIT) -> float:
    """How long to wait for a ``Retry-After`` header: seconds, or an HTTP date (RFC 9110), between 0
    and ``cap``; ``default`` when it is missing or unreadable."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:  # an HTTP date is GMT; "-0000" parses naive
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if math.isnan(seconds):
        return default
    return min(max(seconds, 0.0), cap)


def _is_upload_result(body: Any) -> bool:
    return isinstance(body, dict) and {"accepted", "rejected"} <= set(body)


# the score columns left empty when the model could not assess the image (as the pages show it);
# "flagged" stays: such an image is flagged for review
UNRELIABLE_COLUMNS = ("melanoma_probability", "malignancy_score")
# the columns that only a finished score fills: empty (None, an empty CSV cell) for an image whose
# prediction waits, runs or failed, never "not flagged, assessable". The server answers null for them
# itself; one from before that sent the record's defaults (flagged false, assessable true)
RESULT_COLUMNS_WHEN_DONE = (*UNRELIABLE_COLUMNS, "flagged", "assessable", "assessment_notes")


def shown_prediction(image: dict) -> dict | None:
    """The image's result in force, as the pages show it (``current_prediction``: a re-score by
    another version still waiting leaves the finished score in force); a server from before that
    field sends only ``latest_prediction``."""
    return image["current_prediction"] if "current_prediction" in image else image.get("latest_prediction")


def result_rows(images: list[dict], lesions: dict[int, dict]) -> list[dict]:
    """Flat rows (RESULT_COLUMNS) from images with their result in force, for a CSV. An image the
    model could not assess has no scores (the server sends none; an older one might), and stays flagged.
    An image without a finished score (waiting, running, failed, not scored) has None for its scores,
    flagged, assessable and notes: empty cells, never False/True."""
    rows = []
    for image in images:
        prediction = shown_prediction(image) or {}
        lesion = lesions.get(image["lesion"], {})
        row = {
            "case": lesion.get("case"), "lesion": image["lesion"], "anatomic_site": lesion.get("anatomic_site"),
            "image": image["id"], "status": prediction.get("status", "not scored"),
            "melanoma_probability": prediction.get("melanoma_probability"),
            "melanoma_threshold": prediction.get("melanoma_threshold"),
            "malignancy_score": prediction.get("malignancy_score"),
            "malignancy_threshold": prediction.get("malignancy_threshold"),
            "flagged": prediction.get("flagged"), "assessable": prediction.get("assessable"),
            "assessment_notes": "; ".join(prediction.get("assessment_notes") or []),
            "model_version": (prediction.get("model_version") or {}).get("version"),
            "error": prediction.get("error", ""),
        }
        if row["status"] != "done":
            row.update(dict.fromkeys(RESULT_COLUMNS_WHEN_DONE))
        elif prediction.get("assessable") is False:
            row.update(dict.fromkeys(UNRELIABLE_COLUMNS))
        rows.append(row)
    return rows
