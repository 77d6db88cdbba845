"""Search latency while another process indexes the same collection, against none.

A reader process opens an indexed folder of real photos once (as the web app does) and runs
text searches back to back; each search's wall-clock time is recorded. First while
`imagetext index` adds more photos to the same collection in another process (batches of
--batch-size), then with nothing else running (the baseline, measured in the same run, for
as many queries). The ratio is p95 with the writer over p95 without it. `--cli` measures
`imagetext search` commands instead, one process per query, as a user at a shell runs them.

    python bench/search_under_writer.py [--images DIR] [--base 300] [--add 300] [--cli] [--json]

Target (issue 18, 2-core machine): p95 during indexing <= 3x p95 without it. The CPU is
shared: the writer's model work slows the reader's too, which no locking can remove.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"
IMAGETEXT = [sys.executable, "-m", "imagetext.cli"]
QUERIES = ["two dogs play in the snow", "a child on a swing", "a man riding a bike",
           "people on a beach", "a girl in a pink dress", "a black dog runs through grass"]

READER = r"""
import json, os, sys, time
from imagetext.api import Collection
col = Collection.open(sys.argv[1])
queries = json.loads(sys.argv[2])
col.search(queries[0], k=10)  # warm: model loaded, FAISS read
print("ready", flush=True)
times = []
for line in sys.stdin:  # one line per phase: the number of queries to run, or 'until' + path
    n, until = line.split()
    n = int(n)
    times = []
    i = 0
    while (n and len(times) < n) or (not n and not os.path.exists(until)):
        start = time.perf_counter()
        col.search(queries[i % len(queries)], k=10)
        times.append(time.perf_counter() - start)
        i += 1
    print(json.dumps(times), flush=True)
"""


def percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"n": len(ms), "p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1),
            "p99_ms": round(q[98], 1), "max_ms": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=FLICKR)
    ap.add_argument("--base", type=int, default=300, help="photos indexed before the measurement")
    ap.add_argument("--add", type=int, default=300, help="photos the concurrent writer indexes")
    ap.add_argument("--batch-size", type=int, default=8, help="the writer's batch size")
    ap.add_argument("--cli", action="store_true", help="one `imagetext search` process per query")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    if len(files) < args.base + args.add:
        sys.exit(f"need {args.base + args.add} photos in {args.images}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for f in files[: args.base]:
            shutil.copy(f, folder / f.name)
        subprocess.run([*IMAGETEXT, "index", str(folder), "-q"], check=True, capture_output=True)
        if args.cli:
            alone, during, writer_seconds = cli_phases(folder, files, args)
        else:
            alone, during, writer_seconds = reader_phases(folder, files, args, Path(tmp))
    result = {
        "mode": "cli" if args.cli else "in-process",
        "base_images": args.base, "added_by_writer": args.add, "writer_seconds": round(writer_seconds, 1),
        "without_writer": percentiles(alone), "with_writer": percentiles(during),
    }
    result["p95_ratio"] = round(result["with_writer"]["p95_ms"] / result["without_writer"]["p95_ms"], 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    w, a = result["with_writer"], result["without_writer"]
    print(f"{result['mode']} search latency over {w['n']} queries each, {args.base} photos indexed, "
          f"a writer adding {args.add} in {result['writer_seconds']} s (batches of {args.batch_size}):")
    print(f"  without a writer: p50 {a['p50_ms']} ms  p95 {a['p95_ms']} ms  p99 {a['p99_ms']} ms")
    print(f"  with a writer:    p50 {w['p50_ms']} ms  p95 {w['p95_ms']} ms  p99 {w['p99_ms']} ms")
    print(f"  p95 ratio: {result['p95_ratio']}x (target <= 3x)")


def writer(folder: Path, files: list[Path], args) -> subprocess.Popen:
    for f in files[args.base : args.base + args.add]:
        shutil.copy(f, folder / f.name)
    return subprocess.Popen([*IMAGETEXT, "index", str(folder), "-q", "--batch-size",
                             str(args.batch_size)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def cli_phases(folder: Path, files: list[Path], args) -> tuple[list[float], list[float], float]:
    def search(i: int) -> float:
        start = time.perf_counter()
        proc = subprocess.run([*IMAGETEXT, "search", QUERIES[i % len(QUERIES)], "-c", str(folder)], check=False,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"search failed:\n{proc.stderr}")
        return time.perf_counter() - start

    search(0)  # warm the file cache
    start = time.perf_counter()
    proc = writer(folder, files, args)
    during = []
    while proc.poll() is None:
        during.append(search(len(during)))
    writer_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the writer failed:\n{proc.stderr.read()}")
    alone = [search(i) for i in range(len(during))]
    return alone, during, writer_seconds


def reader_phases(folder: Path, files: list[Path], args, tmp: Path):
    """One reader process, open throughout; returns (alone, during, writer seconds)."""
    reader = subprocess.Popen([sys.executable, "-c", READER, str(folder), json.dumps(QUERIES)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        # with a writer: add photos, index them in another process, search until it ends
        done = tmp / "writer-done"
        reader.stdin.write(f"0 {done}\n")
        reader.stdin.flush()
        start = time.perf_counter()
        proc = writer(folder, files, args)
        proc.wait()
        writer_seconds = time.perf_counter() - start
        done.touch()
        during = json.loads(reader.stdout.readline())
        if proc.returncode != 0:
            sys.exit(f"the writer failed:\n{proc.stderr.read()}")
        # the baseline: as many queries with nothing else running
        reader.stdin.write(f"{len(during)} -\n")
        reader.stdin.flush()
        alone = json.loads(reader.stdout.readline())
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)
    return alone, during, writer_seconds


if __name__ == "__main__":
    main()
