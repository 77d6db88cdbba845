"""Instance retrieval benchmark: copies and edits of photos found among other photos.

`build_instance_set` makes a copy-detection set from a dataset split, deterministically
from a seed: N photos (the originals) are each transformed by each of TRANSFORMS, the
transformations a photo library really holds (a resized copy, a crop, a rotation by 90
degrees and by a few degrees, a mirror image, a JPEG re-encode, brightness/contrast/colour
edits, blur, a text or logo overlay, a screenshot with a border); the database is every
photo of the split, so the other photos are distractors. A query's one positive is its
original.

`evaluate_instance` reports, per transformation and averaged, mAP (with one positive, the
mean of 1 / rank) and Recall@1 for every feature: the encoder's pooled 1280-d visual vector
(what `similar` uses today), its semantic vector, and MAC, R-MAC and GeM of the tower's
stride-16, stride-32 and head maps, plain and PCA-whitened (learnt on photos of another
split, never on the queries). Duplicate detection is a threshold on the similarity of
(query, database photo) pairs: thresholds for the presets are chosen on a set built the same
way from the reference split's photos, and precision/recall are reported on the evaluated one;
"exact copies" are found as `imagetext duplicates` finds them, the pairs at the "same scene"
threshold whose small grey images also reach the shipped SSIM threshold.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from imagetext.errors import InvalidInputError

TRANSFORMS = ("resize", "crop", "rot90", "rotate", "flip", "jpeg", "color", "blur", "overlay",
              "border")
# duplicate-detection presets: the precision each must reach on the reference split's pairs
# (the lowest threshold that reaches it)
PRESETS = {"exact copies": ("precision", 0.999), "edits": ("precision", 0.97),
           "same scene": ("precision", 0.8)}
WORDS = ("holiday", "2019", "summer", "photo", "family", "best day", "copyright", "J. Smith",
         "Flickr", "LOL", "beach", "weekend", "#tbt", "memories", "trip", "sale")


# -- the transformations -----------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _resize(img, rng):
    s = rng.uniform(0.3, 0.7) if rng.random() < 0.7 else rng.uniform(1.3, 2.0)
    return img.resize((max(16, round(img.width * s)), max(16, round(img.height * s))),
                      Image.Resampling.BICUBIC)


def _crop(img, rng):
    area, aspect = rng.uniform(0.5, 0.9), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = min(img.width, round(img.width * np.sqrt(area * aspect)))
    h = min(img.height, round(img.height * np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h))


def _rot90(img, rng):
    return img.transpose(Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270)


def _rotate(img, rng):
    angle = rng.uniform(2.0, 10.0) * (1 if rng.random() < 0.5 else -1)
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def _flip(img, rng):
    return ImageOps.mirror(img)


def _jpeg(img, rng):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(30, 91)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _color(img, rng):
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.6, 1.4))
    return img


def _blur(img, rng):
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0) * min(img.size) / 224))


def _overlay(img, rng):
    img = img.convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = img.size
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < 0.5:  # a caption or watermark text
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        font = _font(int(h * rng.uniform(0.08, 0.16)))
        box = draw.textbbox((0, 0), text, font=font)
        x = int(rng.integers(0, max(1, w - (box[2] - box[0]))))
        y = int(rng.integers(0, max(1, h - (box[3] - box[1]))))
        draw.text((x, y), text, font=font, fill=(*colour, int(rng.integers(160, 256))),
                  stroke_width=max(1, h // 150), stroke_fill=(0, 0, 0, 200))
    else:  # a logo in a corner: a filled badge with initials
        side = int(min(w, h) * rng.uniform(0.15, 0.28))
        x = 4 if rng.random() < 0.5 else w - side - 4
        y = 4 if rng.random() < 0.5 else h - side - 4
        alpha = int(rng.integers(150, 256))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + side, y + side), fill=(*colour, alpha))
        else:
            draw.rounded_rectangle((x, y, x + side, y + side), radius=side // 5, fill=(*colour, alpha))
        font = _font(side // 2)
        draw.text((x + side // 2, y + side // 2), str(rng.choice(list("ABKMSTXZ"))) * 2, font=font,
                  fill=(255, 255, 255, alpha), anchor="mm")
    return Image.alpha_composite(img, layer).convert("RGB")


def _border(img, rng):
    """A screenshot: the photo scaled into a larger canvas with a title bar and margins."""
    w, h = img.size
    aspect = float(rng.choice([9 / 16, 3 / 4, 4 / 3, 16 / 10]))  # phone or desktop screen
    scale = rng.uniform(0.6, 0.85)
    cw = max(w, round(max(w, h * aspect) / scale))
    ch = max(h, round(cw / aspect))
    bg = tuple(int(c) for c in (rng.integers(230, 256, 3) if rng.random() < 0.6 else rng.integers(0, 50, 3)))
    canvas = Image.new("RGB", (cw, ch), bg)
    draw = ImageDraw.Draw(canvas)
    bar = int(ch * rng.uniform(0.06, 0.12))
    draw.rectangle((0, 0, cw, bar), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.text((bar // 2, bar // 2), "Photos - " + str(rng.choice(WORDS)), font=_font(bar // 2),
              fill=(255, 255, 255), anchor="lm")
    fit = min((cw * 0.95) / w, (ch - bar) * 0.95 / h)
    photo = img.resize((max(1, round(w * fit)), max(1, round(h * fit))), Image.Resampling.BICUBIC)
    canvas.paste(photo, ((cw - photo.width) // 2, bar + (ch - bar - photo.height) // 2))
    return canvas


TRANSFORM_FUNCTIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "resize": _resize, "crop": _crop, "rot90": _rot90, "rotate": _rotate, "flip": _flip,
    "jpeg": _jpeg, "color": _color, "blur": _blur, "overlay": _overlay, "border": _border,
}


def transform_image(img: Image.Image, kind: str, seed: int, item: int) -> Image.Image:
    """`img` transformed by `kind`, its random parameters drawn from (seed, item, kind) alone."""
    if kind not in TRANSFORM_FUNCTIONS:
        raise InvalidInputError(f"unknown transformation {kind!r}; choose from {', '.join(TRANSFORMS)}")
    rng = np.random.default_rng([seed, item, TRANSFORMS.index(kind)])
    return TRANSFORM_FUNCTIONS[kind](img.convert("RGB"), rng)


# -- the set -------------------------------------------------------------------------------
@dataclass
class InstanceSet:
    database: list[str]  # image paths: the originals and the distractors
    originals: list[int]  # database positions of the transformed photos
    transforms: list[str]
    seed: int

    @property
    def queries(self) -> list[tuple[int, str]]:
        """(database position of the original, transformation), original-major."""
        return [(o, t) for o in self.originals for t in self.transforms]

    def query_image(self, original: int, kind: str) -> Image.Image:
        from imagetext.io.images import open_image

        return transform_image(open_image(self.database[original]), kind, self.seed, original)


def build_instance_set(images: Sequence[str], n: int, seed: int = 0,
                       transforms: Sequence[str] = TRANSFORMS) -> InstanceSet:
    """`n` of `images` (chosen by the seed) as originals, each transformed by each of
    `transforms`; the database is all of `images`."""
    images = list(images)
    if not 1 <= n <= len(images):
        raise InvalidInputError(f"the number of originals must be 1..{len(images)}, not {n}")
    unknown = [t for t in transforms if t not in TRANSFORM_FUNCTIONS]
    if unknown or not transforms:
        raise InvalidInputError(f"unknown transformation {unknown[0] if unknown else '(none)'!r}; "
                                f"choose from {', '.join(TRANSFORMS)}")
    originals = sorted(np.random.default_rng(seed).choice(len(images), n, replace=False).tolist())
    return InstanceSet(images, originals, list(transforms), seed)


# -- metrics -------------------------------------------------------------------------------
def positive_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of each query's positive among the database (ties count against it)."""
    own = scores[np.arange(len(scores)), positives]
    return (scores >= own[:, None]).sum(axis=1) - 1


