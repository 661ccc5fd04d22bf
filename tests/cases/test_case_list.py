"""The cases list: scoped like every page, filtered by state, visit dates, reviewer and text."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from cases.models import Case, Lesion, Review


def _ids(response) -> list[int]:
    return [case.pk for case in response.context["cases"]]


def test_scoped_to_the_users_cases(client, world):
    for user, expected in ((world.clin_a, [world.case_a.pk]), (world.clin_b, [world.case_b.pk]), (world.norole, []),
                           (world.admin, sorted([world.case_a.pk, world.case_b.pk], reverse=True))):
        client.force_login(user)
        response = client.get("/cases/")
        assert response.status_code == 200
        assert sorted(_ids(response), reverse=True) == expected, user


def test_filters(client, world):
    client.force_login(world.admin)
    Case.objects.filter(pk=world.case_b.pk).update(visit_date=timezone.localdate() - timedelta(days=30))
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    assert _ids(client.get("/cases/", {"state": "awaiting"})) == [world.case_a.pk]
    assert _ids(client.get("/cases/", {"state": "flagged"})) == [world.case_a.pk]
    assert _ids(client.get("/cases/", {"q": "PB-1"})) == [world.case_b.pk]
    assert _ids(client.get("/cases/", {"q": "changing"})) == [world.case_a.pk]
    old = (timezone.localdate() - timedelta(days=10)).isoformat()
    assert _ids(client.get("/cases/", {"visit_to": old})) == [world.case_b.pk]
    Review.objects.create(lesion=world.lesion_b, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="reassure")
    assert _ids(client.get("/cases/", {"reviewer": world.derm.pk})) == [world.case_b.pk]
    bad = client.get("/cases/", {"visit_from": "2026-02-01", "visit_to": "2026-01-01"})
    assert bad.status_code == 400 and "is after" in bad.content.decode()
    junk = client.get("/cases/", {"visit_from": "junk"})  # a field's own error is said too, not only the form's
    assert junk.status_code == 400 and "Enter a valid date" in junk.content.decode()
    assert "the list below is unfiltered" in junk.content.decode()


def test_a_nul_in_a_search_is_refused_not_a_database_error(client, world):
    client.force_login(world.clin_a)
    for url in ("/patients/?q=P%00", "/cases/?q=%00", "/queue/?q=%00"):
        assert client.get(url).status_code == 400, url
