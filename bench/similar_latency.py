"""Latency of `similar` in one process (model loaded, file cache warm): copies first (the query
turned 4 ways for the instance feature), then look-alikes, against the visual vector alone
(what `similar` did before), by id ("more like this": the file is read again and turned; then again once the
index holds the photos' turned vectors, as `duplicates` leaves it: no model run) and for a
photo from outside the collection (a JPEG file, as the CLI and the web app's upload give it).

    python bench/similar_latency.py [--images DIR] [--n 300] [--queries 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        out.append(1000 * (time.perf_counter() - start))
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=FLICKR)
    parser.add_argument("--n", type=int, default=300, help="Photos indexed.")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from imagetext.api import Collection

    files = sorted(args.images.glob("*.jpg"))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        for f in files:
            shutil.copy(f, root / f.name)
        outside = [Path(tmp) / f.name for f in files[: args.queries]]
        for f, o in zip(files, outside):
            shutil.copy(f, o)
        col = Collection.open(root)
        col.index()
        ids = [col.indexed_id(root / f.name) for f in files[: args.queries]]
        col.similar(ids[0], k=10)  # load the model and the indexes
        visual = col.vector_index("visual")

        # what `similar` did before: one vector, one FAISS search, the results' records
        def by_id_visual(i):
            vec = visual.get([ids[i]])[ids[i]]
            scores, found = visual.search(vec[None], 11)
            other = found[0] != ids[i]
            col._searcher.results(scores[0][other][:10], found[0][other][:10])

        def outside_visual(i):
            vec = col.encoder.encode_images([str(outside[i])]).visual
            scores, found = visual.search(vec, 10)
            col._searcher.results(scores[0], found[0])

        n = len(ids)
        report = {
            "n_images": len(col), "queries": n, "k": 10,
            "by_id": {"copies_then_lookalikes": summary(timed(lambda i: col.similar(ids[i], k=10), n)),
                      "visual_only": summary(timed(by_id_visual, n))},
            "outside_file": {"copies_then_lookalikes": summary(timed(lambda i: col.similar(str(outside[i]), k=10), n)),
                             "visual_only": summary(timed(outside_visual, n))},
        }
        col.turn_missing()  # what `duplicates` stores: by id, no model run
        report["by_id_turned_stored"] = {
            "copies_then_lookalikes": summary(timed(lambda i: col.similar(ids[i], k=10), n)),
            "visual_only": report["by_id"]["visual_only"]}
        col.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['n_images']} photos indexed, {n} queries, k=10 (ms, p50 / p95)")
    for what in ("by_id", "by_id_turned_stored", "outside_file"):
        r = report[what]
        print(f"  {what:19s} copies then look-alikes {r['copies_then_lookalikes']['p50_ms']:7.1f} / "
              f"{r['copies_then_lookalikes']['p95_ms']:7.1f}   visual only "
              f"{r['visual_only']['p50_ms']:7.1f} / {r['visual_only']['p95_ms']:7.1f}")


if __name__ == "__main__":
    main()
