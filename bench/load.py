"""The web server under load: 8 clients for 60 s, with and without a concurrent writer, then
server memory around 1,000 fuzzed uploads. Only 127.0.0.1.

A real uvicorn (in a process of its own, as `tests/robustness/http_server.py` starts it)
serves a real indexed gallery: Flickr8k val photos (../shared/data/flickr8k), else the demo
gallery. Each client loops over a mix of requests: text search (40%), similar by id (25%), a
thumbnail (25%) and a classify upload of a real photo (10%). Phase 1 runs with nothing
else; phase 2 while a writer indexes new photos into the same collection (a subprocess
running `imagetext index` on photos copied in during the run, batch after batch for the
whole phase). Then 1,000 fuzzed uploads (the robustness tests' payloads: real images in 12
formats, truncated files, bombs by header and real, non-images, oversized bodies) go to the
upload routes, and the server's resident memory is compared before and after.

    python bench/load.py [--clients 8] [--duration 60] [--uploads 1000] [--base 300] [--json]

Targets (issue 18, 2-core machine): 0 errors; p95 with the writer <= 3x p95 without it;
server RSS after the fuzzed uploads within 300 MB of before. The CPU is shared: the
writer's model work slows the server's too, which no locking can remove.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FLICKR = REPO.parent / "shared" / "data" / "flickr8k"
IMAGETEXT = [sys.executable, "-m", "imagetext.cli"]
QUERIES = ["two dogs play in the snow", "a child on a swing", "a man riding a bike",
           "people on a beach", "a girl in a pink dress", "a black dog runs through grass",
           "a boat on the water", "a crowd at a concert", "a skier", "a red car"]
MIX = [("search", 40), ("similar", 25), ("thumbnail", 25), ("classify", 10)]
MAX_DURATION = 600  # seconds per phase, whatever is asked
MAX_UPLOADS = 5000


def val_photos() -> list[Path]:
    """Flickr8k val photos in the captions file's order; the demo gallery's where absent."""
    captions = FLICKR / "captions.tsv"
    if captions.is_file():
        names: dict[str, None] = {}
        with open(captions, encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if row["split"] == "val":
                    names[row["image"]] = None
        return [FLICKR / "images" / name for name in names]
    from imagetext.demo import prepare_demo_gallery

    return sorted(prepare_demo_gallery().glob("*.jpg"))


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"n": len(ms), "p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1),
            "p99_ms": round(q[98], 1), "max_ms": round(ms[-1], 1)}


class Writer:
    """Copies photos into the collection and runs `imagetext index` on it, batch after
    batch, until stopped (or out of photos)."""

    def __init__(self, root: Path, photos: list[Path], batch: int):
        self.root, self.photos, self.batch = root, list(photos), batch
        self.stop = threading.Event()
        self.added = self.runs = self.failures = 0
        self.busy_s = 0.0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and self.photos:
            batch, self.photos = self.photos[:self.batch], self.photos[self.batch:]
            for photo in batch:
                shutil.copy(photo, self.root / photo.name)
            started = time.monotonic()
            proc = subprocess.run([*IMAGETEXT, "index", str(self.root), "-q"], check=False,
                                  capture_output=True, text=True, errors="replace")
            self.busy_s += time.monotonic() - started
            self.runs += 1
            if proc.returncode == 0:
                self.added += len(batch)
            else:
                self.failures += 1
                self.errors.append(proc.stderr.strip()[-500:])


def run_phase(url: str, clients: int, duration: float, ids: list[int], photo: bytes,
              seed: int) -> dict:
    """`clients` threads, each looping over the request mix until `duration` is over."""
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        kinds = [kind for kind, weight in MIX for _ in range(weight)]
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline:
                kind = rng.choice(kinds)
                started = time.perf_counter()
                try:
                    if kind == "search":
                        r = c.get("/api/search", params={"q": rng.choice(QUERIES), "k": 12})
                    elif kind == "similar":
                        r = c.get("/api/similar", params={"id": rng.choice(ids), "k": 12})
                    elif kind == "thumbnail":
                        r = c.get(f"/api/images/{rng.choice(ids)}/thumbnail", params={"size": 256})
                    else:
                        r = c.post("/api/classify", data={"labels": "dog, cat, person, car, water"},
                                   files={"file": ("photo.jpg", photo, "image/jpeg")})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status, r = 0, None
                    with lock:
                        errors.append(f"{kind}: {exc!r}")
                ms = (time.perf_counter() - started) * 1000
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies[kind].append(ms)
                        latencies["all"].append(ms)
                    elif len(errors) < 20:
                        errors.append(f"{kind}: {status} {r.text[:200] if r is not None else ''}")

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    n = sum(statuses.values())
    return {"requests": n, "requests_per_s": round(n / elapsed, 1), "seconds": round(elapsed, 1),
            "errors": n - statuses.get(200, 0), "statuses": {str(k): v for k, v in statuses.items()},
            "latency": percentiles(latencies["all"]),
            "by_kind": {kind: percentiles(latencies[kind]) for kind, _ in MIX},
            "error_samples": errors[:5]}


def fuzzed_uploads(url: str, n: int, payloads: dict[str, bytes], seed: int) -> Counter:
    """`n` uploads of random payloads to random upload routes, one at a time."""
    rng = random.Random(seed)
    names = sorted(payloads)
    statuses: Counter = Counter()
    with httpx.Client(base_url=url, timeout=120) as c:
        for _ in range(n):
            route = rng.choice(["/api/similar", "/api/classify", "/api/caption", "/api/rank",
                                "/similar", "/classify"])
            if route == "/api/rank":
                files = [("files", (f"{i}.png", payloads[rng.choice(names)], "image/png"))
                         for i in range(rng.randint(1, 16))]
                data = {"prompt": "a dog"}
            else:
                files = {"file": ("upload.png", payloads[rng.choice(names)], "image/png")}
                data = {"labels": "dog, cat"} if "classify" in route else {}
            try:
                statuses[c.post(route, files=files, data=data).status_code] += 1
            except httpx.HTTPError:
                statuses[0] += 1
    return statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60, help="seconds per phase (default 60)")
    ap.add_argument("--uploads", type=int, default=1000, help="fuzzed uploads at the end")
    ap.add_argument("--base", type=int, default=300, help="photos indexed before the load")
    ap.add_argument("--writer-batch", type=int, default=40,
                    help="photos the writer copies in and indexes per `imagetext index` run")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    duration = min(args.duration, MAX_DURATION)
    clients = max(1, min(args.clients, 64))
    uploads = max(0, min(args.uploads, MAX_UPLOADS))

    from tests.robustness.http_server import start_server_process
    from tests.robustness.test_http_fuzz import make_payloads

    photos = val_photos()
    base = photos[:args.base]
    extra = photos[args.base:]
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="imagetext-load-") as tmp:
        root = Path(tmp) / "gallery"
        root.mkdir()
        for photo in base:
            shutil.copy(photo, root / photo.name)
        say(f"indexing {len(base)} photos ...")
        subprocess.run([*IMAGETEXT, "index", str(root), "-q"], check=True, capture_output=True)
        with start_server_process(root, log_dir=Path(tmp) / "log") as server:
            url = server.url
            assert url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=url, timeout=120) as c:
                ids = [r["id"] for r in c.get("/api/search", params={"q": "a photo", "k": 200})
                       .json()["results"]]
                photo = base[0].read_bytes()
                say("warming up: thumbnails of the indexed photos, each request kind ...")
                for image_id in ids:
                    c.get(f"/api/images/{image_id}/thumbnail", params={"size": 256})
            run_phase(url, clients, min(5.0, duration), ids, photo, args.seed - 1)
            rss_start = server.rss()

            say(f"phase 1: {clients} clients for {duration:g} s, nothing else running ...")
            alone = run_phase(url, clients, duration, ids, photo, args.seed)
            rss_alone = server.rss()

            say(f"phase 2: {clients} clients for {duration:g} s while `imagetext index` adds "
                f"photos in batches of {args.writer_batch} ...")
            writer = Writer(root, extra, args.writer_batch)
            writer.thread.start()
            during = run_phase(url, clients, duration, ids, photo, args.seed + 1)
            writer.stop.set()
            writer.thread.join()
            rss_during = server.rss()

            say(f"{uploads} fuzzed uploads ...")
            payloads = _payloads(make_payloads, base[0])
            time.sleep(1.5)
            rss_before_uploads = server.rss()
            server.reset_peak()
            started = time.monotonic()
            upload_statuses = fuzzed_uploads(url, uploads, payloads, args.seed)
            upload_seconds = time.monotonic() - started
            time.sleep(1.5)  # the heap is trimmed on a thread after the last heavy request
            rss_after_uploads = server.rss()
            peak_uploads = server.peak_rss()
            alive = server.alive()
            log = server.log()
            server_log_tracebacks = log.count("Traceback")
            first_error = ""
            if server_log_tracebacks:
                start = log.index("Traceback")
                end = log.find("\nERROR", start + 1)
                first_error = log[start:end if end > 0 else start + 6000][-3000:]

    ratio = (during["latency"]["p95_ms"] / alone["latency"]["p95_ms"]
             if alone["latency"].get("p95_ms") else None)
    mb = 2**20
    result = {
        "clients": clients, "duration_s": duration, "indexed_photos": len(base),
        "without_writer": alone, "with_writer": during,
        "writer": {"photos_added": writer.added, "index_runs": writer.runs,
                   "failures": writer.failures, "busy_s": round(writer.busy_s, 1),
                   "errors": writer.errors[:3]},
        "p95_ratio": round(ratio, 2) if ratio else None,
        "rss_mb": {"after_warmup": rss_start // mb, "after_phase_1": rss_alone // mb,
                   "after_phase_2": rss_during // mb,
                   "before_uploads": rss_before_uploads // mb,
                   "after_uploads": rss_after_uploads // mb, "peak_during_uploads": peak_uploads // mb},
        "uploads": {"n": uploads, "seconds": round(upload_seconds, 1),
                    "statuses": {str(k): v for k, v in sorted(upload_statuses.items())}},
        "server_alive": alive, "server_log_tracebacks": server_log_tracebacks,
        "server_log_first_error": first_error,
    }
    result["rss_growth_after_uploads_mb"] = (rss_after_uploads - rss_before_uploads) // mb
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{clients} clients x {duration:g} s on 127.0.0.1, {len(base)} photos indexed "
          f"(mix: {', '.join(f'{k} {w}%' for k, w in MIX)})")
    for name, phase in (("without a writer", alone), ("with a writer", during)):
        lat = phase["latency"]
        print(f"  {name:17s} p50 {lat.get('p50_ms')} ms  p95 {lat.get('p95_ms')} ms  "
              f"p99 {lat.get('p99_ms')} ms  {phase['requests_per_s']} req/s  "
              f"{phase['errors']} errors of {phase['requests']}")
    w = result["writer"]
    print(f"  the writer added {w['photos_added']} photos in {w['index_runs']} runs "
          f"({w['busy_s']} s busy, {w['failures']} failed)")
    print(f"  p95 ratio: {result['p95_ratio']}x (target <= 3x)")
    r = result["rss_mb"]
    print(f"  server RSS: {r['before_uploads']} MB before {uploads} fuzzed uploads, "
          f"{r['after_uploads']} MB after ({result['rss_growth_after_uploads_mb']:+d} MB; "
          f"target within 300), peak {r['peak_during_uploads']} MB; "
          f"statuses {result['uploads']['statuses']}")
    if first_error:
        print(f"  the server logged {server_log_tracebacks} tracebacks; the first:\n{first_error}")


def _payloads(make_payloads, photo: Path) -> dict[str, bytes]:
    """The robustness tests' upload payloads, made from one real photo."""
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        Image.open(photo).convert("RGB").save(Path(tmp) / "chelsea.png")
        return make_payloads(type("Gallery", (), {"root": Path(tmp)})())


if __name__ == "__main__":
    main()
