"""Measure spatial verification of `imagetext duplicates` candidate pairs (an experiment).

    python scripts/measure_spatial_verification.py --data ../shared/data/flickr8k \
        --cache /tmp/fitcache --out /tmp/spatial.json

For the candidate pairs of the "edits" (and "scene") presets, scored as `duplicates` scores
them with instance vectors and each photo's turned vector ("instance+turned",
features.one_turn_scores), local features are matched between the two photos and a
similarity transform is fitted by RANSAC; the number of inliers is recorded per pair:

- ORB keypoints (scikit-image; rotation invariant, so copies turned by 90 degrees match too)
  on the grey photo scaled to 512 pixels on its long side (not squashed; imagetext.instance.spatial), Hamming matches
  kept when mutual and under the ratio test, skimage.measure.ransac with a
  SimilarityTransform; mirror images: the second photo mirrored too, the better of the two;
- on (a) the instance benchmark's copies (eval/instance.build_instance_set, the photos and
  seeds of fit_duplicate_thresholds.py: train reference set and val set) and its false
  candidates at the "edits" cosine; (b) the demo gallery's pairs that reach "edits" or
  "scene" (look-alikes: no two are one scene); (c) the labelled same-scene pairs
  (scripts/data/flickr8k_same_scene.tsv) that reach the "scene" cosine.

It then picks the inlier count m on the train copies (the lowest m that keeps TRAIN_RECALL of
the train copies the cosine keeps) and reports, at it, val precision/recall of "edits" (cosine
AND inliers), the demo pairs dropped, the same-scene pairs kept, and the milliseconds a pair
took. The vectors come from fit_duplicate_thresholds.py's --cache files (CACHE-reference.npz,
CACHE-evaluated.npz, CACHE-shots.npz), which this script reads and never writes.
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from build_same_scene_pairs import LABELS as SCENE_LABELS

from imagetext.data.readers import read_pairs
from imagetext.eval.instance import build_instance_set
from imagetext.eval.same_scene import read_labels
from imagetext.index.duplicates import preset_threshold
from imagetext.instance.features import one_turn_scores
from imagetext.instance.spatial import (
    LOCAL_KEYPOINTS,
    LOCAL_MAX_RATIO,
    LOCAL_RESIDUAL,
    LOCAL_SIDE,
    local_features,
    spatial_inliers,
)

TRAIN_RECALL = 0.999  # m keeps this share of the train copies the cosine keeps
MIRROR_BELOW = 20  # the mirrored photo is matched too when fewer inliers than this


_FEATURES: dict = {}


def _features(ref, mirror=False):
    """The local features of a photo (kept per worker: a database photo is met often)."""
    if (ref, mirror) not in _FEATURES:
        if len(_FEATURES) > 400:
            _FEATURES.clear()
        t = time.perf_counter()
        _FEATURES[ref, mirror] = local_features(_image(ref), mirror)
        _TIMES["features"].append(time.perf_counter() - t)
    return _FEATURES[ref, mirror]


# -- work items: ("kind", payload) resolved to PIL images in the worker -------------------
_SETS: dict = {}
_TIMES: dict = {"features": [], "match": []}


def _image(ref):
    from imagetext.io.images import open_image

    if ref[0] == "path":
        return open_image(ref[1])
    _, split, o, t = ref  # ("query", split, original, transformation)
    return _SETS[split].query_image(o, t)


def _work(group):
    """One photo against its candidates: [(key, inliers)], and the seconds each feature
    extraction and each match took in this worker."""
    a, pairs = group
    _TIMES["features"].clear()
    _TIMES["match"].clear()
    out = []
    for key, b in pairs:
        fb = _features(b)
        t = time.perf_counter()
        n = spatial_inliers(_features(a), fb)
        _TIMES["match"].append(time.perf_counter() - t)
        if n < MIRROR_BELOW:  # a mirror image: a mirrored against b
            fam = _features(a, mirror=True)
            t = time.perf_counter()
            n = max(n, spatial_inliers(fam, fb))
            _TIMES["match"].append(time.perf_counter() - t)
        out.append((key, n))
    return out, list(_TIMES["features"]), list(_TIMES["match"])


def _init(sets):
    _SETS.update(sets)


def verify_pairs(items, sets: dict, workers: int, say) -> tuple[dict, list, list, float]:
    """Inliers of each (key, photo a, photo b) of `items` ({key: inliers}, in `workers`
    processes; a photo is ("path", path) or ("query", split, original, transformation) of
    `sets`), the seconds of each feature extraction and each match, and the wall time."""
    groups: dict = {}
    for key, a, b in items:  # one photo against its candidates, the copies of one photo in a row
        groups.setdefault(a, []).append((key, b))
    started = time.perf_counter()
    results, feature_s, match_s = {}, [], []
    with Pool(workers, initializer=_init, initargs=(sets,)) as pool:
        for out, fs, ms in pool.imap(_work, list(groups.items()), chunksize=10):
            results.update(out)
            feature_s += fs
            match_s += ms
            if len(results) % 200 < len(out):
                say(f"{len(results)}/{len(items)} pairs, {time.perf_counter() - started:.0f} s")
    wall = time.perf_counter() - started
    return results, feature_s, match_s, wall


def candidates(q: dict, db: dict, s, t: float) -> list[tuple[int, int, float, bool, str]]:
    """(query, database photo, score, is its original, transformation) of every pair >= t."""
    scores = one_turn_scores(q["instance"], q["instance_turned"], db["instance"], db["instance_turned"])
    qi, di = np.nonzero(scores >= t)
    return [(int(a), int(b), float(scores[a, b]), bool(s.queries[a][0] == b), s.queries[a][1])
            for a, b in zip(qi, di)]


def load(cache: str, name: str) -> tuple[dict, dict]:
    arrays = np.load(f"{cache}-{name}.npz")
    return ({k: arrays[f"db-{k}"] for k in ("instance", "instance_turned")},
            {k: arrays[f"q-{k}"] for k in ("instance", "instance_turned")})


def _pr(rows, m: int, positives: int) -> dict:
    kept = [r for r in rows if r["inliers"] >= m]
    tp = sum(r["positive"] for r in kept)
    return {"precision": round(tp / max(1, len(kept)), 4), "recall": round(tp / positives, 4),
            "false_pairs": len(kept) - tp}


def report(d: dict, say) -> dict:
    """The inlier count m chosen on the train copies, and at m (and a sweep of m): precision and
    recall of "edits" (cosine AND inliers) on train and val, per transformation on val, the
    demo gallery's look-alike pairs left, and the labelled same-scene pairs kept."""
    rows = d["pairs"]
    copies = {s: [r for r in rows if r["part"] == "copies" and r["key"][0] == s] for s in ("train", "val")}
    train_pos = np.array([r["inliers"] for r in copies["train"] if r["positive"]])
    m_chosen = int(np.floor(np.quantile(train_pos, 1 - TRAIN_RECALL)))
    demo = [r for r in rows if r["part"] == "demo"]
    scene = [r for r in rows if r["part"] == "scene"]
    out = {"chosen_m": m_chosen, "criterion": f"keeps {TRAIN_RECALL} of the train copies the cosine keeps",
           "inliers": {}, "sweep": {}}
    for s in ("train", "val"):
        for positive in (True, False):
            x = np.array([r["inliers"] for r in copies[s] if r["positive"] == positive])
            out["inliers"][f"{s} {'copies' if positive else 'false candidates'}"] = {
                "n": len(x), **({f"q{q}": float(np.quantile(x, q / 100)) for q in (0, 1, 5, 50, 95, 100)}
                                if len(x) else {})}
        out["inliers"][f"{s} false candidates (all)"] = sorted(r["inliers"] for r in copies[s] if not r["positive"])
    for t in sorted({r["transform"] for r in copies["val"]}):
        x = np.array([r["inliers"] for r in copies["val"] if r["positive"] and r["transform"] == t])
        out["inliers"][f"val copies {t}"] = {"n": len(x), "min": int(x.min()), "q5": float(np.quantile(x, 0.05)),
                                             "median": float(np.median(x))}
    out["inliers"]["demo (scene or edits)"] = sorted((r["inliers"], round(r["score"], 3), *r["key"]) for r in demo)
    for split in ("train", "val"):
        for positive in (True, False):
            out["inliers"][f"same scene {split} {'positives' if positive else 'negatives'}"] = sorted(
                r["inliers"] for r in scene if r["key"][0] == split and r["positive"] == positive)
    for m in sorted({0, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, m_chosen}):
        val_t = [r for r in copies["val"] if r["positive"]]
        out["sweep"][m] = {
            "train": _pr(copies["train"], m, d["positives"]["train"]),
            "val": _pr(copies["val"], m, d["positives"]["val"]),
            "val_recall_per_transform": {t: round(sum(r["inliers"] >= m for r in val_t if r["transform"] == t)
                                                  / (d["positives"]["val"] / 10), 3)
                                         for t in sorted({r["transform"] for r in val_t})},
            "demo_edits_pairs": sum(r["inliers"] >= m and r["score"] >= d["edits"] for r in demo),
            "demo_scene_pairs": sum(r["inliers"] >= m for r in demo),
            "same_scene_at_scene_cosine": {
                f"{s} {'positives' if p else 'negatives'}":
                    f"{sum(r['inliers'] >= m for r in scene if r['key'][0] == s and r['positive'] == p)}"
                    f"/{sum(1 for r in scene if r['key'][0] == s and r['positive'] == p)}"
                for s in ("train", "val") for p in (True, False)}}
        say(f"m={m:3d} {json.dumps(out['sweep'][m])}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", required=True, help="fit_duplicate_thresholds.py's --cache")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="only report on --out, measured before")
    ap.add_argument("--limit", type=int, default=0, help="at most this many pairs per part (a quick run)")
    args = ap.parse_args()
    say = lambda msg: print(msg, flush=True)
    if args.report:
        print(json.dumps(report(json.loads(args.out.read_text()), say), indent=1))
        return

    # the sets as fit_duplicate_thresholds.py builds them (its defaults)
    ref_images = read_pairs(args.data, split="train").images
    order = np.random.default_rng(args.seed + 1).permutation(len(ref_images)).tolist()
    reference = build_instance_set([ref_images[i] for i in order[1000:1500]], 100, args.seed + 2)
    val_images = read_pairs(args.data, split="val").images
    evaluated = build_instance_set(val_images, 200, args.seed)
    sets = {"train": reference, "val": evaluated}
    edits = preset_threshold("edits", "instance", turned=True)
    scene = preset_threshold("scene", "instance", turned=True)

    items, meta = [], {}
    for split, s in sets.items():
        db, q = load(args.cache, "reference" if split == "train" else "evaluated")
        cands = candidates(q, db, s, edits)
        for a, b, score, positive, t in cands:
            key = ("copies", split, a, b)
            meta[key] = {"score": score, "positive": positive, "transform": t}
            items.append((key, ("query", split, *s.queries[a]), ("path", s.database[b])))
        meta[("positives", split)] = len(s.queries)
        say(f"{split}: {len(cands)} candidate pairs at edits {edits} "
            f"({sum(c[3] for c in cands)} copies of their original)")

    from imagetext.demo import GALLERY, demo_photos
    from imagetext.eval.same_scene import score_matrix

    shots = np.load(f"{args.cache}-shots.npz")
    demo = {k: shots[f"demo-{k}"] for k in ("instance", "instance_turned")}
    photos = demo_photos()
    sm = score_matrix(demo, "instance+turned")
    for a, b in zip(*np.triu_indices(len(photos), 1)):
        if sm[a, b] >= scene:
            key = ("demo", photos[a].file, photos[b].file)
            meta[key] = {"score": float(sm[a, b])}
            items.append((key, ("path", str(GALLERY / photos[a].file)), ("path", str(GALLERY / photos[b].file))))

    names = shots["names"].tolist()
    row = {n: k for k, n in enumerate(names)}
    vecs = {k: shots[f"shots-{k}"] for k in ("instance", "instance_turned")}
    paths = {Path(p).name: p for split in ("train", "val") for p in read_pairs(args.data, split=split).images}
    for p in read_labels(SCENE_LABELS):
        ra, rb = row[p.image_a], row[p.image_b]
        score = float(one_turn_scores(vecs["instance"][[ra]], vecs["instance_turned"][[ra]],
                                      vecs["instance"][[rb]], vecs["instance_turned"][[rb]])[0, 0])
        if score >= scene:
            key = ("scene", p.split, p.image_a, p.image_b)
            meta[key] = {"score": score, "positive": bool(p.same_scene)}
            items.append((key, ("path", paths[p.image_a]), ("path", paths[p.image_b])))
    if args.limit:
        per_part: dict = {}
        items = [it for it in items if per_part.setdefault(it[0][0], []).append(it) or
                 len(per_part[it[0][0]]) <= args.limit]
    say(f"{len(items)} pairs to verify with {args.workers} workers")

    results, feature_s, match_s, wall = verify_pairs(items, sets, args.workers, say)
    rows = [{"part": k[0], "key": [str(x) for x in k[1:]], "inliers": results[k], **meta[k]}
            for k in results]
    feature_ms, match_ms = 1000 * float(np.mean(feature_s)), 1000 * float(np.mean(match_s))
    out = {"side": LOCAL_SIDE, "n_keypoints": LOCAL_KEYPOINTS, "max_ratio": LOCAL_MAX_RATIO,
           "residual_px": LOCAL_RESIDUAL * LOCAL_SIDE, "mirror_below": MIRROR_BELOW, "edits": edits,
           "scene": scene, "positives": {s: meta[("positives", s)] for s in sets},
           "workers": args.workers, "wall_seconds": round(wall, 1),
           "features_ms": round(feature_ms, 1), "match_ransac_ms": round(match_ms, 1),
           # a pair from scratch: both photos' features, a match, and half the time the mirror
           "ms_per_pair_cold": round(2.5 * feature_ms + 1.5 * match_ms, 1),
           "pairs": rows}
    out["report"] = report(out, say)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    say(f"wrote {args.out}: {len(rows)} pairs, features {out['features_ms']} ms a photo, match "
        f"{out['match_ransac_ms']} ms, {wall:.0f} s wall")


if __name__ == "__main__":
    main()
