"""The web app in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Install the browser with `bash scripts/install_browser.sh`. Each tab is saved as a
screenshot in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.web_server import ARTIFACTS, shared_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian chromium: run `bash scripts/install_browser.sh`"),
]


@pytest.fixture(scope="module")
def server():
    return shared_server()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page that records console errors and every host it talks to."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.console_errors = []
    page.expect_http_error = False
    page.hosts = set()
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.on("request", lambda r: r.url.startswith(("http:", "https:", "ws:", "wss:"))
            and page.hosts.add(re.sub(r"^(\w+://[^/]+).*", r"\1", r.url)))
    yield page
    # offline: no request to anything but our own server (no CDN), and no JS errors
    assert page.hosts == {server.url}
    if page.expect_http_error:  # Chromium logs the 4xx of a page that shows a bad-input message
        page.console_errors = [e for e in page.console_errors
                               if not re.match(r"Failed to load resource: .* status of 4\d\d", e)]
    assert page.console_errors == []
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def all_images_loaded(page, selector: str) -> bool:
    return page.eval_on_selector_all(
        selector, "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)")


def test_search_tab_shows_a_gallery_and_a_large_view(page, server):
    page.goto(server.url + "/")
    status = page.locator("#status-line").inner_text()
    assert server.model in status and f"{server.n_images} images indexed" in status

    page.fill("input[name=q]", "a cup of coffee")
    page.fill("input[name=k]", "8")
    page.click("form.searchbar button[type=submit]")
    page.wait_for_selector("#results .tile")
    tiles = page.locator("#results .tile")
    assert tiles.count() == 8
    assert tiles.first.locator(".tile-name").inner_text() == "coffee.png"
    page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
                              .every(i => i.complete && i.naturalWidth > 0)""")
    assert all_images_loaded(page, "#results img")
    shot(page, "search")

    tiles.first.locator("a.tile-link").click()
    dialog = page.locator("#lightbox")
    dialog.wait_for(state="visible")
    assert page.locator("#lightbox-path").inner_text() == "coffee.png"
    page.wait_for_function("() => document.getElementById('lightbox-img').naturalWidth > 0")
    shot(page, "search-large-view")

    page.click("#lightbox-similar")
    page.wait_for_url(re.compile(r"/similar\?id=\d+"))
    page.wait_for_selector("#results .tile")
    assert "coffee.png" in page.locator(".query-card").inner_text()
    assert "coffee.png" not in page.locator("#results .tile-name").all_inner_texts()


def test_search_with_an_empty_query_shows_a_message(page, server):
    page.expect_http_error = True
    page.goto(server.url + "/search")
    page.click("form.searchbar button[type=submit]")
    alert = page.locator("#error")
    alert.wait_for()
    assert "empty" in alert.inner_text()


def test_similar_tab_finds_an_uploaded_photo(page, server):
    page.goto(server.url + "/similar")
    page.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    assert page.locator(".dropzone-name").inner_text() == "chelsea.png"
    page.click("form.upload-form button[type=submit]")
    page.wait_for_selector("#results .tile")
    assert page.locator("#results .tile-name").first.inner_text() == "chelsea.png"
    page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
                              .every(i => i.complete && i.naturalWidth > 0)""")
    shot(page, "similar")


def test_similar_tab_refuses_a_non_image_upload(page, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a picture")
    page.expect_http_error = True
    page.goto(server.url + "/similar")
    page.set_input_files("input[type=file]", str(bad))
    page.click("form.upload-form button[type=submit]")
    alert = page.locator("#error")
    alert.wait_for()
    assert "not a usable image" in alert.inner_text()


def test_caption_tab(page, server):
    page.goto(server.url + "/caption")
    installed = page.locator("#no-captioner").count() == 0
    if not installed:
        assert "No captioner is installed" in page.locator("#no-captioner").inner_text()
        assert page.locator("form.upload-form button[type=submit]").is_disabled()
        shot(page, "caption")
        return
    page.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    page.click("form.upload-form button[type=submit]")
    page.wait_for_selector("#caption-text")
    assert len(page.locator("#caption-text").inner_text().split()) >= 2
    shot(page, "caption")


def test_classify_tab_with_labels_and_the_moderation_preset(page, server):
    page.goto(server.url + "/classify")
    page.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    page.fill("textarea[name=labels]", "cat, dog, car, a cup of coffee")
    page.click("form.upload-form button[type=submit]")
    page.wait_for_selector("#scores .bar-row")
    labels = page.locator("#scores .bar-label").all_inner_texts()
    assert labels[0] == "cat" and len(labels) == 4
    width = page.locator("#scores .bar-fill").first.evaluate("e => e.getBoundingClientRect().width")
    track = page.locator("#scores .bar-track").first.evaluate("e => e.getBoundingClientRect().width")
    assert width > 0.5 * track
    shot(page, "classify")

    page.set_input_files("input[type=file]", str(server.root / "coffee.png"))
    page.check("input[name=preset][value=moderation]")
    assert page.locator("textarea[name=labels]").is_disabled()
    assert "weapon" in page.locator("textarea[name=labels]").input_value()
    page.click("form.upload-form button[type=submit]")
    page.wait_for_selector("#scores .bar-row")
    assert "Nothing flagged" in page.locator("#verdict").inner_text()
    shot(page, "classify-moderation")
