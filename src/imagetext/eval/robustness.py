"""How retrieval and classification degrade with blurred, JPEG-compressed or noisy images.

Every image of the split is degraded at each level and embedded again; the texts (captions,
or the class prompts) stay the same. Degradations are applied to the model's input crop (the
image resized and centre-cropped as the model's preprocessing does, 224x224 for the built-in
models), so a level means the same whatever the photo's size:

- blur: a Gaussian blur of standard deviation `sigma` pixels of that crop (PIL's
  ImageFilter.GaussianBlur); 0 is the clean image.
- jpeg: the crop saved as a JPEG of that quality (1-95) and decoded again.
- noise: Gaussian noise of that standard deviation on the 0-255 pixel scale, seeded per image.

Metrics: retrieval, Recall@K in both directions (`t2i_r5` is the headline: a caption finds
its photo among the top 5); classify, zero-shot top-1 on a labelled set (data/labelled.py),
with the single template and the prompt ensemble, and a trained classifier's top-1 if given.

The query side can be made blur-aware (`BLUR_AWARE_QUERY`): each caption's text vector is
mixed with the vector of the same caption said of a blurry photo, so a query leans towards
what the model sees in a blurred image of it. Both query sides are scored on the same image
embeddings, in one run.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from imagetext.errors import InvalidInputError

KINDS = ("blur", "jpeg", "noise")
TASKS = ("retrieval", "classify")
UNITS = {"blur": "Gaussian blur sigma (px of the 224 px input)", "jpeg": "JPEG quality",
         "noise": "Gaussian noise std (0-255)"}
# the blur-aware query: normalise(q + weight * e(template.format(caption)))
BLUR_AWARE_TEMPLATE = "a blurry photo of {}"
BLUR_AWARE_WEIGHT = 0.5


def degrade(img: Image.Image, kind: str, level: float, seed: int = 0) -> Image.Image:
    """`img` blurred, JPEG-compressed or noised at `level` (see the module doc); level 0 of
    blur or noise is `img` itself."""
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(level)) if level > 0 else img
    if kind == "jpeg":
        if not 1 <= level <= 100:
            raise InvalidInputError(f"JPEG quality must be between 1 and 100, got {level:g}")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(level))
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    if kind == "noise":
        if level <= 0:
            return img
        rng = np.random.default_rng(seed)
        arr = np.asarray(img, np.float32) + rng.normal(0.0, level, (img.height, img.width, 3))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    raise InvalidInputError(f"unknown degradation {kind!r}; choose from {', '.join(KINDS)}")


def parse_levels(text: str | None, kind: str) -> list[float]:
    """'0,1,2,4,8' -> [0.0, 1.0, 2.0, 4.0, 8.0], checked."""
    if not text:
        return []
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"--{kind} takes numbers separated by commas, e.g. 0,1,2,4,8; "
                                f"got {text!r}") from None
    if any(v < 0 for v in levels) or (kind == "jpeg" and any(not 1 <= v <= 100 for v in levels)):
        raise InvalidInputError(f"--{kind} levels must be " + (
            "JPEG qualities between 1 and 100" if kind == "jpeg" else "0 or more"))
    return levels


def encode_degraded(encoder, paths: Sequence[str], kind: str, level: float, batch_size: int = 32,
                    seed: int = 0):
    """ImageEmbeddings of every image degraded at `level`, in order (an unreadable image is an
    error: the caller's metrics need every row)."""
    from imagetext.index.pipeline import batched, prefetch_map
    from imagetext.io.images import open_image
    from imagetext.models.base import ImageEmbeddings

    pre = encoder.preprocess

    def load(item):
        i, path = item
        crop = pre.resize_and_crop(open_image(path, draft_size=pre.resize))
        return pre.to_array(degrade(crop, kind, level, seed=seed * 1_000_003 + i))

    semantic, visual = [], []
    for batch in batched(prefetch_map(load, enumerate(paths), prefetch=batch_size * 3), batch_size):
        for b in batch:
            if b.error is not None:
                raise b.error
        out = encoder.encode_pixels(np.stack([b.value for b in batch]))
        semantic.append(out.semantic)
        visual.append(out.visual)
    return ImageEmbeddings(np.concatenate(semantic), np.concatenate(visual))


def blur_aware_text_vectors(encoder, texts: Sequence[str], plain: np.ndarray | None = None,
                            weight: float = BLUR_AWARE_WEIGHT) -> np.ndarray:
    """The blur-aware query vectors of `texts` (see the module doc)."""
    plain = encoder.encode_texts(list(texts)) if plain is None else plain
    blurry = encoder.encode_texts([BLUR_AWARE_TEMPLATE.format(_lower_first(t)) for t in texts])
    mixed = plain + weight * blurry
    return mixed / np.linalg.norm(mixed, axis=-1, keepdims=True)


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(" .")
    return text[:1].lower() + text[1:]


def evaluate_robustness(data: str | os.PathLike, task: str = "retrieval",
                        levels: dict[str, Sequence[float]] | None = None, split: str = "val",
                        model=None, limit: int | None = None, classifier: str | None = None,
                        blur_aware: bool = True, out_png: str | os.PathLike | None = None,
                        batch_size: int = 32, seed: int = 0, val_fraction: float = 0.2,
                        progress: Callable[[str], None] | None = None) -> dict:
    """The metrics of `task` on `split` at every level of every degradation in `levels`
    ({"blur": [0, 1, 2, 4, 8], ...}), and with `out_png` their curves as a PNG.

    retrieval: Recall@K with the plain query vectors and (`blur_aware`) the blur-aware ones.
    classify: zero-shot top-1 with one template and with the prompt ensemble, plus the
    `classifier` folder's top-1 if given. `limit` keeps the first N images."""
    from imagetext.api import get_encoder

    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    levels = {k: list(v) for k, v in (levels or {"blur": [0, 1, 2, 4, 8]}).items() if v}
    if not levels:
        raise InvalidInputError("give at least one degradation level (--blur, --jpeg or --noise)")
    for kind in levels:
        if kind not in KINDS:
            raise InvalidInputError(f"unknown degradation {kind!r}; choose from {', '.join(KINDS)}")
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    encoder = get_encoder(model)
    if task == "retrieval":
        scorer, meta = _retrieval_scorer(encoder, data, split, limit, blur_aware)
    else:
        scorer, meta = _classify_scorer(encoder, data, split, limit, classifier, val_fraction, seed)
    rows = []
    for kind, values in levels.items():
        for level in values:
            t = time.perf_counter()
            emb = encode_degraded(encoder, meta["images"], kind, level, batch_size, seed)
            metrics = scorer(emb)
            rows.append({"kind": kind, "level": level, **metrics})
            say(f"{kind} {level:g}: " + ", ".join(f"{k} {v:.2f}" for k, v in _headline(task, metrics).items())
                + f" ({time.perf_counter() - t:.0f} s)")
    result = {"task": task, "data": str(data), "split": split, "model": encoder.name,
              "n_images": len(meta["images"]), "headline": meta["headline"],
              "variants": meta["variants"], "rows": rows,
              **{k: v for k, v in meta.items() if k not in ("images", "headline", "variants")}}
    if out_png is not None:
        result["png"] = [str(p) for p in robustness_pngs(result, out_png)]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _headline(task: str, metrics: dict) -> dict[str, float]:
    key = "t2i_r5" if task == "retrieval" else "top1"
    return {name: m[key] for name, m in metrics.items()}


def robustness_pngs(result: dict, out_png: str | os.PathLike) -> list[Path]:
    """One PNG per degradation kind: the headline metric of each variant against the level.
    `out_png` is the file for a single kind; with several, the kind is added to its name."""
    from imagetext.eval.plots import curves_png

    out_png = Path(out_png)
    kinds = list(dict.fromkeys(r["kind"] for r in result["rows"]))
    paths = []
    key = result["headline"]
    for kind in kinds:
        rows = [r for r in result["rows"] if r["kind"] == kind]
        curves = {result["variants"][v]: [r[v][key] for r in rows] for v in result["variants"]}
        path = out_png if len(kinds) == 1 else out_png.with_name(f"{out_png.stem}_{kind}{out_png.suffix}")
        what = "T->I R@5 (%)" if key == "t2i_r5" else "top-1 accuracy (%)"
        paths.append(curves_png([r["level"] for r in rows], curves, path, UNITS[kind], what,
                                f"{result['model']} on {Path(result['data']).name} "
                                f"{result['split']} ({result['n_images']} images)"))
    return paths


def _retrieval_scorer(encoder, data, split, limit, blur_aware):
    from imagetext.data.readers import read_pairs
    from imagetext.eval.retrieval import recall_from_scores

    dataset = read_pairs(data, split=split)
    images, image_index, captions = dataset.images, dataset.image_index, dataset.captions
    if limit:
        keep = [i for i, j in enumerate(image_index) if j < limit]
        images = images[:limit]
        captions = [captions[i] for i in keep]
        image_index = [image_index[i] for i in keep]
    queries = {"plain": encoder.encode_texts(captions)}
    variants = {"plain": "plain query"}
    if blur_aware:
        queries["blur_aware"] = blur_aware_text_vectors(encoder, captions, queries["plain"])
        variants["blur_aware"] = (f"blur-aware query (+{BLUR_AWARE_WEIGHT:g} x "
                                  f"'{BLUR_AWARE_TEMPLATE}')")

    def score(emb):
        return {name: recall_from_scores(encoder.similarity(emb.semantic, q), image_index)
                for name, q in queries.items()}

    return score, {"images": images, "headline": "t2i_r5", "variants": variants,
                   "n_captions": len(captions)}


def _classify_scorer(encoder, data, split, limit, classifier, val_fraction, seed):
    from imagetext.data.labelled import read_labelled
    from imagetext.eval.classification import classification_metrics, zero_shot_scores
    from imagetext.prompts import DEFAULT_TEMPLATE, ENSEMBLE_TEMPLATES

    labelled = read_labelled(data, val_fraction=val_fraction, seed=seed)
    classes = labelled.classes  # all the data's classes, as `eval classify` scores them
    labelled = labelled.split(split)
    if limit:
        labelled = labelled.subset(list(range(min(limit, len(labelled)))))
    targets = np.asarray([classes.index(c) for c in labelled.labels])
    label_sets = {"zero_shot_single": [DEFAULT_TEMPLATE], "zero_shot_ensemble": list(ENSEMBLE_TEMPLATES)}
    variants = {"zero_shot_single": "zero-shot, one template",
                "zero_shot_ensemble": f"zero-shot, ensemble of {len(ENSEMBLE_TEMPLATES)} templates"}
    probe = None
    if classifier:
        from imagetext.classify import LinearProbe

        probe = LinearProbe.from_pretrained(classifier)
        probe.load_base_model(encoder)  # the probe must read this model's embeddings
        variants["classifier"] = f"trained classifier {probe.name}"

    def score(emb):
        out = {}
        for name, templates in label_sets.items():
            m = classification_metrics(zero_shot_scores(encoder, emb.semantic, classes, templates),
                                       targets, classes)
            out[name] = {k: m[k] for k in ("top1", "top5", "mean_per_class_recall")}
        if probe is not None:
            probs = probe.predict_proba(emb)[:, [probe.labels.index(c) for c in classes]]
            m = classification_metrics(probs, targets, classes)
            out["classifier"] = {k: m[k] for k in ("top1", "top5", "mean_per_class_recall")}
        return out

    return score, {"images": labelled.images, "headline": "top1", "variants": variants,
                   "classes": classes}
