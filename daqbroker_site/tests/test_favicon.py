"""The site's icon: named by every page (the collaborators' pages and the admin), served at the address the
page names and at ``/favicon.ico``, and allowed by the Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db
ICON_LINK = re.compile(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">')


def _icon_bytes() -> bytes:
    with open(finders.find("img/daqbroker.svg"), "rb") as handle:
        return handle.read()


def test_favicon_ico_answers_with_the_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content == _icon_bytes()
    assert "max-age=86400" in response["Cache-Control"]


def test_favicon_ico_refuses_a_post(client):
    assert client.post("/favicon.ico").status_code == 405


@pytest.mark.parametrize("page", ["login", "admin:login", "instruments:home", "admin:index"])
def test_each_page_names_an_icon_that_is_served(admin_client, page):
    client = admin_client if page in {"instruments:home", "admin:index"} else Client()
    response = client.get(reverse(page))
    assert response.status_code == 200
    html = response.content.decode()
    icon = ICON_LINK.search(html)
    assert icon, "the page names no icon"
    served = client.get(icon.group(1))
    assert served.status_code == 200
    body = b"".join(served.streaming_content) if served.streaming else served.content
    assert body == _icon_bytes()
    # The page's own Content-Security-Policy lets it show an icon from this site.
    policy = response["Content-Security-Policy"]
    assert re.search(r"img-src 'self'", policy), policy
