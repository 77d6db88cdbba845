"""Which FAISS index for a large collection: recall, latency, build, updates, disk and RAM.

Builds each candidate index over N realistic vectors (bench/vectors_data.py: Flickr8k
embeddings of the default model replicated with near-duplicate noise) and measures, against
the exact float32 top-10 computed in the same run:
recall@10, single-query latency p50/p99 (median over --repeat passes, faiss on --threads
OpenMP threads as the server runs it), build time (train + add), time to add 100 vectors and
to remove 100 (remove_ids, or for HNSW a tombstone IDSelector at search time), the time to
save the file, bytes per vector in it, and the RSS of a fresh process that loads the file
normally, with faiss.IO_FLAG_MMAP (IVF lists) and with IO_FLAG_MMAP_IFC (flat codes) and
answers the latency queries (anonymous RSS: what cannot be paged out). Every latency is also given as a ratio to IndexFlatIP (exact) of the same run.

Spaces: `semantic` (text queries: val captions), `visual` (image queries: 500 held-out
photos) and `visual-pca256` (the same through an uncentred PCA to 256-d fitted on the base
photos; recall still against the exact full 1280-d top-10).

    flock /tmp/imagetext-cpu.lock python bench/ann_choice.py --n 100000 --space semantic --json
    python bench/ann_choice.py --n 1000000 --space semantic --only Flat IVF1024,SQ8 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vectors_data import CACHE, Replicator, embeddings, normalise, pca

K = 10
REFINE_K_FACTOR = 4  # a Refine stage rescores 4 x k candidates from its fp16 copy
IP = faiss.METRIC_INNER_PRODUCT


def candidates(n: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """(factory string, [(search parameter, value), ...]) to try."""
    nlist = 1 << max(4, round(np.log2(np.sqrt(n))))  # ~sqrt(N): 256 at 100k, 1024 at 1M
    probes = (8, 16, 32, 64) + ((128,) if n >= 500_000 else ())
    ivf_probe = [("nprobe", p) for p in probes]
    hnsw_ef = [("efSearch", e) for e in (32, 64, 128)]
    return [
        ("Flat", [("", 0)]),
        ("SQfp16", [("", 0)]),
        (f"IVF{nlist},SQfp16", ivf_probe),
        (f"IVF{nlist},SQ8", ivf_probe),
        (f"IVF{nlist},SQ8,Refine(SQfp16)", ivf_probe[1:]),
        (f"IVF{nlist},PQ32,Refine(SQfp16)", ivf_probe[1:]),
        ("HNSW32", hnsw_ef),
        ("HNSW32_SQ8", hnsw_ef),
        ("HNSW32_SQfp16", hnsw_ef),
    ]


class Dataset:
    """N rows of one space as a float16 memmap on disk, queries, and the exact float32 top-10."""

    def __init__(self, n: int, space: str, n_queries: int, seed: int = 0):
        e = embeddings()
        vis = space.startswith("visual")
        base = e["base_visual"] if vis else e["base_semantic"]
        queries = e["held_visual"] if vis else e["text"]
        rng = np.random.default_rng(seed)
        queries = normalise(queries[rng.permutation(len(queries))[:n_queries]])
        self.project = None
        if space == "visual-pca256":
            comps = pca(base, 256)
            self.project = lambda x: np.asarray(x, np.float32) @ comps
        self.rep = Replicator({"v": base}, seed=seed)
        self.n, self.space = n, space
        self.dim = 256 if self.project else base.shape[1]
        self.queries = self.project(queries) if self.project else queries
        CACHE.mkdir(parents=True, exist_ok=True)
        self.path = CACHE / f"rows-{space}-{n}-s{seed}.f16"
        gt_path = CACHE / f"gt-{space}-{n}-s{seed}-q{n_queries}.npy"
        t = time.perf_counter()
        if self.path.is_file() and gt_path.is_file():
            self.gt = np.load(gt_path)
        else:
            self.gt = self._generate(queries)
            np.save(gt_path, self.gt)
        self.gen_s = time.perf_counter() - t
        self.rows = np.memmap(self.path, np.float16, "r", shape=(n, self.dim))

    def _generate(self, queries: np.ndarray) -> np.ndarray:
        """Write the rows and compute the exact top-K over the full-precision vectors."""
        out = np.memmap(self.path, np.float16, "w+", shape=(self.n, self.dim))
        best_s = np.full((len(queries), K), -np.inf, np.float32)
        best_i = np.zeros((len(queries), K), np.int64)
        for s, chunk in self.rep.iter_chunks(self.n):
            x = chunk["v"]
            sims = queries @ x.T
            top = np.argpartition(-sims, K - 1, axis=1)[:, :K]
            cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], 1)
            cand_i = np.concatenate([best_i, top + s], 1)
            order = np.argsort(-cand_s, axis=1)[:, :K]
            best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
            out[s:s + len(x)] = self.project(x) if self.project else x
        out.flush()
        del out
        return best_i

    def extra(self, count: int) -> np.ndarray:
        """`count` new rows after the N (for timing additions)."""
        x = self.rep.rows(self.n, self.n + count)["v"]
        return self.project(x) if self.project else x

    def chunks(self, size: int = 65536):
        for s in range(0, self.n, size):
            yield s, np.ascontiguousarray(self.rows[s:s + size], np.float32)


def set_param(index: faiss.Index, name: str, value: float) -> None:
    if name:
        faiss.ParameterSpace().set_index_parameter(index, name, value)


def build(ds: Dataset, factory: str) -> tuple[faiss.Index, float]:
    base = faiss.index_factory(ds.dim, factory, IP)
    # FAISS ids are the SQLite row ids: IVF takes them itself, the others through an IDMap2
    index = base if isinstance(base, faiss.IndexIVF) else faiss.IndexIDMap2(base)
    t = time.perf_counter()
    if not index.is_trained:  # k-means on 40 points per list, or a scalar quantizer's ranges
        try:
            n_train = min(ds.n, 40 * faiss.extract_index_ivf(base).nlist)
        except RuntimeError:  # no inverted lists
            n_train = min(ds.n, 65536)
        sample = np.sort(np.random.default_rng(1).choice(ds.n, n_train, replace=False))
        index.train(np.ascontiguousarray(ds.rows[sample], np.float32))
    for s, x in ds.chunks():
        index.add_with_ids(x, np.arange(s, s + len(x), dtype=np.int64))
    if "Refine" in factory:
        set_param(index, "k_factor_rf", REFINE_K_FACTOR)
    return index, time.perf_counter() - t


def latency(index: faiss.Index, queries: np.ndarray, repeat: int, params=None) -> tuple[float, float]:
    p50s, p99s = [], []
    for _ in range(repeat):
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q[None], K, params=params) if params is not None else index.search(q[None], K)
            times.append(time.perf_counter() - t)
        p50s.append(np.percentile(times, 50) * 1000)
        p99s.append(np.percentile(times, 99) * 1000)
    return statistics.median(p50s), statistics.median(p99s)


def recall(index: faiss.Index, ds: Dataset) -> float:
    _, ids = index.search(ds.queries, K)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, ds.gt)]))


_RSS_CHILD = r"""
import sys, time, faiss, numpy as np
def mem():
    d = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    return {k: int(d[k].split()[0]) // 1024 for k in ('VmRSS', 'RssAnon', 'RssFile')}
path, flags, qpath, pname, pval = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
faiss.omp_set_num_threads(int(sys.argv[6]))
before = mem()
t = time.perf_counter()
try:
    index = faiss.read_index(path, flags)
except RuntimeError as e:
    print('ERR', str(e).splitlines()[-1][:200]); sys.exit(0)
load_s = time.perf_counter() - t
if pname:
    faiss.ParameterSpace().set_index_parameter(index, pname, pval)
q = np.load(qpath)
times = []
for x in q:
    t = time.perf_counter(); index.search(x[None], 10); times.append(time.perf_counter() - t)
after = mem()
print('OK', load_s, np.percentile(times, 50) * 1000, *(after[k] - before[k] for k in ('VmRSS', 'RssAnon', 'RssFile')))
"""


def rss(path: Path, flags: int, qpath: Path, pname: str, pval: float, threads: int) -> dict:
    """A fresh process loads the file, runs the latency queries: its memory growth (MB)."""
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(flags), str(qpath), pname,
                          str(pval), str(threads)], check=False, capture_output=True, text=True, timeout=1800)
    line = (out.stdout.strip().splitlines() or [f"ERR {out.stderr.strip()[-200:]}"])[-1].split()
    if line[0] != "OK":
        return {"error": " ".join(line[1:])}
    load_s, p50, vm, anon, file_ = map(float, line[1:])
    return {"load_s": round(load_s, 2), "p50_ms": round(p50, 3), "rss_mb": vm, "rss_anon_mb": anon,
            "rss_file_mb": file_}


def updates(index: faiss.Index, ds: Dataset, repeat: int) -> dict:
    """Add 100 new vectors; remove 100 (remove_ids, else a tombstone selector at search)."""
    new = ds.extra(100)
    ids = np.arange(ds.n, ds.n + 100, dtype=np.int64)
    t = time.perf_counter()
    index.add_with_ids(new, ids)
    add_s = time.perf_counter() - t
    victims = np.random.default_rng(2).choice(ds.n, 100, replace=False).astype(np.int64)
    out = {"add100_s": round(add_s, 4)}
    try:
        t = time.perf_counter()
        removed = index.remove_ids(faiss.IDSelectorBatch(victims))
        out.update(remove100_s=round(time.perf_counter() - t, 4), removed=int(removed), remove="remove_ids")
    except RuntimeError:
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(victims))
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch) \
            if isinstance(inner, faiss.IndexHNSW) else faiss.SearchParameters(sel=sel)
        try:
            p50, _ = latency(index, ds.queries[:100], repeat, params)
            _, got = index.search(ds.queries[:100], K, params=params)
        except RuntimeError as exc:
            out.update(remove=f"unsupported: {str(exc).splitlines()[-1][-120:]}")
        else:
            out.update(remove="tombstone selector", tombstone_p50_ms=round(p50, 3),
                       tombstone_leaks=int(np.isin(got, victims).sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--space", choices=("semantic", "visual", "visual-pca256"), default="semantic")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--flat-latency-queries", type=int, default=50,
                        help="latency queries for the exhaustive scans (Flat, SQfp16)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="factory strings to run (default: all candidates)")
    parser.add_argument("--no-rss", action="store_true", help="skip the load/RSS subprocesses")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON document here, after each candidate")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print

    ds = Dataset(args.n, args.space, args.queries)
    log(f"{args.space}: {args.n} x {ds.dim}, rows + exact top-{K} in {ds.gen_s:.1f}s ({ds.path})")
    lat_q = ds.queries[: args.latency_queries]
    report = {"n": args.n, "space": args.space, "dim": ds.dim, "threads": args.threads,
              "faiss": faiss.__version__, "queries": args.queries, "latency_queries": len(lat_q),
              "repeat": args.repeat, "text_encode": text_encode_ms(args.repeat), "results": []}
    log(f"text encoding (one query, default model): p50 {report['text_encode']['p50_ms']:.2f} ms")
    flat_p50 = None
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        qpath = Path(tmp) / "q.npy"
        np.save(qpath, lat_q[: args.flat_latency_queries])  # the RSS children: a short run
        for factory, params in candidates(args.n):
            if args.only and factory != "Flat" and factory not in args.only:
                continue  # the exact baseline always runs
            index, build_s = build(ds, factory)
            path = Path(tmp) / "index.faiss"
            t = time.perf_counter()
            faiss.write_index(index, str(path))
            os.sync()
            save_s = time.perf_counter() - t
            row = {"index": factory, "build_s": round(build_s, 1), "save_s": round(save_s, 2),
                   "bytes_per_vector": round(path.stat().st_size / args.n, 1), "settings": []}
            q = lat_q[: args.flat_latency_queries] if factory in ("Flat", "SQfp16") else lat_q
            for name, value in params:
                set_param(index, name, value)
                p50, p99 = latency(index, q, args.repeat)
                flat_p50 = flat_p50 or p50
                s = {"param": f"{name}={value}" if name else "-", "recall@10": round(recall(index, ds), 4),
                     "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "p50_vs_flat": round(p50 / flat_p50, 3)}
                row["settings"].append(s)
                log(f"{factory:34s} {s['param']:12s} recall@10 {s['recall@10']:.4f}  p50 {p50:8.3f} ms "
                    f"p99 {p99:8.3f} ms  ({s['p50_vs_flat']:.3f}x flat)")
            mid = params[len(params) // 2]
            if not args.no_rss:
                row["rss_normal"] = rss(path, 0, qpath, *mid, args.threads)
                row["rss_mmap"] = rss(path, faiss.IO_FLAG_MMAP, qpath, *mid, args.threads)
                row["rss_mmap_ifc"] = rss(path, faiss.IO_FLAG_MMAP_IFC, qpath, *mid, args.threads)
            set_param(index, *mid)
            row.update(updates(index, ds, args.repeat))
            log(f"{factory:34s} build {build_s:.1f}s  save {save_s:.2f}s  {row['bytes_per_vector']:.0f} B/vector  "
                f"add100 {row['add100_s']:.4f}s  remove: {row['remove']} "
                f"{row.get('remove100_s', row.get('tombstone_p50_ms'))}  "
                f"normal {row.get('rss_normal')}  mmap {row.get('rss_mmap')}  mmap_ifc {row.get('rss_mmap_ifc')}")
            report["results"].append(row)
            if args.out:  # after every candidate, so that a long run keeps what it measured
                Path(args.out).write_text(json.dumps(report, indent=1))
            del index
            gc.collect()
            path.unlink()
    if args.json:
        print(json.dumps(report, indent=1))


def text_encode_ms(repeat: int) -> dict:
    """One text query through the default model, as search encodes it."""
    from imagetext.models.registry import load_encoder

    encoder = load_encoder()
    texts = ["a dog runs through the grass", "two children play in the water", "a man rides a bike",
             "a woman in a red coat", "a crowd at a concert", "a skier on a snowy slope"] * 5
    encoder.encode_texts(texts[:1])
    p50s = []
    for _ in range(repeat):
        times = []
        for text in texts:
            t = time.perf_counter()
            encoder.encode_texts([text])
            times.append(time.perf_counter() - t)
        p50s.append(np.percentile(times, 50) * 1000)
    return {"model": encoder.name, "p50_ms": round(statistics.median(p50s), 3)}


if __name__ == "__main__":
    main()
