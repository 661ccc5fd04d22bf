"""The body-map point and the anatomic site the model reads never disagree: a contradicting point
is refused with a clear message, a move never changes the site, and a site correction that the
point contradicts takes the point off the map."""
from __future__ import annotations

from html import unescape

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import body_map, corrections, services
from cases.forms import LesionForm
from cases.models import PatientLesion

pytestmark = pytest.mark.django_db

# fractions of one figure (180 x 400): the front figure's left-hand arm is the patient's right arm
FRONT_RIGHT_ARM = ("front", 39 / 180, 140 / 400)
BACK_TORSO_LEFT = ("back", 72 / 180, 140 / 400)


def test_site_problem_names_the_region_the_point_is_on():
    assert body_map.site_problem(*FRONT_RIGHT_ARM, "upper extremity") is None
    problem = body_map.site_problem(*FRONT_RIGHT_ARM, "head/neck")
    assert problem.startswith("The point on the body map is on the front view, right arm (site “upper extremity”)")
    assert "the site given is “head/neck”" in problem
    assert "“unknown”" in body_map.site_problem(*FRONT_RIGHT_ARM, "unknown")  # a point is a known site
    assert body_map.site_problem("front", 5 / 180, 5 / 400, "head/neck") == body_map.OFF_OUTLINE
    # a click on the drawn edge, just outside the arm's box, still counts as the arm
    assert body_map.site_problem("front", 51 / 180, 140 / 400, "upper extremity") is None


def test_side_problem_checks_the_side_away_from_the_midline():
    assert body_map.side_problem("front", 39 / 180, "right") is None
    assert "patient's right" in body_map.side_problem("front", 39 / 180, "left")
    assert body_map.side_problem("back", 39 / 180, "left") is None  # on the back the viewer's left is the patient's
    assert body_map.side_problem("front", 96 / 180, "right") is None  # too near the midline to tell
    assert body_map.side_problem("front", 39 / 180, "") is None  # no side given


def _form(world, case=None, **data):
    view, x, y = data.pop("point", ("", "", ""))
    return LesionForm({"map_view": view, "map_x": x, "map_y": y, **data}, case=case or world.case_a)


def test_a_new_lesion_whose_point_contradicts_its_site_or_side_is_refused(world):
    refused = _form(world, anatomic_site="head/neck", side="right", point=FRONT_RIGHT_ARM)
    assert not refused.is_valid()
    assert "right arm (site “upper extremity”)" in refused.errors["anatomic_site"][0]
    wrong_side = _form(world, anatomic_site="upper extremity", side="left", point=FRONT_RIGHT_ARM)
    assert not wrong_side.is_valid() and "patient's right" in wrong_side.errors["side"][0]
    agreed = _form(world, anatomic_site="upper extremity", side="right", point=FRONT_RIGHT_ARM)
    assert agreed.is_valid(), agreed.errors
    assert _form(world, anatomic_site="head/neck").is_valid()  # no point: the lists alone


def test_a_later_visit_is_checked_against_the_point_it_keeps(world):
    tracked = world.lesion_a.tracked
    PatientLesion.objects.filter(pk=tracked.pk).update(map_view="back", map_x=BACK_TORSO_LEFT[1],
                                                       map_y=BACK_TORSO_LEFT[2], side="left")
    later = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="again?",
                                 visit_date=timezone.localdate())
    moved_site = _form(world, case=later, same_as=tracked.pk, anatomic_site="head/neck")
    assert not moved_site.is_valid() and "posterior torso" in moved_site.errors["anatomic_site"][0]
    assert _form(world, case=later, same_as=tracked.pk, anatomic_site="").is_valid()  # the earlier site agrees


def test_a_move_into_another_site_is_refused_and_points_to_the_site_correction(client, world):
    url = f"/patients/{world.patient_a.pk}/lesions/1/place/"
    client.force_login(world.clin_a)
    refused = client.post(url, {"side": "right", "map_view": FRONT_RIGHT_ARM[0], "map_x": FRONT_RIGHT_ARM[1],
                                "map_y": FRONT_RIGHT_ARM[2], "reason": "it is on the arm"})
    html = unescape(refused.content.decode())
    assert refused.status_code == 400
    assert "the lesion's site is “posterior torso”" in html and "use “Correct the site” first" in html
    assert f'href="/lesions/{world.lesion_a.pk}/correct/"' in html
    tracked = PatientLesion.objects.get(pk=world.lesion_a.tracked_id)
    assert tracked.map_view == "" and not AuditEvent.objects.filter(object_type="patientlesion").exists()
    wrong_side = client.post(url, {"side": "right", "map_view": "back", "map_x": BACK_TORSO_LEFT[1],
                                   "map_y": BACK_TORSO_LEFT[2], "reason": "x"})
    assert wrong_side.status_code == 400 and "patient's left" in unescape(wrong_side.content.decode())
    placed = client.post(url, {"side": "left", "map_view": "back", "map_x": BACK_TORSO_LEFT[1],
                               "map_y": BACK_TORSO_LEFT[2], "reason": "from the photo"})
    assert placed.status_code == 302


def test_a_site_correction_the_point_contradicts_takes_the_point_off_the_map(world, dispatched):
    tracked = world.lesion_a.tracked
    PatientLesion.objects.filter(pk=tracked.pk).update(map_view="back", map_x=BACK_TORSO_LEFT[1],
                                                       map_y=BACK_TORSO_LEFT[2])
    corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="posterior torso",
                                    reason="unchanged")
    corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="lateral torso",
                                    reason="it is on the flank")  # 10 units from the lateral edge: not the flank
    tracked.refresh_from_db()
    assert (tracked.map_view, tracked.map_x, tracked.map_y) == ("", None, None)
    event = AuditEvent.objects.get(object_type="patientlesion", action="update")
    assert event.old_values["map_view"] == "back" and "it is on the flank" in event.new_values["reason"]


def test_a_site_correction_the_point_agrees_with_keeps_the_point(world, dispatched):
    tracked = world.lesion_a.tracked
    PatientLesion.objects.filter(pk=tracked.pk).update(map_view="back", map_x=54 / 180, map_y=0.4)  # the flank
    corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="lateral torso",
                                    reason="it is on the flank")
    tracked.refresh_from_db()
    assert tracked.map_view == "back"
