"""Lesions followed over visits: one patient lesion per physical lesion, a timeline of its visits
with "changed" markers, the body map, and the queue telling a reviewer about earlier visits."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from cases import body_map, followup, queue, services
from cases.forms import CaseForm, LesionForm, ReviewForm
from classifier.models import ModelVersion
from cases.models import Case, Lesion, Outcome, PatientLesion, Prediction, Review
from tests.support.case_helpers import make_image


def _visit(world, day: date, question: str = "Follow-up") -> Case:
    return services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question=question,
                                visit_date=day)


def _score(world, lesion: Lesion, melanoma: float, *, sha: str, assessable: bool = True) -> Prediction:
    image = make_image(world, sha=sha, lesion=lesion)
    return Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="done", melanoma_probability=melanoma,
                                     malignancy_score=melanoma, finished_at=timezone.now(), assessable=assessable)


def test_every_lesion_belongs_to_a_numbered_patient_lesion(world):
    assert world.lesion_a.tracked.patient == world.patient_a and world.lesion_a.tracked.label == "L1"
    second = services.add_lesion(user=world.clin_a, case=world.case_a, anatomic_site="head/neck", side="left",
                                 map_view="front", map_x=0.4, map_y=0.1)
    assert second.tracked.number == 2 and second.tracked.side == "left" and second.tracked.map_view == "front"
    assert world.lesion_b.tracked.number == 1  # numbered per patient


def test_adding_a_visit_that_moves_the_lesion_says_so(world, client):
    client.force_login(world.clin_a)
    tracked = world.lesion_a.tracked
    later = _visit(world, timezone.localdate())
    quiet = client.post(f"/cases/{later.pk}/lesions/new/", {"same_as": tracked.pk, "anatomic_site": ""}, follow=True)
    assert len(quiet.context["messages"]) == 1  # "added": nothing was moved
    third = _visit(world, timezone.localdate(), question="Third")
    moved = client.post(f"/cases/{third.pk}/lesions/new/", {"same_as": tracked.pk, "anatomic_site": "",
                                                            "side": "left"}, follow=True)
    said = [str(m) for m in moved.context["messages"]]
    assert len(said) == 2 and said[1] == (f"{tracked.label}'s side or place on the body map was changed as given, "
                                          "for all its visits.")
    assert PatientLesion.objects.get(pk=tracked.pk).side == "left"


def test_a_later_visit_adds_to_the_same_lesion_and_inherits_its_site(world):
    later = _visit(world, timezone.localdate() + timedelta(days=0))
    form = LesionForm({"same_as": world.lesion_a.tracked.pk, "anatomic_site": "", "description": "grown"}, case=later)
    assert form.is_valid(), form.errors
    lesion = services.add_lesion(user=world.clin_a, case=later, **form.cleaned_data)
    assert lesion.tracked == world.lesion_a.tracked and lesion.anatomic_site == "posterior torso"
    assert list(followup.earlier_visits(lesion)) == [world.lesion_a]
    # the lesion is offered once per visit
    again = LesionForm({"same_as": world.lesion_a.tracked.pk, "anatomic_site": ""}, case=later)
    assert "same_as" not in again.fields
    with pytest.raises(ValidationError, match="already part of this visit"):
        services.add_lesion(user=world.clin_a, case=later, anatomic_site="unknown", same_as=world.lesion_a.tracked)


def test_another_patients_lesion_is_refused(world):
    with pytest.raises(ValidationError, match="another patient"):
        services.add_lesion(user=world.clin_a, case=world.case_a, anatomic_site="unknown",
                            same_as=world.lesion_b.tracked)


def test_correcting_where_a_lesion_is_is_audited(world):
    later = _visit(world, timezone.localdate())
    services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso", same_as=world.lesion_a.tracked,
                        side="right", map_view="back", map_x=0.6, map_y=0.3)
    tracked = PatientLesion.objects.get(pk=world.lesion_a.tracked_id)
    assert (tracked.side, tracked.map_view, tracked.map_x) == ("right", "back", 0.6)
    event = AuditEvent.objects.get(action="update", object_type="patientlesion")
    assert event.old_values["map_view"] == "" and event.new_values["map_view"] == "back"


def test_an_incomplete_map_point_is_refused(world):
    form = LesionForm({"anatomic_site": "head/neck", "map_view": "front", "map_x": "0.5"}, case=world.case_a)
    assert not form.is_valid() and "body-map point is incomplete" in str(form.errors)


def test_visit_date_defaults_to_today_and_cannot_be_in_the_future(world):
    assert CaseForm({"clinical_question": "?"}).is_valid()
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    form = CaseForm({"clinical_question": "?", "visit_date": tomorrow})
    assert not form.is_valid() and "future" in form.errors["visit_date"][0]
    assert world.case_a.visit_date == timezone.localdate()


def test_timeline_marks_a_rise_and_a_recorded_change(world, settings):
    settings.FOLLOW_UP_SCORE_RISE = 0.10
    today = timezone.localdate()
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=today - timedelta(days=180))
    world.case_a.refresh_from_db()
    second = _visit(world, today - timedelta(days=90))
    third = _visit(world, today)
    l2 = services.add_lesion(user=world.clin_a, case=second, anatomic_site="posterior torso",
                             same_as=world.lesion_a.tracked)
    l3 = services.add_lesion(user=world.clin_a, case=third, anatomic_site="posterior torso",
                             same_as=world.lesion_a.tracked)
    _score(world, world.lesion_a, 0.20, sha="1" * 64)
    _score(world, l2, 0.25, sha="2" * 64)
    _score(world, l2, 0.90, sha="3" * 64, assessable=False)  # not assessable: not the visit's score
    _score(world, l3, 0.45, sha="4" * 64)
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.lesion for v in visits] == [world.lesion_a, l2, l3]
    assert [v.melanoma for v in visits] == [0.20, 0.25, 0.45]
    assert [v.changed for v in visits] == [False, False, True]
    assert "rose from 25.0% to 45.0% (+20.0 points" in visits[2].changed_reasons[0] and visits[1].cannot_assess
    Review.objects.create(lesion=l2, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="follow_up", lesion_changed=True)
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert visits[1].changed and "recorded a change" in visits[1].changed_reasons[0]
    plot = followup.score_plot(visits)
    assert len(plot["points"]) == 3 and plot["points"][0].y > plot["points"][2].y  # higher score, higher on the plot


def test_a_rise_between_two_model_versions_is_not_marked_as_a_change(world, model_version):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=30))
    world.case_a.refresh_from_db()
    later = _visit(world, timezone.localdate())
    l2 = services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                             same_as=world.lesion_a.tracked)
    _score(world, world.lesion_a, 0.10, sha="6" * 64)
    newer = ModelVersion.objects.create(version="v-next", melanoma_threshold=0.3, malignancy_threshold=0.5)
    image = make_image(world, sha="7" * 64, lesion=l2)
    Prediction.objects.create(image=image, model_version=newer, status="done", melanoma_probability=0.45,
                              malignancy_score=0.45, finished_at=timezone.now())
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.melanoma for v in visits] == [0.10, 0.45] and not visits[1].changed  # not on one scale
    Prediction.objects.filter(image=image).update(model_version=model_version)
    assert followup.timeline(world.lesion_a.tracked, Lesion.objects.all())[1].changed  # one version: a rise


def _three_visits(world) -> tuple[Lesion, Lesion, Lesion]:
    """The lesion at visits 180 and 90 days ago and today (world.lesion_a is the first)."""
    today = timezone.localdate()
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=today - timedelta(days=180))
    world.case_a.refresh_from_db()
    later = [services.add_lesion(user=world.clin_a, case=_visit(world, day), anatomic_site="posterior torso",
                                 same_as=world.lesion_a.tracked) for day in (today - timedelta(days=90), today)]
    return world.lesion_a, later[0], later[1]


def test_a_rise_across_a_visit_without_a_comparable_score_is_marked(world, settings, model_version):
    """V2 has only a photo the model could not assess, V3 rose: V3 is compared with V1, the most
    recent visit with a score of the same version; a visit scored by another version is passed
    over the same way."""
    settings.FOLLOW_UP_SCORE_RISE = 0.10
    v1, v2, v3 = _three_visits(world)
    _score(world, v1, 0.10, sha="a1" * 32)
    _score(world, v2, 0.95, sha="a2" * 32, assessable=False)  # a clinical photo / a blurred image
    _score(world, v3, 0.55, sha="a3" * 32)
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.melanoma for v in visits] == [0.10, None, 0.55] and all(v.complete for v in visits)
    assert [v.changed for v in visits] == [False, False, True]
    assert f"since {v1.case.visit_date:%Y-%m-%d}" in visits[2].changed_reasons[0]
    other = ModelVersion.objects.create(version="v-other", melanoma_threshold=0.3, malignancy_threshold=0.5)
    Prediction.objects.create(image=make_image(world, sha="a4" * 32, lesion=v2), model_version=other, status="done",
                              melanoma_probability=0.50, malignancy_score=0.5, finished_at=timezone.now())
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.changed for v in visits] == [False, False, True]  # V2 (another version) is not V3's baseline
    assert f"since {v1.case.visit_date:%Y-%m-%d}" in visits[2].changed_reasons[0]


def test_a_visit_with_an_image_still_waiting_is_not_compared(client, world, settings, model_version):
    """One image scored, the other waiting: the visit's highest score so far is not its score,
    so no rise is marked for it; once every image is scored, it is compared."""
    settings.FOLLOW_UP_SCORE_RISE = 0.10
    v1, v2, _ = _three_visits(world)
    _score(world, v1, 0.10, sha="b1" * 32)
    _score(world, v2, 0.55, sha="b2" * 32)
    waiting = Prediction.objects.create(image=make_image(world, sha="b3" * 32, lesion=v2),
                                        model_version=model_version, status="pending")
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert visits[1].melanoma == 0.55 and not visits[1].complete and not visits[1].changed
    client.force_login(world.clin_a)
    html = client.get(f"/patients/{world.patient_a.pk}/lesions/1/").content.decode()
    assert html.count("not compared with other visits") == 1  # the page says why it has no marker
    Prediction.objects.filter(pk=waiting.pk).update(status="done", melanoma_probability=0.2, malignancy_score=0.2,
                                                    finished_at=timezone.now())
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert visits[1].complete and visits[1].changed


def test_a_visit_with_a_failed_image_is_neither_compared_nor_a_baseline(world, settings, model_version):
    """V2 has a score and a failed image: no marker for V2, and V3 is compared with V1 (a rise
    of 45 points), not with V2's partial score (5 points)."""
    settings.FOLLOW_UP_SCORE_RISE = 0.10
    v1, v2, v3 = _three_visits(world)
    _score(world, v1, 0.10, sha="c1" * 32)
    _score(world, v2, 0.50, sha="c2" * 32)
    Prediction.objects.create(image=make_image(world, sha="c3" * 32, lesion=v2), model_version=model_version,
                              status="failed", error="boom", finished_at=timezone.now())
    _score(world, v3, 0.55, sha="c4" * 32)
    visits = followup.timeline(world.lesion_a.tracked, Lesion.objects.all())
    assert [v.complete for v in visits] == [True, False, True]
    assert [v.changed for v in visits] == [False, False, True]
    assert "rose from 10.0% to 55.0% (+45.0 points" in visits[2].changed_reasons[0]


