"""The web app's JSON API and pages over HTTP, against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import html
import io
import re

import httpx
import pytest
from PIL import Image

from tests.web_server import MAX_UPLOAD_MB, shared_server


@pytest.fixture(scope="module")
def server():
    return shared_server()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def png_bytes(path) -> bytes:
    return path.read_bytes()


def names(results) -> list[str]:
    return [r["relative_path"] for r in results]


def assert_clear_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text
    assert "Traceback" not in detail
    for word in words:
        assert word.lower() in detail.lower(), detail
    return detail


# -- status and search --------------------------------------------------------------------
def test_status_names_the_model_and_counts_the_images(client, server):
    status = client.get("/api/status").json()
    assert status["n_images"] == server.n_images >= 18 + 12
    from imagetext.models.registry import load_encoder

    assert status["model"] == server.model == load_encoder().name
    assert status["root"] == str(server.root)
    assert status["captioner"]["installed"] in (True, False)


@pytest.mark.parametrize("query, expected", [
    ("a cat", "chelsea.png"),
    ("a cup of coffee", "coffee.png"),
    ("a motorcycle", "motorcycle_left.png"),
])
def test_search_finds_the_matching_photo_first(client, query, expected):
    body = client.get("/api/search", params={"q": query, "k": 5}).json()
    assert body["query"] == query and body["k"] == 5
    assert len(body["results"]) == 5
    assert names(body["results"])[0] == expected
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_result_links_serve_the_image_and_a_cached_thumbnail(client, server):
    (top,) = client.get("/api/search", params={"q": "a cat", "k": 1}).json()["results"]
    assert top["relative_path"] == "chelsea.png"
    original = client.get(top["image_url"])
    assert original.status_code == 200
    assert original.content == (server.root / "chelsea.png").read_bytes()

    thumb = client.get(top["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(thumb.content))
    assert max(img.size) == 256
    cached = list((server.root / ".imagetext" / "thumbnails").rglob("*.jpg"))
    assert cached, "thumbnail was not cached"
    assert client.get(top["thumbnail_url"]).content == thumb.content

    large = Image.open(io.BytesIO(client.get(top["preview_url"]).content))
    assert large.size == (451, 300)  # never upscaled beyond the original

    record = client.get(f"/api/images/{top['id']}").json()
    assert record["relative_path"] == "chelsea.png" and record["width"] == 451


def test_search_in_a_subfolder_returns_flickr_photos(client):
    results = client.get("/api/search", params={"q": "a dog running on grass", "k": 10}).json()
    assert any(r["relative_path"].startswith("flickr/") for r in results["results"])


# -- similar --------------------------------------------------------------------------------
def test_similar_to_an_upload_finds_the_same_photo(client, server):
    files = {"file": ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")}
    body = client.post("/api/similar", files=files, data={"k": "4"}).json()
    assert len(body["results"]) == 4
    assert body["results"][0]["relative_path"] == "chelsea.png"
    assert body["results"][0]["score"] > 0.99


def test_similar_to_a_turned_upload_finds_its_original_first_as_a_copy(client, server):
    buf = io.BytesIO()
    with Image.open(server.root / "chelsea.png") as img:
        img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=85)
    files = {"file": ("turned.jpg", buf.getvalue(), "image/jpeg")}
    results = client.post("/api/similar", files=files, data={"k": "3"}).json()["results"]
    assert results[0]["relative_path"] == "chelsea.png" and results[0]["match"] == "copy"
    assert [r["match"] for r in results[1:]] == [None, None]
    page = client.post("/similar", files=files, data={"k": "3"}).text  # the page says so too
    assert len(re.findall(r'title="Similarity">copy · 0\.\d{3}</span>', page)) == 1


def test_similar_to_a_photo_from_outside_the_collection(client, server):
    files = {"file": ("outside.png", server.outside.read_bytes(), "image/png")}
    body = client.post("/api/similar", files=files).json()
    assert body["results"][0]["relative_path"] == "coffee.png"


def test_more_like_this_by_id_leaves_the_image_itself_out(client):
    (cat,) = client.get("/api/search", params={"q": "a cat", "k": 1}).json()["results"]
    body = client.get("/api/similar", params={"id": cat["id"], "k": 6}).json()
    assert len(body["results"]) == 6
    assert cat["id"] not in [r["id"] for r in body["results"]]


def test_similar_by_path_inside_the_collection(client):
    body = client.get("/api/similar", params={"path": "coffee.png", "k": 3}).json()
    assert body["path"] == "coffee.png" and len(body["results"]) == 3
    assert "coffee.png" not in names(body["results"])


# -- bad input: clear 4xx, never a 500 -------------------------------------------------------
@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "../../../../etc/passwd",
                                  "flickr/../../outside.png"])
def test_a_path_outside_the_collection_is_refused(client, path):
    assert_clear_error(client.get("/api/similar", params={"path": path}), 403, "outside")


def test_a_missing_path_inside_the_collection_is_404(client):
    assert_clear_error(client.get("/api/similar", params={"path": "nope.jpg"}), 404, "no file")


def test_similar_needs_exactly_one_of_id_and_path(client):
    assert_clear_error(client.get("/api/similar"), 400, "exactly one")
    assert_clear_error(client.get("/api/similar", params={"id": 1, "path": "coffee.png"}), 400)


@pytest.mark.parametrize("q", ["", "   ", "\n\t"])
def test_an_empty_query_is_a_400(client, q):
    assert_clear_error(client.get("/api/search", params={"q": q}), 400, "empty")


def test_a_missing_query_is_a_422(client):
    assert_clear_error(client.get("/api/search"), 422, "q")


@pytest.mark.parametrize("k", ["100000", "0", "-3", "abc", "1e9"])
def test_a_bad_k_is_refused(client, k):
    assert_clear_error(client.get("/api/search", params={"q": "a cat", "k": k}), 422, "k")


def test_a_too_long_query_is_refused(client):
    assert client.get("/api/search", params={"q": "cat " * 400}).status_code == 422


@pytest.mark.parametrize("image_id", ["999999", "99999999999999999999999", "-1"])
def test_unknown_image_ids_are_404(client, image_id):
    for suffix in ("", "/file", "/thumbnail"):
        response = client.get(f"/api/images/{image_id}{suffix}")
        assert response.status_code in (404, 422), response.text
        assert "detail" in response.json()


def test_image_routes_take_only_numeric_ids(client):
    assert_clear_error(client.get("/api/images/..%2F..%2Fetc%2Fpasswd/file"), 404, "no api")
    assert_clear_error(client.get("/api/images/abc/file"), 422, "image_id")


def test_static_files_cannot_escape_their_folder(client):
    for url in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2Fservice.py"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "WebService" not in response.text and "create_app" not in response.text


def test_an_unsupported_thumbnail_size_is_400(client):
    (top,) = client.get("/api/search", params={"q": "a cat", "k": 1}).json()["results"]
    assert_clear_error(client.get(f"/api/images/{top['id']}/thumbnail", params={"size": 4096}),
                       400, "size")


def test_a_non_image_upload_is_a_400(client):
    files = {"file": ("notes.txt", b"hello, I am text", "text/plain")}
    assert_clear_error(client.post("/api/similar", files=files), 400, "not an image")


def test_a_truncated_image_upload_is_a_400(client, server):
    data = (server.root / "rocket.jpg").read_bytes()[:2000]
    files = {"file": ("rocket.jpg", data, "image/jpeg")}
    assert_clear_error(client.post("/api/similar", files=files), 400, "image")


def test_an_empty_upload_is_a_400(client):
    files = {"file": ("empty.png", b"", "image/png")}
    assert_clear_error(client.post("/api/similar", files=files), 400, "empty")


def test_a_missing_upload_is_a_422(client):
    assert_clear_error(client.post("/api/similar", data={"k": "3"}), 422, "file")


def test_an_upload_over_the_limit_is_a_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(int((MAX_UPLOAD_MB + 1) * 1_000_000))
    files = {"file": ("big.png", big, "image/png")}
    assert_clear_error(client.post("/api/similar", files=files), 413, "limit")


def test_unknown_api_routes_answer_json_404(client):
    assert_clear_error(client.get("/api/nothing-here"), 404, "no api endpoint")


# -- classify, rank, caption --------------------------------------------------------------
def test_classify_scores_the_labels(client, server):
    files = {"file": ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")}
    body = client.post("/api/classify", files=files,
                       data={"labels": "cat, dog, car\nbuilding", "threshold": "0.5"}).json()
    assert body["labels"] == ["cat", "dog", "car", "building"]
    assert body["top"] == "cat"
    assert sum(body["scores"]) == pytest.approx(1.0, abs=1e-4)
    assert body["flagged"] == ["cat"]
    assert next(r["label"] for r in body["ranked"]) == "cat"


def test_classify_with_the_moderation_preset(client, server):
    files = {"file": ("coffee.png", png_bytes(server.root / "coffee.png"), "image/png")}
    body = client.post("/api/classify", files=files, data={"preset": "moderation"}).json()
    assert body["preset"] == "moderation"
    assert len(body["labels"]) >= 5 and body["threshold"] == 0.5
    assert body["flagged"] == []  # a cup of coffee is not unsafe
    flaggable = [r["label"] for r in body["ranked"] if r["flaggable"]]
    # the default model's calibrated moderation: every category is flaggable, at its own threshold
    assert body["calibrated"] and sorted(flaggable) == sorted(body["labels"])
    assert body["template"] is None  # each category has prompts of its own
    page = client.post("/classify", files=files, data={"preset": "moderation"})
    assert page.status_code == 200 and "Nothing flagged" in page.text
    note = re.search(r'id="score-note">(.*?)</p>', page.text, re.DOTALL).group(1)
    assert "calibrated scale" in note and "a photo of a {}" not in note, note


def test_search_results_carry_a_calibrated_relevance(client):
    good = client.get("/api/search", params={"q": "a cat", "k": 4}).json()["results"]
    assert good[0]["relative_path"] == "chelsea.png" and good[0]["match"] == "strong"
    assert all(0 <= r["relevance"] <= 1 for r in good)
    none = client.get("/api/search", params={"q": "a horse", "k": 4}).json()["results"]
    assert [r["match"] for r in none] == ["weak"] * 4  # no horse in the test gallery
    page = client.get("/search", params={"q": "a horse", "k": "4"})
    assert 'id="no-good-match"' in page.text and "Nothing matches" in page.text
    assert 'id="no-good-match"' not in client.get("/search", params={"q": "a cat", "k": "4"}).text


@pytest.mark.parametrize("data, status, word", [
    ({"labels": "cat"}, 400, "two labels"),
    ({"labels": ""}, 400, "two labels"),
    ({"labels": "cat, dog", "threshold": "2"}, 422, "threshold"),
    ({"labels": "cat, dog", "template": "no placeholder"}, 400, "{}"),
    ({"preset": "violence"}, 400, "preset"),
])
def test_classify_bad_input(client, server, data, status, word):
    files = {"file": ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")}
    assert_clear_error(client.post("/api/classify", files=files, data=data), status, word)


def test_rank_orders_uploads_by_the_prompt(client, server):
    files = [("files", (name, png_bytes(server.root / name), "image/png"))
             for name in ("chelsea.png", "coffee.png", "astronaut.png")]
    body = client.post("/api/rank", files=files, data={"prompt": "a cup of coffee"}).json()
    assert next(r["name"] for r in body["results"]) == "coffee.png"
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]
    # uploads with the same file name are told apart by their position
    files = [("files", ("photo.png", png_bytes(server.root / name), "image/png"))
             for name in ("chelsea.png", "coffee.png")]
    body = client.post("/api/rank", files=files, data={"prompt": "a cup of coffee"}).json()
    assert [r["index"] for r in body["results"]] == [1, 0]


def test_rank_with_a_bad_file_names_it(client, server):
    files = [("files", ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")),
             ("files", ("bad.txt", b"text", "text/plain"))]
    assert_clear_error(client.post("/api/rank", files=files, data={"prompt": "a cat"}), 400,
                       "bad.txt")


def test_caption_says_plainly_when_no_captioner_is_installed(server):
    from imagetext.web import create_app
    from tests.web_server import start_server

    app = create_app(server.root, captioner=None)
    uvicorn_server, thread, url = start_server(app)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            files = {"file": ("cat.png", (server.root / "chelsea.png").read_bytes(), "image/png")}
            assert_clear_error(c.post("/api/caption", files=files), 503, "no captioner")
            page = c.get("/caption")
            assert page.status_code == 200
            assert "No captioner is installed" in page.text
            assert c.get("/api/status").json()["captioner"]["installed"] is False
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def small_captioner():
    """A real captioner (small and untrained): the web layer must work with any captioner."""
    import torch

    from imagetext.caption.decoders import build_decoder
    from imagetext.caption.efficientnet_captioner import EfficientNetCaptioner
    from imagetext.caption.tokenizer import WordTokenizer

    tok = WordTokenizer.build(["a cat sits on a sofa", "a dog runs on the grass",
                               "a cup of coffee on a table"], min_count=1)
    torch.manual_seed(0)
    decoder = build_decoder("transformer", vocab_size=len(tok), d_model=32, layers=1, heads=2,
                            ff_dim=64, dropout=0.0)
    return EfficientNetCaptioner(decoder, tok, name="small-untrained")


def test_caption_returns_the_beam_alternatives(server, small_captioner):
    from imagetext.web import create_app
    from tests.web_server import start_server

    app = create_app(server.root, captioner=small_captioner)
    uvicorn_server, thread, url = start_server(app)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            files = {"file": ("cat.png", (server.root / "chelsea.png").read_bytes(), "image/png")}
            body = c.post("/api/caption", files=files,
                          data={"beam_size": "4", "num_return": "3"}).json()
            assert body["captioner"] == "small-untrained"
            assert len(body["captions"]) == 3 and body["captions"][0]["text"] == body["caption"]
            scores = [cap["score"] for cap in body["captions"]]
            assert scores == sorted(scores, reverse=True)
            assert c.get("/api/status").json()["captioner"] == {"installed": True,
                                                              "name": "small-untrained"}
            page = c.post("/caption", files=files, data={"beam_size": "4", "num_return": "3"})
            assert page.status_code == 200 and 'id="caption-text"' in page.text
            assert page.text.count("<li><span>") == 2  # the two alternatives
            too_many = c.post("/api/caption", files=files, data={"beam_size": "99"})
            assert_clear_error(too_many, 422, "beam_size")
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


def test_caption_with_the_installed_captioner(client, server):
    files = {"file": ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")}
    response = client.post("/api/caption", files=files, data={"beam_size": "3", "num_return": "2"})
    if not client.get("/api/status").json()["captioner"]["installed"]:
        assert_clear_error(response, 503, "no captioner")
        return
    body = response.json()
    assert response.status_code == 200, body
    assert isinstance(body["caption"], str) and len(body["caption"].split()) >= 2
    assert 1 <= len(body["captions"]) <= 2 and body["captions"][0]["text"] == body["caption"]


def test_a_model_without_calibration_shows_no_numbers_it_cannot_explain(server, tmp_path):
    """ConSE has no calibration.json: search results carry no relevance, so the page shows no
    number (not a raw cosine) and no 'no good match' notice, and moderation falls back to the
    softmax preset, whose unsafe labels are the flaggable ones."""
    from imagetext.api import FALLBACK_UNSAFE_LABELS, Collection
    from imagetext.web import create_app
    from tests.web_server import start_server

    with Collection.open(server.root, index_dir=tmp_path / "index", model="conse") as col:
        col.index()
    app = create_app(server.root, model="conse", index_dir=tmp_path / "index", captioner=None)
    uvicorn_server, thread, url = start_server(app)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            results = c.get("/api/search", params={"q": "a cup of coffee", "k": 4}).json()["results"]
            assert [(r["relevance"], r["match"]) for r in results] == [(None, None)] * 4
            page = c.get("/search", params={"q": "a horse", "k": "4"})
            assert page.text.count('class="tile"') == 4
            assert 'class="score-badge"' not in page.text and 'id="no-good-match"' not in page.text
            assert 'data-score=""' in page.text
            form = c.get("/classify").text
            assert all(label in form for label in FALLBACK_UNSAFE_LABELS)
            files = {"file": ("coffee.png", png_bytes(server.root / "coffee.png"), "image/png")}
            body = c.post("/api/classify", files=files, data={"preset": "moderation"}).json()
            assert body["calibrated"] is False
            flaggable = [r["label"] for r in body["ranked"] if r["flaggable"]]
            assert sorted(flaggable) == sorted(FALLBACK_UNSAFE_LABELS)
            page = c.post("/classify", files=files, data={"preset": "moderation"})
            assert page.status_code == 200 and "somewhere to go" in page.text
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


# -- k from the address or the form, on every route that takes k -----------------------------
def cat_upload(server) -> dict:
    return {"file": ("cat.png", png_bytes(server.root / "chelsea.png"), "image/png")}


def count_results(response) -> int:
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return len(response.json()["results"])
    return response.text.count('class="tile"')


@pytest.mark.parametrize("method, url, query, where", [
    ("GET", "/api/search", {"q": "a cat"}, "address"),
    ("GET", "/api/similar", {"id": "cat"}, "address"),
    ("POST", "/api/similar", {}, "address"),
    ("POST", "/api/similar", {}, "form"),
    ("GET", "/search", {"q": "a cat"}, "address"),
    ("GET", "/similar", {"id": "cat"}, "address"),
    ("POST", "/similar", {}, "address"),
    ("POST", "/similar", {}, "form"),
])
def test_every_route_that_takes_k_honours_it(client, server, method, url, query, where):
    if query.get("id") == "cat":
        (cat,) = client.get("/api/search", params={"q": "a cat", "k": 1}).json()["results"]
        query = {"id": cat["id"]}
    for k in (2, 5):
        params = {**query, "k": k} if where == "address" else query
        data = {"k": str(k)} if where == "form" else {}
        files = cat_upload(server) if method == "POST" else None
        response = client.request(method, url, params=params, data=data, files=files)
        assert count_results(response) == k, (url, where, k)
        if url.startswith("/api/"):
            assert response.json()["k"] == k


def test_k_in_both_the_address_and_the_form(client, server):
    both = {"params": {"k": 3}, "data": {"k": "3"}, "files": cat_upload(server)}
    assert count_results(client.post("/api/similar", **both)) == 3
    assert count_results(client.post("/similar", **both)) == 3
    differ = {"params": {"k": 2}, "data": {"k": "5"}, "files": cat_upload(server)}
    assert_clear_error(client.post("/api/similar", **differ), 400, "twice", "'2'", "'5'")
    page = client.post("/similar", **differ)
    assert page.status_code == 400 and "given twice" in page.text


@pytest.mark.parametrize("k", ["0", "abc", "100000"])
def test_a_bad_k_in_the_address_of_an_upload_is_refused(client, server, k):
    assert_clear_error(client.post("/api/similar", params={"k": k}, files=cat_upload(server)),
                       422, "k")
    page = client.post("/similar", params={"k": k}, files=cat_upload(server))
    assert page.status_code == 400 and 'role="alert"' in page.text


@pytest.mark.parametrize("form, api, data, page_words, api_words", [
    ("/caption", "/api/caption", {"beam_size": "99"}, "beam size must be between 1 and 8",
     "beam_size must be at most 8"),
    ("/caption", "/api/caption", {"num_return": "x"}, "number of captions must be a whole number",
     "num_return must be a whole number"),
    ("/classify", "/api/classify", {"labels": "cat, dog", "threshold": "2"},
     "The threshold must be between 0 and 1", "threshold must be at most 1"),
])
def test_pages_and_api_check_a_number_by_the_same_bounds(client, server, form, api, data,
                                                         page_words, api_words):
    page = client.post(form, files=cat_upload(server), data=data)
    assert page.status_code == 400 and page_words in html.unescape(page.text), page.text
    assert_clear_error(client.post(api, files=cat_upload(server), data=data), 422, api_words)


# -- the upload forms keep their upload -----------------------------------------------------
def kept_token(page) -> str:
    match = re.search(r'name="upload_token" value="([^"]+)"', page.text)
    assert match, "the page does not carry the upload"
    return match.group(1)


def test_upload_pages_keep_the_upload_across_errors_and_resubmission(client, server):
    first = client.post("/classify", files=cat_upload(server), data={"labels": "cat"})
    assert first.status_code == 400 and "two labels" in first.text
    token = kept_token(first)
    assert "cat.png" in first.text and "data:image/jpeg;base64," in first.text

    fixed = client.post("/classify", data={"upload_token": token, "labels": "cat, dog, car"})
    assert fixed.status_code == 200 and 'id="classify-result"' in fixed.text
    assert re.search(r'class="bar-label" title="cat"', fixed.text)
    assert kept_token(fixed) == token

    # the same upload serves the other upload forms too, with their own options
    similar = client.post("/similar", data={"upload_token": token, "k": "2"})
    assert count_results(similar) == 2
    assert re.search(r'class="tile-name" title="chelsea.png"', similar.text)

    # a new file replaces the kept one
    coffee = {"file": ("coffee.png", png_bytes(server.root / "coffee.png"), "image/png")}
    replaced = client.post("/similar", files=coffee, data={"upload_token": token, "k": "1"})
    assert re.search(r'class="tile-name" title="coffee.png"', replaced.text)
    assert kept_token(replaced) != token


@pytest.mark.parametrize("data, word", [
    ({"labels": "cat, dog"}, "No image was uploaded"),
    ({"labels": "cat, dog", "upload_token": "A" * 24}, "no longer kept"),
    ({"labels": "cat, dog", "upload_token": "../../etc/passwd"}, "no longer kept"),
])
def test_upload_pages_without_an_upload_say_so(client, data, word):
    page = client.post("/classify", data=data)
    assert page.status_code == 400 and word in page.text
    assert 'name="upload_token"' not in page.text


# -- readable HTML error pages; JSON for /api ------------------------------------------------
def page_error(response) -> str:
    """The message of an HTML error page, unescaped, after checking it is a page for people."""
    assert response.headers["content-type"].startswith("text/html"), response.text
    assert "<h1" in response.text
    match = re.search(r'role="alert"[^>]*>(.*?)</div>', response.text, re.DOTALL)
    assert match, response.text
    message = html.unescape(match.group(1)).strip()
    for raw in ("Input should be", "Traceback", '"detail"', "{'", "loc"):
        assert raw not in message, message
    return message


@pytest.mark.parametrize("url, status, words", [
    ("/images/abc", 404, "no image 'abc'"),
    ("/images/-1", 404, "no image '-1'"),
    ("/images/999999", 404, "no image with id 999999"),
    ("/images/99999999999999999999999", 404, "no image"),
    ("/similar?id=abc", 400, "whole number"),
    ("/similar?id=999999", 404, "no image with id 999999"),
    ("/similar?id=1&k=0", 400, "between 1 and"),
    ("/search?q=a+cat&k=abc", 400, "whole number"),
    ("/no/such/page", 404, "no page at /no/such/page"),
])
def test_html_routes_answer_bad_input_with_a_readable_page(client, url, status, words):
    response = client.get(url)
    assert response.status_code == status, response.text
    assert words.lower() in page_error(response).lower()


def test_html_forms_answer_malformed_posts_with_a_readable_page(client):
    response = client.post("/classify", data={"file": "not a file", "labels": "cat, dog"})
    assert response.status_code == 422
    assert "must be an uploaded file" in page_error(response)
    response = client.delete("/search")
    assert response.status_code == 405
    assert "does not take DELETE" in page_error(response)


def test_error_messages_do_not_echo_long_input_back(client):
    long = "9" * 5000
    for url in (f"/images/{long}", f"/similar?id={long}", f"/search?q=a+cat&k={long}"):
        response = client.get(url)
        assert response.status_code in (400, 404), url
        assert len(page_error(response)) < 300, url
    for params in ({"q": "a cat", "k": long}, {"q": "a cat", "k": "x" * 5000}):
        detail = assert_clear_error(client.get("/api/search", params=params), 422, "k must be")
        assert len(detail) < 300


def test_api_routes_keep_json_errors(client):
    assert_clear_error(client.get("/api/images/abc"), 422, "image_id", "whole number")
    assert_clear_error(client.get("/api/images/999999"), 404, "no image")
    assert_clear_error(client.get("/api/search", params={"q": "a cat", "k": 0}), 422,
                       "k must be at least 1")


# -- pages and docs -------------------------------------------------------------------------
def test_pages_render_with_the_status_line(client, server):
    for url in ("/", "/search", "/similar", "/caption", "/classify"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "images indexed" in page.text and server.model in page.text


def test_search_page_shows_results_and_escapes_the_query(client):
    page = client.get("/search", params={"q": "a cat <script>alert(1)</script>", "k": "3"})
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert page.text.count('class="tile"') == 3


@pytest.mark.parametrize("params, word", [
    ({"q": "", "k": "5"}, "empty"),
    ({"q": "a cat", "k": "5000"}, "between 1 and"),
    ({"q": "a cat", "k": "many"}, "whole number"),
])
def test_search_page_shows_bad_input_as_a_message(client, params, word):
    page = client.get("/search", params=params)
    assert page.status_code == 400
    assert 'role="alert"' in page.text and word in page.text


def test_unknown_pages_are_a_friendly_404(client):
    page = client.get("/no/such/page")
    assert page.status_code == 404 and "There is no page at /no/such/page" in page.text
    assert client.get("/images/424242").status_code == 404


def test_openapi_docs_are_served_offline(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/similar", "/api/caption", "/api/classify", "/api/rank",
                 "/api/status", "/api/images/{image_id}/thumbnail"):
        assert path in schema["paths"], path
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "cdn." not in docs.text and "https://" not in docs.text.split("<body")[0]


def test_openapi_documents_every_api_response(client):
    """Every /api operation names its 200 answer (a JSON model, or an image for the files)
    and the error model for its 4xx and 503; and what the server answers is that model."""
    schema = client.get("/openapi.json").json()
    models = schema["components"]["schemas"]
    operations = [(path, method, op) for path, ops in schema["paths"].items()
                  if path.startswith("/api/") for method, op in ops.items()]
    assert len(operations) >= 10
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        (media, content), = op["responses"]["200"]["content"].items()
        if media == "application/json":
            name = content["schema"]["$ref"].rsplit("/", 1)[-1]
            assert models[name]["properties"], where
        else:
            assert media.startswith("image/") and content["schema"]["format"] == "binary", where
        for status in ("400", "404", "413", "422", "503"):
            error = op["responses"][status]["content"]["application/json"]["schema"]
            assert error["$ref"].endswith("/ErrorResponse"), (where, status)
    assert "HTTPValidationError" not in models  # the 422 is the readable ErrorResponse

    def model_of(path: str, method: str = "get") -> dict:
        ref = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        return models[ref["schema"]["$ref"].rsplit("/", 1)[-1]]

    body = client.get("/api/search", params={"q": "a cat", "k": 2}).json()
    assert set(body) == set(model_of("/api/search")["properties"])
    assert set(body["results"][0]) == set(models["ImageResult"]["properties"])
    by_id = client.get("/api/similar", params={"id": body["results"][0]["id"], "k": 1}).json()
    assert set(by_id) == {"id", "k", "results"} < set(model_of("/api/similar")["properties"])
    error = client.get("/api/search", params={"q": "a cat", "k": 0}).json()
    assert set(error) == set(models["ErrorResponse"]["properties"])
    status = client.get("/api/status").json()
    assert set(model_of("/api/status")["required"]) <= set(status)


# -- the command ----------------------------------------------------------------------------
@pytest.mark.slow
def test_imagetext_serve_demo_indexes_the_demo_photos_and_suggests_searches(tmp_path):
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    from urllib.parse import parse_qs, urlparse

    from imagetext.demo import EXAMPLE_QUERIES, demo_photos

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "IMAGETEXT_CACHE": str(tmp_path / "cache")}
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imagetext.cli", "serve", "--demo",
                                 "--port", str(port)], env=env, stdout=err, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 150
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                status = httpx.get(url + "/api/status", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.5)
        gallery = tmp_path / "cache" / "demo-gallery"
        n_photos = len(demo_photos())
        assert status["root"] == str(gallery)
        assert status["n_images"] == n_photos
        assert (gallery / "CREDITS.md").is_file()
        assert f"{n_photos} added" in log.read_text()
        # the search page suggests the example searches as links, and the first finds its photo
        links = re.findall(r'<a href="(/search\?q=[^"]+)">', httpx.get(url + "/").text)
        suggested = [parse_qs(urlparse(link).query)["q"][0] for link in links]
        assert suggested == [query for query, _ in EXAMPLE_QUERIES]
        query, expected = EXAMPLE_QUERIES[0]
        top = httpx.get(url + "/api/search", params={"q": query, "k": 1}).json()["results"][0]
        assert top["relative_path"] == expected
    finally:
        proc.terminate()
        proc.wait(timeout=20)
