"""Choose the duplicate presets' similarity thresholds for `imagetext duplicates`.

    python scripts/fit_duplicate_thresholds.py --data ../shared/data/flickr8k

writes src/imagetext/instance/whitening/duplicate_thresholds.json, the one place the
thresholds live (index/duplicates.py reads it). For each vector kind the duplicates can run
on ("instance": the shipped instance feature, the default extractor's whitened MAC of the
head map; "visual": the encoder's pooled 1280-d vector; "instance+turned": instance vectors
with each photo's turned vector too, pairs scored as `duplicates --turned` scores them, so
that copies turned by 90 degrees count) each preset's threshold is chosen on
(edited copy, photo) pairs of a set built from reference-split photos (the photos and seeds
of `imagetext eval instance`'s reference set), with eval/instance.py's choose_threshold:
the benchmark's PRESETS (the lowest cosine whose precision reaches 0.999, 0.97 or 0.8 with every
copy of a photo, whatever its transformation, a positive). The cosine cannot tell a resized
copy from another shot of the scene (MAC is mirror-invariant, and a copy shrunk to 30% scores
lower than a flipped one), so "exact copies" are the pairs of the "same scene" cosine whose small grey images
(index/duplicates.small_grey) have an SSIM of at least the value chosen here: the one that
keeps EXACT_RECALL of the reference set's resized and re-encoded copies (EXACT_TRANSFORMS);
the share of each transformation's copies that pass it is reported on both sets, and the
evaluated set's recall per transformation of the two tests together, per vector kind.
Precision, recall and recall per transformation at each threshold are reported on the
reference pairs and on the evaluated split's set (val by default). One encoder run per image
gives both vectors.

Edited copies are not other shots of a scene, so each kind's presets are also measured on
real ones ("same_scene_shots", imagetext.eval.same_scene): the labelled Flickr8k pairs of
scripts/data/flickr8k_same_scene.tsv (bursts against look-alikes, by eye; see
scripts/build_same_scene_pairs.py), tuned on train and reported on val, with UNRELATED_PHOTOS
train photos for the unrelated pairs and the demo gallery for the look-alikes: the average
precision of each kind (semantic vectors too), precision/recall of the labelled pairs at each
preset's threshold, and the threshold that keeps the look-alikes apart.

"edits_spatial" is what `duplicates(..., spatial=True)` asks of an "edits" pair besides its
cosine ("instance+turned"): the RANSAC inliers of its photos' local features
(imagetext.instance.spatial), the most that keep SPATIAL_RECALL of the reference set's copies
that reach the cosine (the candidate pairs verified as
scripts/measure_spatial_verification.py does, which also measures look-alikes and real shots of one
scene); precision and recall of both tests together are reported on both sets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from build_same_scene_pairs import LABELS as SCENE_LABELS
from measure_spatial_verification import verify_pairs

from imagetext.data.readers import read_pairs
from imagetext.eval.instance import (
    PRESETS,
    build_instance_set,
    choose_threshold,
    pair_labels,
    precision_recall,
)
from imagetext.eval.same_scene import (
    MARGIN,
    MAX_UNRELATED,
    UNRELATED_ID_GAP,
    measure_kind,
    read_labels,
)
from imagetext.index.duplicates import TURNED_SUFFIX, pixel_similarity, small_grey
from imagetext.instance.features import (
    WHITENING_DIR,
    InstanceExtractor,
    one_turn_scores,
    turned_pixels,
)
from imagetext.instance.pooling import l2n
from imagetext.io.images import open_image

OUT = WHITENING_DIR / "duplicate_thresholds.json"
EXACT_TRANSFORMS = ("resize", "jpeg")
EXACT_RECALL = 0.99
EXACT_CANDIDATES = "same scene"  # the cosine preset whose pairs the SSIM then confirms
UNRELATED_PHOTOS = 1500  # train photos whose pairs of far-apart Flickr ids are the unrelated ones
SPATIAL_RECALL = 0.999  # of the reference copies the "edits" cosine keeps
SPATIAL_WORKERS = 2
SCENE_KINDS = ("instance", "visual", "instance" + TURNED_SUFFIX, "semantic")


def vectors(encoder, extractor, images, batch_size=32) -> dict[str, np.ndarray]:
    """The visual, semantic and instance vectors of `images`, and the instance vector of each turned by
    90 degrees, as a collection stores them (Collection.turn_missing)."""
    out = {"instance": [], "visual": [], "instance_turned": [], "semantic": []}
    for i in range(0, len(images), batch_size):
        pixels = np.stack([encoder.preprocess(im) for im in images[i : i + batch_size]])
        outputs = encoder.image_outputs(pixels)
        out["visual"].append(l2n(outputs["visual"]))
        out["semantic"].append(l2n(outputs["semantic"]))
        out["instance"].append(extractor.vectors_from_maps(outputs))
        out["instance_turned"].append(extractor.vectors_from_maps(encoder.image_outputs(turned_pixels(pixels))))
    return {k: np.concatenate(v) for k, v in out.items()}


def pair_scores(q: dict, db: dict, kind: str) -> np.ndarray:
    """(query, database photo) cosines of a kind; "instance+turned" as duplicates --turned
    scores pairs (features.one_turn_scores)."""
    if kind == "instance" + TURNED_SUFFIX:
        return one_turn_scores(q["instance"], q["instance_turned"], db["instance"], db["instance_turned"])
    return q[kind] @ db[kind].T


def set_vectors(encoder, extractor, s, say, cache: Path | None) -> tuple[dict, dict]:
    if cache is not None and cache.is_file():
        arrays = np.load(cache)
        return ({k: arrays[f"db-{k}"] for k in ("instance", "visual", "instance_turned")},
                {k: arrays[f"q-{k}"] for k in ("instance", "visual", "instance_turned")})
    say(f"{len(s.database)} database photos")
    db = vectors(encoder, extractor, [open_image(p) for p in s.database])
    say(f"{len(s.queries)} edited copies")
    q = vectors(encoder, extractor, [s.query_image(o, t) for o, t in s.queries])
    if cache is not None:
        np.savez(cache, **{f"db-{k}": v for k, v in db.items()}, **{f"q-{k}": v for k, v in q.items()})
    return db, q


def same_scene_shots(encoder, extractor, data, kinds: dict, seed: int, say,
                     cache: Path | None) -> dict:
    """Each kind's presets (`kinds`, as fitted above) on real shots of one scene and on
    look-alikes: imagetext.eval.same_scene.measure_kind on the labelled pairs."""
    from imagetext.demo import GALLERY, demo_photos

    labels = read_labels(SCENE_LABELS)
    paths = {Path(p).name: p for split in sorted({p.split for p in labels})
             for p in read_pairs(data, split=split).images}
    train = sorted(Path(p).name for p in read_pairs(data, split="train").images)
    sample = [train[k] for k in np.random.default_rng(seed + 3).choice(len(train), UNRELATED_PHOTOS,
                                                                       replace=False)]
    names = sorted({n for p in labels for n in (p.image_a, p.image_b)} | set(sample))
    arrays = np.load(cache) if cache is not None and cache.is_file() else {}
    if "names" in arrays and arrays["names"].tolist() == names:  # the photos of these labels
        vecs = {k[len("shots-"):]: v for k, v in arrays.items() if k.startswith("shots-")}
        demo = {k[len("demo-"):]: v for k, v in arrays.items() if k.startswith("demo-")}
    else:
        say(f"{len(names)} Flickr8k photos of labelled pairs and unrelated ones, "
            f"{len(demo_photos())} demo gallery photos")
        vecs = vectors(encoder, extractor, [open_image(paths[n]) for n in names])
        demo = vectors(encoder, extractor, [open_image(GALLERY / p.file) for p in demo_photos()])
        if cache is not None:
            np.savez(cache, names=np.array(names), **{f"shots-{k}": v for k, v in vecs.items()},
                     **{f"demo-{k}": v for k, v in demo.items()})
    row = {n: k for k, n in enumerate(names)}
    unrelated_rows = np.array(sorted(row[n] for n in sample))
    out = {}
    for kind in SCENE_KINDS:
        presets = {p: v["threshold"] for p, v in kinds.get(kind, {}).items()}
        out[kind] = measure_kind(kind, labels, names, vecs, unrelated_rows, demo, presets)
        say(f"same scene shots {kind:15s} {json.dumps(out[kind])}")
    return out


def edits_spatial(sets: dict, scores: dict, threshold: float, say, cache: Path | None) -> dict:
    """The inliers "edits" pairs must also reach (spatial=True): the candidate pairs of each
    set ({split: InstanceSet}, reference first; `scores`: their flattened "instance+turned"
    cosines) at `threshold` verified (measure_spatial_verification.verify_pairs), the count
    chosen on the reference copies, precision/recall of both tests on each set."""
    pairs = {}
    for split, s in sets.items():
        q, d = np.nonzero(scores[split].reshape(len(s.queries), -1) >= threshold)
        pairs[split] = (q, d)
    arrays = np.load(cache) if cache is not None and cache.is_file() else {}
    if all(f"{k}-pairs" in arrays and np.array_equal(arrays[f"{k}-pairs"], np.stack(pairs[k]))
           for k in sets):
        inliers = {k: arrays[f"{k}-inliers"] for k in sets}
    else:
        items = [((k, int(q), int(d)), ("query", k, *sets[k].queries[q]), ("path", sets[k].database[d]))
                 for k in sets for q, d in zip(*pairs[k])]
        say(f"spatial verification of {len(items)} candidate pairs")
        found, *_ = verify_pairs(items, sets, SPATIAL_WORKERS, say)
        inliers = {k: np.array([found[k, int(q), int(d)] for q, d in zip(*pairs[k])]) for k in sets}
        if cache is not None:
            np.savez(cache, **{f"{k}-pairs": np.stack(pairs[k]) for k in sets},
                     **{f"{k}-inliers": v for k, v in inliers.items()})
    own = {k: np.array([sets[k].queries[q][0] == d for q, d in zip(*pairs[k])], bool) for k in sets}
    reference = next(iter(sets))
    m = int(np.floor(np.quantile(inliers[reference][own[reference]], 1 - SPATIAL_RECALL)))
    out = {"inliers": m, "candidates": "edits", "kind": "instance" + TURNED_SUFFIX}
    for k, s in sets.items():
        kept = inliers[k] >= m
        tp = int((kept & own[k]).sum())
        kinds = np.array([s.queries[q][1] for q in pairs[k][0]])
        out[f"{k}_precision"] = round(tp / max(1, int(kept.sum())), 4)
        out[f"{k}_recall"] = round(tp / len(s.queries), 4)
        out[f"{k}_false_candidates_most_inliers"] = int(inliers[k][~own[k]].max(initial=0))
        out[f"{k}_recall_per_transform"] = {
            t: round(float((kept & own[k] & (kinds == t)).sum() / (len(s.queries) / len(s.transforms))), 3)
            for t in s.transforms}
    say(f"edits spatial {out}")
    return out


def labels_of(s, transforms=None) -> np.ndarray:
    """(query, database photo) pair labels, flattened: True for a query and its original
    (only for queries of `transforms`, if given)."""
    positives = np.array([o for o, _ in s.queries])
    labels = pair_labels(len(positives), len(s.database), positives)
    if transforms is not None:
        labels[[t not in transforms for _, t in s.queries]] = False
    return labels.ravel()


def per_transform_recall(s, scores: np.ndarray, threshold: float) -> dict[str, float]:
    own = scores.reshape(len(s.queries), -1)[np.arange(len(s.queries)), [o for o, _ in s.queries]]
    kinds = np.array([t for _, t in s.queries])
    return {t: round(float((own[kinds == t] >= threshold).mean()), 3) for t in s.transforms}


def ssim_of_copies(s, say) -> np.ndarray:
    """The pixel similarity of every query of `s` to its original."""
    say(f"SSIM of {len(s.queries)} copies")
    originals = {o: small_grey(s.database[o]) for o in s.originals}
    return np.array([pixel_similarity(small_grey(s.query_image(o, t)), originals[o])
                     for o, t in s.queries])


def pass_rates(s, ssim: np.ndarray, threshold: float) -> dict[str, float]:
    kinds = np.array([t for _, t in s.queries])
    return {t: round(float((ssim[kinds == t] >= threshold).mean()), 3) for t in s.transforms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--reference-split", default="train")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=200, help="originals of the evaluated split")
    ap.add_argument("--n-reference", type=int, default=100)
    ap.add_argument("--n-reference-database", type=int, default=500)
    ap.add_argument("--n-whitening", type=int, default=1000, help="as the benchmark: the "
                    "reference photos after these are the reference set's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--cache", type=Path, help="keep the vectors in CACHE-reference.npz, "
                    "CACHE-evaluated.npz and CACHE-shots.npz and reuse them")
    args = ap.parse_args()

    from imagetext.api import get_encoder

    encoder = get_encoder(None)
    extractor = InstanceExtractor.default()
    say = lambda msg: print(msg, flush=True)
    ref_images = read_pairs(args.data, split=args.reference_split).images
    order = np.random.default_rng(args.seed + 1).permutation(len(ref_images)).tolist()
    ref_db = [ref_images[i] for i in order[args.n_whitening : args.n_whitening + args.n_reference_database]]
    reference = build_instance_set(ref_db, args.n_reference, args.seed + 2)
    images = read_pairs(args.data, split=args.split).images
    evaluated = build_instance_set(images, min(args.n, len(images)), args.seed)
    cache = (lambda name: Path(f"{args.cache}-{name}.npz")) if args.cache else (lambda name: None)
    ref_db_v, ref_q_v = set_vectors(encoder, extractor, reference, say, cache("reference"))
    db_v, q_v = set_vectors(encoder, extractor, evaluated, say, cache("evaluated"))
    criteria = {k: (None, c, t) for k, (c, t) in PRESETS.items()}
    ref_ssim, ssim = ssim_of_copies(reference, say), ssim_of_copies(evaluated, say)
    ref_kinds = np.array([t for _, t in reference.queries])
    ssim_t = float(np.quantile(ref_ssim[np.isin(ref_kinds, EXACT_TRANSFORMS)], 1 - EXACT_RECALL))
    exact_ssim = {"threshold": round(ssim_t, 4), "candidates": EXACT_CANDIDATES,
                  f"{args.reference_split}_pass_rate": pass_rates(reference, ref_ssim, ssim_t),
                  f"{args.split}_pass_rate": pass_rates(evaluated, ssim, ssim_t)}
    kinds_of = np.array([t for _, t in evaluated.queries])
    own = np.arange(len(evaluated.queries)), [o for o, _ in evaluated.queries]
    for kind in ("instance", "visual"):  # exact copies: same-scene candidates, SSIM-confirmed
        cos = (q_v[kind] @ db_v[kind].T)[own]
        t = choose_threshold((ref_q_v[kind] @ ref_db_v[kind].T).ravel(), labels_of(reference),
                             *PRESETS[EXACT_CANDIDATES])
        passed = (cos >= t) & (ssim >= ssim_t)
        exact_ssim[f"{args.split}_recall_{kind}"] = {
            k: round(float(passed[kinds_of == k].mean()), 3) for k in evaluated.transforms}
    say(f"exact copies SSIM {exact_ssim}")
    kinds = {}
    for kind in ("instance", "visual", "instance" + TURNED_SUFFIX):
        ref_scores = pair_scores(ref_q_v, ref_db_v, kind).ravel()
        scores = pair_scores(q_v, db_v, kind).ravel()
        presets = {}
        for preset, (positive, criterion, target) in criteria.items():
            ref_labels, labels = labels_of(reference, positive), labels_of(evaluated, positive)
            t = choose_threshold(ref_scores, ref_labels, criterion, target)
            rp, rr = precision_recall(ref_scores, ref_labels, t)
            p, r = precision_recall(scores, labels, t)
            presets[preset] = {"threshold": round(t, 4),
                               f"{args.reference_split}_precision": round(rp, 4),
                               f"{args.reference_split}_recall": round(rr, 4),
                               f"{args.split}_precision": round(p, 4), f"{args.split}_recall": round(r, 4),
                               f"{args.split}_recall_per_transform": per_transform_recall(evaluated, scores, t)}
            say(f"{kind:8s} {preset:12s} {presets[preset]}")
        kinds[kind] = presets
    turned_kind = "instance" + TURNED_SUFFIX
    spatial = edits_spatial(
        {args.reference_split: reference, args.split: evaluated},
        {args.reference_split: pair_scores(ref_q_v, ref_db_v, turned_kind).ravel(),
         args.split: pair_scores(q_v, db_v, turned_kind).ravel()},
        kinds[turned_kind]["edits"]["threshold"], say, cache("spatial"))
    shots = same_scene_shots(encoder, extractor, args.data, kinds, args.seed, say, cache("shots"))
    out = {
        "about": "cosine thresholds of the duplicate presets per vector kind, written by "
                 "scripts/fit_duplicate_thresholds.py (see its docstring)",
        "instance_feature": extractor.config.name + f"+w{extractor.dim}",
        "criteria": {**{k: f"cosine: {c} >= {t} on the {args.reference_split} pairs (every "
                        "copy a positive)" for k, (_, c, t) in criteria.items()},
                     "exact copies SSIM": f"recall {EXACT_RECALL} of the {args.reference_split} "
                     f"set's {' and '.join(EXACT_TRANSFORMS)} copies",
                     "edits spatial": f"RANSAC inliers: keep {SPATIAL_RECALL} of the "
                     f"{args.reference_split} copies that reach the edits cosine"},
        "data": Path(args.data).name, "seed": args.seed,
        "reference": {"split": args.reference_split, "originals": len(reference.originals),
                      "database": len(reference.database), "queries": len(reference.queries)},
        "evaluated": {"split": args.split, "originals": len(evaluated.originals),
                      "database": len(evaluated.database), "queries": len(evaluated.queries)},
        "kinds": kinds,
        "exact_copies_ssim": exact_ssim,
        "edits_spatial": spatial,
        "same_scene_shots": {
            "about": "each kind's presets on real shots of one scene (labelled by eye: "
                     f"scripts/data/{SCENE_LABELS.name}, train and val) and on look-alikes (the "
                     "demo gallery, all different scenes): see imagetext.eval.same_scene",
            "unrelated": f"pairs of {UNRELATED_PHOTOS} train photos whose Flickr ids are more "
                         f"than {UNRELATED_ID_GAP:g} apart",
            "apart from look-alikes": f"the lowest cosine that at most {MAX_UNRELATED:g} of the "
                                      f"unrelated pairs reach and {MARGIN} above every pair of "
                                      "the demo gallery",
            "kinds": shots},
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
