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


def checked_page(browser, server, width: int, height: int):
    """A fresh page that records console errors and every host it talks to."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.console_errors = []
    page.expect_http_error = False
    page.hosts = set()
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.on("request", lambda r: r.url.startswith(("http:", "https:", "ws:", "wss:"))
            and page.hosts.add(re.sub(r"^(\w+://[^/]+).*", r"\1", r.url)))
    try:
        yield page
        # offline: no request to anything but our own server (no CDN), and no JS errors
        assert page.hosts == {server.url}
        if page.expect_http_error:  # Chromium logs the 4xx of a page showing a bad-input message
            page.console_errors = [e for e in page.console_errors
                                   if not re.match(r"Failed to load resource: .* status of 4\d\d", e)]
        assert page.console_errors == []
    finally:
        context.close()


@pytest.fixture()
def page(browser, server):
    yield from checked_page(browser, server, 1280, 900)


@pytest.fixture()
def phone(browser, server):
    """A page as wide as a phone held upright (390 CSS pixels)."""
    yield from checked_page(browser, server, 390, 844)


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
    # the default model's moderation is calibrated per category: the page says what 50% means
    assert "calibrated scale" in page.locator("#score-note").inner_text()
    shot(page, "classify-moderation")


# -- the upload forms keep their upload, phones, and searches that find nothing good ----------
def submit(page) -> None:
    """Press the form's button and wait for the page the server sends back."""
    with page.expect_navigation():
        page.click("form.upload-form button[type=submit]")


def captioner_installed(server) -> bool:
    import httpx

    return bool(httpx.get(server.url + "/api/status", timeout=60).json()["captioner"]["installed"])


def assert_upload_shown(page, name: str) -> None:
    """The drop zone shows the kept upload, and the file input no longer has to be filled."""
    assert page.locator(".dropzone-name").inner_text() == name
    assert page.locator(".dropzone.has-preview").count() == 1
    assert page.locator(".dropzone-preview").evaluate("i => i.complete && i.naturalWidth > 0")
    assert page.locator("input[type=file]").evaluate("i => !i.required && i.files.length === 0")


def set_options(page, tab: str, first: bool) -> None:
    if tab == "caption":
        page.fill("input[name=beam_size]", "3" if first else "1")
        page.fill("input[name=num_return]", "3" if first else "1")
    elif tab == "similar":
        page.fill("input[name=k]", "5" if first else "2")
    else:
        page.fill("textarea[name=labels]", "cat, dog" if first else "dog, car, cat, a cup of coffee")


def check_result(page, tab: str, first: bool) -> None:
    assert page.locator("#error").count() == 0, page.locator("#error").inner_text()
    if tab == "caption":
        assert len(page.locator("#caption-text").inner_text().split()) >= 2
        alternatives = page.locator(".alternatives li").count()
        assert alternatives >= 1 if first else alternatives == 0
    elif tab == "similar":
        assert page.locator("#results .tile").count() == (5 if first else 2)
        assert page.locator("#results .tile-name").first.inner_text() == "chelsea.png"
    else:
        labels = page.locator("#scores .bar-label").all_inner_texts()
        assert labels[0] == "cat" and len(labels) == (2 if first else 4)


@pytest.mark.parametrize("tab", ["caption", "similar", "classify"])
def test_an_upload_form_sent_again_with_another_option_keeps_the_upload(page, server, tab):
    if tab == "caption" and not captioner_installed(server):
        pytest.skip("no captioner installed")
    page.goto(f"{server.url}/{tab}")
    page.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    set_options(page, tab, first=True)
    submit(page)
    check_result(page, tab, first=True)
    assert_upload_shown(page, "chelsea.png")

    set_options(page, tab, first=False)  # the file input is empty now: the page kept the upload
    submit(page)
    check_result(page, tab, first=False)
    assert_upload_shown(page, "chelsea.png")
    shot(page, f"{tab}-sent-again")

    # a new file replaces the kept one
    page.set_input_files("input[type=file]", str(server.root / "coffee.png"))
    submit(page)
    assert page.locator(".dropzone-name").inner_text() == "coffee.png"
    if tab == "similar":
        assert page.locator("#results .tile-name").first.inner_text() == "coffee.png"


def test_classify_error_then_fix_keeps_the_upload(page, server):
    page.expect_http_error = True
    page.goto(server.url + "/classify")
    page.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    page.fill("textarea[name=labels]", "cat")
    submit(page)
    assert "two labels" in page.locator("#error").inner_text()
    assert_upload_shown(page, "chelsea.png")
    assert page.locator("textarea[name=labels]").input_value() == "cat"
    shot(page, "classify-error")

    page.fill("input[name=template]", "no placeholder")
    page.fill("textarea[name=labels]", "cat, dog, car")
    submit(page)
    assert "{}" in page.locator("#error").inner_text()
    assert_upload_shown(page, "chelsea.png")

    page.fill("input[name=template]", "a photo of a {}.")
    submit(page)
    assert page.locator("#error").count() == 0
    assert page.locator("#scores .bar-label").all_inner_texts()[0] == "cat"
    assert_upload_shown(page, "chelsea.png")


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("""() => document.documentElement.scrollWidth <= window.innerWidth
                            && document.body.scrollWidth <= window.innerWidth""")


