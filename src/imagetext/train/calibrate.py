"""Fit a model's calibration.json on a captioned dataset (Flickr8k val, plus a few train photos).

Every number is fitted on data the model was not trained on: the default model's heads were
trained on Flickr8k train, and its train photos sit measurably closer to anything textual
than unseen photos do (moderation prompts flagged 0.97% of ordinary train photos at
thresholds that flagged 1.66% of ordinary val photos), so train photos would calibrate it
for its own training set, not for your photos. Val is split in two by a hash of the image
file name (`fold_of`): fold 0 fits, fold 1 reports, for classification and search; the
moderation thresholds need every ordinary val photo and are reported in-sample, two-fold
cross-fitted and on recall sets they never saw. Flickr8k test is never read.

1. classify: a softmax temperature. Zero-shot labels come from the captions: two
   single-label tasks, subjects (dog, cat, horse, bird, child, man, woman, bicycle, car,
   boat) and scenes (water, snow, grass, beach, street, mountain). An image belongs to a
   class when at least 2 of its captions mention it (word lists in SUBJECT_CLASSES,
   SCENE_CLASSES) and none of its captions mentions another class of the same task, so
   "a man walks his dog" is in neither subject class. The temperature minimises the
   negative log-likelihood of fold 0 under api.classify's own prompts ("a photo of a
   {label}."), pooled over both tasks; accuracy, NLL and ECE (15 equal-width bins of the top
   probability) are reported on fold 1 before (the model's logit_scale) and after. A
   temperature cannot change the top-1 label, so accuracy is the same before and after.
2. search: a logistic map from the search score to a relevance in 0..1
   (models/calibration.search_relevance). A "match" is a caption's own image, or, for short
   queries such as "a dog", the 5 best photos whose captions name it (in at least 3 of 5);
   a "non-match" is the best photo (best 5 for short queries) of a gallery that lacks what
   the query names: the fold's photos none of whose captions mention any concept word of
   the query (CONCEPTS). That is the case a user notices: "a horse" on a gallery without
   horses. Both kinds of query and both outcomes weigh equally in the fit, so relevance 0.5
   (the "strong" cut) is where a match and the best image of a gallery without one are
   equally likely. Queries for things no photo of the split shows (OUT_OF_DOMAIN_QUERIES)
   are measured, never fitted. The map reads the score search prints: the model's full
   similarity (less the query's hubness offset too) separated Flickr8k's own queries a
   little better but marked 98% of those absent things' best photos strong (their offsets
   are small), against 42% here. Captioned images get a map of their own, fitted with the
   captioner's captions of the same photos fused as search fuses them.
3. moderation: per-category thresholds on the evidence max_prompt similarity(image,
   prompt). Each threshold is the 99.9th percentile of a normal distribution fitted to the
   evidence of the ordinary val photos (no caption mentions any category): the evidence is
   close to normal there (skewness -0.16..0.27), and a fitted tail is steadier than the
   empirical 99.9th percentile of ~965 values. 7 categories x 0.1% stays under the 1% of
   ordinary photos that may be flagged. Recall is measured on the photos whose captions
   mention a category (MODERATION_RULES: at least 2 captions, after exclusions such as dogs
   play-fighting or water guns), in val (never used for anything else) and train (read
   while writing the prompts; train photos are easier for this model, see above).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.index.fusion import fuse_caption_scores

ECE_BINS = 15
SHORT_QUERY_TOP = 5  # short queries: this many best matches and best non-matches per query
MIN_ABSENT_GALLERY = 30  # a caption query's gallery without its concepts must have this many photos
PER_CATEGORY_FPR = 0.001  # moderation: target share of ordinary photos flagged per category

# -- keyword tasks -----------------------------------------------------------------------------
SUBJECT_CLASSES = {
    "dog": r"dogs?|pupp(?:y|ies)",
    "cat": r"cats?|kittens?|kitty",
    "horse": r"horses?|pon(?:y|ies)",
    "bird": r"birds?|seagulls?|ducks?|geese|goose",
    "child": r"child|children|kids?|boys?|girls?|bab(?:y|ies)|toddlers?",
    "man": r"man|men|guys?",
    "woman": r"wom[ae]n|lad(?:y|ies)",
    "bicycle": r"bicycles?|bikes?|bikers?|cyclists?|bmx|biking",
    "car": r"cars?|trucks?",
    "boat": r"boats?|canoes?|kayak\w*",
}
SCENE_CLASSES = {
    "water": r"water|lake|river|pool|stream|ocean|sea",
    "snow": r"snow\w*",
    "grass": r"grass\w*|lawn|field",
    "beach": r"beach|sand\w*|shore",
    "street": r"streets?|road|sidewalk|city",
    "mountain": r"mountains?|hills?|cliffs?|rocks?\w*",
}
CLASSIFY_TASKS = {"subject": SUBJECT_CLASSES, "scene": SCENE_CLASSES}

# search: what a query names; a photo whose captions mention none of a query's concepts is
# a non-match for it
CONCEPTS = {
    "dog": r"dogs?|pupp(?:y|ies)",
    "cat": r"cats?|kittens?",
    "horse": r"horses?|pon(?:y|ies)",
    "bird": r"birds?|seagulls?|ducks?|geese|goose|pigeons?",
    "people": r"person|people|child|children|kids?|boys?|girls?|bab(?:y|ies)|toddlers?|m[ae]n|guys?|"
              r"wom[ae]n|lad(?:y|ies)|players?|crowd|teenagers?|skiers?|surfers?|bikers?|climbers?|"
              r"riders?|swimmers?|skateboarders?|snowboarders?|cyclists?|athletes?|dancers?|"
              r"musicians?|football|soccer|baseball",
    "bicycle": r"bicycles?|bikes?|cyclists?|bmx",
    "car": r"cars?|trucks?|jeeps?|vans?|vehicles?|buses|bus",
    "boat": r"boats?|canoes?|kayak\w*|raft\w*|sail\w*",
    "water": r"water|lake|river|pool|stream|ocean|sea|waves?|puddle|splash\w*|swim\w*",
    "snow": r"snow\w*|ski\w*|ice",
    "beach": r"beach|sand\w*|shore",
    "grass": r"grass\w*|lawn|field|meadow",
}
# measured only: things no Flickr8k val photo shows (checked against the captions at run time),
# whose best photos are all non-matches
OUT_OF_DOMAIN_QUERIES = [
    "a penguin", "a giraffe", "a koala", "a hedgehog", "an owl", "a macaw", "an espresso",
    "a pagoda", "a volcano", "an astronaut", "a lemon", "a panda", "a kangaroo", "a zebra",
    "a pig", "sushi", "a windmill", "a cathedral",
]
SHORT_QUERIES = {
    "dog": ["a dog", "dogs", "a puppy", "a photo of a dog"], "cat": ["a cat", "a kitten"],
    "horse": ["a horse", "a pony", "horses"], "bird": ["a bird", "birds"],
    "people": ["a person", "people", "a man", "a woman", "a child"],
    "bicycle": ["a bicycle", "a bike"], "car": ["a car", "a truck"], "boat": ["a boat"],
    "water": ["water", "a lake", "the sea"], "snow": ["snow", "a snowy field"],
    "beach": ["a beach", "sand"], "grass": ["grass", "a field of grass"],
}

# moderation: category -> (mention regex, per-caption exclusion regex, captions needed)
MODERATION_RULES = {
    "weapons": (
        (r"guns?|rifles?|pistols?|handguns?|firearms?|shotguns?|revolvers?|paintball\w*|weapons?|"
        r"knife|knives|swords?|daggers?|machetes?|bow and arrow|spears?|bayonets?"),
        (r"water|squirt\w*|nerf|foam|rubber|toys?|fake|icicle|pretend\w*|sticks?|rattan|rods?|"
        r"flare|fork"),
        2),
    "violence": (
        (r"boxing|boxers?|kick ?box\w*|martial arts?|karate|sumo|wrestl\w*|fight\w*|punch\w*|"
        r"spar|sparring|brawl\w*"),
        (r"dogs?|pupp\w*|cats?|pillow\w*|balls?|basketball|frisbee|toys?|sticks?|rapids|fire|"
        r"water|snow|birds?|monkeys?|seagulls?|bull|video|mask|shorts"),
        2),
    "alcohol": (
        (r"beers?|wine|alcohol\w*|cocktails?|champagne|liquor|whiske?y|vodka|martinis?|booze|"
        r"drunk\w*|bartender"),
        r"root beer|sign|shop",
        2),
    "smoking": (
        r"cigarettes?|cigars?|hookah|smok(?:e|es|ed|ing)",
        (r"cars?|tires?|fire\w*|rac(?:e|es|ing)|dragster|incense|smokestacks?|building|bomb|grill|"
        r"clouds?|exhaust|trains?|fake|smoky"),
        2),
    "drugs": (r"drugs?|marijuana|cocaine|heroin|syringes?", r"drug between|drugstore", 1),
    "nudity": (r"nude|naked|topless", r"half naked|painting|advertisement", 2),
    "blood": (r"blood\w*|bleeding|gore|gory|wounds?|wounded", r"$^", 1),
}

def _words(pattern: str) -> re.Pattern:
    return re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)


def fold_of(image_id: str) -> int:
    """0 (fit) or 1 (report): a fixed split of a dataset's images by a hash of their name."""
    return int(hashlib.sha1(Path(image_id).name.encode()).hexdigest(), 16) % 2


