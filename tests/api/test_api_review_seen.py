"""API reviews can say what the reviewer saw, as the review page does: each lesion's `fingerprint`
(the review page's, cases.queue.lesion_fingerprint) is sent back as `seen`, and a lesion changed
since (a new image, say) refuses the whole submission with a 409, saving nothing."""
from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from cases import queue
from cases.models import Lesion, Review
from tests.support.imagegen import jpeg


def _review(lesion: Lesion, **extra) -> dict:
    return {"lesion": lesion.pk, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision",
            **extra}


def _fingerprint(client, lesion: Lesion) -> str:
    return client.get(f"/api/v1/lesions/{lesion.pk}/").json()["fingerprint"]


def test_the_lesion_shows_the_review_pages_fingerprint(api, world, queued):
    lesion = Lesion.objects.prefetch_related(queue.SHOWN_PREFETCH).get(pk=world.lesion_a.pk)
    assert _fingerprint(api.derm, lesion) == queue.lesion_fingerprint(lesion) != ""
    listed = api.derm.get(f"/api/v1/lesions/?case={queued.pk}").json()["results"]
    assert [row["fingerprint"] for row in listed] == [queue.lesion_fingerprint(lesion)]


def test_a_review_with_a_stale_fingerprint_is_a_409_and_saves_nothing(api, world, queued, dispatched):
    url = f"/api/v1/cases/{queued.pk}/reviews/"
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 200
    old = _fingerprint(api.derm, world.lesion_a)
    uploaded = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                               {"images": [SimpleUploadedFile("new.jpg", jpeg(seed=7))]}, format="multipart")
    assert uploaded.status_code == 201 and uploaded.json()["accepted"], uploaded.json()

    stale = api.derm.post(url, {"reviews": [_review(world.lesion_a, seen=old)]}, format="json")
    assert stale.status_code == 409
    detail = stale.json()["detail"]
    assert "Nothing was saved" in detail and "has a new image" in detail and "current fingerprint" in detail
    assert not Review.objects.exists()
    assert Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review

    current = _fingerprint(api.derm, world.lesion_a)
    assert current != old
    saved = api.derm.post(url, {"reviews": [_review(world.lesion_a, seen=current)]}, format="json")
    assert saved.status_code == 201, saved.json()
    review = Review.objects.get()
    assert [row["id"] for row in saved.json()] == [review.pk]
    # the audit trail names the images the review was given against: both, the new one included
    event = AuditEvent.objects.get(action="review")
    assert event.new_values["seen_images"] == sorted(world.lesion_a.images.values_list("pk", flat=True))
    assert len(event.new_values["seen_images"]) == 2


def test_seen_is_optional_but_for_every_lesion_or_none(api, world, queued):
    url = f"/api/v1/cases/{queued.pk}/reviews/"
    other = Lesion.objects.create(case=queued, anatomic_site="head/neck", flagged=True, awaiting_review=True)
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 200
    mixed = api.derm.post(url, {"reviews": [_review(world.lesion_a, seen=_fingerprint(api.derm, world.lesion_a)),
                                            _review(other)]}, format="json")
    assert mixed.status_code == 400
    assert mixed.json() == {"reviews": [f"Give seen for every lesion or for none (lesion {other.pk} has none)."]}
    assert not Review.objects.exists()
    without = api.derm.post(url, {"reviews": [_review(world.lesion_a), _review(other)]}, format="json")
    assert without.status_code == 201, without.json()


def test_the_lesion_list_costs_the_same_queries_with_fingerprints_for_more_lesions(api, world):
    from tests.api.test_api_queries import _add_visit, _list_queries

    _add_visit(world, 1)
    _list_queries(api.clin_a, "lesions")  # warm the per-process caches
    one, rows_one = _list_queries(api.clin_a, "lesions")
    _add_visit(world, 2)
    _add_visit(world, 3)
    three, rows_three = _list_queries(api.clin_a, "lesions")
    assert rows_three == rows_one + 2 and three == one


def test_the_client_sends_seen_with_each_lesions_review():
    from secondlook_client import SecondLookClient

    class Session:
        headers: dict = {}
        sent: list = []

        def request(self, method, url, *, timeout, **kwargs):
            self.sent.append((method, url, kwargs.get("json")))
            return type("Response", (), {"status_code": 201, "headers": {}, "text": "[]", "json": lambda self: []})()

    session = Session()
    client = SecondLookClient("https://secondlook.example.org", "sl_token", session=session)
    reviews = [{"lesion": 3, "agreement": "agree"}, {"lesion": 4, "agreement": "agree", "seen": "own"}]
    assert client.review(case=9, reviews=reviews, seen={3: "7:11:done", 4: "8:12:done"}) == []
    client.review(case=9, reviews=reviews[:1])
    assert session.sent == [
        ("POST", "https://secondlook.example.org/api/v1/cases/9/reviews/",
         {"reviews": [{"lesion": 3, "agreement": "agree", "seen": "7:11:done"},
                      {"lesion": 4, "agreement": "agree", "seen": "own"}]}),
        ("POST", "https://secondlook.example.org/api/v1/cases/9/reviews/",
         {"reviews": [{"lesion": 3, "agreement": "agree"}]})]
