"""The follow-up pages and the report say what holds for the lesion across its visits: an earlier
visit's histopathology result or open review, an image left unjudged after a review, the image
behind a compared visit's score, the plot's threshold, the wording of a rise, private pages, and
the report font at deployment."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cases import followup, services
from cases.models import Case, Lesion, LesionImage, Outcome, Prediction, Review
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image


def _score(world, lesion: Lesion, melanoma: float | None, *, sha: str, assessable: bool = True,
           status: str = "done", version: ModelVersion | None = None) -> LesionImage:
    image = make_image(world, sha=sha, lesion=lesion)
    done = status == "done"
    Prediction.objects.create(image=image, model_version=version or ModelVersion.objects.get(version="unit-test-v1"),
                              status=status, melanoma_probability=melanoma if done else None,
                              malignancy_score=melanoma if done else None, assessable=assessable,
                              finished_at=timezone.now() if status in ("done", "failed") else None,
                              error="boom" if status == "failed" else "")
    return image


def _visits(world, count: int) -> list[Lesion]:
    """world.lesion_a and ``count - 1`` later visits of the same lesion, 30 days apart, the last today."""
    today = timezone.localdate()
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=today - timedelta(days=30 * (count - 1)))
    world.case_a.refresh_from_db()
    later = []
    for n in range(count - 2, -1, -1):
        case = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="Follow-up",
                                    visit_date=today - timedelta(days=30 * n))
        later.append(services.add_lesion(user=world.clin_a, case=case, anatomic_site="posterior torso",
                                         same_as=world.lesion_a.tracked))
    return [world.lesion_a, *later]


def _map_status(world) -> str:
    return followup.patient_map(world.patient_a, Lesion.objects.all())[0].status


def _page(client, world, **params):
    client.force_login(world.clin_a)
    return client.get(f"/patients/{world.patient_a.pk}/lesions/1/", params)


def _place_on_map(world) -> None:
    tracked = world.lesion_a.tracked
    tracked.map_view, tracked.map_x, tracked.map_y = "back", 0.5, 0.3
    tracked.save()


# --- 1. the map's status looks at every visible visit ---------------------------------------------

def test_an_earlier_visits_histopathology_result_outlasts_a_later_visit(client, world):
    """L1 biopsied at visit 1 (melanoma); at visit 2 the scar scores 5 %: still "malignant"."""
    v1, v2 = _visits(world, 2)
    _place_on_map(world)
    Outcome.objects.create(lesion=v1, diagnosis="melanoma", diagnosis_date=v1.case.visit_date,
                           report_reference="LAB-1", entered_by=world.clin_a)
    _score(world, v2, 0.05, sha="d1" * 32)
    assert _map_status(world) == "histo-malignant"
    html = _page(client, world).content.decode()
    assert "marker status-histo-malignant" in html and "Histopathology: malignant" in html
    # the newest result in force across the visits is the one shown
    Outcome.objects.create(lesion=v2, diagnosis="nevus", diagnosis_date=v2.case.visit_date,
                           report_reference="LAB-2", entered_by=world.clin_a)
    assert _map_status(world) == "histo-benign"


def test_an_earlier_visit_still_waiting_for_review_keeps_the_lesion_flagged(world):
    v1, v2 = _visits(world, 2)
    Lesion.objects.filter(pk=v1.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    _score(world, v2, 0.05, sha="d2" * 32)
    assert _map_status(world) == "flagged"
    Case.objects.filter(pk=v1.case_id).update(claimed_by=world.derm, claimed_at=timezone.now())
    assert _map_status(world) == "in-review"
    Lesion.objects.filter(pk=v1.pk).update(awaiting_review=False)  # reviewed: the latest visit speaks
    assert _map_status(world) == "not-flagged"


def test_the_status_reads_no_more_queries_with_more_visits(client, world):
    """Outcomes, reviews and scores are prefetched: a long follow-up costs no query per visit."""
    def counts() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as on_map:
            _map_status(world)
        with CaptureQueriesContext(connection) as on_page:
            assert client.get(f"/patients/{world.patient_a.pk}/lesions/1/").status_code == 200
        return len(on_map), len(on_page)

    client.force_login(world.clin_a)
    lesions = _visits(world, 2)
    _place_on_map(world)
    for n, lesion in enumerate(lesions):
        _score(world, lesion, 0.1, sha=f"{n:064d}")
    few = counts()
    for n in range(4):
        case = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="More",
                                    visit_date=timezone.localdate())
        lesion = services.add_lesion(user=world.clin_a, case=case, anatomic_site="posterior torso",
                                     same_as=world.lesion_a.tracked)
        _score(world, lesion, 0.1, sha=f"{n + 10:064d}")
        Outcome.objects.create(lesion=lesion, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                               report_reference=f"LAB-{n}", entered_by=world.clin_a)
    assert counts() == few


# --- 2. the compared visit shows the image its score belongs to -----------------------------------

def _compare_html(html: str) -> str:
    return html.split('id="compare-title"', 1)[1].split("<h2>Visits</h2>", 1)[0]


def test_the_comparison_shows_the_image_the_visits_score_comes_from(client, world):
    v1, v2 = _visits(world, 2)
    low = _score(world, v1, 0.2, sha="e1" * 32)
    high = _score(world, v1, 0.7, sha="e2" * 32)
    blurred = _score(world, v2, 0.9, sha="e3" * 32, assessable=False)
    scored = _score(world, v2, 0.4, sha="e4" * 32)
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.shown_image for v in visits] == [high, scored]
    pair = _compare_html(_page(client, world).content.decode())
    assert f"/images/{high.pk}/file/" in pair and f"/images/{low.pk}/file/" not in pair
    assert f"/images/{scored.pk}/file/" in pair and f"/images/{blurred.pk}/file/" not in pair


def test_a_visit_without_a_score_shows_its_first_image(world):
    (v1,) = _visits(world, 1)
    first = _score(world, v1, None, sha="f1" * 32, status="pending")
    _score(world, v1, 0.9, sha="f2" * 32, assessable=False)
    (visit,) = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert visit.melanoma is None and visit.shown_image == first


# --- 3. pages with patient data are not cached ------------------------------------------------------

def test_patient_and_case_lists_and_the_patient_page_are_not_cached(client, world):
    client.force_login(world.clin_a)
    for url in ("/patients/", f"/patients/{world.patient_a.pk}/", "/cases/", "/patients/?visit_from=junk"):
        response = client.get(url)
        assert response.status_code in (200, 400) and response["Cache-Control"] == "private, no-store", url


# --- 4. an image uploaded after the review, left unjudged, is said ----------------------------------

def test_an_unjudged_image_after_the_review_is_not_hidden_behind_it(world):
    _score(world, world.lesion_a, 0.05, sha="a1" * 32)
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    assert _map_status(world) == "benign"
    later = _score(world, world.lesion_a, None, sha="a2" * 32, status="failed")
    LesionImage.objects.filter(pk=later.pk).update(uploaded_at=review.created_at + timedelta(minutes=5))
    assert _map_status(world) == "scoring-failed"
    Prediction.objects.filter(image=later).update(status="pending", finished_at=None, error="")
    assert _map_status(world) == "not-scored"
    Prediction.objects.filter(image=later).update(status="done", melanoma_probability=0.04, malignancy_score=0.04,
                                                  finished_at=timezone.now())
    assert _map_status(world) == "benign"
    # an image the dermatologist saw: the review covers it, whatever became of its scoring
    LesionImage.objects.filter(pk=later.pk).update(uploaded_at=review.created_at - timedelta(minutes=5))
    Prediction.objects.filter(image=later).update(status="failed", melanoma_probability=None,
                                                  malignancy_score=None)
    assert _map_status(world) == "benign"


def test_the_reports_summary_says_unfinished_scoring_of_a_reviewed_flagged_lesion(world):
    from cases.report import ai_summary

    _score(world, world.lesion_a, 0.8, sha="b1" * 32)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=False)
    failed = _score(world, world.lesion_a, None, sha="b2" * 32, status="failed")

    def summary() -> str:
        return ai_summary(Lesion.objects.prefetch_related("images__predictions").get(pk=world.lesion_a.pk))

    assert summary() == "Scoring failed"
    Prediction.objects.filter(image=failed).update(status="running", error="", finished_at=None,
                                                   started_at=timezone.now())
    assert summary() == "Scoring not finished"
    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=True)
    assert summary() == "Flagged for review"  # in the queue: that comes first


# --- 5. the plot's threshold is that of a plotted score ---------------------------------------------

def test_the_plots_threshold_comes_from_a_plotted_scores_version(client, world):
    v1, v2 = _visits(world, 2)
    _score(world, v1, 0.2, sha="c1" * 32)  # unit-test-v1, threshold 0.5
    other = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", melanoma_threshold=0.3)
    _score(world, v2, 0.9, sha="c2" * 32, assessable=False, version=other)  # not plotted
    page = _page(client, world)
    assert len(page.context["plot"]["points"]) == 1 and page.context["threshold"] == 0.5


# --- 6. a rise in percentage points -----------------------------------------------------------------

def test_a_rise_is_said_in_percentage_points_with_both_scores(client, world, settings):
    settings.FOLLOW_UP_SCORE_RISE = 0.10
    v1, v2 = _visits(world, 2)
    _score(world, v1, 0.20, sha="9a" * 32)
    image = _score(world, v2, 0.305, sha="9b" * 32)
    reason = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())[1].changed_reasons[0]
    assert reason == (f"melanoma probability rose from 20.0% to 30.5% (+10.5 points; marked above 10 points) "
                      f"since {v1.case.visit_date:%Y-%m-%d}")
    # a rise just above the mark never reads as equal to it
    Prediction.objects.filter(image=image).update(melanoma_probability=0.3004)
    reason = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())[1].changed_reasons[0]
    assert re.search(r"\(\+10\.04 points; marked above 10 points\)", reason), reason
    html = _page(client, world).content.decode()
    assert "rose by more than 10 percentage points since" in html and "+10.04 points" in html


# --- 7. the report font, checked at deployment ------------------------------------------------------

@pytest.mark.parametrize("unicode", [True, False])
def test_the_deploy_check_warns_when_the_report_has_no_unicode_font(monkeypatch, unicode):
    from django.core.checks import Warning as CheckWarning
    from django.core.checks.registry import registry

    from cases import checks, report_style

    fonts = report_style.Fonts(regular="x", bold="x", italic="x", unicode=unicode)
    monkeypatch.setattr(report_style, "report_fonts", lambda: fonts)
    found = checks.report_font(app_configs=None)
    if unicode:
        assert found == []
    else:
        (warning,) = found
        assert isinstance(warning, CheckWarning) and warning.id == "cases.W001"
        assert "fonts-dejavu-core" in warning.hint and "SECONDLOOK_REPORT_FONT_DIR" in warning.hint
    assert checks.report_font in registry.get_checks(include_deployment_checks=True)
    assert checks.report_font not in registry.get_checks()  # a deployment check only
