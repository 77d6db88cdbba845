"""A real uvicorn serving the web app on 127.0.0.1, shared by the web tests of one run.

The gallery is 18 of scikit-image's sample photos (a cat, a cup of coffee, an astronaut, a
rocket, a motorcycle, galaxies, textures and microscope images: no horse, no dog) plus 12
Flickr8k val photos in a subfolder, indexed with the default model. It is built here rather
than taken from the demo gallery so that the tests' expectations (and the searches that
should find nothing good) do not change when the demo gallery does. One server per test process: the model
loads once and both test files (API and browser) talk to the same server.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
MAX_UPLOAD_MB = 4.0
N_FLICKR = 12
SAMPLE_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
                 "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
                 "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "page.png",
                 "retina.jpg", "rocket.jpg", "text.png"]


@dataclass
class WebServer:
    url: str
    root: Path
    outside: Path  # a real photo outside the collection folder
    n_images: int
    model: str  # name of the model that built the index (the default model)
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


_SERVER: WebServer | None = None


def start_server(app) -> tuple[object, threading.Thread, str]:
    """Run `app` under uvicorn in a thread on a free port (the socket is bound first: no race)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def shared_server() -> WebServer:
    global _SERVER
    if _SERVER is not None:
        return _SERVER
    from imagetext.api import Collection
    from imagetext.web import create_app
    from tests.conftest import flickr_images, skimage_photo

    workdir = Path(tempfile.mkdtemp(prefix="imagetext-web-test-"))
    root = workdir / "gallery"
    (root / "flickr").mkdir(parents=True)
    for name in SAMPLE_PHOTOS:
        shutil.copy(skimage_photo(name), root / name)
    for path in flickr_images(N_FLICKR):
        shutil.copy(path, root / "flickr" / path.name)
    (root / "notes.txt").write_text("not an image; the indexer skips it\n")
    outside = workdir / "outside.png"
    shutil.copy(root / "coffee.png", outside)
    with Collection.open(root) as col:
        report = col.index()
        n_images = len(col)
        model = col.status()["model"]
    assert not report.failed, report.failed

    app = create_app(root, max_upload_mb=MAX_UPLOAD_MB)
    server, thread, url = start_server(app)
    _SERVER = WebServer(url, root, outside, n_images, model, app, server, thread)

    def cleanup() -> None:
        _SERVER.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(cleanup)
    return _SERVER
