"""Over a thousand fuzzed HTTP requests against a real uvicorn on 127.0.0.1 (its own process),
generated with hypothesis over every route: the API's routes and parameters read from the
server's OpenAPI schema, the pages added by hand. Query strings and path parameters with odd
bytes, NUL bytes, `../` and huge numbers; multipart bodies with broken, huge and bomb images,
odd file names and wrong content types; raw request targets; chunked bodies over the limit.

Every response: no 5xx, no traceback text, nothing from outside the collection (a secret
token lives only in files next to it, some reachable by symbolic links from inside), and any
file served is byte for byte a file of the collection. The server log has no traceback. The
counts of requests by status class go to test-artifacts/robustness/http_fuzz.json.

IMAGETEXT_FUZZ_RANDOM=1 draws new examples each run (by default the run is reproducible).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.robustness.helpers import ARTIFACTS
from tests.robustness.http_server import build_gallery, start_server_process

MAX_UPLOAD_MB = 2.0
N_REQUESTS = 1100  # fuzzed requests (hypothesis examples), on top of the fixed ones
RSS_GROWTH_LIMIT = 300 * 2**20


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return build_gallery(tmp_path_factory.mktemp("http-fuzz"))


@pytest.fixture(scope="module")
def server(gallery, tmp_path_factory):
    with start_server_process(gallery.root, log_dir=tmp_path_factory.mktemp("http-fuzz-log"),
                              max_upload_mb=MAX_UPLOAD_MB) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


# -- payloads: real images, broken ones, bombs ------------------------------------------------
def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_size(width: int, height: int, real: bool = True) -> bytes:
    """A PNG of width x height: `real` a whole valid image of one grey (compressed row by row,
    so making it costs no memory: 13000x13000 is ~0.5 MB), else only a header that claims it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    if real:
        squash = zlib.compressobj(9)
        row = b"\0" + b"\x80" * width
        idat = b"".join(squash.compress(row) for _ in range(height)) + squash.flush()
    else:
        idat = zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header is patched to claim width x height."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no frame header")


def make_payloads(gallery) -> dict[str, bytes]:
    import numpy as np

    cat = Image.open(gallery.root / "chelsea.png").convert("RGB")
    small = cat.resize((96, 64))
    jpeg = _encoded(small, "JPEG")
    png = _encoded(small, "PNG")
    payloads = {
        "jpeg": jpeg, "png": png, "gif": _encoded(small, "GIF"), "webp": _encoded(small, "WEBP"),
        "bmp": _encoded(small, "BMP"), "tiff": _encoded(small, "TIFF"), "ppm": _encoded(small, "PPM"),
        "rgba png": _encoded(small.convert("RGBA"), "PNG"),
        "16-bit png": _encoded(Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257), "PNG"),
        "cmyk jpeg": _encoded(small.convert("CMYK"), "JPEG"),
        "1x1 png": _encoded(Image.new("RGB", (1, 1)), "PNG"),
        "progressive jpeg": _encoded(small, "JPEG", progressive=True),
        "animated gif": _encoded(small, "GIF", save_all=True,
                                 append_images=[small.rotate(90)] * 30, duration=10),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated png": png[: len(png) // 2],
        "corrupt png": png[:60] + bytes(64) + png[124:],
        "13000x13000 png": png_of_size(13000, 13000),
        "png header 20000x20000": png_of_size(20000, 20000, real=False),
        "png header 1x100000000": png_of_size(1, 100_000_000, real=False),
        "png header 0x0": png_of_size(0, 0, real=False),
        "jpeg header 65000x65000": jpeg_claiming(jpeg, 65000, 65000),
        "jpeg header 12000x12000": jpeg_claiming(jpeg, 12000, 12000),
        "progressive jpeg header 9000x9000": jpeg_claiming(
            _encoded(small, "JPEG", progressive=True), 9000, 9000),
        "gif header 65535x65535": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0\0\0;",
        "bmp header huge": (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                            + struct.pack("<IiiHHIIiiII", 40, 40000, -40000, 1, 24, 0, 0, 0, 0, 0, 0)),
        "empty": b"",
        "text": b"hello, I am text",
        "html": b"<!doctype html><script>alert(1)</script>",
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
        "zip": b"PK\x03\x04" + bytes(100),
        "nul bytes": bytes(1000),
        "random": os.urandom(3000),
        "over the limit": b"\x89PNG\r\n\x1a\n" + bytes(int((MAX_UPLOAD_MB + 0.5) * 1e6)),
    }
    return payloads