def test_review_asks_about_change_only_when_there_are_earlier_visits(world):
    assert "lesion_changed" not in ReviewForm().fields
    assert "lesion_changed" in ReviewForm(earlier_visits=True).fields


def test_map_status_follows_the_latest_visit(world):
    status = lambda: followup.patient_map(world.patient_a, Lesion.objects.all())[0].status  # noqa: E731
    assert status() == "not-scored"
    _score(world, world.lesion_a, 0.05, sha="5" * 64)
    assert status() == "not-flagged"  # the model never says benign
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    assert status() == "benign"  # a dermatologist did
    review.delete()
    excise = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="excision")
    assert status() == "reviewed"  # a nevus to excise is not shown as cleared
    excise.delete()
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    assert status() == "flagged"
    Case.objects.filter(pk=world.case_a.pk).update(claimed_by=world.derm, claimed_at=timezone.now())
    assert status() == "in-review"
    first = Outcome.objects.create(lesion=world.lesion_a, diagnosis="melanoma", diagnosis_date=timezone.localdate(),
                                   report_reference="LAB-1", entered_by=world.clin_a)
    assert status() == "histo-malignant"  # the laboratory's result outranks the review
    corrected = Outcome.objects.create(lesion=world.lesion_a, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                                       report_reference="LAB-1b", entered_by=world.clin_a, supersedes=first,
                                       reason="wrong report attached")
    assert status() == "histo-benign"  # the correction is the result in force
    Outcome.objects.create(lesion=world.lesion_a, diagnosis="other", diagnosis_date=timezone.localdate(),
                           report_reference="LAB-1c", entered_by=world.clin_a, supersedes=corrected, reason="revised")
    assert status() == "histo-other"


