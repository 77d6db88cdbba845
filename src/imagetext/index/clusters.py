"""Albums: a collection grouped by what its photos show (`imagetext cluster`, the Explore page).

The vectors of one kind (semantic by default: what a photo shows, in the space text queries
use; or visual: how it looks) are reduced by PCA to at most PCA_DIMS dimensions, then split by
FAISS's k-means (seeded, so a run is repeatable). Each cluster is named from its members:
- with captions (an index made with `--caption`, or images added with theirs): its
  keywords are the caption words most particular to it (each word's share of the cluster's
  captions against its share of all captions), and its typical captions are those of the
  members nearest its centre;
- without: its keywords are the VOCABULARY labels (everyday things and scenes) that the
  model finds most particular to its photos (their mean similarity to the cluster's photos
  against their mean similarity to all photos);
- either way, led by an ImageNet label when the model's image tower is the stock
  EfficientNet-Lite0 (the default model, ConSE) and the album is confidently one ImageNet
  class or kind ("dog", "suspension bridge", "palace"; see imagenet_keywords): the tower's own
  classifier read from the stored visual vectors. Names are short (N_KEYWORDS) and hold no
  word twice ("dog, dogs", "suspension bridge, bridge"; album_name).

The clustering is stored in the index (tables `clusters` and `cluster_members`, meta key
`clusters`) with the model's fingerprint and the index's build: another model, other weights
or a rebuild make it void (none is shown until `imagetext cluster` runs again). Images added
since a clustering are in no album (`Clustering.unclustered` counts them), removed ones leave
theirs. Vectors are read through `Collection.vectors`, never from the store's columns.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from imagetext.errors import ImagetextError, InvalidInputError
from imagetext.models.imagenet import stock_classifier

if TYPE_CHECKING:
    from imagetext.index.collection import Collection
    from imagetext.index.records import SearchResult

PCA_DIMS = 100
NITER = 20
MIN_K, MAX_K = 2, 64
VECTOR_KINDS = ("semantic", "visual")
N_KEYWORDS = 3  # keywords in a cluster's name
N_TYPICAL = 3  # typical captions kept per cluster
N_COVER = 4  # photos on an album's cover
META_KEY = "clusters"

# words that name nothing in a photo
STOP_WORDS = frozenset((
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "from", "with",
    "without", "by", "into", "onto", "over", "under", "near", "next", "up", "down", "out",
    "off", "through", "across", "along", "around", "behind", "beside", "between", "above",
    "below", "while", "is", "are", "was", "were", "be", "been", "being", "has", "have", "had",
    "do", "does", "did", "its", "it", "it's", "his", "her", "their", "there", "this", "that",
    "these", "those", "some", "one", "two", "three", "four", "five", "several", "many",
    "other", "another", "each", "who", "what", "which", "as", "him", "he", "she", "they",
    "them", "something", "someone", "very", "just",
))

# what names clusters when the photos have no captions: everyday things, places and scenes,
# each read by the text tower as "a photo of a X." (ImageNet's classes were tried: their fine
# grain named a cluster of farm animals, pets and food "toy terrier, beagle, toy poodle", and
# embedding 1000 labels took 6.5 s)
VOCABULARY = (
    "person", "man", "woman", "child", "baby", "family", "crowd", "portrait", "musician",
    "dancer", "athlete", "soldier", "worker", "animal", "dog", "cat", "horse", "cow", "sheep",
    "pig", "bird", "duck", "chicken", "fish", "insect", "bear", "monkey", "elephant",
    "giraffe", "zebra", "lion", "tiger", "wild animal", "farm animal", "pet", "food", "fruit",
    "vegetable", "bread", "cake", "coffee", "drink", "meal", "dessert", "city", "street",
    "building", "house", "church", "temple", "tower", "bridge", "monument", "ruins", "market",
    "shop", "restaurant", "kitchen", "room", "office", "stadium", "park", "garden", "farm",
    "beach", "sea", "lake", "river", "waterfall", "mountain", "canyon", "desert", "forest",
    "field", "meadow", "snow", "ice", "flower", "tree", "sky", "clouds", "sunset", "night",
    "rain", "car", "truck", "bus", "train", "bicycle", "motorcycle", "boat", "ship",
    "airplane", "rocket", "sport", "football", "game", "music", "concert", "dance",
    "festival", "swimming", "surfing", "skiing", "climbing", "running", "book", "text",
    "document", "machine", "tool", "toy", "musical instrument", "guitar", "computer", "phone",
    "clock", "camera", "painting", "sculpture", "texture", "pattern", "microscope image",
    "outer space", "stars", "moon", "galaxy",
)


# ImageNet labels (issue 21: "each cluster named from its members"). The stored visual vector of
# the stock EfficientNet-Lite0 is its pooled feature, L2-normalised, and the ImageNet logits are
# a linear layer of the pooled feature, so the tower's class probabilities come back from the
# stored vectors times POOLED_NORM (the median norm of the pooled feature on Flickr8k val, 17.5;
# 5-95%: 14.1-20.5): on those 1000 photos the top class agrees with the true logits' for 99.8%
# and the top 5 overlap by 99.9%.
POOLED_NORM = 17.5
# kinds summed over their ImageNet classes (118 dog breeds name an album of mixed dogs "dog")
IMAGENET_KINDS = {
    "dog": tuple(range(151, 269)),
    "cat": tuple(range(281, 286)),
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
}
# plainer names for classes whose first WordNet lemma is obscure
PLAIN_NAMES = {
    "alp": "mountain", "bell cote": "bell tower", "ice bear": "polar bear",
    "ballplayer": "baseball player", "maillot": "swimsuit", "jinrikisha": "rickshaw",
    "sax": "saxophone", "tabby": "tabby cat", "hog": "pig",
}
# An ImageNet label leads an album's name when its mean probability in the album is at least
# IMAGENET_MIN_MEAN and it has at least IMAGENET_MIN_PROB in IMAGENET_MIN_SHARE of its photos.
# Chosen by measurement (`python -m imagetext.eval.clustering ../shared/data/flickr8k --naming`:
# Flickr8k val, 1000 photos, default model, k = 16, mean of seeds 0-2): the share of the
# album's photos whose reference captions say a name word, over albums and name words (and
# that share less the word's share over all photos) was, without captions, vocabulary 0.223
# (0.166), ImageNet labels alone 0.172 (0.141: Flickr8k is mostly people, for whom ImageNet has
# no class, so it names them by props and clothes: "rickshaw, academic gown, tobacco shop"),
# vocabulary led by a confident ImageNet label 0.245 (0.185: "mountain bike, bicycle,
# motorcycle", "ski, snow, ice", "cliff, climbing, mountain"); with the captioner's captions
# 0.456 (0.318), led by one 0.453 (0.318) (k = 8 and 32 alike): the captioner knows
# Flickr8k's world, and the label is for the rest (the demo gallery indexed with --caption,
# k = 8: the captioner's "dogs, grass" for hens, a duck and horses is led by "bird", its
# "front, building" for monuments by "palace"). The thresholds keep the label off people and
# off albums that a few confident photos pull (2 dogs among 9 farm and wild animals of the
# demo gallery: "dog" with a mean of 0.23 but in 2 of 9 photos).
IMAGENET_MIN_MEAN = 0.15
IMAGENET_MIN_PROB = 0.2
IMAGENET_MIN_SHARE = 1 / 3
IRREGULAR_SINGULARS = {"men": "man", "women": "woman", "children": "child", "people": "person",
                       "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose"}


@dataclass
class Cluster:
    id: int
    name: str  # its keywords, joined
    keywords: list[str]
    captions: list[str]  # the most typical captions (members nearest the centre); may be empty
    size: int  # members still indexed
    cover: list[int]  # ids of the members nearest the centre, most typical first

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Clustering:
    clusters: list[Cluster]
    k: int  # clusters asked for (empty ones are dropped)
    vectors: str  # "semantic" or "visual"
    dims: int  # after PCA
    n_images: int  # images clustered
    named_by: str  # "captions" or "vocabulary"
    model: str
    seed: int
    seconds: float
    created_at: float
    unclustered: int = 0  # images indexed since, in no cluster
    info: dict = field(default_factory=dict, repr=False)

    @property
    def stale(self) -> bool:
        return self.unclustered > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("info")
        d["stale"] = self.stale
        return d


def default_k(n: int) -> int:
    """Clusters for a collection of n images: sqrt(n / 4), 2 to 32 (1000 images: 16).

    Chosen on Flickr8k val (1000 photos, default model; `python -m imagetext.eval.clustering`):
    k = 10, 16, 22, 32 gave a mean NMI against the captions' subject and scene keywords of
    0.399, 0.415, 0.406, 0.402 (purity grows with k by itself, so it cannot choose k)."""
    return int(min(32, max(MIN_K, round(math.sqrt(n / 4)))))


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, niter: int = NITER,
           dims: int = PCA_DIMS) -> tuple[np.ndarray, int]:
    """Cluster labels (0..k-1) of each row: PCA to min(dims, n - 1) dimensions, then FAISS
    k-means with `seed`. Returns (labels, the dimensions k-means ran in).

    FAISS runs on one thread here: PCA trains on at most 1000 points a dimension and k-means
    on at most 1024 a centroid, so one is enough, and it is steady where FAISS's OpenMP
    threads are not on cores shared with other work (1000 vectors of 384 dimensions on two
    busy cores: PCA 0.21 s on one thread against 0.9-2.8 s on two, k-means to 32 clusters
    0.02-0.03 s against 0.04-0.05 s, and whole runs of 0.2-7 s seen on two)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    out = min(dims, n - 1, d)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        if out < d:
            pca = faiss.PCAMatrix(d, out)
            pca.train(x)
            x = pca.apply(x)
        # min_points_per_centroid=1: a small collection is not an error (nor a warning on
        # stderr)
        km = faiss.Kmeans(out, k, niter=niter, seed=seed, min_points_per_centroid=1,
                          max_points_per_centroid=1024)
        km.train(x)
        _, labels = km.index.search(x, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return labels[:, 0].astype(np.int64), out


def keywords(docs: list[set[str]], labels: np.ndarray, n_keywords: int = N_KEYWORDS
             ) -> dict[int, list[str]]:
    """cluster -> the words most particular to it: a word w of cluster c scores
    p_c(w) * log(p_c(w) / p(w)), p_c the share of c's members whose words hold w and p the
    share of all members'; a word needs at least 2 members (or all of a smaller cluster)."""
    n = len(docs)
    overall = Counter(w for doc in docs for w in doc)
    out: dict[int, list[str]] = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts = Counter(w for i in members for w in docs[i])
        need = min(2, len(members))
        scored = sorted(((p := m / len(members)) * math.log(p / (overall[w] / n)), w)
                        for w, m in counts.items() if m >= need)
        out[int(c)] = [w for _, w in sorted(scored, key=lambda t: (-t[0], t[1]))[:n_keywords]]
        if not out[int(c)] and counts:  # nothing shared: its most common words
            out[int(c)] = [w for w, _ in counts.most_common(n_keywords)]
    return out


def caption_words(caption: str) -> set[str]:
    from imagetext.caption.tokenizer import split_words

    return {w for w in split_words(caption) if w not in STOP_WORDS and len(w) > 1
            and not w.isdigit()}


def vocabulary_keywords(encoder, semantic: np.ndarray, labels: np.ndarray,
                        n_keywords: int = N_KEYWORDS, chunk: int = 4096) -> dict[int, list[str]]:
    """cluster -> the VOCABULARY labels most particular to it: a label's mean similarity (the
    model's own) to the cluster's photos less its mean similarity to all photos."""
    from imagetext.api import label_vectors

    text = label_vectors(encoder, VOCABULARY)
    clusters = np.unique(labels)
    sums = np.zeros((len(clusters), len(VOCABULARY)))
    for i in range(0, len(semantic), chunk):
        sims = encoder.similarity(semantic[i : i + chunk], text)
        for j, c in enumerate(clusters):
            sums[j] += sims[labels[i : i + chunk] == c].sum(0)
    counts = np.array([(labels == c).sum() for c in clusters])[:, None]
    particular = sums / counts - sums.sum(0) / len(labels)
    return {int(c): [VOCABULARY[t] for t in np.argsort(-particular[j], kind="stable")[:n_keywords]]
            for j, c in enumerate(clusters)}


def singular(word: str) -> str:
    """A plain English singular, for telling "dog" and "dogs" apart in a name (not a stemmer)."""
    w = word.lower()
    if w in IRREGULAR_SINGULARS:
        return IRREGULAR_SINGULARS[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us")):
        return w[:-1]
    return w


def head_word(label: str) -> str:
    """The word a label is about: its last word, singular and without a verb's -ing
    ("suspension bridge": bridge; "skis", "skiing": ski; "swimming": swim)."""
    w = singular(label.replace("-", " ").split()[-1])
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "aeiouls":
            w = w[:-1]
    return w


def album_name(candidates, n_keywords: int = N_KEYWORDS) -> list[str]:
    """The first `n_keywords` candidates, best first, without two about the same thing: a
    candidate whose head word (head_word) is already named is skipped ("dogs" after "dog",
    "bridge" after "suspension bridge")."""
    out: list[str] = []
    heads: set[str] = set()
    for label in candidates:
        h = head_word(label)
        if h not in heads:
            heads.add(h)
            out.append(label)
            if len(out) == n_keywords:
                break
    return out


@lru_cache(maxsize=1)
def imagenet_label_names() -> tuple[str, ...]:
    """The names imagenet_probabilities' columns stand for: the 1000 classes (their first
    WordNet lemma, or a plainer one), then the IMAGENET_KINDS."""
    from imagetext.models.imagenet import imagenet_classes

    return (*(PLAIN_NAMES.get(c.name, c.name) for c in imagenet_classes()), *IMAGENET_KINDS)


def imagenet_probabilities(visual: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(n, 1000 + len(IMAGENET_KINDS)): the stock EfficientNet-Lite0's ImageNet class
    probabilities for stored visual vectors (its pooled feature, normalised; scaled back by
    POOLED_NORM), then each kind's sum."""
    weight, bias = stock_classifier()
    out = np.empty((len(visual), 1000 + len(IMAGENET_KINDS)), dtype=np.float32)
    for i in range(0, len(visual), chunk):
        z = POOLED_NORM * np.asarray(visual[i : i + chunk], np.float32) @ weight.T + bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        out[i : i + len(p), :1000] = p
        for j, classes in enumerate(IMAGENET_KINDS.values()):
            out[i : i + len(p), 1000 + j] = p[:, classes].sum(1)
    return out


def imagenet_keywords(probs: np.ndarray, labels: np.ndarray, n_keywords: int = 1,
                      confident: bool = True) -> dict[int, list[str]]:
    """cluster -> the ImageNet labels most particular to it: a label's mean probability over
    the cluster's photos less its mean over all photos. `confident`: only labels with a mean
    of at least IMAGENET_MIN_MEAN in the cluster and a probability of IMAGENET_MIN_PROB in at
    least IMAGENET_MIN_SHARE of its photos (often none)."""
    names = imagenet_label_names()
    overall = probs.mean(0)
    out = {}
    for c in np.unique(labels):
        members = probs[labels == c]
        mean = members.mean(0)
        order = np.argsort(-(mean - overall), kind="stable")
        if confident:
            share = (members >= IMAGENET_MIN_PROB).mean(0)
            order = [j for j in order[:50] if mean[j] >= IMAGENET_MIN_MEAN
                     and share[j] >= IMAGENET_MIN_SHARE]
        out[int(c)] = [names[j] for j in order[:n_keywords]]
    return out


def names_imagenet(col: Collection) -> bool:
    """Whether the collection's visual vectors are the stock EfficientNet-Lite0's pooled
    feature, which imagenet_probabilities reads: a model of the `conse` or `aligned` backend
    on that tower, not fine-tuned (read from the model folder's config.json)."""
    from imagetext.models.base import read_config
    from imagetext.models.registry import resolve_model

    if int(col.store.get_meta("visual_dim") or 0) not in (0, 1280):
        return False
    try:
        config = read_config(resolve_model(col.model_ref))
    except (ImagetextError, OSError, ValueError):  # a model not found here: no ImageNet names
        return False
    return (config.get("backend") in ("conse", "aligned")
            and str(config.get("image_tower", "")).startswith("efficientnet-lite0")
            and not config.get("image_tower_tuned", False))


def cluster_collection(col: Collection, k: int | None = None, vectors: str = "semantic",
                       seed: int = 0, niter: int = NITER) -> Clustering:
    """Cluster the collection's images and store the clustering in its index (replacing any
    earlier one), under the writer lock."""
    if vectors not in VECTOR_KINDS:
        raise InvalidInputError(f"unknown vectors {vectors!r}: use one of {', '.join(VECTOR_KINDS)}")
    if k is not None and not MIN_K <= k <= MAX_K:
        raise InvalidInputError(f"k must be between {MIN_K} and {MAX_K} (got {k})")
    start = time.perf_counter()
    with col.lock.hold():
        col.refresh()
        ids, x = col.vectors(vectors)
        n = len(ids)
        if n < MIN_K:
            raise InvalidInputError(f"the index of {col.root} has {n} image{'s' * (n != 1)}; "
                                    f"clustering needs at least {MIN_K}")
        k = default_k(n) if k is None else k
        if k > n:
            raise InvalidInputError(f"k is {k} but the index has only {n} images; give --k {n} "
                                    f"or less")
        labels, dims = kmeans(x, k, seed, niter)
        semantic = x if vectors == "semantic" else col.vectors("semantic")[1]
        # typicality: each member's cosine to its cluster's mean direction (original space)
        scores = np.empty(n, dtype=np.float32)
        for c in np.unique(labels):
            members = labels == c
            centre = x[members].mean(0)
            centre /= np.linalg.norm(centre) or 1.0
            scores[members] = x[members] @ centre
        records = col.store.get_many(ids.tolist())
        captions = [records[int(i)].caption for i in ids]
        named_by = "captions" if sum(c is not None for c in captions) * 2 >= n else "vocabulary"
        # candidates beyond N_KEYWORDS, for the ones album_name skips
        if named_by == "captions":
            found = keywords([caption_words(c) if c else set() for c in captions], labels,
                             2 * N_KEYWORDS)
        else:
            found = vocabulary_keywords(col.encoder, semantic, labels, 2 * N_KEYWORDS)
        lead: dict[int, list[str]] = {}
        if names_imagenet(col):
            visual_ids, visual = (ids, x) if vectors == "visual" else col.vectors("visual", ids)
            if len(visual_ids) == n:
                lead = imagenet_keywords(imagenet_probabilities(visual), labels)
        names = {c: album_name([*lead.get(c, []), *words]) for c, words in found.items()}
        # clusters numbered by size, largest first
        sizes = Counter(labels.tolist())
        order = sorted(sizes, key=lambda c: (-sizes[c], c))
        rows = []
        for new_id, c in enumerate(order, start=1):
            members = np.flatnonzero(labels == c)
            members = members[np.argsort(-scores[members], kind="stable")]
            typical = []
            for i in members:
                if captions[i] and captions[i] not in typical:
                    typical.append(captions[i])
                if len(typical) == N_TYPICAL:
                    break
            rows.append((new_id, ", ".join(names[c]), json.dumps(names[c]), json.dumps(typical),
                         [(int(ids[i]), float(scores[i])) for i in members]))
        info = {"k": k, "vectors": vectors, "dims": dims, "n_images": n, "named_by": named_by,
                "seed": seed, "model": col.store.get_meta("model_name"),
                "model_fingerprint": col.store.get_meta("model_fingerprint"),
                "build": col.store.get_meta("build"), "created_at": time.time(),
                "seconds": round(time.perf_counter() - start, 3)}
        _save(col.store, rows, info)
    return load(col)


def _save(store, rows: list, info: dict) -> None:
    db = store.db
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM cluster_members")
        db.execute("DELETE FROM clusters")
        for cid, name, words, typical, members in rows:
            db.execute("INSERT INTO clusters (id, name, keywords, captions) VALUES (?, ?, ?, ?)",
                       (cid, name, words, typical))
            db.executemany("INSERT INTO cluster_members (image_id, cluster_id, score) "
                           "VALUES (?, ?, ?)", [(i, cid, s) for i, s in members])
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   (META_KEY, json.dumps(info)))


def _info(col: Collection) -> dict | None:
    """The stored clustering's description, if there is one and it is still valid (same
    model, same weights, same build of the index)."""
    store = col.store
    raw = store.get_meta(META_KEY)
    if raw is None:
        return None
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"clusters", "cluster_members"} <= tables:
        return None
    info = json.loads(raw)
    if (info.get("model") != store.get_meta("model_name")
            or info.get("model_fingerprint") != store.get_meta("model_fingerprint")
            or info.get("build") != store.get_meta("build")):
        return None
    return info


def load(col: Collection) -> Clustering | None:
    """The stored clustering (albums with members still indexed), or None when there is none
    or it was made for another model, other weights or another build of the index."""
    info = _info(col)
    if info is None:
        return None
    db = col.store.db
    sizes = dict(db.execute(
        "SELECT m.cluster_id, COUNT(*) FROM cluster_members m JOIN images i ON i.id = m.image_id"
        " GROUP BY m.cluster_id"))
    clusters = []
    for cid, name, words, typical in db.execute(
            "SELECT id, name, keywords, captions FROM clusters ORDER BY id"):
        if sizes.get(cid):
            clusters.append(Cluster(cid, name, json.loads(words), json.loads(typical),
                                    sizes[cid], _member_ids(col, cid, N_COVER)))
    unclustered = db.execute("SELECT COUNT(*) FROM images WHERE id NOT IN "
                             "(SELECT image_id FROM cluster_members)").fetchone()[0]
    return Clustering(clusters, info["k"], info["vectors"], info["dims"], info["n_images"],
                      info["named_by"], info["model"], info["seed"], info["seconds"],
                      info["created_at"], unclustered, info)


def _member_ids(col: Collection, cluster_id: int, limit: int | None = None) -> list[int]:
    sql = ("SELECT m.image_id FROM cluster_members m JOIN images i ON i.id = m.image_id "
           "WHERE m.cluster_id = ? ORDER BY m.score DESC, m.image_id")
    args: tuple = (int(cluster_id),)
    if limit is not None:
        sql += " LIMIT ?"
        args += (int(limit),)
    return [r[0] for r in col.store.db.execute(sql, args)]


def cluster_of(col: Collection, cluster_id: int) -> tuple[Cluster, list[SearchResult]]:
    """A stored cluster and its members, most typical first (score: the member's cosine to
    the cluster's mean direction). KeyError when there is no such cluster."""
    clustering = load(col)
    cluster = next((c for c in clustering.clusters if c.id == cluster_id), None) if clustering else None
    if cluster is None:
        raise KeyError(f"no album {cluster_id} in this collection")
    scores = dict(col.store.db.execute(
        "SELECT image_id, score FROM cluster_members WHERE cluster_id = ?", (int(cluster_id),)))
    ids = _member_ids(col, cluster_id)
    records = col.store.get_many(ids)
    return cluster, [col._searcher.result(records[i], float(scores[i])) for i in ids if i in records]