# -- the routes --------------------------------------------------------------------------------
@dataclass
class Route:
    method: str
    path: str  # with {image_id} for a path parameter
    query: list[str] = field(default_factory=list)
    form: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    many_files: list[str] = field(default_factory=list)


PAGES = [
    Route("GET", "/"), Route("GET", "/search", ["q", "k"]), Route("GET", "/similar", ["id", "k"]),
    Route("POST", "/similar", ["k"], ["upload_token", "k"], ["file"]),
    Route("GET", "/caption"),
    Route("POST", "/caption", [], ["upload_token", "beam_size", "num_return"], ["file"]),
    Route("GET", "/classify"),
    Route("POST", "/classify", [], ["upload_token", "labels", "preset", "threshold", "template"],
          ["file"]),
    Route("GET", "/images/{image_id}"), Route("GET", "/healthz"), Route("GET", "/favicon.ico"),
    Route("GET", "/docs"), Route("GET", "/openapi.json"), Route("GET", "/static/{image_id}"),
]


def api_routes(schema: dict) -> list[Route]:
    """Every operation of the OpenAPI schema, with its query parameters and form fields."""
    components = schema.get("components", {}).get("schemas", {})
    routes = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            route = Route(method.upper(), path)
            route.query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if body:
                ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
                for name, prop in components[ref]["properties"].items():
                    if prop.get("contentMediaType") or prop.get("format") == "binary":
                        route.files.append(name)
                    elif prop.get("type") == "array":
                        route.many_files.append(name)
                    else:
                        route.form.append(name)
            routes.append(route)
    return routes


# -- strategies ------------------------------------------------------------------------------
TRAPS = ["../secret.txt", "../secret.jpg", "leak.jpg", "leak-absolute.png", "leak-text.jpg",
         "passwd.jpg", "zero.jpg", "pipe.jpg", "/etc/passwd", "../../../../etc/passwd",
         "sub/../../secret.jpg", "a\x00.jpg", "\x00", "coffee.png\x00.txt", "~/.bashrc",
         "~nosuchuser/x.jpg", "//etc//passwd", "..", ".", "/", "", " ", ".imagetext/index.sqlite",
         "notes.txt", "coffee.png", "link-inside.png", "sub", "a" * 300, "a/" * 3000,
         "%2e%2e%2fsecret.jpg", "..\\secret.jpg", "caf\udce9-latin1.jpg", "ünïcödé 猫 🐈.jpg",
         "new\nline.jpg", "chelsea.png/../../secret.txt", "\u202e.jpg", "\ufeff", "\ud800"]
NUMBERS = ["0", "1", "-1", "2", "12", "200", "201", "256", "1024", "4096", "1e9", "0x10",
           "9" * 30, "-" + "9" * 30, "1.5", "nan", "inf", "-inf", "+5", " 5 ", "٣", "5\x00",
           str(2**62), str(2**63), str(2**64)]

odd_text = st.one_of(
    st.sampled_from(TRAPS),
    st.sampled_from(NUMBERS),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["cat, dog", "cat\ndog\nbird", "moderation", "a photo of a {}.", "{}{}",
                     "{", "{0.__class__}", "{}" * 600, "x" * 5000, "cat, " * 200]),
)


def path_param() -> st.SearchStrategy[str]:
    """A path segment as sent: numbers, and text percent-quoted (so `/`, NUL and `..` arrive)."""
    return st.one_of(st.sampled_from(NUMBERS), st.integers(min_value=-(2**70), max_value=2**70)
                     .map(str), odd_text.map(lambda t: quote(t, safe="", errors="surrogatepass")),
                     odd_text.map(lambda t: quote(t, safe="/.", errors="surrogatepass")))


@dataclass
class Fuzzed:
    method: str
    url: str
    params: list[tuple[str, str]] = field(default_factory=list)
    data: dict | None = None
    files: list | None = None
    content: bytes | None = None
    headers: dict = field(default_factory=dict)
    target: bytes | None = None  # a raw request target, sent as is
    chunked_mb: int = 0  # a chunked body of this many MB (over the limit)

    def describe(self) -> str:
        return (f"{self.method} {self.target or self.url} params={self.params!r:.200} "
                f"data={self.data!r:.200} files={[f[1][0] for f in self.files or []]!r:.200}")