def retrieval_metrics(scores: np.ndarray, positives: np.ndarray, kinds: Sequence[str]) -> dict:
    """Per transformation and averaged over them: mAP (one positive: mean 1/rank) and R@1,
    plus micro_ap, the average precision of all (query, database) pairs ranked together
    (the copy-detection μAP of DISC 2021)."""
    ranks = positive_ranks(scores, positives)
    kinds = np.asarray(kinds)
    per = {}
    for t in dict.fromkeys(kinds.tolist()):
        r = ranks[kinds == t]
        per[t] = {"map": round(float(np.mean(1.0 / (r + 1))), 4), "r1": round(float(np.mean(r == 0)), 4)}
    labels = np.zeros(scores.shape, bool)
    labels[np.arange(len(scores)), positives] = True
    return {"per_transform": per,
            "mean_map": round(float(np.mean([v["map"] for v in per.values()])), 4),
            "mean_r1": round(float(np.mean([v["r1"] for v in per.values()])), 4),
            "micro_ap": round(micro_average_precision(scores.ravel(), labels.ravel()), 4)}


def micro_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    tp = int((predicted & labels).sum())
    return (tp / max(1, int(predicted.sum())) if predicted.any() else 1.0,
            tp / max(1, int(labels.sum())))


def choose_threshold(scores: np.ndarray, labels: np.ndarray, criterion: str, target: float) -> float:
    """The lowest threshold whose precision is >= target ("precision"), or the highest whose
    recall is >= target ("recall"), on these pairs."""
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], labels[order]
    tp = np.cumsum(hits)
    if criterion == "recall":
        need = int(np.ceil(target * hits.sum()))
        return float(s[np.searchsorted(tp, max(1, need))])
    precision = tp / np.arange(1, len(s) + 1)
    ok = np.nonzero(precision >= target)[0]
    return float(s[ok[-1]]) if len(ok) else float(s[0]) + 1e-6


