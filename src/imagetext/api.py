"""The Python API of imagetext; the CLI and the web app are thin layers over it.

    from imagetext.api import Collection, classify, rank
    col = Collection.open("~/Pictures")
    col.index()                         # incremental, with a progress bar
    col.search("a dog on a beach", k=10)
    col.similar("query.jpg", k=10)
    classify(["cat.jpg"], ["cat", "dog", "car"])
    rank("a sunset over the sea", ["a.jpg", "b.jpg"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from imagetext.index.collection import (  # noqa: F401  (re-exported)
    Collection,
    IndexBusyError,
    IndexReport,
    ModelMismatchError,
    SearchResult,
)
from imagetext.models.base import ImageSource, ImageTextEncoder

DEFAULT_TEMPLATES = ("a photo of a {}.",)

# Zero-shot content moderation: a label is flagged when its score reaches the threshold.
# The safe labels give ordinary photos somewhere to go; only UNSAFE_LABELS are flagged.
SAFE_LABELS = ("an ordinary everyday photo", "a landscape or nature scene",
               "people in everyday life", "food and drink", "animals")
UNSAFE_LABELS = ("nudity or sexual content", "graphic violence and blood",
                 "a gun or weapon", "illegal drugs and drug use")
MODERATION_LABELS = SAFE_LABELS + UNSAFE_LABELS
DEFAULT_MODERATION_THRESHOLD = 0.5


def get_encoder(model: str | ImageTextEncoder | None = None) -> ImageTextEncoder:
    if isinstance(model, ImageTextEncoder):
        return model
    from imagetext.models.registry import load_encoder

    return load_encoder(model)


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Comma-separated text or a list -> clean, unique labels in order."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
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
    labels: str | Sequence[str],
    model: str | ImageTextEncoder | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    threshold: float | None = None,
    flag_labels: Sequence[str] | None = None,
) -> list[Classification]:
    """Zero-shot classification of each image against `labels`.

    Scores are a softmax over the labels at the model's logit scale. With `threshold`,
    every label (or only those in `flag_labels`) scoring at least `threshold` is flagged,
    which is how multi-label uses such as content moderation read the result.
    """
    labels = parse_labels(labels)
    if len(labels) < 2:
        raise ValueError("give at least two labels to choose between")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between 0 and 1")
    encoder = get_encoder(model)
    text = label_vectors(encoder, labels, templates)
    sims = encoder.similarity(encoder.encode_images(list(images)).semantic, text)
    logits = encoder.logit_scale * sims
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    flaggable = set(flag_labels) if flag_labels is not None else set(labels)
    out = []
    for image, p, s in zip(images, probs, sims):
        flagged = [lab for lab, q in zip(labels, p) if threshold is not None and q >= threshold
                   and lab in flaggable]
        out.append(Classification(_image_name(image), labels, [float(x) for x in p],
                                  [float(x) for x in s], flagged))
    return out


def moderate(images: Sequence[ImageSource], model: str | ImageTextEncoder | None = None,
             threshold: float = DEFAULT_MODERATION_THRESHOLD) -> list[Classification]:
    """Flag unsafe content zero-shot with the preset moderation labels."""
    return classify(images, MODERATION_LABELS, model, threshold=threshold, flag_labels=UNSAFE_LABELS)


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
        raise ValueError("the prompt is empty")
    encoder = get_encoder(model)
    # the scale search reports too: the order of `similarity`, without the prompt's own offset
    sims = encoder.query_scores(encoder.encode_images(list(images)).semantic,
                                encoder.encode_texts([prompt])[0])
    order = np.argsort(-sims, kind="stable")
    return [RankedImage(_image_name(images[i]), float(sims[i]), int(i)) for i in order]
