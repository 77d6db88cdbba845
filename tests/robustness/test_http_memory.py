"""What an upload may cost the server (issue 18, items 5 and 6), measured on a real uvicorn in
its own process: its resident memory (VmRSS) and peak (VmHWM, reset between cases) from
/proc/<pid>/status.

- A 0.5 MB PNG of 13000x13000 (169 megapixels, under Pillow's bomb limit) decoded to ~0.5 GB
  and cost the server +1.3 GB that it kept; 8 of them to /api/rank peaked at +6.5 GB. Now
  they are refused from their header (413) and cost nothing; large images within the pixel
  budget are decoded, and the memory goes back after the request.
- A 142 MB chunked upload was read and parsed whole before the size check; now the 413
  comes once the limit is crossed, the rest is never stored.
- More heavy requests at once than the server works on and queues get a 503 with
  Retry-After, never a 500, and the server answers again right after.
"""

from __future__ import annotations

import io
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.robustness.http_server import build_gallery, start_server_process
from tests.robustness.test_http_fuzz import _encoded, jpeg_claiming, png_of_size

MB = 2**20
MAX_UPLOAD_MB = 20.0  # the default of `imagetext serve`


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    gallery = build_gallery(tmp_path_factory.mktemp("http-memory"), n_flickr=2)
    with start_server_process(gallery.root, log_dir=tmp_path_factory.mktemp("http-memory-log"),
                              max_upload_mb=MAX_UPLOAD_MB, max_heavy_requests=2,
                              max_waiting_requests=2) as proc, \
            httpx.Client(base_url=proc.url, timeout=120) as client:
        proc.client = client
        proc.photo = (gallery.root / "chelsea.png").read_bytes()
        yield proc


def measure(server, send) -> tuple[int, int]:
    """(peak growth, growth that stays) of the server's resident memory around `send()`."""
    time.sleep(1.2)
    before = server.rss()
    if not server.reset_peak():
        pytest.skip("cannot reset the peak RSS of the server here (/proc/<pid>/clear_refs)")
    send()
    time.sleep(1.5)  # the heap is trimmed on a thread after the request
    return server.peak_rss() - before, server.rss() - before


def test_a_13000x13000_png_is_refused_before_decoding_and_costs_nothing(server):
    bomb = png_of_size(13000, 13000)
    assert len(bomb) < MB
    client = server.client
    responses = []

    def send():
        responses.append(client.post("/api/similar", files={"file": ("bomb.png", bomb, "image/png")}))
        responses.append(client.post("/api/rank", data={"prompt": "grey"},
                                     files=[("files", (f"b{i}.png", bomb, "image/png"))
                                            for i in range(8)]))
        responses.append(client.post("/api/classify", data={"labels": "a, b"}, files={
            "file": ("p.jpg", jpeg_claiming(_encoded(Image.new("RGB", (64, 64)), "JPEG",
                                                     progressive=True), 13000, 13000))}))
        responses.append(client.post("/similar", files={"file": ("bomb.png", bomb, "image/png")}))

    peak, kept = measure(server, send)
    for response in responses:
        assert response.status_code == 413, response.text
        assert "13000x13000" in response.text and "megapixels" in response.text, response.text
    assert "would" not in responses[0].text  # said of the image itself, not of the request
    print(f"13000x13000 PNG x10, progressive JPEG: peak +{peak // MB} MB, kept +{kept // MB} MB")
    assert peak < 50 * MB, f"peak +{peak // MB} MB"
    assert kept < 20 * MB, f"kept +{kept // MB} MB"


@pytest.mark.slow  # ~6 s on 2 cores
def test_large_images_within_the_budget_are_decoded_and_the_memory_goes_back(server):
    client = server.client
    photo = Image.open(io.BytesIO(server.photo)).convert("RGB")
    big_jpeg = _encoded(photo.resize((6000, 4000)), "JPEG", quality=85)  # decoded at 1/8
    big_png = png_of_size(5000, 4000)  # 20 megapixels, within the 24 of a request
    responses = []

    def send():
        for _ in range(3):
            responses.append(client.post("/api/similar", files={"file": ("big.jpg", big_jpeg)}))
            responses.append(client.post("/api/classify", data={"labels": "grey, cat"},
                                         files={"file": ("big.png", big_png)}))
        responses.append(client.post("/api/rank", data={"prompt": "a cat"}, files=[
            ("files", (f"p{i}.png", server.photo)) for i in range(16)]))
        responses.append(client.post("/api/rank", data={"prompt": "a cat"}, files=[
            ("files", ("a.png", big_png)), ("files", ("b.png", png_of_size(3000, 2000)))]))

    send()  # once to warm up: each model's first run at each batch size keeps its memory
    responses.clear()
    peak, kept = measure(server, send)
    assert [r.status_code for r in responses[:-1]] == [200] * (len(responses) - 1), [
        r.text for r in responses if r.status_code != 200]
    over = responses[-1]  # 20 + 6 megapixels in one request
    assert over.status_code == 413 and "'b.png' would take" in over.json()["detail"], over.text
    print(f"6000x4000 JPEG, 5000x4000 PNG, 16-image rank: peak +{peak // MB} MB, "
          f"kept +{kept // MB} MB")
    assert peak < 400 * MB, f"peak +{peak // MB} MB"
    assert kept < 30 * MB, f"kept +{kept // MB} MB"


def test_a_chunked_upload_over_the_limit_gets_413_as_it_arrives(server):
    """142 MB chunked (no Content-Length) to /api/rank: the 413 comes back while the body is
    still being sent, after little more than the limit, and nothing of it is kept."""
    host, port = server.url.removeprefix("http://").split(":")
    chunk = bytes(MB)
    sent = 0
    time.sleep(1.2)  # after the trim of the last test's requests
    before = server.rss()
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/rank HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=xx\r\n\r\n")
        head = (b'--xx\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n--xx\r\n'
                b'Content-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n')
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        answer = b""
        while sent < 142 * MB:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                answer = sock.recv(65536)
                break
        if not answer:
            answer = sock.recv(65536)
    elapsed = time.monotonic() - started
    status = answer.split(b"\r\n", 1)[0]
    print(f"142 MB chunked: {status.decode()} after {sent // MB} MB sent, {elapsed:.2f} s")
    assert b" 413 " in status, answer[:300]
    assert b"larger than the upload limit" in answer, answer[:500]
    assert sent <= (MAX_UPLOAD_MB + 24) * MB, f"the answer came after {sent // MB} MB"
    assert elapsed < 15
    assert server.rss() - before < 30 * MB, f"+{(server.rss() - before) // MB} MB"
    assert server.client.get("/api/status").status_code == 200


def test_more_heavy_requests_than_the_server_takes_get_503_with_retry_after(server):
    """2 run, 2 wait (this server's settings); the rest of a burst of 12 at once are told to
    come back, with Retry-After, and the server answers normally right after."""
    def classify(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            return c.post("/api/classify", data={"labels": "cat, dog, car"},
                          files={"file": (f"{i}.png", server.photo)})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(classify, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    assert statuses.count(200) >= 4 and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"].isdigit()
            assert "busy" in response.json()["detail"]
    assert classify(99).status_code == 200