@st.composite
def fuzzed_request(draw, routes: list[Route], payloads: dict[str, bytes]) -> Fuzzed:
    kind = draw(st.sampled_from(["route"] * 8 + ["raw target", "wrong method", "body kinds",
                                                 "chunked"]))
    route = draw(st.sampled_from(routes))
    url = route.path
    if "{image_id}" in url:
        url = url.replace("{image_id}", draw(path_param()))
    if kind == "raw target":
        raw = draw(st.one_of(
            st.binary(min_size=1, max_size=80).map(lambda b: b"/" + b),
            st.sampled_from([b"/api/images/../../secret.txt", b"/static/../../secret.txt",
                             b"/api/images/1/../../../secret.jpg", b"/%2e%2e/%2e%2e/secret.txt",
                             b"/static/%2e%2e/%2e%2e/%2e%2e/secret.txt", b"//etc/passwd",
                             b"/api/similar?path=../secret.jpg", b"/images/1%00",
                             b"/api/images/1/file%00", b"*", b"http://127.0.0.1/api/status",
                             b"/api/search?q=%ff%fe%00&k=%00"])))
        return Fuzzed(draw(st.sampled_from(["GET", "POST", "HEAD"])), "/", target=raw)
    method = route.method
    if kind == "wrong method":
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    names = route.query + draw(st.lists(st.sampled_from(["q", "k", "id", "path", "size", "x",
                                                         "file", "prompt"]), max_size=2))
    params = [(name, draw(odd_text)) for name in draw(st.lists(st.sampled_from(names), max_size=4))
              ] if names else []
    request = Fuzzed(method, url, params)
    if method not in ("POST", "PUT", "PATCH"):
        return request
    if kind == "chunked":
        request.chunked_mb = draw(st.integers(min_value=3, max_value=8))
        request.headers["content-type"] = "multipart/form-data; boundary=fuzz"
        return request
    if kind == "body kinds":
        request.content = draw(st.sampled_from(list(payloads.values())) | st.binary(max_size=500))
        request.headers["content-type"] = draw(st.sampled_from([
            "application/json", "application/x-www-form-urlencoded", "text/plain", "image/png",
            "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
            "multipart/mixed; boundary=x", "application/octet-stream", "", "\u00ff/\u00ff"]))
        return request
    form_names = route.form + draw(st.lists(st.sampled_from(["k", "labels", "prompt", "x"]),
                                            max_size=2))
    request.data = {name: draw(odd_text) for name in
                    draw(st.lists(st.sampled_from(form_names), max_size=4))} if form_names else {}
    file_fields = route.files + route.many_files
    files = []
    if file_fields and draw(st.integers(min_value=0, max_value=5)):  # mostly with files
        for _ in range(draw(st.integers(min_value=1, max_value=3 if route.files else 20))):
            name = draw(st.sampled_from(file_fields + ["other"]))
            payload = draw(st.sampled_from(sorted(payloads)))
            filename = draw(st.one_of(st.just(payload + ".png"), st.sampled_from(TRAPS),
                                      st.text(max_size=30)))
            mime = draw(st.sampled_from(["image/png", "image/jpeg", "text/plain",
                                         "application/octet-stream", "x/y"]))
            files.append((name, (filename, payloads[payload], mime)))
    request.files = files or None
    return request


# -- sending and checking ----------------------------------------------------------------------
def send(client: httpx.Client, server, request: Fuzzed) -> tuple[int, bytes, dict]:
    if request.target is not None:
        return send_raw(server, request.method.encode(), request.target)
    if request.chunked_mb:
        def body():
            yield b"--fuzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(request.chunked_mb):
                yield bytes(2**20)
            yield b"\r\n--fuzz--\r\n"
        content = body()
    else:
        content = request.content
    try:
        response = client.request(request.method, request.url, params=request.params or None,
                                  data=request.data or None, files=request.files,
                                  content=content, headers=request.headers)
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError) as exc:
        if request.chunked_mb:  # the server answered 413 and stopped reading: fine
            return 413, b"", {}
        raise AssertionError(f"{request.describe()}: {exc!r}") from exc
    except (UnicodeEncodeError, httpx.InvalidURL, httpx.LocalProtocolError):
        return 0, b"", {}  # the client cannot even send it (a header that is not latin-1)
    return response.status_code, response.content, dict(response.headers)


def send_raw(server, method: bytes, target: bytes) -> tuple[int, bytes, dict]:
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: close\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2:  # closed without an answer: the request was not HTTP
        return 0, b"", {}
    return int(status_line[1]), body, {}


