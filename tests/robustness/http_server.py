"""The web app under a real uvicorn in a process of its own on 127.0.0.1, so that its memory
(VmRSS, VmHWM in /proc/<pid>/status) is the server's alone: used by the HTTP robustness tests
and by bench/load.py.

The listening socket is bound here (port 0, so no two runs race for a port) and handed to the
child by file descriptor; the child builds the app with `create_app` and runs uvicorn on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, logging, socket, sys
import uvicorn
from imagetext.web import create_app

fd, options = int(sys.argv[1]), json.loads(sys.argv[2])
root = options.pop("root")
logging.basicConfig(level=logging.WARNING)
app = create_app(root, **options)
sock = socket.socket(fileno=fd)
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                       timeout_graceful_shutdown=5))
server.run(sockets=[sock])
"""


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _status(self, key: str) -> int:
        """A `kB` field of /proc/<pid>/status, in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self) -> int:
        """Resident memory of the server process now (VmRSS), in bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """Highest resident memory since start or the last reset_peak() (VmHWM), in bytes."""
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: '5' to clear_refs); False where not allowed."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server_process(root: str | os.PathLike, log_dir: str | os.PathLike | None = None,
                         timeout: float = 180, env: dict | None = None,
                         **options) -> ServerProcess:
    """Serve the (already indexed) collection at `root` from a child process; `options` go to
    create_app (JSON-able values: max_upload_mb=4, captioner=None, ...)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="imagetext-server-log-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - the ServerProcess closes it on stop()
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(sock.fileno()), json.dumps({"root": str(root), **options})],
        pass_fds=[sock.fileno()], stdout=log, stderr=subprocess.STDOUT, env=child_env,
        cwd=str(REPO))
    sock.close()  # the child has its own copy
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{server.log()[-4000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n"
                               f"{server.log()[-4000:]}")
        time.sleep(0.1)


# -- a gallery to serve: real photos, odd names, and things that must never be served ------
@dataclass
class Gallery:
    root: Path  # the collection folder (indexed)
    secret: str  # a token written only in files outside the collection
    outside_files: list[Path]  # files next to the collection that must never be served
    collection_bytes: set[bytes] = field(default_factory=set)  # sha256 of every file inside


def _jpeg_with_comment(img, comment: bytes) -> bytes:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80, comment=comment)
    return buffer.getvalue()


def build_gallery(workdir: Path, n_flickr: int = 6) -> Gallery:
    """`workdir/gallery`: scikit-image sample photos, a few Flickr8k photos in a subfolder
    (when present), photos under non-UTF-8, unicode and shell-hostile names, a text file, a
    link inside; and traps: links to a secret photo and to a secret text next to the folder,
    to /etc/passwd and /dev/zero, a named pipe. Indexed with `imagetext index`."""
    import hashlib
    import secrets
    import shutil

    from PIL import Image

    from tests.conftest import FLICKR8K, flickr_images, skimage_photo

    root = workdir / "gallery"
    (root / "sub").mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                 "motorcycle_left.png", "camera.png"):
        shutil.copy(skimage_photo(name), root / name)
    if (FLICKR8K / "captions.tsv").is_file():
        for path in flickr_images(n_flickr):
            shutil.copy(path, root / "sub" / path.name)
    cat = Image.open(root / "chelsea.png").convert("RGB")
    for name in (b"caf\xe9-latin1.jpg", "ünïcödé 猫 🐈.jpg".encode(), b"new\nline.jpg",
                 b"quotes \"'` <b>&amp;.jpg"):
        fd = os.open(os.path.join(os.fsencode(root), name), os.O_WRONLY | os.O_CREAT, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(_jpeg_with_comment(cat.rotate(len(name)), b"in the collection"))
    (root / "notes.txt").write_text("not an image; the indexer skips it\n")
    os.symlink("coffee.png", root / "link-inside.png")

    token = "SECRET-" + secrets.token_hex(12)
    secret_jpg = workdir / "secret.jpg"
    secret_jpg.write_bytes(_jpeg_with_comment(cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                              token.encode()))
    secret_txt = workdir / "secret.txt"
    secret_txt.write_text(token + "\n")
    os.symlink("../secret.jpg", root / "leak.jpg")
    os.symlink(secret_jpg, root / "leak-absolute.png")
    os.symlink("../secret.txt", root / "leak-text.jpg")
    os.symlink("/etc/passwd", root / "passwd.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    os.mkfifo(root / "pipe.jpg")

    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "index", str(root), "-q"],
                          check=False, capture_output=True, text=True, errors="replace",
                          timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"imagetext index failed:\n{proc.stdout}\n{proc.stderr}")
    gallery = Gallery(root, token, [secret_jpg, secret_txt])
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if d != b".imagetext"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if os.path.isfile(real) and real.startswith(os.fsencode(root) + b"/"):
                with open(real, "rb") as f:
                    gallery.collection_bytes.add(hashlib.sha256(f.read()).digest())
    return gallery
