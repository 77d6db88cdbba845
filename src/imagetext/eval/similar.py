"""What `similar` ranks by: photos that look like the query, and copies of it, on a split.

`imagetext similar` answers two questions at once: "find photos like this one" (the same kind
of subject or scene) and "find copies and edits of this photo". The instance benchmark
(eval/instance.py) measures only the second. This measures both, for each way `similar` could
rank (`OPTIONS`):

- `visual`: the encoder's pooled visual vector (1280-d for the default model);
- `semantic`: its text-image vector;
- `instance`: the instance feature (the whitened MAC of the head map, instance/features.py),
  as stored per image while indexing;
- `instance+turns`: the same with the query turned by 0/90/180/270 degrees, its best turn
  counting (`best_of_turns`);
- `hybrid`, `hybrid+turns`: the photos whose instance cosine (plain or best of the turns)
  reaches the "edits" duplicates threshold first (copies and edits of the query, by that
  cosine), then the rest by the visual vector; `hybrid-semantic+turns`: the rest by the
  semantic vector instead (what `similar` does: index/search.py `Searcher.similar`);
  `hybrid-semantic+turn`: the same with query and photos turned once, by 90 degrees, and
  paired as `duplicates` pairs them (features.one_turn_scores), at that pairing's threshold
  (what `similar` does where the index holds the photos' turned vectors).

Generic similarity, each photo of the split a query among the split's other photos, its
top `k` neighbours scored by:
- label precision@k: the share of neighbours with the query's subject (dog, child, bicycle,
  ...) or scene (water, snow, street, ...) class, for the queries that have one; the classes
  are the caption keyword rules of the labelled Flickr8k sets (data/labelled.py
  `flickr8k_keyword_labels`, train/calibrate.py); a neighbour without the class is a miss;
- caption relatedness: the mean cosine between the query's and each neighbour's captions,
  each photo's captions as the normalised mean of their vectors by the model's text encoder
  (for the default model, MiniLM and its projection; mind that this is the space the
  `semantic` vectors were trained to match, which flatters them).
Each has a chance level (every other photo a neighbour).

Copies: the instance benchmark's set (`build_instance_set`: `n_copies` photos of the split,
each transformed 10 ways, searched among all the split's photos), scored with Recall@1 and
mAP per transformation (`retrieval_metrics`), every option embedded by the same model run.

    imagetext eval similar --data ../shared/data/flickr8k --split val [--json]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from imagetext.errors import InvalidInputError

OPTIONS = ("visual", "semantic", "instance", "instance+turns", "hybrid", "hybrid+turns",
           "hybrid-semantic+turns", "hybrid-semantic+turn")
TASKS = ("subject", "scene")


def embed_turned(encoder, items: Sequence, load: Callable, batch_size: int = 8,
                 progress: Callable[[str], None] | None = None, what: str = "photos"
                 ) -> dict[str, np.ndarray]:
    """{"semantic": (n, d), "visual": (n, d), "instance": (n, 4, d)} of `items` (each read by
    `load` as an upright RGB image), as `similar` embeds a query (`turned_image_vectors`)."""
    from imagetext.index.search import turned_image_vectors

    out: dict[str, list[np.ndarray]] = {"semantic": [], "visual": [], "instance": []}
    for i in range(0, len(items), batch_size):
        semantic, visual, instance = turned_image_vectors(
            encoder, [load(x) for x in items[i : i + batch_size]])
        if instance is None:
            raise InvalidInputError(f"the model {encoder.name} gives no instance feature; "
                                    "measure with the default model")
        for key, v in (("semantic", semantic), ("visual", visual), ("instance", instance)):
            out[key].append(v)
        if progress and (i // batch_size) % 25 == 0:
            progress(f"{what}: {min(i + batch_size, len(items))}/{len(items)}")
    return {key: np.concatenate(v) for key, v in out.items()}


def option_keys(option: str, queries: dict[str, np.ndarray], database: dict[str, np.ndarray],
                threshold: float, turn_threshold: float | None = None) -> np.ndarray:
    """(n_queries, n_database) ranking keys of `option` (higher first). `queries` and
    `database` as `embed_turned` gives them (instance (n, 4, d)). The hybrids' keys put
    copies (instance cosine >= threshold; `+turn`: `turn_threshold`) above every other cosine:
    2 + their instance cosine."""
    from imagetext.instance.features import best_of_turns, one_turn_scores

    if option in ("visual", "semantic"):
        return queries[option] @ database[option].T
    q, db = queries["instance"], database["instance"]
    if option.endswith("+turn"):
        base = option.removesuffix("+turn")
        inst = one_turn_scores(q[:, 0], q[:, 1], db[:, 0], db[:, 1])
        threshold = turn_threshold
    else:
        base = option.removesuffix("+turns")
        inst = best_of_turns(q if option.endswith("+turns") else q[:, 0], db[:, 0])
    if base == "instance":
        return inst
    if base in ("hybrid", "hybrid-semantic"):
        rest = "semantic" if base == "hybrid-semantic" else "visual"
        return np.where(inst >= threshold, 2.0 + inst, queries[rest] @ database[rest].T)
    raise InvalidInputError(f"unknown option {option!r}; choose from {', '.join(OPTIONS)}")


def top_neighbours(keys: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k best columns, best first, the row's own column left out
    (a square matrix of the split against itself)."""
    keys = keys.astype(np.float64, copy=True)
    np.fill_diagonal(keys, -np.inf)
    part = np.argpartition(-keys, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def label_precision(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Mean over labelled queries (label >= 0) of the share of neighbours with its label."""
    queries = np.nonzero(labels >= 0)[0]
    return float(np.mean(labels[neighbours[queries]] == labels[queries, None]))


def chance_label_precision(labels: np.ndarray) -> float:
    """The same with every other photo a neighbour."""
    queries = labels[labels >= 0]
    same = np.array([(labels == c).sum() - 1 for c in queries])
    return float(np.mean(same / (len(labels) - 1)))


def caption_relatedness(neighbours: np.ndarray, centroids: np.ndarray) -> float:
    return float(np.mean(np.einsum("nd,nkd->nk", centroids, centroids[neighbours])))


def chance_caption_relatedness(centroids: np.ndarray) -> float:
    sims = centroids @ centroids.T
    n = len(sims)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def caption_centroids(encoder, captions: dict[str, list[str]], images: Sequence[str]) -> np.ndarray:
    """Each image's captions as the L2-normalised mean of their text vectors."""
    from imagetext.models.base import l2_normalize

    texts = [c for image in images for c in captions[image]]
    vecs = encoder.encode_texts(texts)
    out, start = [], 0
    for image in images:
        n = len(captions[image])
        out.append(vecs[start : start + n].mean(axis=0))
        start += n
    return l2_normalize(np.stack(out))


def evaluate_similar(data: str, split: str = "val", model=None, k: int = 10,
                     n_copies: int = 200, seed: int = 0, limit: int | None = None,
                     batch_size: int = 8, options: Sequence[str] = OPTIONS,
                     progress: Callable[[str], None] | None = None) -> dict:
    """The measurement of the module docstring on `split` of `data` (`limit`: only its first
    N photos; `n_copies`: originals of the copy set, 0 for none)."""
    from imagetext.api import get_encoder
    from imagetext.data.readers import read_pairs
    from imagetext.eval.instance import build_instance_set, retrieval_metrics
    from imagetext.index.duplicates import preset_threshold
    from imagetext.index.search import COPY_PRESET, copy_threshold
    from imagetext.io.images import open_image
    from imagetext.train.calibrate import CLASSIFY_TASKS, keyword_labels

    unknown = [o for o in options if o not in OPTIONS]
    if unknown or not options:
        raise InvalidInputError(f"unknown option {unknown[0] if unknown else '(none)'!r}; "
                                f"choose from {', '.join(OPTIONS)}")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    captions = read_pairs(data, split=split).captions_by_image()
    images = list(captions)[: limit or None]
    if len(images) <= k:
        raise InvalidInputError(f"{data} has {len(images)} photos in split {split!r}; need more "
                                f"than k = {k}")
    encoder = get_encoder(model)
    threshold = copy_threshold()
    turn_threshold = preset_threshold(COPY_PRESET, "instance", turned=True)

    def load(path):
        return open_image(path, draft_size=encoder.preprocess.resize)

    t0 = time.perf_counter()
    db_turned = embed_turned(encoder, images, load, batch_size, say, f"{split} photos (4 turns each)")
    ms_turned = 1000 * (time.perf_counter() - t0) / len(images)
    database = db_turned
    say("caption vectors")
    centroids = caption_centroids(encoder, captions, images)
    labels = {}
    for task in TASKS:
        found = keyword_labels({i: captions[i] for i in images}, CLASSIFY_TASKS[task])
        labels[task] = np.array([found.get(i, -1) for i in images])

    results: dict[str, dict] = {}
    neighbours = {}
    for option in options:
        keys = option_keys(option, db_turned, database, threshold, turn_threshold)
        nb = neighbours[option] = top_neighbours(keys, k)
        row = {f"{task}_p{k}": round(label_precision(nb, labels[task]), 4) for task in TASKS}
        row["caption_relatedness"] = round(caption_relatedness(nb, centroids), 4)
        if option.startswith("hybrid"):
            copies = np.take_along_axis(keys, nb, axis=1) >= 2.0
            row["queries_with_copies"] = int(copies.any(axis=1).sum())
            row["copies_per_query"] = round(float(copies.sum(axis=1).mean()), 4)
        results[option] = row
    if "visual" in neighbours:
        for option, nb in neighbours.items():
            same = [len(set(a) & set(b)) for a, b in zip(nb.tolist(), neighbours["visual"].tolist())]
            results[option]["overlap_with_visual"] = round(float(np.mean(same)) / k, 4)
    chance = {f"{task}_p{k}": round(chance_label_precision(labels[task]), 4) for task in TASKS}
    chance["caption_relatedness"] = round(chance_caption_relatedness(centroids), 4)

    copy_set = None
    if n_copies:
        copy_set = build_instance_set(images, min(n_copies, len(images)), seed)
        queries = embed_turned(encoder, copy_set.queries, lambda q: copy_set.query_image(*q),
                               batch_size, say, "copies (4 turns each)")
        positives = np.array([o for o, _ in copy_set.queries])
        kinds = [t for _, t in copy_set.queries]
        for option in options:
            keys = option_keys(option, queries, database, threshold, turn_threshold)
            m = retrieval_metrics(keys, positives, kinds)
            results[option].update({"copy_r1": m["mean_r1"], "copy_map": m["mean_map"],
                                    "copy_r1_per_transform": {t: v["r1"] for t, v in m["per_transform"].items()}})
    return {
        "data": str(data), "split": split, "model": encoder.name, "n_images": len(images), "k": k,
        "copy_threshold": threshold, "copy_threshold_one_turn": turn_threshold,
        "labelled": {task: int((labels[task] >= 0).sum()) for task in TASKS},
        "n_copy_queries": len(copy_set.queries) if copy_set else 0,
        "n_copy_originals": len(copy_set.originals) if copy_set else 0, "seed": seed,
        "options": results, "chance": chance,
        "ms_per_image_4_turns": round(ms_turned, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(report: dict) -> str:
    """The report as a Markdown table (the README's)."""
    k = report["k"]
    copies = report["n_copy_queries"] > 0
    head = ["ranks by", f"subject P@{k}", f"scene P@{k}", "caption relatedness"]
    if copies:
        head += ["copies R@1", "copies mAP", "turned copies R@1", "blurred copies R@1"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in report["options"].items():
        cells = [f"`{name}`", f"{r[f'subject_p{k}']:.3f}", f"{r[f'scene_p{k}']:.3f}",
                 f"{r['caption_relatedness']:.3f}"]
        if copies:
            per = r["copy_r1_per_transform"]
            cells += [f"{r['copy_r1']:.3f}", f"{r['copy_map']:.3f}",
                      *("" if per.get(t) is None else f"{per[t]:.3f}" for t in ("rot90", "blur"))]
        lines.append("| " + " | ".join(cells) + " |")
    c = report["chance"]
    cells = ["chance", f"{c[f'subject_p{k}']:.3f}", f"{c[f'scene_p{k}']:.3f}",
             f"{c['caption_relatedness']:.3f}"] + ([""] * 4 if copies else [])
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
