"""The Python API of imagetext; the CLI and the web app are thin layers over it.

    from imagetext.api import Collection, caption, classify, rank
    col = Collection.open("~/Pictures")
    col.index()                         # incremental; on_progress= gets progress events
    col.search("a dog on a beach", k=10)
    col.similar("query.jpg", k=10)
    classify(["cat.jpg"], ["cat", "dog", "car"])
    rank("a sunset over the sea", ["a.jpg", "b.jpg"])
    caption(["a.jpg"]).results[0].caption
    cluster("~/Pictures", k=16).clusters      # albums: PCA + k-means, named from the photos
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from imagetext.classify.linear_probe import LinearProbe, embedding_features, is_classifier_folder
from imagetext.errors import InvalidInputError
from imagetext.index.clusters import Cluster, Clustering  # noqa: F401  (re-exported)
from imagetext.index.collection import (  # noqa: F401  (re-exported)
    Collection,
    IndexBusyError,
    IndexReport,
    ModelMismatchError,
    SearchResult,
)
from imagetext.index.duplicates import Duplicates
from imagetext.models.base import ImageSource, ImageTextEncoder
from imagetext.models.calibration import classify_scale, moderation_scores
from imagetext.prompts import DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from imagetext.caption.base import Captioner

# Zero-shot content moderation. Each category is scored by its best-matching prompt (the
# evidence: max over its prompts of the model's similarity); a model's calibration.json gives
# every category its own threshold, fitted so that about 0.1% of ordinary photos (Flickr8k
# val) reach it, and moderation reports a flag score that is 0.5 exactly at that threshold
# (models/calibration.moderation_scores). Models without a calibration fall back to the
# preset imagetext had before: a softmax over FALLBACK_SAFE_LABELS + FALLBACK_UNSAFE_LABELS at
# the model's logit scale, unsafe labels flagged at 0.5. That is uncalibrated: on the default
# model (at its logit scale 100) it flagged 366 of the 1000 Flickr8k val photos, 344 of the 965
# whose captions mention none of the categories.
MODERATION_CATEGORIES: dict[str, tuple[str, ...]] = {
    "weapons": ("a photo of a gun.", "a person holding a gun.", "a person aiming a rifle.",
                "a person shooting a pistol.", "a knife.", "a person holding a sword.", "a weapon."),
    "violence": ("people fighting.", "two men fighting.", "a boxing match.",
                 "a person punching another person.", "martial arts fighters kicking each other.",
                 "wrestlers wrestling in a ring.", "a violent fight."),
    "alcohol": ("people drinking beer.", "a bottle of beer.", "a glass of wine.",
                "people drinking alcohol at a bar.", "a person holding a beer."),
    "smoking": ("a person smoking a cigarette.", "a man smoking.", "a woman smoking a cigarette.",
                "a cigarette.", "a person smoking a cigar."),
    "drugs": ("illegal drugs.", "a person using drugs.", "a syringe.", "a person smoking marijuana.",
              "pills and white powder."),
    "nudity": ("a naked person.", "a nude woman.", "a topless woman.", "nudity.", "sexual content."),
    "blood": ("blood.", "a bloody wound.", "a person covered in blood.", "a bleeding injury.", "gore."),
}
UNSAFE_LABELS = tuple(MODERATION_CATEGORIES)  # the labels calibrated moderation can flag
MODERATION_LABELS = UNSAFE_LABELS
# the uncalibrated fallback: the safe labels give ordinary photos somewhere to go
FALLBACK_SAFE_LABELS = ("an ordinary everyday photo", "a landscape or nature scene",
                        "people in everyday life", "food and drink", "animals")
FALLBACK_UNSAFE_LABELS = ("nudity or sexual content", "graphic violence and blood",
                          "a gun or weapon", "illegal drugs and drug use")
SAFE_LABELS = FALLBACK_SAFE_LABELS
# on the flag score: 0.5 = each category's calibrated threshold (the uncalibrated fallback
# reads it as a softmax probability)
DEFAULT_MODERATION_THRESHOLD = 0.5


def get_encoder(model: str | ImageTextEncoder | None = None) -> ImageTextEncoder:
    if isinstance(model, ImageTextEncoder):
        return model
    from imagetext.models.registry import load_encoder

    return load_encoder(model)


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Text separated by commas or new lines, or a list -> clean, unique labels in order: the
    one rule for the CLI's --labels, the web form and Python callers."""
    items = re.split(r"[,\n]", labels) if isinstance(labels, str) else list(labels)
    out = []
    for item in items:
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def label_vectors(encoder: ImageTextEncoder, labels: Sequence[str],
                  templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """One text vector per label: the normalised mean over the prompt templates."""
    prompts = [t.format(label) for label in labels for t in templates]
    vecs = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(1)
    return vecs / np.linalg.norm(vecs, axis=-1, keepdims=True)


@dataclass
class Classification:
    image: str
    labels: list[str]
    scores: list[float]  # softmax over the labels, in the order of `labels`
    similarities: list[float]  # the model's image-label scores (cosine, hubness-corrected if it does)
    flagged: list[str] = field(default_factory=list)  # labels scoring >= threshold
    # True when the scores come from the model's calibration.json (classification: a fitted
    # softmax temperature; moderation: per-category flag scores, not a softmax)
    calibrated: bool = False

    @property
    def top(self) -> str:
        return self.labels[int(np.argmax(self.scores))]

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(zip(self.labels, self.scores), key=lambda x: -x[1])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top"] = self.top
        return d


def _image_name(image: ImageSource) -> str:
    return image if isinstance(image, str) else str(getattr(image, "filename", "") or
                                                     type(image).__name__)


def classify(
    images: Sequence[ImageSource],
    labels: str | Sequence[str] | None = None,
    model: str | ImageTextEncoder | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    threshold: float | None = None,
    flag_labels: Sequence[str] | None = None,
    classifier: str | os.PathLike | LinearProbe | None = None,
) -> list[Classification]:
    """Zero-shot classification of each image against `labels`, or, with `classifier` (a
    folder from `imagetext train classifier`, or a `model` that is one), by that trained
    classifier over its own labels.

    Scores are a softmax over the labels: of similarity / T with the temperature T fitted on
    held-out photos when the model has a calibration.json (the default model does:
    `calibrated` is then True), else at the model's logit scale; a trained classifier's are
    its probabilities (`similarities` then holds its logits). With `threshold`,
    every label (or only those in `flag_labels`) scoring at least `threshold` is flagged,
    which is how multi-label uses such as content moderation read the result.
    """
    if classifier is None and not isinstance(model, ImageTextEncoder) and is_classifier_folder(model):
        classifier, model = model, None
    if classifier is not None:
        return _classify_trained(images, labels, model, classifier, threshold, flag_labels)
    labels = parse_labels(labels or [])
    if len(labels) < 2:
        raise InvalidInputError("give at least two labels to choose between")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidInputError("threshold must be between 0 and 1")
    encoder = get_encoder(model)
    text = label_vectors(encoder, labels, templates)
    sims = encoder.similarity(encoder.encode_images(list(images)).semantic, text)
    probs = _softmax(classify_scale(encoder) * sims)
    calibrated = "temperature" in encoder.calibration.get("classify", {})
    return _classifications(images, labels, probs, sims, threshold,
                            set(flag_labels) if flag_labels is not None else set(labels), calibrated)


def load_classifier(classifier: str | os.PathLike | LinearProbe) -> LinearProbe:
    """A trained classifier folder (`imagetext train classifier`), loaded once per process."""
    if isinstance(classifier, LinearProbe):
        return classifier
    key = os.path.abspath(os.path.expanduser(str(classifier)))
    if key not in _CLASSIFIERS:
        _CLASSIFIERS[key] = LinearProbe.from_pretrained(key)
    return _CLASSIFIERS[key]


_CLASSIFIERS: dict[str, LinearProbe] = {}


def _classify_trained(images, labels, model, classifier, threshold, flag_labels):
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidInputError("threshold must be between 0 and 1")
    probe = load_classifier(classifier)
    if labels and parse_labels(labels) != probe.labels:
        raise InvalidInputError(f"the classifier {probe.name} has its own labels "
                                f"({', '.join(probe.labels)}); leave the labels out")
    encoder = probe.load_base_model(model)
    emb = encoder.encode_images(list(images))
    logits = probe.logits(embedding_features(emb, probe.features))
    return _classifications(images, probe.labels, probe.predict_proba(emb), logits, threshold,
                            set(flag_labels) if flag_labels is not None else set(probe.labels),
                            False)


def _softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def _classifications(images, labels, scores, sims, threshold, flaggable, calibrated):
    out = []
    for image, p, s in zip(images, scores, sims):
        flagged = [lab for lab, q in zip(labels, p) if threshold is not None and q >= threshold
                   and lab in flaggable]
        out.append(Classification(_image_name(image), list(labels), [float(x) for x in p],
                                  [float(x) for x in s], flagged, calibrated))
    return out


def moderation_evidence(encoder: ImageTextEncoder, image_vecs: np.ndarray,
                        categories: dict[str, Sequence[str]]) -> np.ndarray:
    """(n_images, n_categories): for each category, the best similarity of an image to any of
    its prompts."""
    prompts = [p for ps in categories.values() for p in ps]
    sims = encoder.similarity(image_vecs, encoder.encode_texts(prompts))
    out, start = [], 0
    for ps in categories.values():
        out.append(sims[:, start:start + len(ps)].max(1))
        start += len(ps)
    return np.stack(out, axis=1)


def moderate(images: Sequence[ImageSource], model: str | ImageTextEncoder | None = None,
             threshold: float = DEFAULT_MODERATION_THRESHOLD) -> list[Classification]:
    """Flag unsafe content zero-shot: weapons, violence, alcohol, smoking, drugs, nudity, blood.

    With the model's calibration (the default model has one; `calibrated` is then True), each
    category gets a flag score in 0..1 that is 0.5 exactly at the category's threshold, fitted
    so that about 0.1% of ordinary photos reach it (on Flickr8k val: 6 of 965 ordinary photos
    flagged in all), and is flagged at `threshold` (0.5: the calibrated thresholds; higher is
    stricter). It catches few real cases (README, "Content moderation"). The categories and
    prompts are the calibration's own. Without a calibration: the uncalibrated softmax preset
    over FALLBACK_SAFE_LABELS + FALLBACK_UNSAFE_LABELS (see above), `calibrated` False.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError("threshold must be between 0 and 1")
    encoder = get_encoder(model)
    section = encoder.calibration.get("moderation")
    if not section:
        results = classify(images, FALLBACK_SAFE_LABELS + FALLBACK_UNSAFE_LABELS, encoder,
                           threshold=threshold, flag_labels=FALLBACK_UNSAFE_LABELS)
        for r in results:
            r.calibrated = False
        return results
    categories = {c["name"]: tuple(c["prompts"]) for c in section["categories"]}
    evidence = moderation_evidence(encoder, encoder.encode_images(list(images)).semantic, categories)
    return _classifications(images, list(categories), moderation_scores(section, evidence),
                            evidence, threshold, set(categories), True)


@dataclass
class RankedImage:
    image: str
    score: float
    index: int  # position of the image in the list given to rank()

    def to_dict(self) -> dict:
        return asdict(self)


def rank(prompt: str, images: Sequence[ImageSource],
         model: str | ImageTextEncoder | None = None) -> list[RankedImage]:
    """Order images by how well they match `prompt`, best first."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise InvalidInputError("the prompt is empty")
    encoder = get_encoder(model)
    # the scale search reports too: the order of `similarity`, without the prompt's own offset
    sims = encoder.query_scores(encoder.encode_images(list(images)).semantic,
                                encoder.encode_texts([prompt])[0])
    order = np.argsort(-sims, kind="stable")
    return [RankedImage(_image_name(images[i]), float(sims[i]), int(i)) for i in order]


@dataclass
class CaptionResult:
    image: str
    captions: list[tuple[str, float]]  # best first: (caption, score), `num_return` of them

    @property
    def caption(self) -> str:
        return self.captions[0][0]

    def to_dict(self) -> dict:
        out = {"image": self.image, "caption": self.caption, "score": round(self.captions[0][1], 4)}
        if len(self.captions) > 1:
            out["captions"] = [{"caption": c, "score": round(s, 4)} for c, s in self.captions]
        return out


@dataclass
class CaptionReport:
    model: str
    results: list[CaptionResult]
    failed: list[tuple[str, str]]  # (image, why it could not be read): skipped, never fatal

    def to_dict(self) -> dict:
        return {"model": self.model, "results": [r.to_dict() for r in self.results],
                "failed": [{"image": p, "error": r} for p, r in self.failed]}


def caption(images: Sequence[ImageSource], model: str | Captioner | None = None, beam: int = 3, max_length: int = 30,
            length_penalty: float = 1.0, no_repeat_ngram: int = 0, num_return: int = 1,
            batch_size: int = 16) -> CaptionReport:
    """Describe images in a sentence (`num_return` alternatives each, best first) with a
    captioner (a built-in name, a folder or a loaded Captioner; default: the shipped one).
    Unreadable images are reported in `failed` and skipped."""
    from imagetext.caption.base import Captioner, check_generation
    from imagetext.caption.registry import load_captioner
    from imagetext.io.images import ImageLoadError

    check_generation(beam, max_length, num_return)  # before the model loads
    captioner = model if isinstance(model, Captioner) else load_captioner(model)
    results, failed = [], []
    for i in range(0, len(images), batch_size):
        batch, pixels = [], []
        for image in images[i : i + batch_size]:
            try:
                pixels.append(captioner.preprocess.load(image))
                batch.append(_image_name(image))
            except ImageLoadError as exc:
                failed.append((_image_name(image), exc.reason))
        if not batch:
            continue
        out = captioner.generate(np.stack(pixels), beam_size=beam, max_length=max_length,
                                 length_penalty=length_penalty,
                                 no_repeat_ngram_size=no_repeat_ngram, num_return=num_return)
        results.extend(CaptionResult(name, [(c, float(s)) for c, s in hyps])
                       for name, hyps in zip(batch, out))
    return CaptionReport(captioner.name, results, failed)


def cluster(collection: Collection | str, k: int | None = None,
            vectors: str = "semantic", seed: int = 0) -> Clustering:
    """Group a collection (a Collection, or its folder as a str or Path) into albums: PCA
    then FAISS k-means over the images' `vectors` ("semantic": what they show, or "visual":
    how they look), `k` clusters (default: index.clusters.default_k of its size), each named
    from its members' captions, or from everyday labels the model reads when there are none.
    Stored in the index, replacing earlier albums (see index/clusters.py)."""
    if isinstance(collection, Collection):
        return collection.cluster(k, vectors, seed)
    with Collection.open(collection) as col:
        return col.cluster(k, vectors, seed)


def clusters(collection: Collection | str) -> Clustering | None:
    """The albums stored in a collection's index, or None when it has none for its model."""
    if isinstance(collection, Collection):
        return collection.clusters()
    with Collection.open(collection) as col:
        return col.clusters()


def duplicates(collection: Collection | str, preset: str | None = "edits",
               threshold: float | None = None, vectors: str | None = None,
               turned: bool = True, on_progress=None, spatial: bool = False) -> Duplicates:
    """Groups of near-duplicates in a collection (a Collection, or its folder): photos whose
    `vectors` (default: "instance" where every image has one, else "visual") have a cosine
    >= `threshold`, or the `preset`'s ("exact", "edits", "scene"; exact also compares the
    pixels), linked into groups; each group's first photo is the one suggested to keep
    (most pixels, then largest file, then sharpest). `turned`: copies turned by 90 degrees
    count too (instance vectors; the first time each photo is turned and run through the
    model once, stored in the index; `on_progress` gets stage "turn"). `spatial` ("edits"):
    each pair must also share enough keypoints in one geometry (ORB + RANSAC,
    instance/spatial.py), which drops look-alikes; about a second per pair. Touches no photo; see
    index/duplicates.py (and its move_others, which moves the others only when called)."""
    from imagetext.index.duplicates import find_duplicates

    if isinstance(collection, Collection):
        return find_duplicates(collection, preset, threshold, vectors, turned, on_progress, spatial)
    with Collection.open(collection) as col:
        return find_duplicates(col, preset, threshold, vectors, turned, on_progress, spatial)
