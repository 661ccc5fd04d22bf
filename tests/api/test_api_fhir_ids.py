"""FHIR resource ids and identifier/code systems come from SECONDLOOK_FHIR_BASE_URL, never from the
request's Host or X-Forwarded-Proto: one case exported through two allowed host names, over http or
https behind a proxy, is one set of ids; only the image files' URLs follow the request."""
from __future__ import annotations

import pytest

HOSTS = ("secondlook.example.org", "alias.example.net")
BASE = "https://fhir.example.org"


@pytest.fixture
def served(settings):
    settings.ALLOWED_HOSTS = [*HOSTS, "testserver"]
    settings.SECONDLOOK_FHIR_BASE_URL = BASE
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


def _ids_and_systems(bundle: dict) -> tuple[list, list]:
    """Every resource's fullUrl and id, and every identifier and coding system, in bundle order."""
    ids = [(entry["fullUrl"], entry["resource"]["id"]) for entry in bundle["entry"]]
    systems = []

    def walk(value):
        if isinstance(value, dict):
            if "system" in value:
                systems.append(value["system"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk([entry["resource"] for entry in bundle["entry"]])
    return ids, systems


def _media_urls(bundle: dict) -> list[str]:
    return [e["resource"]["content"]["url"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media"]


def test_ids_and_systems_do_not_depend_on_the_host_or_scheme(api, queued, served):
    exports = {}
    for host in HOSTS:
        for proxied in (False, True):
            headers = {"HTTP_HOST": host, **({"HTTP_X_FORWARDED_PROTO": "https"} if proxied else {})}
            response = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/", **headers)
            assert response.status_code == 200, response.content
            exports[host, proxied] = response.json()
    first, *others = exports.values()
    ids, systems = _ids_and_systems(first)
    assert ids and all(_ids_and_systems(other) == (ids, systems) for other in others)
    local = [system for system in systems if "/fhir/" in system]
    assert local and all(system.startswith(f"{BASE}/fhir/") for system in local)
    assert not any(host in system for system in systems for host in HOSTS)
    # the image file is fetched where the request came from
    for (host, proxied), bundle in exports.items():
        (url,) = _media_urls(bundle)
        assert url.startswith(f"{'https' if proxied else 'http'}://{host}/api/v1/images/")


def test_another_base_url_is_another_set_of_ids(api, queued, served, settings):
    before = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/").json()
    settings.SECONDLOOK_FHIR_BASE_URL = "https://other-deployment.example.org"
    after = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/").json()
    assert not {e["fullUrl"] for e in before["entry"]} & {e["fullUrl"] for e in after["entry"]}
