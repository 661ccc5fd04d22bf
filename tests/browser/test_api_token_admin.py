"""An admin issues a read-only API token and revokes it, by clicking in the admin; the key reads but
may not write in between (against the live server), and the docs page of the API renders from local
assets."""
from __future__ import annotations

import re

import pytest
import requests
from django.contrib.auth import get_user_model

from api.models import ApiToken
from cases.models import Clinic
from tests.support.browser_helpers import PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_issues_and_revokes_a_token(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinician = make_user("dr_api", "Ada Api", "clinician", clinic=Clinic.objects.create(name="Clinic API"))
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    page.goto(f"{base}/admin/api/apitoken/")
    page.get_by_role("link", name="Add API token").click()
    page.get_by_label("User").select_option(label=clinician.username)
    page.get_by_label("Name").fill("EHR bridge")
    read_only = page.get_by_label("Read only")
    expect(read_only).not_to_be_checked()  # a token may write unless the admin says otherwise
    read_only.click()
    expect(read_only).to_be_checked()
    page.get_by_role("button", name="Save", exact=True).click()
    message = page.locator(".messagelist").inner_text()
    key = re.search(r"is (sl_\S+) — copy it now", message).group(1)
    page.screenshot(path=str(artifacts_dir / "40-admin-token-issued.png"), full_page=True)
    token = ApiToken.objects.get()
    assert token.key_hash != key and token.read_only is True
    row = page.locator("#result_list tbody tr", has_text="EHR bridge")
    expect(page.locator("#result_list thead")).to_contain_text("Read only")
    expect(row.locator("td.field-read_only img")).to_have_attribute("alt", "True")

    me = requests.get(f"{base}/api/v1/me/", headers={"Authorization": f"Token {key}"}, timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "Ada Api"
    write = requests.post(f"{base}/api/v1/patients/", json={"identifier": "RO-1", "birth_year": 1990, "sex": "male"},
                          headers={"Authorization": f"Token {key}"}, timeout=10)
    assert write.status_code == 403
    assert write.json()["detail"] == ("This API token is read-only: it can read results but not create or change "
                                      "records.")

    page.goto(f"{base}/admin/api/apitoken/")
    page.locator("input[name=_selected_action]").first.check()
    page.locator("select[name=action]").select_option("revoke")
    page.get_by_role("button", name="Go").click()
    expect(page.locator(".messagelist")).to_contain_text("1 token(s) revoked")
    expect(page.locator("#result_list")).to_contain_text("revoked")
    refused = requests.get(f"{base}/api/v1/me/", headers={"Authorization": f"Token {key}"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["detail"] == "This token is revoked."


def test_api_docs_page_renders(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page = browser_page
    external: list[str] = []
    page.on("request", lambda request: external.append(request.url)
            if not request.url.startswith(live_server.url) else None)
    page.goto(f"{live_server.url}/api/v1/docs/")
    expect(page.locator(".swagger-ui .title")).to_contain_text("SecondLook API")
    page.get_by_text("/api/v1/lesions/{id}/images/").first.click()  # expands the upload operation
    expect(page.locator(".opblock-body").first).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "41-api-docs.png"), full_page=False)
    assert external == []
