"""How well `imagetext cluster` groups photos by what they show: purity against caption keywords.

A photo of a dataset split gets a subject and a scene class from its captions, by the keyword
rules the calibration uses (train/calibrate.py: SUBJECT_CLASSES such as dog, child, bicycle;
SCENE_CLASSES such as water, snow, street): a class when at least 2 of its captions name it
and none names another class of the task. Photos without a class take part in clustering but
not in the scores. For each k and vector kind (index/clusters.kmeans, as `imagetext cluster`
runs it):
- purity: the share of labelled photos whose cluster's most common class is their own;
- chance: the purity of the same cluster sizes with the labels shuffled (mean of 20), the
  floor a clustering that knows nothing reaches (it grows with k);
- NMI: normalised mutual information between clusters and classes (arithmetic mean), which
  unlike purity does not grow just because k does.

    python -m imagetext.eval.clustering ../shared/data/flickr8k --split val

With --naming it measures the albums' names instead (naming(): the schemes index/clusters.py
chooses between), by what the photos' reference captions say:
- hit: over the albums and their name words, the share of the album's photos whose reference
  captions hold the word (a name's head word, singular, no -ing: "suspension bridge" ->
  bridge, "skiing" -> ski);
- lift: the same less the word's share over all photos (a name word every caption says,
  such as "man", says little about an album).
The captions that name albums (as an index made with --caption has) are the default
captioner's, never the reference ones.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

KS = (10, 16, 32)
KINDS = ("semantic", "visual")
N_SHUFFLES = 20


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose cluster's most common label is their own."""
    total = 0
    for c in np.unique(clusters):
        total += Counter(labels[clusters == c].tolist()).most_common(1)[0][1]
    return total / len(labels)


