"""List endpoints cost a fixed number of queries, whatever the page holds (no query per row)."""
from __future__ import annotations

from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cases.models import Case, Lesion, LesionImage, Outcome, Review
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, score_image


def _add_visit(world, n: int, case: Case | None = None) -> Case:
    """One more lesion of clinic A's patient, at a new visit (case) unless ``case`` is given: an
    image scored done then re-scored (waiting), a review and its amendment, and a histopathology result."""
    case = case or Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a,
                                       clinical_question=f"Visit {n}")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    image = make_image(world, sha=f"{n:064x}", lesion=lesion)
    score_image(image, ModelVersion.objects.get(version="unit-test-v1"))
    newer, _ = ModelVersion.objects.get_or_create(version="unit-test-v2", defaults={"status": ModelVersion.Status.READY})
    score_image(image, newer, status="pending")
    first = Review.objects.create(lesion=lesion, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                                  management="reassure")
    Review.objects.create(lesion=lesion, reviewer=world.derm2, agreement="agree", final_diagnosis="melanoma",
                          management="excision", amends=first, amendment_reason="second look")
    Outcome.objects.create(lesion=lesion, diagnosis="nevus", diagnosis_date=date(2024, 1, 2),
                           report_reference=f"H-{n}", entered_by=world.clin_a)
    return case


def _list_queries(client, path: str) -> tuple[int, int]:
    """(queries run, rows returned) for one list call."""
    with CaptureQueriesContext(connection) as run:
        response = client.get(f"/api/v1/{path}/")
    assert response.status_code == 200, response.content
    return len(run.captured_queries), len(response.json()["results"])


@pytest.mark.parametrize("path", ["predictions", "reviews", "outcomes", "images"])
@pytest.mark.parametrize("who", ["clin_a", "derm", "admin"])
def test_a_list_page_costs_the_same_queries_for_one_visit_as_for_three(api, world, path, who):
    client = getattr(api, who)
    first = _add_visit(world, 1)
    _list_queries(client, path)  # warm the caches filled once per process (content types)
    one, rows_one = _list_queries(client, path)
    # the image list asks once per case (not per image) whether the user may see its file names
    _add_visit(world, 2, case=first if path == "images" else None)
    _add_visit(world, 3, case=first if path == "images" else None)
    three, rows_three = _list_queries(client, path)
    assert rows_three == 3 * rows_one > 0
    assert three == one, f"{path}: {one} queries for {rows_one} rows, {three} for {rows_three}"


def test_the_image_list_still_shows_file_names_only_to_the_clinic(api, world):
    _add_visit(world, 1)
    closed = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a,
                                 clinical_question="closed", status=Case.Status.CLOSED,
                                 closed_at=timezone.now())
    make_image(world, sha="c" * 64, lesion=Lesion.objects.create(case=closed, anatomic_site="head/neck"))
    LesionImage.objects.update(original_name="mole.jpg")
    names = {row["lesion"]: row["original_name"] for row in api.clin_a.get("/api/v1/images/").json()["results"]}
    assert names[Lesion.objects.get(case__clinical_question="Visit 1").pk] == "mole.jpg"
    assert names[Lesion.objects.get(case=closed).pk] is None  # as can_edit_case says for a closed case
    reviewed = api.derm.get("/api/v1/images/").json()["results"]  # the reviewer sees the visit it reviewed
    assert [row["original_name"] for row in reviewed] == [None]


def test_the_image_list_asks_once_per_case_whether_the_user_may_edit_it(api, world, monkeypatch):
    from cases import access

    first = _add_visit(world, 1)
    _add_visit(world, 2, case=first)
    _add_visit(world, 3)
    asked: list[int] = []
    real = access.can_edit_case
    monkeypatch.setattr(access, "can_edit_case", lambda user, case: asked.append(case.pk) or real(user, case))
    assert len(api.clin_a.get("/api/v1/images/").json()["results"]) == 3
    assert sorted(asked) == sorted({first.pk, Case.objects.get(clinical_question="Visit 3").pk})
