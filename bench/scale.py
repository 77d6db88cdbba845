"""A collection of N images at scale (issue 20, part 3): build, disk, server memory, text
query latency end to end, ANN recall, and adding/removing 100 images, in one run.

The N images are the realistic vectors of bench/vectors_data.py (the 6500 Flickr8k base
photos embedded with the default model, replicated into bursts of near duplicates; cached
under ~/.cache/imagetext/bench/, generated on first use), stored through the public writer
entry point `Collection.add_embedded` (batches of 256, as `imagetext index --from-embeddings`
commits them; paths `p/0000000.jpg`..., no image files). Then:
- build: wall time of that add_embedded call (SQLite rows, FAISS indexes, score offsets);
- disk: bytes of the index folder (SQLite + FAISS files, the WAL checkpointed) per image;
- server: a fresh process opens the collection as `imagetext serve` does, runs the text
  queries (val captions) through `Collection.search` (text encoding with the default ONNX
  model, FAISS, exact rescoring, relevance), and reports p50/p99 and its RSS after them
  (VmRSS, and its anonymous part; file-backed pages of memory-mapped indexes are shared and
  evictable);
- recall@10 of each FAISS index (semantic: 1000 caption queries, visual: 1000 held-out
  photos) against the exact float32 top-10 over the generated vectors;
- add 100 / remove 100: wall time of `add_embedded` of 100 new images, and of removing 100
  as `imagetext index` does for deleted files (the rows deleted in one transaction, then
  every FAISS index brought in step and saved), index update included.

`--baseline` runs the same measurements with the code of commit 9bea52d (vectors as float32
/ fp16 blobs in SQLite, a float32 Flat index below 100k and HNSW from 100k, rebuilt whole by
any change), from `git archive` of that commit into a temporary folder.

    python bench/scale.py --n 100000 --json
    python bench/scale.py --n 100000 --baseline --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
BASELINE_COMMIT = "9bea52d"


def rows(n: int):
    from ann_choice import Dataset

    return Dataset(n, "semantic", 1000), Dataset(n, "visual", 1000)


def images(sem, vis, start: int, stop: int, chunk: int = 4096):
    from imagetext.index.records import EmbeddedImage

    for s in range(start, stop, chunk):
        e = min(stop, s + chunk)
        if s >= sem.n:  # new images past the N: generated
            a, b = sem.extra(e - sem.n), vis.extra(e - sem.n)
            a, b = a[s - sem.n:], b[s - sem.n:]
        else:
            a = np.asarray(sem.rows[s:e], np.float32)
            b = np.asarray(vis.rows[s:e], np.float32)
        for j in range(e - s):
            r = s + j
            yield EmbeddedImage(f"p/{r:07d}.jpg", 1000 + r, 0.0, f"{r:040x}", 640, 480, a[j], b[j])


def remove_like_index(col, ids: list[int]) -> None:
    """What `imagetext index` does for deleted files: delete the rows, bring FAISS in step."""
    try:
        from imagetext.index.vectors import KINDS
    except ImportError:  # the baseline's code: loaded before the change, then apply()
        KINDS = None
    with col.lock.hold():
        if KINDS is None:
            indexes = [col.vector_index(kind) for kind in ("semantic", "visual")]
            for v in indexes:
                v.load()
            col.store.remove(ids)
            for v in indexes:  # in place on a Flat file, a rebuild of anything else
                v.apply(np.zeros(0, np.int64), np.zeros((0, v.dim), np.float32), np.asarray(ids))
            return
        col.store.remove(ids)
        for kind in KINDS:
            col.vector_index(kind).sync()


def recall(col, data, kind: str) -> float:
    index = col.vector_index(kind)
    _, ids = index.search(data.queries, 10)
    hits = [len(set((ids[q] - 1).tolist()) & set(data.gt[q].tolist())) for q in range(len(ids))]
    return float(np.mean(hits) / 10)


def build(n: int, folder: Path) -> dict:
    from imagetext.api import Collection

    sem, vis = rows(n)
    root = folder / "lib"
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {"n": n}
    with Collection.open(root) as col:
        t = time.perf_counter()
        col.add_embedded(images(sem, vis, 0, n), batch_size=256)
        out["build_s"] = round(time.perf_counter() - t, 1)
        assert col.store.find_path("p/0000000.jpg").id == 1 and len(col) == n
        col.store.checkpoint(truncate=True)
        out["disk_bytes_per_image"] = round(sum(
            p.stat().st_size for p in col.index_dir.iterdir() if p.is_file()) / n)
        out["index_type"] = col.status()["index_type"]
        out["recall@10_semantic"] = round(recall(col, sem, "semantic"), 4)
        out["recall@10_visual"] = round(recall(col, vis, "visual"), 4)
    out["server"] = server(root)
    with Collection.open(root) as col:
        col.encoder  # noqa: B018  (the model loads once per process, not per update)
        new = list(images(sem, vis, n, n + 100))
        t = time.perf_counter()
        col.add_embedded(new, batch_size=256)
        out["add_100_s"] = round(time.perf_counter() - t, 2)
        gone = list(range(1, n, max(1, n // 100)))[:100]
        t = time.perf_counter()
        remove_like_index(col, gone)
        out["remove_100_s"] = round(time.perf_counter() - t, 2)
        assert len(col) == n
    return out


def server(root: Path, queries: int = 200) -> dict:
    """A fresh process: open as serve does, text queries end to end, then its RSS."""
    proc = subprocess.run([sys.executable, __file__, "--serve-child", str(root), "--queries", str(queries)],
                          capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve_child(root: Path, queries: int) -> None:
    from vectors_data import _split  # the val caption texts

    from imagetext.api import Collection

    texts = _split()[2][:queries]
    t = time.perf_counter()
    col = Collection.open(root)
    col.search("a photo", k=10)  # the first query loads the model and the indexes
    open_s = time.perf_counter() - t
    ms = []
    for q in texts:
        t = time.perf_counter()
        col.search(q, k=10)
        ms.append((time.perf_counter() - t) * 1000)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmRSS", "RssAnon", "RssFile")))
    mb = {k: round(int(v.split()[0]) / 1024) for k, v in status.items()}
    print(json.dumps({"open_and_first_query_s": round(open_s, 2),
                      "query_p50_ms": round(float(np.percentile(ms, 50)), 1),
                      "query_p99_ms": round(float(np.percentile(ms, 99)), 1),
                      "queries": len(ms), "rss_mb": mb["VmRSS"], "rss_anon_mb": mb["RssAnon"],
                      "rss_file_mb": mb["RssFile"]}))


def baseline(n: int, folder: Path) -> dict:
    """This benchmark on the code of BASELINE_COMMIT (git archive into `folder`)."""
    src = folder / "baseline"
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_COMMIT, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    proc = subprocess.run([sys.executable, __file__, "--n", str(n), "--dir", str(folder / "run"), "--json",
                           "--inner"], env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["code"] = f"commit {BASELINE_COMMIT}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--baseline", action="store_true", help=f"measure commit {BASELINE_COMMIT}'s code")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the collection")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-child", type=Path, default=None, metavar="ROOT",
                    help="only the server measurement, on the kept collection ROOT (DIR/lib)")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args.serve_child, args.queries)
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix=f"imagetext-scale-{args.n}-"))
    try:
        import imagetext

        out = baseline(args.n, folder) if args.baseline else build(args.n, folder)
        out.setdefault("code", "this checkout" if not args.inner else "")
        out.setdefault("imagetext", str(Path(imagetext.__file__).parent))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