def pair_labels(n_queries: int, n_database: int, positives: np.ndarray) -> np.ndarray:
    labels = np.zeros((n_queries, n_database), bool)
    labels[np.arange(n_queries), positives] = True
    return labels


# -- features ------------------------------------------------------------------------------
WHITEN_DIMS = {"s16": (112, 64), "s32": (320, 128), "head": (512, 256)}


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}

    def add(self, key: str, seconds: float, n: int) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.images[key] = self.images.get(key, 0) + n

    def ms_per_image(self, key: str) -> float:
        return round(1000 * self.seconds.get(key, 0.0) / max(1, self.images.get(key, 0)), 2)


def _image_batches(items: Sequence, load: Callable, batch_size: int):
    for i in range(0, len(items), batch_size):
        yield [load(x) for x in items[i : i + batch_size]]


def _encoder_features(encoder, items, load, batch_size, timer) -> dict[str, np.ndarray]:
    semantic, visual = [], []
    for imgs in _image_batches(items, load, batch_size):
        pixels = np.stack([encoder.preprocess(im) for im in imgs])
        start = time.perf_counter()
        emb = encoder.encode_pixels(pixels)
        timer.add("encoder", time.perf_counter() - start, len(imgs))
        semantic.append(emb.semantic)
        visual.append(emb.visual)
    return {"pooled-1280": np.concatenate(visual), "semantic": np.concatenate(semantic)}