def keyword_labels(captions: dict[str, list[str]], classes: dict[str, str],
                   min_captions: int = 2) -> dict[str, int]:
    """image -> class index, for images that at least `min_captions` captions put in one class
    and no caption puts in another."""
    patterns = [_words(p) for p in classes.values()]
    out = {}
    for image, caps in captions.items():
        counts = [sum(bool(p.search(c)) for c in caps) for p in patterns]
        mentioned = [i for i, n in enumerate(counts) if n]
        if len(mentioned) == 1 and counts[mentioned[0]] >= min_captions:
            out[image] = mentioned[0]
    return out


def moderation_mentions(captions: Sequence[str]) -> tuple[list[str], list[str]]:
    """(categories the captions clearly mention, categories only mentioned in passing):
    clearly = in at least the rule's number of captions, exclusions applied."""
    clear, passing = [], []
    for name, (pattern, exclude, needed) in MODERATION_RULES.items():
        p, x = _words(pattern), _words(exclude)
        n = sum(bool(p.search(c)) and not x.search(c) for c in captions)
        if n >= needed:
            clear.append(name)
        elif n:
            passing.append(name)
    return clear, passing


# -- fitting and measuring ---------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 prediction: equal-width bins of the top probability, |accuracy -
    confidence| weighted by the share of samples in each bin."""
    return ece_of(probs.max(1), probs.argmax(1) == labels, bins)


def ece_of(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE from each prediction's top probability and whether it was right."""
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(tasks: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """The T minimising the pooled NLL of softmax(sims / T) over (sims, labels) tasks: a grid
    over log T, then golden-section refinement."""
    n = sum(len(y) for _, y in tasks)

    def loss(log_t: float) -> float:
        return sum(nll(softmax(s / math.exp(log_t)), y) * len(y) for s, y in tasks) / n

    grid = np.linspace(math.log(1e-3), math.log(1.0), 121)
    i = int(np.argmin([loss(g) for g in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted 1-D logistic regression by Newton's method: (slope, cut), where
    P(y=1 | x) = sigmoid(slope * (x - cut))."""
    X = np.c_[x, np.ones(len(x))]
    w = weights / weights.sum() * len(x)
    beta = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -60, 60)))
        grad = X.T @ (w * (p - y)) + 1e-6 * beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    slope, intercept = beta
    return float(slope), float(-intercept / slope)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n1 = labels.sum()
    n0 = len(labels) - n1
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _group_weights(labels: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Each (label, kind) group weighs the same in total."""
    w = np.zeros(len(labels))
    for lab in (0, 1):
        for kind in np.unique(kinds):
            m = (labels == lab) & (kinds == kind)
            if m.any():
                w[m] = 1.0 / m.sum()
    return w


# -- the calibration run -----------------------------------------------------------------------
class _Data:
    """A split's images (paths), their captions and fold, and cached model vectors."""

    def __init__(self, data: str, split: str, encoder, cache: Path | None, log):
        from imagetext.data import read_pairs

        self.captions: dict[str, list[str]] = {}
        for pair in read_pairs(data, split=split):
            self.captions.setdefault(pair.image_path, []).append(pair.caption)
        if not self.captions:
            raise InvalidInputError(f"no images in split {split!r} of {data}")
        self.paths = list(self.captions)
        self.fold = np.array([fold_of(p) for p in self.paths])
        self.encoder, self.split, self.cache, self.log = encoder, split, cache, log

    def _cached(self, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        if self.cache is None:
            return make()
        path = self.cache / f"{self.encoder.fingerprint or self.encoder.name}-{self.split}-{name}.npy"
        if path.is_file():
            return np.load(path)
        value = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
        return value

    def image_vectors(self, which: Sequence[int] | None = None) -> np.ndarray:
        if which is not None:  # a few images: not cached
            return self.encoder.encode_images([self.paths[i] for i in which], batch_size=64).semantic
        start = time.time()
        vecs = self._cached("images", lambda: self.encoder.encode_images(self.paths, batch_size=64).semantic)
        self.log(f"{self.split}: {len(self.paths)} image vectors ({time.time() - start:.0f}s)")
        return vecs

    def generated_captions(self, captioner) -> list[str]:
        def make() -> np.ndarray:
            from imagetext.io.images import open_image

            out: list[str] = []
            for i in range(0, len(self.paths), 32):
                pixels = np.stack([captioner.preprocess(open_image(p)) for p in self.paths[i:i + 32]])
                out += [c[0][0] for c in captioner.generate(pixels)]
            return np.array(out)

        start = time.time()
        captions = [str(c) for c in self._cached(f"captions-{getattr(captioner, 'name', 'captioner')}", make)]
        self.log(f"{self.split}: {len(captions)} generated captions ({time.time() - start:.0f}s)")
        return captions


def calibrate_classify(encoder, d: _Data, images: np.ndarray) -> dict:
    from imagetext.api import DEFAULT_TEMPLATES, label_vectors

    tasks = {}
    position = {p: i for i, p in enumerate(d.paths)}
    for task, classes in CLASSIFY_TASKS.items():
        labels = keyword_labels(d.captions, classes)
        index = [position[p] for p in labels]
        sims = encoder.similarity(images[index], label_vectors(encoder, list(classes)))
        tasks[task] = (sims, np.array(list(labels.values())), d.fold[index])
    fit = [(s[f == 0], y[f == 0]) for s, y, f in tasks.values()]
    temperature = fit_temperature(fit)

    def measure(scale: float) -> dict:
        out: dict = {}
        pooled_p, pooled_y = [], []
        for task, (s, y, f) in tasks.items():
            p, yy = softmax(scale * s[f == 1]), y[f == 1]
            out[task] = {"n": len(yy), "top1": round(float((p.argmax(1) == yy).mean()), 4),
                         "nll": round(nll(p, yy), 4), "ece": round(expected_calibration_error(p, yy), 4),
                         "mean_top_probability": round(float(p.max(1).mean()), 4)}
            pooled_p.append(p)
            pooled_y.append(yy)
        # pooled over both tasks: the top probability and whether it was right, per image
        conf = np.concatenate([p.max(1) for p in pooled_p])
        right = np.concatenate([p.argmax(1) == y for p, y in zip(pooled_p, pooled_y)])
        out["pooled"] = {"n": len(conf), "top1": round(float(right.mean()), 4),
                         "ece": round(ece_of(conf, right), 4)}
        return out

    return {
        "temperature": round(temperature, 6),
        "template": DEFAULT_TEMPLATES[0],
        "tasks": {t: list(c) for t, c in CLASSIFY_TASKS.items()},
        "fitted_on": f"fold 0 of {d.split}: {sum(len(y) for _, y in fit)} labelled images",
        "measured_on": f"fold 1 of {d.split}",
        "before": {"logit_scale": float(encoder.logit_scale), **measure(float(encoder.logit_scale))},
        "after": {"logit_scale": round(1 / temperature, 3), **measure(1 / temperature)},
    }


def _search_rows(encoder, d: _Data, images: np.ndarray, texts: np.ndarray,
                 caption_vecs: np.ndarray | None, caption_weight: float) -> np.ndarray:
    """Rows (fold, is_match, score, kind) for the relevance fit: kind 0 caption queries, kind 1
    short queries, kind 2 (measured, never fitted) queries for things no photo of the split
    shows. score = what search reports; with `caption_vecs`, every photo is captioned and
    its score fused as search fuses it."""
    image_off = encoder.image_offsets(images) if encoder.offsets_key else np.zeros(len(images))
    concept = {k: _words(p) for k, p in CONCEPTS.items()}
    mentions = {k: np.array([any(p.search(c) for c in d.captions[path]) for path in d.paths])
                for k, p in concept.items()}

    def search_scores(query_vecs: np.ndarray) -> np.ndarray:
        """(n_queries, n_images): the scores of Searcher.scored_search (index/search.py)."""
        scores = query_vecs @ images.T - image_off[None, :]
        if caption_vecs is not None:
            scores = fuse_caption_scores(scores, query_vecs @ caption_vecs.T, caption_weight)
        return scores

    rows = []
    owners = [i for i, path in enumerate(d.paths) for _ in d.captions[path]]
    queries = [c for path in d.paths for c in d.captions[path]]
    for start in range(0, len(queries), 1000):
        b = search_scores(texts[start:start + 1000])
        for r, qi in enumerate(range(start, min(start + 1000, len(queries)))):
            own = owners[qi]
            fold = d.fold[own]
            rows.append((fold, 1, b[r, own], 0))
            named = [k for k, p in concept.items() if p.search(queries[qi])]
            if not named:
                continue
            gallery = ~np.any([mentions[k] for k in named], axis=0) & (d.fold == fold)
            if gallery.sum() >= MIN_ABSENT_GALLERY:
                rows.append((fold, 0, np.where(gallery, b[r], -np.inf).max(), 0))

    def top_rows(b: np.ndarray, members: np.ndarray, label: int, kind: int) -> None:
        for fold in (0, 1):
            top = np.sort(b[members & (d.fold == fold)])[::-1][:SHORT_QUERY_TOP]
            rows.extend((fold, label, v, kind) for v in top)

    for k, words in SHORT_QUERIES.items():
        named = np.array([sum(bool(concept[k].search(c)) for c in d.captions[p]) >= 3 for p in d.paths])
        for b in search_scores(encoder.encode_texts(words)):
            top_rows(b, named, 1, 1)
            top_rows(b, ~mentions[k], 0, 1)
    every = np.ones(len(d.paths), bool)
    for b in search_scores(encoder.encode_texts(absent_queries(d.captions))):
        top_rows(b, every, 0, 2)
    return np.array(rows, dtype=np.float64)


def absent_queries(captions: dict[str, list[str]]) -> list[str]:
    """The OUT_OF_DOMAIN_QUERIES whose last word no caption of the split uses."""
    text = " ".join(c for caps in captions.values() for c in caps)
    return [q for q in OUT_OF_DOMAIN_QUERIES if not _words(q.split()[-1] + "s?").search(text)]


def _fit_relevance(rows: np.ndarray) -> dict:
    fitted = rows[(rows[:, 0] == 0) & (rows[:, 3] < 2)]
    slope, cut = fit_logistic(fitted[:, 2], fitted[:, 1], _group_weights(fitted[:, 1], fitted[:, 3]))
    rep = rows[rows[:, 0] == 1]
    measured = {}
    for kind, name in ((0, "caption_queries"), (1, "short_queries")):
        m = rep[:, 3] == kind
        y, x = rep[m, 1], rep[m, 2]
        strong = x >= cut
        measured[name] = {"matches": int(y.sum()), "non_matches": int((1 - y).sum()),
                          "matches_strong": round(float(strong[y == 1].mean()), 4),
                          "non_matches_strong": round(float(strong[y == 0].mean()), 4),
                          "auc": round(auc(x, y), 4)}
    absent = rep[rep[:, 3] == 2, 2]
    measured["absent_concept_queries"] = {"non_matches": len(absent),
                                          "non_matches_strong": round(float((absent >= cut).mean()), 4)}
    return {"slope": round(slope, 4), "cut": round(cut, 5), "measured": measured}


def calibrate_search(encoder, d: _Data, images: np.ndarray, captioner, caption_weight: float) -> dict:
    texts = encoder.encode_texts([c for p in d.paths for c in d.captions[p]])
    out = {
        "caption_weight": caption_weight,
        "map": "relevance = sigmoid(slope * (search score - cut))",
        "fitted_on": f"fold 0 of {d.split}", "measured_on": f"fold 1 of {d.split}",
        "absent_concept_queries": absent_queries(d.captions),
        "image": _fit_relevance(_search_rows(encoder, d, images, texts, None, caption_weight)),
    }
    if captioner is not None:
        generated = d.generated_captions(captioner)
        rows = _search_rows(encoder, d, images, texts, encoder.encode_texts(generated), caption_weight)
        out["captioned"] = _fit_relevance(rows)
        out["captioner"] = getattr(captioner, "name", type(captioner).__name__)
    return out


def calibrate_moderation(encoder, val: _Data, images: np.ndarray, train: _Data | None) -> dict:
    from imagetext.api import MODERATION_CATEGORIES, moderation_evidence

    names = list(MODERATION_CATEGORIES)
    evidence = moderation_evidence(encoder, images, MODERATION_CATEGORIES)
    mentions = [moderation_mentions(val.captions[p]) for p in val.paths]
    ordinary = np.array([not clear and not passing for clear, passing in mentions])
    z = NormalDist().inv_cdf(1 - PER_CATEGORY_FPR)

    def thresholds(mask: np.ndarray) -> np.ndarray:
        e = evidence[mask]
        return e.mean(0) + z * e.std(0)

    thr = thresholds(ordinary)
    flags = evidence >= thr
    cross = np.zeros(len(val.paths), bool)
    for fold in (0, 1):  # thresholds from one fold's ordinary photos, flags on the other's
        other = val.fold != fold
        cross[other] = (evidence[other] >= thresholds(ordinary & (val.fold == fold))).any(1)

    train_recall: dict[str, tuple[int, int]] = {}
    if train is not None:
        clear = [moderation_mentions(train.captions[p])[0] for p in train.paths]
        positives = [i for i, c in enumerate(clear) if c]
        if positives:
            e = moderation_evidence(encoder, train.image_vectors(positives), MODERATION_CATEGORIES)
            for j, name in enumerate(names):
                rows = [r for r, i in enumerate(positives) if name in clear[i]]
                train_recall[name] = (int((e[rows, j] >= thr[j]).sum()), len(rows))

    categories = []
    for j, name in enumerate(names):
        pos = np.array([name in clear for clear, _ in mentions])
        measured = {"val_ordinary_flagged": int(flags[ordinary, j].sum()),
                    "val_positives": int(pos.sum()), "val_positives_flagged": int(flags[pos, j].sum())}
        if name in train_recall:
            measured["train_positives_flagged"], measured["train_positives"] = train_recall[name]
        categories.append({
            "name": name, "prompts": list(MODERATION_CATEGORIES[name]),
            "threshold": round(float(thr[j]), 5),
            "ordinary_mean": round(float(evidence[ordinary, j].mean()), 5),
            "ordinary_std": round(float(evidence[ordinary, j].std()), 5),
            "measured": measured,
        })
    any_flag = flags.any(1)
    before = _old_preset_flags(encoder, images)
    return {
        "evidence": "max over the category's prompts of encoder.similarity(image, prompt)",
        "threshold_rule": f"mean + {z:.3f} std of the evidence over ordinary {val.split} photos "
                          f"(a normal tail at {PER_CATEGORY_FPR:.1%} per category)",
        "score": "sigmoid(ln 99 * (evidence - threshold) / (threshold - ordinary_mean)): 0.5 at the "
                 "threshold, 0.01 at the ordinary mean",
        "categories": categories,
        "measured": {
            "val_images": len(val.paths),
            "val_ordinary": int(ordinary.sum()),
            "val_ordinary_flagged": int(any_flag[ordinary].sum()),
            "val_ordinary_flagged_cross_fitted": int(cross[ordinary].sum()),
            "val_all_flagged": int(any_flag.sum()),
            "val_only_mentioned_in_passing": int(np.array([bool(p) and not c for c, p in mentions]).sum()),
            "before_uncalibrated_preset_val_all_flagged": int(before.sum()),
            "before_uncalibrated_preset_val_ordinary_flagged": int(before[ordinary].sum()),
        },
    }


def _old_preset_flags(encoder, images: np.ndarray) -> np.ndarray:
    """Which photos the pre-calibration preset (api's uncalibrated fallback) flagged: softmax
    over its 9 labels at the model's logit scale, an unsafe label >= 0.5."""
    from imagetext.api import FALLBACK_SAFE_LABELS, FALLBACK_UNSAFE_LABELS, label_vectors

    sims = encoder.similarity(images, label_vectors(encoder, FALLBACK_SAFE_LABELS + FALLBACK_UNSAFE_LABELS))
    p = softmax(float(encoder.logit_scale) * sims)
    return (p[:, len(FALLBACK_SAFE_LABELS):] >= 0.5).any(1)


def calibrate(model: str | None, data: str, split: str = "val", train_split: str | None = "train",
              captioner: str | None = "default", cache: str | Path | None = None,
              log=print) -> dict:
    """Fit and measure everything calibration.json holds for `model` on `data`."""
    from imagetext.index.fusion import CAPTION_WEIGHT
    from imagetext.models.registry import load_encoder, resolve_model

    start = time.time()
    encoder = load_encoder(model)
    cache_dir = Path(cache) if cache else None
    val = _Data(data, split, encoder, cache_dir, log)
    images = val.image_vectors()
    train = _Data(data, train_split, encoder, cache_dir, log) if train_split else None
    cap = None
    if captioner:
        from imagetext.caption.registry import load_captioner

        cap = load_captioner(None if captioner == "default" else captioner)
    result = {
        "model": encoder.name,
        "fingerprint": encoder.fingerprint,
        "data": {
            "source": str(Path(data).name),
            "split": split, "images": len(val.paths),
            "folds": "fold = sha1(image file name) mod 2; fold 0 fits, fold 1 reports "
                     "(classify, search); moderation thresholds use all ordinary photos of the split",
            "train_split": train_split,
            "train_use": "only the photos whose captions mention a moderation category: recall",
        },
        "classify": calibrate_classify(encoder, val, images),
        "search": calibrate_search(encoder, val, images, cap, CAPTION_WEIGHT),
        "moderation": calibrate_moderation(encoder, val, images, train),
    }
    result["fitted_with"] = {"seconds": round(time.time() - start), "model_folder": resolve_model(model).name}
    return result