def test_queue_says_when_a_flagged_lesion_was_seen_before(world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=60))
    world.case_a.refresh_from_db()
    later = _visit(world, timezone.localdate())
    lesion = services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                                 same_as=world.lesion_a.tracked)
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    Lesion.objects.filter(pk=world.lesion_b.pk).update(flagged=True, awaiting_review=True)
    rows = {case.pk: case for case in queue.review_queue()}
    assert rows[later.pk].has_earlier_visits and not rows[world.case_b.pk].has_earlier_visits


def test_timeline_page_is_scoped_and_compares_two_visits(client, world):
    later = _visit(world, timezone.localdate())
    l2 = services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                             same_as=world.lesion_a.tracked)
    _score(world, world.lesion_a, 0.2, sha="6" * 64)
    _score(world, l2, 0.5, sha="7" * 64)
    url = f"/patients/{world.patient_a.pk}/lesions/1/"
    client.force_login(world.clin_a)
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Seen at 2 visits" in html and "Changed" in html and 'class="score-plot"' in html
    assert page.context["compare"][0].lesion == world.lesion_a and page.context["compare"][1].lesion == l2
    chosen = client.get(url, {"a": l2.pk, "b": world.lesion_a.pk})
    assert chosen.context["compare"][0].lesion == l2
    assert client.get(url, {"a": "junk"}).status_code == 200
    assert AuditEvent.objects.filter(action="view", object_type="patientlesion").exists()
    for other in (world.clin_b, world.norole, world.derm):
        client.force_login(other)
        assert client.get(url).status_code == 404


