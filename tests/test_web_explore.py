"""The Explore page and /api/clusters on the shared real server (tests/web_server.py: 18
scikit-image samples and 12 Flickr8k photos, indexed without captions), in real headless
Chromium for the pages. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.test_web_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    all_images_loaded,
    browser,
    page,
    phone,
    server,
    shot,
)


@pytest.fixture(scope="module")
def client(server):  # noqa: F811
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def test_albums_through_the_api(client, server):  # noqa: F811
    made = client.post("/api/clusters", params={"k": 5})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["k"] == 5 and body["n_images"] == server.n_images and not body["stale"]
    assert body["named_by"] == "vocabulary"  # the server's index has no captions
    assert sum(a["size"] for a in body["clusters"]) == server.n_images
    assert client.get("/api/clusters").json() == body
    first = body["clusters"][0]
    assert first["url"] == "/explore/1" and 1 <= len(first["cover"]) <= 4
    album = client.get(first["api_url"]).json()
    assert album["album"] == first and len(album["results"]) == first["size"]
    assert [r["id"] for r in album["results"][: len(first["cover"])]] == \
        [c["id"] for c in first["cover"]]
    # bad requests: the readable error model, never a 500
    for response, status in ((client.get("/api/clusters/999"), 404),
                             (client.get("/api/clusters/x"), 422),
                             (client.post("/api/clusters", params={"k": 1}), 422),
                             (client.post("/api/clusters", params={"vectors": "colour"}), 422),
                             (client.post("/api/clusters", params={"k": 64}), 400)):
        assert response.status_code == status, response.text
        assert set(response.json()) <= {"detail", "errors"} and response.json()["detail"]
    assert "only 30 images" in client.post("/api/clusters", params={"k": 64}).json()["detail"]
    schema = client.get("/openapi.json").json()
    assert {"/api/clusters", "/api/clusters/{cluster_id}"} <= set(schema["paths"])


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium")
def test_explore_shows_albums_with_covers_and_an_album_its_photos(page, server):  # noqa: F811
    page.goto(server.url + "/explore")
    page.select_option("select[name=vectors]", "semantic")
    page.fill("input[name=k]", "4")
    page.click("form.albums-form button[type=submit]")
    page.wait_for_selector("#albums .album")
    albums = page.locator("#albums .album")
    assert albums.count() == 4
    assert page.locator("a.tab.active").inner_text() == "Explore"
    page.wait_for_function("""() => [...document.querySelectorAll('#albums img')]
                              .every(i => i.complete && i.naturalWidth > 0)""")
    assert all_images_loaded(page, "#albums img")
    sizes = [int(t.split()[0]) for t in page.locator(".album-size").all_inner_texts()]
    assert sum(sizes) == server.n_images and sizes == sorted(sizes, reverse=True)
    names = page.locator(".album-name").all_inner_texts()
    assert all(n.strip() for n in names)
    # four covers side by side, each a square grid inside its card
    box = albums.first.locator(".album-cover").bounding_box()
    assert abs(box["width"] - box["height"]) < 2 and box["width"] > 150
    shot(page, "explore")

    albums.nth(1).locator("a.album-link").click()
    page.wait_for_url(re.compile(r"/explore/2$"))
    page.wait_for_selector("#results .tile")
    assert page.locator("#results .tile").count() == sizes[1]
    assert page.locator("#album-name").inner_text().lower() == names[1].lower()
    page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
                              .every(i => i.complete && i.naturalWidth > 0)""")
    shot(page, "explore-album")

    page.locator("#results a.tile-link").first.click()  # the large view, as on search
    page.locator("#lightbox").wait_for(state="visible")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium")
def test_explore_on_a_phone_and_a_bad_album(phone, server, client):  # noqa: F811
    if not client.get("/api/clusters").json()["clusters"]:
        client.post("/api/clusters", params={"k": 4})
    phone.goto(server.url + "/explore")
    phone.wait_for_selector("#albums .album")
    width = phone.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the screen
    tops = [b["y"] for b in (a.bounding_box() for a in phone.locator("#albums .album").all()[:2])]
    assert len(tops) == 2 and tops[0] == tops[1]  # two albums a row
    shot(phone, "explore-phone")
    phone.expect_http_error = True
    phone.goto(server.url + "/explore/99")
    assert "No album 99" in phone.locator("body").inner_text()
