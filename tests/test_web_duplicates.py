"""The Duplicates page and /api/duplicates on a real uvicorn (tests/web_server.start_server)
serving tests/test_duplicates.py's gallery (demo photos, an exact and an edited copy, a stereo
pair of one scene), in real headless Chromium for the page. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import pytest

from tests.test_duplicates import _snapshot, make_gallery
from tests.test_web_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    all_images_loaded,
    browser,
    checked_page,
    no_horizontal_scroll,
    shot,
)
from tests.web_server import start_server


@pytest.fixture(scope="module")
def dup_server(tmp_path_factory):
    from imagetext.api import Collection
    from imagetext.web import create_app

    root = make_gallery(tmp_path_factory.mktemp("web-dups") / "photos")
    with Collection.open(root) as col:
        col.index()
        n = len(col)
    server, thread, url = start_server(create_app(root))
    yield SimpleNamespace(url=url, root=root, n_images=n)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(dup_server):
    with httpx.Client(base_url=dup_server.url, timeout=120) as c:
        yield c


def test_duplicates_through_the_api(client, dup_server):
    before = _snapshot(dup_server.root)
    body = client.get("/api/duplicates").json()
    assert body["preset"] == "edits" and body["n_images"] == dup_server.n_images
    assert body["turned"] is True and body["turned_missing"] == 0  # turned vectors made, stored
    checked = client.get("/api/duplicates", params={"spatial": "true"}).json()
    assert body["spatial_inliers"] is None and checked["spatial_inliers"] >= 10
    assert ["brandenburg-gate.jpg", "edits/brandenburg-gate-edited.jpg"] in [
        [p["relative_path"] for p in g["photos"]] for g in checked["groups"]]
    plain = client.get("/api/duplicates", params={"turned": "false"}).json()
    assert plain["turned"] is False and plain["threshold"] < body["threshold"] + 0.2
    names = [[p["relative_path"] for p in g["photos"]] for g in body["groups"]]
    assert ["brandenburg-gate.jpg", "edits/brandenburg-gate-edited.jpg"] in names
    for g in body["groups"]:
        assert g["photos"][0]["keep"] and not any(p["keep"] for p in g["photos"][1:])
        assert g["size"] == len(g["photos"]) >= 2
        thumb = client.get(g["photos"][1]["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    scene = client.get("/api/duplicates", params={"preset": "scene"}).json()
    assert {"motorcycle_left.png", "motorcycle_right.png"} in [
        {p["relative_path"] for p in g["photos"]} for g in scene["groups"]]
    exact = client.get("/api/duplicates", params={"preset": "exact"}).json()
    assert body["threshold"] > scene["threshold"] and exact["pixel_threshold"] > 0.5
    bad = client.get("/api/duplicates", params={"preset": "blurry"})
    assert bad.status_code == 422 and bad.json()["detail"]
    schema = client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    assert set(body) == set(models["DuplicatesResponse"]["properties"])
    assert set(body["groups"][0]["photos"][0]) == set(models["DuplicatePhoto"]["properties"])
    assert "/api/duplicates" in schema["paths"]
    assert client.get("/duplicates", params={"preset": "blurry"}).status_code == 400
    assert client.get("/duplicates", params={"turned": "maybe"}).status_code == 400
    assert client.get("/duplicates", params={"check": "pixels"}).status_code == 400
    assert client.get("/api/duplicates", params={"turned": "maybe"}).status_code == 422
    assert _snapshot(dup_server.root) == before  # review only


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium")
def test_the_duplicates_page_shows_groups_side_by_side(browser, dup_server):  # noqa: F811
    for page in checked_page(browser, dup_server, 1280, 900):
        page.goto(dup_server.url + "/duplicates")
        assert page.locator("a.tab.active").inner_text() == "Duplicates"
        page.wait_for_selector("#groups .dup-group")
        page.wait_for_function("""() => [...document.querySelectorAll('#groups img')]
                                  .every(i => i.complete && i.naturalWidth > 0)""")
        assert all_images_loaded(page, "#groups img")
        groups = page.locator("#groups .dup-group")
        assert page.locator(".keep-badge").count() == groups.count() >= 2
        first = groups.first.locator(".dup-photo")
        # side by side: the kept photo left of the other, on one row
        a, b = first.nth(0).bounding_box(), first.nth(1).bounding_box()
        assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 1
        assert "Keep" in first.nth(0).inner_text() or "KEEP" in first.nth(0).inner_text()
        assert re.search(r"\d+×\d+ · [\d.]+ kB · sharpness \d+", first.nth(1).inner_text())
        shot(page, "duplicates")

        page.select_option("#preset", "scene")
        page.click("form.duplicates-form button[type=submit]")
        page.wait_for_url(re.compile(r"/duplicates\?preset=scene&turned=yes&check=vectors$"))
        assert "motorcycle_left.png" in page.locator("#groups").inner_text()
        assert page.locator("#preset").input_value() == "scene"
        shot(page, "duplicates-scene")

        page.select_option("#preset", "exact")
        page.click("form.duplicates-form button[type=submit]")
        page.wait_for_url(re.compile(r"preset=exact&turned=yes&check=vectors$"))
        text = page.locator("main").inner_text()
        assert "colosseum-small.jpg" in text and "motorcycle_left.png" not in text
        assert "turned by 90° too" not in page.locator("#duplicates-summary").inner_text()

        page.select_option("#preset", "edits")
        page.select_option("#turned", "no")
        page.click("form.duplicates-form button[type=submit]")
        page.wait_for_url(re.compile(r"preset=edits&turned=no&check=vectors$"))
        assert page.locator("#turned").input_value() == "no"
        assert "turned by 90° too" not in page.locator("#duplicates-summary").inner_text()
        page.goto(dup_server.url + "/duplicates")
        assert "turned by 90° too" in page.locator("#duplicates-summary").inner_text()
        page.select_option("#check", "keypoints")
        page.click("form.duplicates-form button[type=submit]")
        page.wait_for_url(re.compile(r"check=keypoints$"))
        assert "keypoints in one geometry" in page.locator("#duplicates-summary").inner_text()
        assert "brandenburg-gate-edited.jpg" in page.locator("#groups").inner_text()
        shot(page, "duplicates-keypoints")

    for phone in checked_page(browser, dup_server, 390, 844):
        phone.goto(dup_server.url + "/duplicates?preset=scene")
        phone.wait_for_selector("#groups .dup-group")
        assert no_horizontal_scroll(phone)
        shot(phone, "phone-duplicates")
