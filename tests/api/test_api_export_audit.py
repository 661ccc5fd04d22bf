"""The FHIR export is audited with what it handed out: its format and the images it carries."""
from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases.models import LesionImage
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db


def test_the_fhir_export_is_audited_with_its_format_and_images(api, world, queued):
    second = make_image(world, sha="b" * 64)
    make_image(world, sha="c" * 64, lesion=world.lesion_b)  # another clinic's case: not in this bundle
    response = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/")
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="download", object_type="case")
    assert event.object_id == str(queued.pk)
    assert event.new_values["format"] == "fhir"
    expected = LesionImage.objects.filter(lesion__case=queued).values_list("pk", flat=True)
    assert sorted(event.new_values["images"]) == sorted(expected) and second.pk in event.new_values["images"]
