"""Pages whose query count must not grow with their rows: the case page (lesions, the "Seen before?"
list of the patient's earlier lesions), the patient page (images with a re-score waiting), the
audit-trail and re-score job lists of the admin."""
from __future__ import annotations

import datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cases.models import Case, Lesion, Outcome, PatientLesion, Prediction
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, score_image


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.status_code
    return len(captured.captured_queries)


def _newer_version() -> ModelVersion:
    return ModelVersion.objects.get_or_create(version="unit-test-v2", defaults={
        "status": ModelVersion.Status.READY, "artifact_path": "/nonexistent/model2",
        "melanoma_threshold": 0.5, "malignancy_threshold": 0.6})[0]


def _tracked_lesion(world, case: Case, site: str = "anterior torso") -> Lesion:
    tracked = PatientLesion.objects.create(patient=case.patient, number=PatientLesion.next_number(case.patient))
    return Lesion.objects.create(case=case, tracked=tracked, anatomic_site=site)


def _full_lesion(world, model_version, case: Case, n: int, earlier_case: Case) -> Lesion:
    """A lesion seen at an earlier visit too, with a scored image, a correction of its histopathology result."""
    lesion = _tracked_lesion(world, earlier_case)
    lesion = Lesion.objects.create(case=case, tracked=lesion.tracked, anatomic_site="upper extremity")
    score_image(make_image(world, sha=f"{n:064x}", lesion=lesion), model_version)
    first = Outcome.objects.create(lesion=lesion, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                                   report_reference=f"R-{n}", entered_by=world.clin_a)
    Outcome.objects.create(lesion=lesion, diagnosis="melanoma", diagnosis_date=timezone.localdate(),
                           report_reference=f"R-{n}b", entered_by=world.clin_a, supersedes=first, reason="typo")
    return lesion


def _earlier_case(world) -> Case:
    return Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Before",
                               visit_date=timezone.localdate() - datetime.timedelta(days=90))


def test_the_case_page_costs_the_same_queries_for_one_lesion_or_five(client, world, model_version):
    client.force_login(world.clin_a)
    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Now")
    earlier = _earlier_case(world)
    url = reverse("case_detail", args=[case.pk])
    lesions = [_full_lesion(world, model_version, case, 0, earlier)]
    one = _queries(client, url)
    lesions += [_full_lesion(world, model_version, case, n, earlier) for n in range(1, 5)]
    five = _queries(client, url)
    page = client.get(url).content.decode()
    assert page.count("Timeline: seen at 2 visits") == 5
    assert page.count("R-0b") == 1 and "Corrects the result entered on" in page
    assert five == one, (one, five)


def test_the_case_page_costs_the_same_queries_with_no_earlier_lesion_or_six(client, world, model_version):
    client.force_login(world.clin_a)
    url = reverse("case_detail", args=[world.case_a.pk])
    none = _queries(client, url)
    earlier = _earlier_case(world)
    for site in ("anterior torso", "head/neck", "upper extremity", "lower extremity", "palms/soles", "unknown"):
        _tracked_lesion(world, earlier, site)
    six = _queries(client, url)
    page = client.get(url).content.decode()
    assert f"L2: Anterior torso, last seen {earlier.visit_date:%Y-%m-%d}" in page
    assert six == none, (none, six)


def test_the_review_page_costs_the_same_queries_for_one_flagged_lesion_or_five(client, world, model_version):
    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Now",
                               claimed_by=world.derm, claimed_at=timezone.now())
    earlier = _earlier_case(world)
    url = reverse("case_review", args=[case.pk])
    client.force_login(world.derm)

    def flagged(n: int) -> None:
        lesion = _full_lesion(world, model_version, case, n, earlier)
        Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())

    flagged(0)
    one = _queries(client, url)
    for n in range(1, 5):
        flagged(n)
    five = _queries(client, url)
    assert client.get(url).content.decode().count("Changed since the earlier visit?") == 5
    assert five == one, (one, five)


def test_the_pdf_report_costs_the_same_queries_for_one_lesion_or_five(world, model_version):
    from cases.report import build_case_report

    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Now")
    earlier = _earlier_case(world)

    def report_queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            build_case_report(Case.objects.get(pk=case.pk), generated_by=world.clin_a)
        return len(captured.captured_queries)

    _full_lesion(world, model_version, case, 0, earlier)
    one = report_queries()
    for n in range(1, 5):
        _full_lesion(world, model_version, case, n, earlier)
    five = report_queries()
    assert five == one, (one, five)


