"""Classification accuracy on a labelled set: zero-shot (one template and a prompt ensemble)
and trained classifiers (classify/linear_probe.py), in one run.

Metrics (in percent): top-1 and top-5 accuracy over images, each class's accuracy (its
recall: the share of its images put in it), their mean (mean per-class recall, "balanced
accuracy": a rare class counts as much as a common one) and the confusion matrix, drawn as a
PNG per method. Images that cannot be read are reported and left out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagetext.errors import InvalidInputError
from imagetext.prompts import DEFAULT_TEMPLATE, ENSEMBLE_TEMPLATES


def read_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates from a text file, one a line with `{}` for the label ('#' comments)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise InvalidInputError(f"{path}: every template needs exactly one {{}} for the label"
                                + (f" ({bad[0]!r} has not)" if bad else " (no template found)"))
    return templates


def classification_metrics(scores: np.ndarray, targets: Sequence[int],
                           classes: Sequence[str]) -> dict:
    """Top-1/top-5 accuracy, per-class accuracy, mean per-class recall and the confusion
    matrix (rows true, columns predicted) of an (n_images, n_classes) score matrix."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    n = len(classes)
    pred = scores.argmax(1)
    k = min(5, n)
    top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (targets, pred), 1)
    support = confusion.sum(1)
    per_class = {c: round(100.0 * confusion[i, i] / support[i], 2)
                 for i, c in enumerate(classes) if support[i]}
    return {
        "top1": round(100.0 * float((pred == targets).mean()), 2),
        "top5": round(100.0 * float((top_k == targets[:, None]).any(1).mean()), 2),
        "mean_per_class_recall": round(float(np.mean(list(per_class.values()))), 2),
        "per_class": per_class,
        "support": {c: int(support[i]) for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
    }


def zero_shot_scores(encoder, image_vecs: np.ndarray, classes: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
    """The model's image-label scores as api.classify computes them (a label's text vector is
    the mean over the templates)."""
    from imagetext.api import label_vectors

    return encoder.similarity(image_vecs, label_vectors(encoder, list(classes), templates))


def embed_labelled(encoder, data, batch_size: int = 32, progress: bool = False, label: str = ""):
    """(ImageEmbeddings, the labelled images that could be read, failures [(path, reason)])."""
    from imagetext.index.pipeline import encode_image_files

    emb, failures = encode_image_files(encoder, data.images, batch_size=batch_size,
                                       progress=progress, label=label or "images")
    if failures:
        failed = {p for p, _ in failures}
        keep = [i for i, p in enumerate(data.images) if p not in failed]
        data = data.subset(keep)
    return emb, data, failures


def evaluate_classification(data: str | os.PathLike, split: str | None = "val", model=None,
                            templates: Sequence[str] | None = None,
                            classifiers: Sequence[str | os.PathLike] = (),
                            out_dir: str | os.PathLike | None = None, val_fraction: float = 0.2,
                            seed: int = 0, batch_size: int = 32, progress: bool = False) -> dict:
    """Evaluate zero-shot classification with one template (DEFAULT_TEMPLATE) and with the
    ensemble `templates` (default ENSEMBLE_TEMPLATES), and every trained classifier folder in
    `classifiers` (on its own base model), on `split` of the labelled set `data`.

    `val_fraction` holds out that share of each class as val when the data has no split.
    With `out_dir`, a confusion-matrix PNG per method is written there."""
    from imagetext.api import get_encoder
    from imagetext.classify import LinearProbe
    from imagetext.data.labelled import read_labelled

    start = time.perf_counter()
    labelled = read_labelled(data, val_fraction=val_fraction, seed=seed)
    classes = labelled.classes  # all the data's classes: a split may lack one (a rare class)
    if split:
        labelled = labelled.split(split)
    probes = [LinearProbe.from_pretrained(c) for c in classifiers]
    for probe in probes:
        missing = sorted(set(classes) - set(probe.labels))
        if missing:
            raise InvalidInputError(f"the classifier {probe.name} has no label "
                                    f"{', '.join(map(repr, missing))} of this data")
    encoder = get_encoder(model)
    emb, labelled, failures = embed_labelled(encoder, labelled, batch_size, progress,
                                             f"images ({split or 'all'})")
    targets = np.asarray([classes.index(c) for c in labelled.labels])
    ensemble = list(templates or ENSEMBLE_TEMPLATES)
    methods = {
        "zero_shot_single": (zero_shot_scores(encoder, emb.semantic, classes, [DEFAULT_TEMPLATE]),
                             f"zero-shot, {DEFAULT_TEMPLATE!r}"),
        "zero_shot_ensemble": (zero_shot_scores(encoder, emb.semantic, classes, ensemble),
                               f"zero-shot, ensemble of {len(ensemble)} templates"),
    }
    for i, probe in enumerate(probes):
        probe_emb = emb  # a probe on another model's embeddings reads that model's
        if not (probe.base_fingerprint and probe.base_fingerprint == encoder.fingerprint):
            probe_emb, _, _ = embed_labelled(probe.load_base_model(), labelled, batch_size, progress)
        probs = probe.predict_proba(probe_emb)
        columns = [probe.labels.index(c) for c in classes]  # the data's classes, in its order
        key = "classifier" if len(probes) == 1 else f"classifier_{i + 1}"
        methods[key] = (probs[:, columns], f"trained classifier {probe.name} ({probe.features})")
    result: dict = {"data": str(data), "split": split, "model": encoder.name,
                    "n_images": len(labelled), "classes": classes,
                    "templates": {"single": [DEFAULT_TEMPLATE], "ensemble": ensemble}}
    for key, (scores, title) in methods.items():
        metrics = classification_metrics(scores, targets, classes)
        metrics["method"] = title
        if out_dir is not None:
            from imagetext.eval.plots import confusion_png

            png = confusion_png(metrics["confusion"], classes, Path(out_dir) / f"confusion_{key}.png",
                                f"{title}\n{split or 'all'}: top-1 {metrics['top1']:.1f}%, "
                                f"mean per-class recall {metrics['mean_per_class_recall']:.1f}%")
            metrics["confusion_png"] = str(png)
        result[key] = metrics
    result["unreadable"] = [{"image": p, "error": r} for p, r in failures]
    result["bad_rows"] = [str(b) for b in labelled.bad_rows]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result

