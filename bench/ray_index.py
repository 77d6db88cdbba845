"""Indexing throughput: local indexing vs indexing through a 2-node local Ray cluster, in one run.

Both index the same N Flickr8k val photos (copied into a temporary folder) into a fresh
index with the default model: local is `Collection.index()` (decoding in threads, the model
in this process), Ray is `index --ray` (`embed.distributed.index_on_ray`: the collection
plans, an actor pool over the cluster's nodes embeds, this process commits). The cluster is
two `ray start` processes on 127.0.0.1 with --cpus-per-node CPUs each (embed/cluster.py),
started before the clock starts; the Ray time includes starting the actors (each loads the
model). Both indexes are then compared vector by vector.

    python bench/ray_index.py [--n 200] [--cpus-per-node 1] [--json]

On one machine the cluster shares its cores with everything else, so this measures the
overhead of the distributed path more than a speed-up; a real cluster adds its nodes' cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k"


def val_photos(n: int) -> list[Path]:
    names: list[str] = []
    with open(FLICKR / "captions.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == "val" and row["image"] not in names[-1:]:
                names.append(row["image"])
    if len(names) < n:
        sys.exit(f"need {n} Flickr8k val photos, found {len(names)}")
    return [FLICKR / "images" / name for name in names[:n]]


def stored_vectors(col) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    states = col.store.file_states()
    ids = [i for _, _, i in states.values()]
    sem, vis = col.vector_index("semantic").get(ids), col.vector_index("visual").get(ids)
    return {rel: (sem[i], vis[i]) for rel, (_, _, i) in states.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="photos to index")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from imagetext.api import Collection
    from imagetext.embed.cluster import local_cluster
    from imagetext.embed.distributed import index_on_ray
    from imagetext.models.registry import load_encoder

    load_encoder(None)  # compiled once per machine: not part of either figure
    with tempfile.TemporaryDirectory(prefix="ray-index-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for path in val_photos(args.n):
            shutil.copy(path, folder / path.name)

        with Collection.open(folder, index_dir=Path(tmp) / "local") as col:
            began = time.perf_counter()
            local_report = col.index()
            local_s = time.perf_counter() - began
            local_vecs = stored_vectors(col)

        with local_cluster(args.nodes, args.cpus_per_node) as address, \
                Collection.open(folder, index_dir=Path(tmp) / "ray") as col:
            began = time.perf_counter()
            ray_report = index_on_ray(col, address)
            ray_s = time.perf_counter() - began
            ray_vecs = stored_vectors(col)

    assert sorted(ray_vecs) == sorted(local_vecs)
    sem_diff = max(float(np.abs(ray_vecs[k][0] - v[0]).max()) for k, v in local_vecs.items())
    vis_diff = max(float(np.abs(ray_vecs[k][1] - v[1]).max()) for k, v in local_vecs.items())
    out = {
        "n": args.n, "cpus": os.cpu_count(),
        "local": {"seconds": round(local_s, 2), "images_per_second": round(args.n / local_s, 1),
                  "added": local_report.added},
        "ray": {"nodes": args.nodes, "cpus_per_node": args.cpus_per_node,
                "seconds": round(ray_s, 2), "images_per_second": round(args.n / ray_s, 1),
                "added": ray_report.added},
        "max_abs_diff": {"semantic": sem_diff, "visual": vis_diff},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"local: {out['local']['images_per_second']} images/s ({local_s:.1f} s); "
              f"{args.nodes}-node Ray: {out['ray']['images_per_second']} images/s ({ray_s:.1f} s); "
              f"{args.n} photos, vectors equal to {max(sem_diff, vis_diff):.1e}")


if __name__ == "__main__":
    main()