def test_patient_page_shows_the_map_and_the_list(client, world):
    services.add_lesion(user=world.clin_a, case=world.case_a, anatomic_site="upper extremity", side="left",
                        map_view="front", map_x=0.8, map_y=0.3)
    client.force_login(world.clin_a)
    html = client.get(f"/patients/{world.patient_a.pk}/").content.decode()
    assert html.count('class="marker status-') == 1  # L1 has no point; L2 was placed on the map
    assert "not on the map" in html and f"/patients/{world.patient_a.pk}/lesions/2/" in html


def test_body_map_regions_and_sides():
    assert body_map.region_at("front", 90, 100).site == "anterior torso"
    assert body_map.region_at("back", 90, 100).site == "posterior torso"
    assert body_map.region_at("front", 40, 225).site == "palms/soles"
    assert body_map.region_at("back", 70, 380).site == "palms/soles"
    assert body_map.region_at("front", 90, 192).site == "oral/genital"
    assert body_map.region_at("front", 5, 5) is None
    assert body_map.side_at("front", 30) == "right" and body_map.side_at("back", 30) == "left"
    assert body_map.side_at("front", 90) == "midline"
    sites = {r.site for r in body_map.REGIONS}
    assert sites == {"anterior torso", "head/neck", "lateral torso", "lower extremity", "oral/genital",
                     "palms/soles", "posterior torso", "upper extremity"}


def test_backfill_gives_existing_lesions_a_patient_lesion(world):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("cases.migrations.0010_lesions_followed_over_visits")
    Lesion.objects.update(tracked=None)
    PatientLesion.objects.all().delete()
    migration.backfill(apps, None)
    assert Lesion.objects.get(pk=world.lesion_a.pk).tracked.number == 1
    assert Lesion.objects.get(pk=world.lesion_b.pk).tracked.patient == world.patient_b


def test_the_timeline_says_when_its_visits_were_scored_by_different_versions(client, world):
    """One dashed line cannot be every version's threshold: the page names each version's."""
    later = _visit(world, timezone.localdate())
    l2 = services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                             same_as=world.lesion_a.tracked)
    _score(world, world.lesion_a, 0.2, sha="6" * 64)
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", melanoma_threshold=0.3)
    Prediction.objects.create(image=make_image(world, sha="7" * 64, lesion=l2), model_version=newer, status="done",
                              melanoma_probability=0.25, malignancy_score=0.25, finished_at=timezone.now())
    client.force_login(world.clin_a)
    page = client.get(f"/patients/{world.patient_a.pk}/lesions/1/")
    assert page.context["versions"] == [("unit-test-v1", 0.5), ("unit-test-v2", 0.3)]
    html = page.content.decode()
    assert "scored by different model versions" in html and "unit-test-v1: threshold 50.0%" in html
    assert "of the model version that scored the latest visit" in html