def check(gallery, request: Fuzzed, status: int, body: bytes, headers: dict) -> None:
    where = request.describe()
    assert status < 500, f"{where} -> {status}: {body[:500]!r}"
    assert b"Traceback" not in body and b'File "/' not in body, f"{where}: {body[:800]!r}"
    assert gallery.secret.encode() not in body, f"{where} served the secret"
    assert b"root:x:0:0" not in body, f"{where} served /etc/passwd"
    content_type = headers.get("content-type", "")
    served_file = (status == 200 and content_type.startswith("image/")
                   and "thumbnail" not in request.url and not request.url.startswith("/static"))
    if served_file:
        assert hashlib.sha256(body).digest() in gallery.collection_bytes, (
            f"{where} served a file that is not in the collection")


FIXED = [  # the cases of issue 18 and other known traps, sent every run
    Fuzzed("GET", "/api/similar", [("path", "a\x00.jpg")]),
    Fuzzed("GET", "/api/similar", [("path", "leak.jpg")]),
    Fuzzed("GET", "/api/similar", [("path", "pipe.jpg")]),
    Fuzzed("GET", "/api/similar", [("path", "zero.jpg")]),
    Fuzzed("GET", "/api/similar", [("path", "~nosuchuser/a.jpg")]),
    Fuzzed("GET", "/api/similar", [("path", "a/" * 3000)]),
    Fuzzed("GET", "/api/similar", [("path", "notes.txt")]),
    Fuzzed("GET", "/api/similar", [("path", ".imagetext/index.sqlite")]),
    Fuzzed("GET", "/api/search", [("q", "a cat"), ("k", "200")]),
    Fuzzed("GET", "/search", [("q", "a cat"), ("k", "200")]),
    Fuzzed("POST", "/api/rank", chunked_mb=20, headers={
        "content-type": "multipart/form-data; boundary=fuzz"}),
]


@pytest.mark.slow
def test_fuzzed_requests_never_fail_the_server_nor_leak(gallery, server, client):
    routes = api_routes(client.get("/openapi.json").json()) + PAGES
    assert {r.path for r in routes} >= {"/api/search", "/api/similar", "/api/rank",
                                        "/api/images/{image_id}/file"}
    payloads = make_payloads(gallery)
    stats: Counter = Counter()
    by_route: Counter = Counter()
    ids = [r["id"] for r in client.get("/api/search", params={"q": "a photo", "k": 200}).json()[
        "results"]]
    # every indexed file and thumbnail, and the odd names among them, answer without a 5xx
    for image_id in ids:
        for suffix in ("", "/file", "/thumbnail", "/thumbnail?size=1024"):
            request = Fuzzed("GET", f"/api/images/{image_id}{suffix}")
            status, body, headers = send(client, server, request)
            check(gallery, request, status, body, headers)
            stats[f"{status // 100}xx"] += 1
    for request in FIXED:
        status, body, headers = send(client, server, request)
        check(gallery, request, status, body, headers)
        stats[f"{status // 100}xx"] += 1
    assert client.get("/api/similar", params={"path": "a\x00.jpg"}).status_code == 400
    # first uses that allocate once, not leaks: the turned vectors duplicates makes (a batch
    # through the image graph: ONNX Runtime's arena) and the albums (their labels' classifier)
    assert client.get("/api/duplicates").status_code == 200
    assert client.post("/api/clusters", params={"k": 3}).status_code == 200

    rss_before = server.rss()
    uploads = Counter()

    @settings(max_examples=N_REQUESTS, deadline=None, database=None,
              derandomize=not os.environ.get("IMAGETEXT_FUZZ_RANDOM"),
              suppress_health_check=list(HealthCheck))
    @given(request=fuzzed_request(routes, payloads))
    def one(request: Fuzzed) -> None:
        status, body, headers = send(client, server, request)
        check(gallery, request, status, body, headers)
        stats[f"{status // 100}xx" if status else "not sent"] += 1
        by_route[f"{request.method} {request.url.split('?')[0][:40]}"] += 1
        if request.files:
            uploads["requests"] += 1
            uploads["files"] += len(request.files)

    started = time.monotonic()
    one()
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # the heap is trimmed on a thread after the last heavy request
    rss_after = server.rss()
    log = server.log()
    sent = sum(v for k, v in stats.items() if k != "not sent")
    figures = {"requests": sum(stats.values()), "by_status_class": dict(sorted(stats.items())),
               "uploads": dict(uploads), "fuzz_seconds": round(elapsed, 1),
               "rss_before_mb": rss_before >> 20, "rss_after_mb": rss_after >> 20,
               "routes": dict(by_route.most_common())}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "http_fuzz.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "routes"}))
    assert sent >= 1000, stats
    assert not [k for k in stats if k.startswith("5")], stats
    assert "Traceback" not in log, log[-4000:]
    assert server.alive()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, figures