def test_the_patient_page_costs_the_same_queries_for_one_image_waiting_for_a_rescore_or_five(client, world,
                                                                                             model_version):
    """Each image: a finished score in force and a re-score by another version waiting beside it
    (current_prediction() asks that one's version)."""
    newer = _newer_version()
    client.force_login(world.clin_a)
    url = reverse("patient_detail", args=[world.patient_a.pk])

    def waiting(n: int) -> None:
        image = make_image(world, sha=f"{n:064x}", lesion=_tracked_lesion(world, world.case_a))
        score_image(image, model_version)
        Prediction.objects.create(image=image, model_version=newer, status=Prediction.Status.PENDING)

    waiting(0)
    one = _queries(client, url)
    for n in range(1, 5):
        waiting(n)
    five = _queries(client, url)
    assert five == one, (one, five)


def test_the_audit_trail_list_costs_the_same_queries_for_five_events_or_fifty(client, world):
    from audit.models import AuditEvent

    def events(count: int) -> None:
        for n in range(count):
            patient, clinic = ((world.patient_a, world.clinic_a), (world.patient_b, world.clinic_b))[n % 2]
            AuditEvent.objects.create(action="view", object_type="patient", object_id=str(patient.pk),
                                      patient_id=patient.pk, clinic_id=clinic.pk)

    client.force_login(world.admin)
    url = reverse("admin:audit_auditevent_changelist")
    events(5)
    five = _queries(client, url)
    events(45)
    fifty = _queries(client, url)
    page = client.get(url).content.decode()
    assert "PA-1" in page and "PB-1" in page and "Clinic A" in page and "Clinic B" in page
    assert fifty == five, (five, fifty)


def _jobs(world, model_version, count: int, start: int = 0) -> None:
    """``count`` re-score jobs, every other one over chosen images, each with a score and a disagreement."""
    from classifier.models import RescoreJob

    for n in range(start, start + count):
        image = make_image(world, sha=f"{n:064x}", lesion=(world.lesion_a, world.lesion_b)[n % 2])
        score_image(image, model_version)
        Prediction.objects.filter(image=image).update(review_disagreement="the review said melanoma")
        RescoreJob.objects.create(model_version=model_version, status="done", queued=1, total=1,
                                  image_ids=[image.pk] if n % 2 else [])


def test_the_rescore_jobs_list_costs_the_same_queries_for_one_job_or_ten(client, world, model_version):
    """For a superuser (the jobs' totals) and for a clinic's staff (their clinic's counts)."""
    from tests.support.case_helpers import make_staff

    url = reverse("admin:classifier_rescorejob_changelist")
    users = (world.admin, make_staff(world, "view_rescorejob"))

    def queries() -> list[int]:
        counts = []
        for user in users:
            client.force_login(user)
            counts.append(_queries(client, url))
        return counts

    _jobs(world, model_version, 1)
    one = queries()
    _jobs(world, model_version, 9, start=1)
    ten = queries()
    client.force_login(world.admin)
    assert client.get(url).content.decode().count("disagrees=yes") == 10
    assert ten == one, (one, ten)


def test_the_jobs_counts_in_one_query_are_those_of_each_job(world, model_version):
    from django.test.utils import CaptureQueriesContext as Capture

    from cases.rescoring import disagreement_count, job_counts, scored_count
    from classifier.models import RescoreJob

    _jobs(world, model_version, 6)
    newer = _newer_version()
    image = make_image(world, sha="f" * 64)
    score_image(image, newer)
    RescoreJob.objects.create(model_version=newer, image_ids=[image.pk, 10_000])
    RescoreJob.objects.create(model_version=newer, image_ids=[])
    RescoreJob.objects.create(model_version=model_version, image_ids=[10_000])
    jobs = list(RescoreJob.objects.all())
    clinic_a = Prediction.objects.filter(image__lesion__case__patient__clinic=world.clinic_a)
    for predictions in (None, clinic_a):
        with Capture(connection) as captured:
            counts = job_counts(jobs, predictions=predictions)
        assert len(captured.captured_queries) == 1
        assert counts == {job.pk: (scored_count(job, predictions=predictions),
                                   disagreement_count(job, predictions=predictions)) for job in jobs}
    assert job_counts([]) == {}