def test_phone_layout_has_visible_score_bars_and_no_sideways_scroll(phone, server):
    phone.goto(server.url + "/classify")
    assert no_horizontal_scroll(phone)
    phone.set_input_files("input[type=file]", str(server.root / "chelsea.png"))
    phone.fill("textarea[name=labels]", "cat, dog, car, a cup of coffee, "
               "a label far too long to fit on one line of a phone screen")
    submit(phone)
    tracks = phone.eval_on_selector_all(
        "#scores .bar-track", "es => es.map(e => e.getBoundingClientRect().width)")
    fills = phone.eval_on_selector_all(
        "#scores .bar-fill", "es => es.map(e => e.getBoundingClientRect().width)")
    assert len(tracks) == 5 and min(tracks) > 200, tracks  # the bar spans the phone's width
    assert min(fills) > 0 and fills[0] > 0.5 * tracks[0], fills
    assert no_horizontal_scroll(phone)
    shot(phone, "phone-classify")

    phone.goto(server.url + "/similar")
    phone.set_input_files("input[type=file]", str(server.root / "coffee.png"))
    submit(phone)
    assert phone.locator("#results .tile").count() > 2
    assert no_horizontal_scroll(phone)
    shot(phone, "phone-similar")

    for url, name in [("/search?q=a+cup+of+coffee&k=6", "search"), ("/caption", "caption"),
                      ("/images/1", "image")]:
        phone.goto(server.url + url)
        assert no_horizontal_scroll(phone), url
        shot(phone, f"phone-{name}")

    phone.expect_http_error = True
    phone.goto(server.url + "/images/abc")
    assert "no image 'abc'" in phone.locator("#error").inner_text().lower()
    assert no_horizontal_scroll(phone)
    shot(phone, "phone-error")


def test_error_pages_are_readable_pages(page, server):
    page.expect_http_error = True
    for url, status, words in [("/images/abc", 404, "There is no image 'abc'"),
                               ("/images/424242", 404, "No image with id 424242"),
                               ("/similar?id=abc", 400, "whole number")]:
        response = page.goto(server.url + url)
        assert response.status == status
        assert words in page.locator("#error").inner_text()
        assert page.locator("h1").count() == 1
        assert "Input should be" not in page.content()
    page.goto(server.url + "/images/abc")
    assert page.locator("#error-title").inner_text() == "Not found"
    shot(page, "error")


def search(page, server, query: str, k: int = 8) -> None:
    page.goto(server.url + "/search")
    page.fill("input[name=q]", query)
    page.fill("input[name=k]", str(k))
    with page.expect_navigation():
        page.click("form.searchbar button[type=submit]")
    page.wait_for_selector("#results .tile")


def badges(page) -> list[str]:
    return page.locator("#results .score-badge").all_inner_texts()


def test_search_shows_relevance_not_raw_scores(page, server):
    search(page, server, "a cup of coffee")
    assert page.locator("#results .tile-name").first.inner_text() == "coffee.png"
    for text in badges(page):  # a readable percentage, never a raw cosine such as -0.056
        assert re.fullmatch(r"\d{1,3}%", text), text
    assert page.locator("#no-good-match").count() == 0
    top = page.locator("#results .tile").first
    assert top.get_attribute("data-match") == "strong"
    assert top.locator(".score-badge").count() == 1
    meter = top.locator(".relevance-meter > span").evaluate("e => e.getBoundingClientRect().width")
    assert meter > 0
    weak = page.locator("#results .weak-matches .tile")
    if weak.count():  # weaker matches come after a divider, dimmed
        assert page.locator("#weak-title").is_visible()
        assert float(weak.first.evaluate("e => getComputedStyle(e).opacity")) < 1
    shot(page, "search-relevance")

    top.locator("a.tile-link").click()  # the large view says what the number is
    page.locator("#lightbox").wait_for(state="visible")
    assert page.locator("#lightbox-score-label").inner_text().lower() == "relevance"
    assert re.fullmatch(r"\d{1,3}%", page.locator("#lightbox-score").inner_text())


def test_search_says_when_nothing_matches_well(page, server):
    search(page, server, "a horse")  # the test gallery has no horse
    notice = page.locator("#no-good-match")
    assert notice.is_visible()
    assert "Nothing matches" in notice.inner_text() and "weak matches" in notice.inner_text()
    tiles = page.locator("#results .tile")
    assert tiles.count() == 8 == page.locator("#results .weak-matches .tile").count()
    assert all(t.get_attribute("data-match") == "weak" for t in tiles.all())
    assert float(tiles.first.evaluate("e => getComputedStyle(e).opacity")) < 1
    for text in badges(page):
        assert re.fullmatch(r"\d{1,3}%", text), text
    shot(page, "search-no-good-match")