def _map_features(extractor, items, load, batch_size, timer, poolings, stages,
                  rotations: bool = False) -> dict[str, np.ndarray]:
    """name -> (n, d) vectors, or (n, 4, d) with `rotations`: the image turned by 0, 90, 180
    and 270 degrees."""
    from imagetext.instance.features import TURNS, describe, turned

    out: dict[str, list[np.ndarray]] = {}
    r = extractor.config.name.split("-", 2)[2]  # resolution (+ "-squash")
    if rotations:
        batch_size = max(1, batch_size // 4)
    for imgs in _image_batches(items, load, batch_size):
        if rotations:
            imgs = [t for im in imgs for t in turned(im)]
        pixels = np.stack([extractor.preprocess(im) for im in imgs])
        start = time.perf_counter()
        maps = extractor.maps(pixels)
        timer.add(f"tower-{r}", time.perf_counter() - start, len(imgs))
        for stage in stages:
            for pooling in poolings:
                start = time.perf_counter()
                v = describe(maps, stage, pooling)
                timer.add(f"{pooling}-{stage}-{r}", time.perf_counter() - start, len(imgs))
                if rotations:
                    v = v.reshape(-1, len(TURNS), v.shape[1])
                out.setdefault(f"{pooling}-{stage}-{r}", []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def _whiten(w, x: np.ndarray) -> np.ndarray:
    return w(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], w.dim)


def evaluate_instance(data: str, split: str = "val", n: int = 200, seed: int = 0,
                      reference_split: str = "train", n_whitening: int = 1000,
                      n_reference_database: int = 500, n_reference: int = 100,
                      resolutions: Sequence[int] = (224,), stages: Sequence[str] = ("s16", "s32", "head"),
                      poolings: Sequence[str] = ("mac", "rmac", "gem", "avg"),
                      transforms: Sequence[str] = TRANSFORMS, model=None, batch_size: int = 32,
                      limit: int | None = None, baseline: bool = True, rotations: bool = False,
                      fit: str = "crop",
                      progress: Callable[[str], None] | None = None) -> dict:
    """The instance benchmark on `split` of `data`; see the module docstring.

    Whitening is learnt on `n_whitening` photos of `reference_split`; preset thresholds on a
    set built from `n_reference` originals among `n_reference_database` other photos of it.
    `limit` keeps only the first N photos of the evaluated split (a small run). With
    `rotations`, every map feature is also scored as `NAME+rot`: a query turned by 0, 90, 180
    and 270 degrees, its best similarity to each database photo (4 tower runs per query); and
    as `NAME+turn`: query and photo each turned by 90 degrees once, as a collection stores them
    for `duplicates --turned` (features.one_turn_scores).
    """
    from imagetext.data.readers import read_pairs
    from imagetext.index.duplicates import pixel_similarity, pixel_threshold, small_grey
    from imagetext.instance.features import (
        STAGES,
        InstanceConfig,
        InstanceExtractor,
        best_of_turns,
        one_turn_scores,
    )
    from imagetext.instance.pooling import POOLINGS
    from imagetext.instance.whitening import PCAWhitening
    from imagetext.io.images import open_image

    bad = [x for x in stages if x not in STAGES] + [x for x in poolings if x not in POOLINGS]
    if bad:
        raise InvalidInputError(f"unknown stage or pooling {bad[0]!r}; stages: {', '.join(STAGES)}; "
                                f"poolings: {', '.join(POOLINGS)}")
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    images = read_pairs(data, split=split).images[: limit or None]
    if len(images) < 2:
        raise InvalidInputError(f"{data} has {len(images)} photos in split {split!r}; need at least 2")
    evaluated = build_instance_set(images, min(n, len(images)), seed, transforms)
    reference_images = read_pairs(data, split=reference_split).images
    if len(reference_images) < 3:
        raise InvalidInputError(f"{data} has too few photos in reference split {reference_split!r}")
    ref_rng = np.random.default_rng(seed + 1)
    ref_order = ref_rng.permutation(len(reference_images)).tolist()
    n_whitening = min(n_whitening, len(reference_images) - 2)
    whitening_images = [reference_images[i] for i in ref_order[:n_whitening]]
    ref_db_images = [reference_images[i] for i in ref_order[n_whitening : n_whitening + n_reference_database]]
    reference = build_instance_set(ref_db_images, min(n_reference, len(ref_db_images)), seed + 2, transforms)

    def sets():
        # (name, items, loader) of every image group a feature is computed for
        def query_loader(s):
            return lambda q: s.query_image(*q)

        return [("database", evaluated.database, open_image),
                ("queries", evaluated.queries, query_loader(evaluated)),
                ("reference database", reference.database, open_image),
                ("reference queries", reference.queries, query_loader(reference))]

    timer = _Timer()
    feats: dict[str, dict[str, np.ndarray]] = {}  # group -> feature -> vectors
    if baseline:
        from imagetext.api import get_encoder

        encoder = get_encoder(model)
        for group, items, load in sets():
            say(f"encoder on {len(items)} {group} images")
            feats.setdefault(group, {}).update(_encoder_features(encoder, items, load, batch_size, timer))
    for r in resolutions:
        extractor = InstanceExtractor(InstanceConfig(resolution=r, fit=fit))
        for group, items, load in [("whitening", whitening_images, open_image), *sets()]:
            turned = rotations and group != "whitening"
            say(f"tower at {r} on {len(items)} {group} images" + (" (4 turns each)" if turned else ""))
            feats.setdefault(group, {}).update(
                _map_features(extractor, items, load, batch_size, timer, poolings, stages, turned))
    if baseline:  # today's visual vector whitened the same way
        feats.setdefault("whitening", {}).update(
            _encoder_features(encoder, whitening_images, open_image, batch_size, timer))
        del feats["whitening"]["semantic"]
    # whitened variants, learnt on the reference split's whitening photos
    for name in [k for k in feats["database"] if k in feats.get("whitening", {})]:
        stage = "head" if name == "pooled-1280" else name.split("-")[1]
        for dim in WHITEN_DIMS[stage]:
            w = PCAWhitening.fit(feats["whitening"][name], min(dim, n_whitening - 1))
            for group in ("database", "queries", "reference database", "reference queries"):
                feats[group][f"{name}+w{w.dim}"] = _whiten(w, feats[group][name])
    # turned vectors: queries keep all 4 turns as NAME+rot; every group's turn by 90 degrees is
    # kept aside for NAME+turn (what `duplicates --turned` compares: one stored turn a photo)
    quarter: dict[str, dict[str, np.ndarray]] = {}
    for group in ("database", "queries", "reference database", "reference queries"):
        for name in [k for k, v in feats[group].items() if v.ndim == 3]:
            if group.endswith("queries"):
                feats[group][f"{name}+rot"] = feats[group][name]
            quarter.setdefault(group, {})[name] = feats[group][name][:, 1]
            feats[group][name] = feats[group][name][:, 0]
        for name in list(quarter.get(group, {})):
            if group.endswith("queries"):
                feats[group][f"{name}+turn"] = feats[group][name]

    q_pos = np.array([o for o, _ in evaluated.queries])
    q_kind = [t for _, t in evaluated.queries]
    r_pos = np.array([o for o, _ in reference.queries])
    results = {}

    greys: dict[tuple, tuple] = {}  # small grey images, by database position or query

    def grey(key):
        if key not in greys:
            greys[key] = small_grey(evaluated.query_image(*key) if isinstance(key, tuple)
                                    else evaluated.database[key])
        return greys[key]

    def exact_copies(scores: np.ndarray, positives: np.ndarray, candidates: float) -> dict:
        """"exact copies" as `imagetext duplicates` finds them: the pairs at the "same scene"
        cosine whose small grey images reach the shipped SSIM threshold (index/duplicates.py)."""
        pix = pixel_threshold()
        pairs = np.argwhere(scores >= candidates)
        same = [pixel_similarity(grey(evaluated.queries[q]), grey(int(d))) >= pix for q, d in pairs]
        found = pairs[np.array(same, bool)] if len(pairs) else pairs
        tp = int((found[:, 1] == positives[found[:, 0]]).sum()) if len(found) else 0
        return {"threshold": round(float(candidates), 4), "pixel_threshold": pix,
                "precision": round(tp / len(found), 4) if len(found) else 1.0,
                "recall": round(tp / len(scores), 4)}

    def score(group: str, name: str) -> np.ndarray:
        q, db_group = feats[f"{group}queries"][name], f"{group}database"
        base = name.removesuffix("+rot").removesuffix("+turn")
        if name.endswith("+turn"):
            return one_turn_scores(q, quarter[f"{group}queries"][base], feats[db_group][base],
                                   quarter[db_group][base])
        return best_of_turns(q, feats[db_group][base])

    for name in feats["queries"]:
        db = feats["database"][name.removesuffix("+rot").removesuffix("+turn")]
        scores = score("", name)
        m = retrieval_metrics(scores, q_pos, q_kind)
        ref_scores = score("reference ", name)
        ref_labels = pair_labels(len(ref_scores), ref_scores.shape[1], r_pos).ravel()
        labels = pair_labels(len(scores), scores.shape[1], q_pos).ravel()
        dup = {}
        for preset, (criterion, target) in PRESETS.items():
            if preset == "exact copies":  # as `duplicates` finds them: below
                continue
            t = choose_threshold(ref_scores.ravel(), ref_labels, criterion, target)
            p, rc = precision_recall(scores.ravel(), labels, t)
            dup[preset] = {"threshold": round(t, 4), "precision": round(p, 4), "recall": round(rc, 4)}
        dup["exact copies"] = exact_copies(scores, q_pos, dup["same scene"]["threshold"])
        base = name.split("+")[0]
        if base in ("pooled-1280", "semantic"):
            ms = timer.ms_per_image("encoder")
        else:  # per database image: one tower run (a turned query costs four)
            ms = timer.ms_per_image(f"tower-{base.split('-', 2)[2]}") + timer.ms_per_image(base)
        results[name] = {**m, "duplicates": dup, "ms_per_image": round(ms, 2), "dim": int(db.shape[1])}
    instance = {k: v for k, v in results.items() if k not in ("pooled-1280", "semantic")}
    best = max(instance, key=lambda k: (instance[k]["mean_r1"], instance[k]["mean_map"])) if instance else None
    return {
        "data": str(data), "split": split, "reference_split": reference_split, "seed": seed,
        "n_originals": len(evaluated.originals), "n_database": len(evaluated.database),
        "n_queries": len(evaluated.queries), "transforms": list(transforms),
        "n_whitening": n_whitening, "n_reference_queries": len(reference.queries),
        "n_reference_database": len(reference.database),
        "presets": {k: f"{c} >= {t} on the {reference_split} pairs" for k, (c, t) in PRESETS.items()},
        "features": results, "best": best,
        "timing_ms_per_image": {k: timer.ms_per_image(k) for k in timer.seconds},
        "seconds": round(time.perf_counter() - started, 1),
    }