def nmi(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information (arithmetic-mean normalisation, as scikit-learn's default)."""
    _, a = np.unique(clusters, return_inverse=True)
    _, b = np.unique(labels, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return 0.0 if ha + hb == 0 else 2 * mi / (ha + hb)


def chance_purity(clusters: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([purity(clusters, rng.permutation(labels)) for _ in range(N_SHUFFLES)]))


def keyword_classes(captions: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """task ("subject", "scene") -> image -> class, for the images a task's rules label."""
    from imagetext.train.calibrate import CLASSIFY_TASKS, keyword_labels

    out = {}
    for task, classes in CLASSIFY_TASKS.items():
        names = list(classes)
        out[task] = {image: names[i] for image, i in keyword_labels(captions, classes).items()}
    return out


def scores(assignment: np.ndarray, images: list[str], classes: dict[str, dict[str, str]]) -> dict:
    out = {}
    for task, labelled in classes.items():
        keep = np.array([i for i, image in enumerate(images) if image in labelled])
        got = assignment[keep]
        want = np.array([labelled[images[i]] for i in keep])
        out[task] = {"n": len(keep), "purity": round(purity(got, want), 4),
                     "chance": round(chance_purity(got, want), 4), "nmi": round(nmi(got, want), 4)}
    return out


def evaluate(data: str | Path, split: str = "val", model: str | None = None,
             ks: tuple[int, ...] = KS, seed: int = 0) -> dict:
    """Embed the split's photos with `model` (the default one if None), cluster them for each
    k and vector kind, and score the clusterings against the caption keywords."""
    from imagetext.data.readers import read_pairs
    from imagetext.index.clusters import caption_words, keywords, kmeans
    from imagetext.models.registry import load_encoder

    captions = read_pairs(data, split=split).captions_by_image()
    images = list(captions)
    classes = keyword_classes(captions)
    encoder = load_encoder(model)
    start = time.perf_counter()
    embedded = encoder.encode_images(images)
    embed_seconds = time.perf_counter() - start
    vectors = {"semantic": embedded.semantic, "visual": embedded.visual}
    rows = []
    names = {}
    for kind in KINDS:
        for k in ks:
            start = time.perf_counter()
            assignment, dims = kmeans(vectors[kind], k, seed=seed)
            seconds = time.perf_counter() - start
            rows.append({"vectors": kind, "k": k, "dims": dims, "seconds": round(seconds, 3),
                         "clusters": len(np.unique(assignment)),
                         **scores(assignment, images, classes)})
            if kind == "semantic":  # what the albums would be called, from one caption each
                words = keywords([caption_words(captions[i][0]) for i in images], assignment)
                sizes = Counter(assignment.tolist())
                names[k] = [f"{sizes[c]}: {', '.join(words[c])}"
                            for c in sorted(sizes, key=lambda c: -sizes[c])]
    return {"dataset": str(data), "split": split, "model": encoder.name, "n_images": len(images),
            "labelled": {task: len(v) for task, v in classes.items()},
            "embed_seconds": round(embed_seconds, 1), "seed": seed, "results": rows,
            "names": names}


NAMING_SCHEMES = ("captions", "vocabulary", "imagenet", "captions+imagenet", "vocabulary+imagenet")


def name_scores(names: dict[int, list[str]], assignment: np.ndarray,
                said: list[set[str]]) -> tuple[float, float]:
    """(hit, lift) of album names (module docstring); `said`: each photo's reference caption
    words, as head_word makes them."""
    from imagetext.index.clusters import head_word

    base: dict[str, float] = {}
    hits, lifts = [], []
    for c, words in names.items():
        members = np.flatnonzero(assignment == c)
        for word in words:
            h = head_word(word)
            if h not in base:
                base[h] = float(np.mean([h in s for s in said]))
            share = float(np.mean([h in said[i] for i in members]))
            hits.append(share)
            lifts.append(share - base[h])
    return float(np.mean(hits)), float(np.mean(lifts))


def naming(data: str | Path, split: str = "val", model: str | None = None, ks: tuple[int, ...] = (16,),
           seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Name the albums of the split's photos (semantic vectors, k-means as `imagetext cluster`)
    by each of NAMING_SCHEMES and score the names against the reference captions (mean over
    the seeds)."""
    from imagetext.api import caption
    from imagetext.data.readers import read_pairs
    from imagetext.index.clusters import (
        N_KEYWORDS,
        album_name,
        caption_words,
        head_word,
        imagenet_keywords,
        imagenet_probabilities,
        keywords,
        kmeans,
        vocabulary_keywords,
    )
    from imagetext.models.registry import load_encoder

    references = read_pairs(data, split=split).captions_by_image()
    images = list(references)
    said = [{head_word(w) for text in references[i] for w in caption_words(text)} for i in images]
    encoder = load_encoder(model)
    embedded = encoder.encode_images(images)
    generated = {r.image: r.caption for r in caption(images).results}
    docs = [caption_words(generated.get(str(i), "")) for i in images]
    probs = imagenet_probabilities(embedded.visual)
    more = 2 * N_KEYWORDS
    rows, examples = [], {}
    for k in ks:
        totals: dict[str, list[tuple[float, float]]] = {s: [] for s in NAMING_SCHEMES}
        for seed in seeds:
            assignment, _ = kmeans(embedded.semantic, k, seed=seed)
            found = {"captions": keywords(docs, assignment, more),
                     "vocabulary": vocabulary_keywords(encoder, embedded.semantic, assignment, more),
                     "imagenet": imagenet_keywords(probs, assignment, more, confident=False)}
            lead = imagenet_keywords(probs, assignment)
            names = {scheme: {c: album_name(words) for c, words in found[scheme].items()}
                     for scheme in ("captions", "vocabulary", "imagenet")}
            for scheme in ("captions", "vocabulary"):
                names[f"{scheme}+imagenet"] = {c: album_name([*lead[c], *words])
                                               for c, words in found[scheme].items()}
            for scheme in NAMING_SCHEMES:
                totals[scheme].append(name_scores(names[scheme], assignment, said))
            if seed == seeds[0]:
                sizes = Counter(assignment.tolist())
                examples[k] = [{"size": sizes[c], **{s: ", ".join(names[s][c]) for s in NAMING_SCHEMES}}
                               for c in sorted(sizes, key=lambda c: -sizes[c])]
        for scheme, got in totals.items():
            hit, lift = np.mean(got, axis=0)
            rows.append({"k": k, "scheme": scheme, "hit": round(float(hit), 3),
                         "lift": round(float(lift), 3)})
    return {"dataset": str(data), "split": split, "model": encoder.name, "n_images": len(images),
            "seeds": list(seeds), "results": rows, "names": examples}


def table(report: dict) -> str:
    lines = [("| vectors | k | subject purity (chance) | subject NMI | scene purity (chance) "
              "| scene NMI | k-means s |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        s, c = r["subject"], r["scene"]
        lines.append(f"| {r['vectors']} | {r['k']} | {s['purity']:.1%} ({s['chance']:.1%}) | "
                     f"{s['nmi']:.3f} | {c['purity']:.1%} ({c['chance']:.1%}) | {c['nmi']:.3f} | "
                     f"{r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="A dataset folder or caption file (Flickr8k's folder).")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default=None)
    parser.add_argument("--k", type=int, nargs="+", help=f"Default: {' '.join(map(str, KS))}; "
                        "16 with --naming.")
    parser.add_argument("--out", type=Path, help="Also write the report as JSON here.")
    parser.add_argument("--naming", action="store_true",
                        help="Score the albums' names by each naming scheme instead (k default 16).")
    args = parser.parse_args(argv)
    if args.naming:
        report = naming(args.data, args.split, args.model, tuple(args.k or (16,)))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{report['model']} on {report['split']}: {report['n_images']} photos, album names "
              f"(mean of seeds {report['seeds']})")
        print("| k | scheme | hit | lift |\n| --- | --- | --- | --- |")
        for r in report["results"]:
            print(f"| {r['k']} | {r['scheme']} | {r['hit']:.3f} | {r['lift']:.3f} |")
        for k, albums in report["names"].items():
            print(f"\nk={k}, seed {report['seeds'][0]}:")
            for a in albums:
                print(f"  {a['size']:4d}  " + " | ".join(a[s] for s in NAMING_SCHEMES))
        return
    report = evaluate(args.data, args.split, args.model, tuple(args.k or KS))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['model']} on {report['split']}: {report['n_images']} photos, embedded in "
          f"{report['embed_seconds']} s; labelled: {report['labelled']}")
    print(table(report))
    for k, names in report["names"].items():
        print(f"\nk={k}, semantic: " + "; ".join(names))


if __name__ == "__main__":
    main()
