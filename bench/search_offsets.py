"""Search latency with the images' hubness offsets stored in the index vs computed per query.

The default model corrects its scores for hubness (models/hubness.py): each image's score
loses beta x its mean similarity to its 20 nearest training captions. That offset depends
only on the image, so indexing stores it (SQLite column `image_offset`); before, search
computed it for every candidate of every query (4 x k candidates, at least 100). This indexes
N Flickr8k photos (copied to a temporary folder) and times, over the same queries and
candidate sets, reading the stored offsets against computing them, and the whole search.

    flock /tmp/imagetext-cpu.lock python bench/search_offsets.py [--n 1000] [--k 10 250] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k" / "images"
QUERIES = ["a dog runs through the grass", "two children play in the water", "a man rides a bike",
           "a woman in a red coat", "a crowd at a concert", "a skier on a snowy slope",
           "a black dog swims", "people walk down a city street"]


def median_ms(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="Flickr8k photos to index")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 250], help="results per query")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from imagetext.api import Collection
    from imagetext.index.search import ScoreOffsets

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in sorted(FLICKR.glob("*.jpg"))[: args.n]:
            shutil.copy(p, folder / p.name)
        col = Collection.open(folder, index_dir=Path(tmp) / "index")
        t = time.perf_counter()
        col.index()
        print(f"indexed {len(col)} photos in {time.perf_counter() - t:.1f}s with {col.encoder.name}")
        encoder = col.encoder
        offsets = ScoreOffsets(col)
        if not encoder.offsets_key:
            raise SystemExit(f"{encoder.name} has no hubness correction: nothing to compare")
        for k in args.k:
            pool = max(4 * k, 100)
            stored_ms, computed_ms, search_ms = [], [], []
            for q in QUERIES:
                vec = encoder.encode_texts([q])[0]
                _, ids = col.vector_index("semantic").search(vec[None], pool)
                ids = [int(i) for i in ids[0] if i >= 0]
                vecs_by_id = col.vector_index("semantic").get(ids)
                vecs = np.stack([vecs_by_id[i] for i in ids])
                stored_ms.append(median_ms(lambda: offsets.of(ids, vecs)))
                computed_ms.append(median_ms(lambda: encoder.image_offsets(vecs)))
                search_ms.append(median_ms(lambda: col.search(q, k=k)))
            stored, computed = statistics.median(stored_ms), statistics.median(computed_ms)
            print(f"k={k} ({len(ids)} candidates): offsets read from the index {stored:.2f} ms, "
                  f"computed per query {computed:.2f} ms (ratio {computed / stored:.1f}x); "
                  f"whole search {statistics.median(search_ms):.1f} ms")
        col.close()


if __name__ == "__main__":
    main()
