"""Two dermatologists amend the same signed review at the same moment: the database keeps one
amendment per review, and the other gets the form's "already amended" message, not a server error."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from cases import corrections
from cases.models import Review

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed(world) -> Review:
    return Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                 final_diagnosis="nevus", management="follow_up")


def _winner_saves_between_check_and_save(monkeypatch, world, signed, *, validate: bool) -> None:
    """The competing amendment is saved after this request's "already amended?" check and before its
    own save; ``validate``: before (True) or after (False) this request's own full_clean."""
    real_full_clean = Review.full_clean

    def full_clean(self, *args, **kwargs):
        if self.amends_id == signed.pk and not Review.objects.filter(amends=signed).exists():
            Review.objects.create(lesion=signed.lesion, reviewer=world.derm2, amends=signed, agreement="agree",
                                  final_diagnosis="melanoma", management="excision", amendment_reason="histology")
        if validate:
            real_full_clean(self, *args, **kwargs)

    monkeypatch.setattr(Review, "full_clean", full_clean)


@pytest.mark.parametrize("validate", [False, True], ids=["database refuses", "unique check refuses"])
def test_an_amendment_that_loses_the_race_gets_the_forms_message(world, signed, monkeypatch, validate):
    _winner_saves_between_check_and_save(monkeypatch, world, signed, validate=validate)
    with pytest.raises(ValidationError) as refused:
        corrections.amend_review(user=world.derm, review=signed, reason="margins", values={"notes": "second look"})
    assert "already amended" in " ".join(refused.value.messages)
    # the caller's transaction is still usable (the refused insert was inside a savepoint)
    assert Review.objects.filter(amends=signed, notes="second look").count() == 0


def test_the_amend_page_says_already_amended_instead_of_failing(client, world, signed, monkeypatch):
    _winner_saves_between_check_and_save(monkeypatch, world, signed, validate=False)
    client.force_login(world.derm)
    response = client.post(f"/reviews/{signed.pk}/amend/", {
        "agreement": "agree", "final_diagnosis": "nevus", "management": "follow_up", "notes": "second look",
        "reason": "margins"})
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "already amended" in page
