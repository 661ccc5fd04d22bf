"""A NUL in the patients' free-text search (?q=) is a 400 naming q, never a database error (PostgreSQL
text cannot hold a NUL). The middleware refuses any such query string first; the view refuses it too,
should the middleware ever be left out. Run with DATABASE_URL set to check it on PostgreSQL."""
from __future__ import annotations

import pytest

from melanoma_site.middleware import NUL_MESSAGE

NUL_MIDDLEWARE = "melanoma_site.middleware.RejectNulQueryMiddleware"


@pytest.mark.parametrize("query", ["%00", "P%00", "%00P-1", "%20%00%20"])
def test_a_nul_in_q_is_a_400(api, query):
    response = api.clin_a.get(f"/api/v1/patients/?q={query}")
    assert response.status_code == 400 and response.json() == {"detail": NUL_MESSAGE}


@pytest.mark.parametrize("query", ["%00", "P%00", "%20%00%20"])
def test_without_the_middleware_the_view_refuses_a_nul_in_q_naming_q(api, world, settings, query):
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != NUL_MIDDLEWARE]
    response = api.clin_a.get(f"/api/v1/patients/?q={query}")
    assert response.status_code == 400
    assert response.json() == {"q": ["q must not contain a NUL character."]}
    # the search itself still works
    found = api.clin_a.get(f"/api/v1/patients/?q=%20{world.patient_a.identifier[:3]}%20").json()
    assert [p["id"] for p in found["results"]] == [world.patient_a.pk]
