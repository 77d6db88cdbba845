"""`imagetext train classifier`: a linear probe on a frozen image-text model's embeddings.

The images of the labelled set (data/labelled.py) are embedded once by the base model; a
scikit-learn LogisticRegression (multinomial, L2, on standardised features) is fitted on the
train split. Its regularisation C is chosen among `cs` by stratified 3-fold cross-validation
on the train split (mean held-out accuracy, ties to the stronger regularisation), then refitted
on all of train: the val split is never used to choose anything, so its accuracy, reported
beside zero-shot's (one template and the prompt ensemble) in the card, is an honest estimate.
No training loop is needed (the fit is convex); tuning tower blocks would be a task of
train/loop.py.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imagetext.errors import InvalidInputError

DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1)
DEFAULT_FEATURES = "semantic"
CV_FOLDS = 3


def threadpool_limits(n: int):
    """BLAS on `n` threads: lbfgs on a busy 2-core machine ran 7x slower on two threads
    (88 s against 12.6 s for one fit on 3654 Flickr8k photos)."""
    from threadpoolctl import threadpool_limits as limits

    return limits(n)


def _pipeline(c: float, seed: int, balanced: bool = False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=3000, random_state=seed, class_weight="balanced" if balanced else None))


def choose_c(x: np.ndarray, y: np.ndarray, cs: Sequence[float], folds: int = CV_FOLDS,
             seed: int = 0, balanced: bool = False) -> tuple[float, dict[float, float]]:
    """(the C of the best mean cross-validated accuracy, {C: accuracy %}) on (x, y)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(y) < 4:
        raise InvalidInputError(f"{len(y)} train images are too few to train a classifier")
    # StratifiedKFold needs some class with as many images as folds; one with fewer is only
    # missing from some folds (the warning silenced below)
    folds = max(2, min(folds, int(np.bincount(y).max())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    with warnings.catch_warnings(), threadpool_limits(1):
        # a class with fewer images than folds is left out of some folds: fine here
        warnings.filterwarnings("ignore", message="The least populated class")
        for c in sorted(cs):
            scoring = "balanced_accuracy" if balanced else None
            cv_scores = cross_val_score(_pipeline(c, seed, balanced), x, y, cv=cv, scoring=scoring)
            scores[c] = round(100.0 * float(cv_scores.mean()), 2)
    best = max(scores.values())
    return min(c for c, s in scores.items() if s == best), scores


def train_classifier(data: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
                     features: str = DEFAULT_FEATURES, cs: Sequence[float] = DEFAULT_CS,
                     val_fraction: float = 0.2, seed: int = 0, templates: Sequence[str] | None = None,
                     batch_size: int = 32, progress: bool = False, balanced: bool = False,
                     log: Callable[[str], None] | None = None) -> dict:
    """Fit a linear probe on `data`'s train split, save it as a classifier folder in `out`,
    and return its metrics (val: the probe beside zero-shot). `balanced` weighs every class
    equally in the loss (and chooses C by balanced accuracy): a rare class is then not
    sacrificed to the common ones, at some cost in overall top-1."""
    from imagetext.api import get_encoder
    from imagetext.classify.linear_probe import FEATURES, embedding_features, probe_from_sklearn
    from imagetext.data.labelled import read_labelled
    from imagetext.eval.classification import (
        classification_metrics,
        embed_labelled,
        zero_shot_scores,
    )
    from imagetext.models.registry import DEFAULT_MODEL
    from imagetext.prompts import DEFAULT_TEMPLATE, ENSEMBLE_TEMPLATES

    say = log or (lambda msg: None)
    if features not in FEATURES:
        raise InvalidInputError(f"unknown features {features!r}; choose from {', '.join(FEATURES)}")
    if not cs or any(c <= 0 for c in cs):
        raise InvalidInputError("the regularisation values C must be positive")
    start = time.perf_counter()
    labelled = read_labelled(data, val_fraction=val_fraction, seed=seed)
    train, val = labelled.split("train"), labelled.split("val")
    classes = train.classes
    unseen = sorted(set(val.classes) - set(classes))
    if unseen:
        raise InvalidInputError(f"val has classes with no train image: {', '.join(unseen)}")
    say(f"{labelled.summary()}")
    encoder = get_encoder(model)
    base_model = str(model) if model else DEFAULT_MODEL
    emb_train, train, fail_train = embed_labelled(encoder, train, batch_size, progress, "train images")
    emb_val, val, fail_val = embed_labelled(encoder, val, batch_size, progress, "val images")
    x_train = embedding_features(emb_train, features)
    y_train = np.asarray([classes.index(c) for c in train.labels])
    y_val = np.asarray([classes.index(c) for c in val.labels])
    c, cv_scores = choose_c(x_train, y_train, cs, seed=seed, balanced=balanced)
    say(f"C chosen by cross-validation on train: {c} (accuracy % by C: {cv_scores})")
    with threadpool_limits(1):
        fitted = _pipeline(c, seed, balanced).fit(x_train, y_train)
    ensemble = list(templates or ENSEMBLE_TEMPLATES)
    val_metrics = {
        "zero_shot_single": classification_metrics(
            zero_shot_scores(encoder, emb_val.semantic, classes, [DEFAULT_TEMPLATE]), y_val, classes),
        "zero_shot_ensemble": classification_metrics(
            zero_shot_scores(encoder, emb_val.semantic, classes, ensemble), y_val, classes),
    }
    info = {"C": c, "class_weight": "balanced" if balanced else None, "cv_accuracy": {str(k): v for k, v in cv_scores.items()},
            "n_train": len(train), "n_val": len(val), "data": str(data), "seed": seed}
    probe = probe_from_sklearn(fitted, classes, features, base_model, encoder.fingerprint, **info)
    probe.name = Path(out).name
    val_metrics["classifier"] = classification_metrics(probe.predict_proba(emb_val), y_val, classes)
    train_top1 = round(100.0 * float((fitted.predict(x_train) == y_train).mean()), 2)
    summary = {name: {k: m[k] for k in ("top1", "top5", "mean_per_class_recall")}
               for name, m in val_metrics.items()}
    probe.info["val"] = summary
    probe.info["train_top1"] = train_top1
    out = Path(out)
    probe.save_pretrained(out)
    _write_card(out, probe, summary, val_metrics["classifier"], encoder.name, ensemble, train.counts())
    return {"out": str(out), "classes": classes, "C": c, "cv_accuracy": cv_scores,
            "features": features, "model": encoder.name, "n_train": len(train),
            "n_val": len(val), "train_top1": train_top1, "val": summary,
            "per_class": val_metrics["classifier"]["per_class"],
            "unreadable": [{"image": p, "error": r} for p, r in fail_train + fail_val],
            "bad_rows": [str(b) for b in labelled.bad_rows],
            "seconds": round(time.perf_counter() - start, 1)}


def _write_card(out: Path, probe, summary: dict, metrics: dict, model_name: str,
                ensemble: Sequence[str], counts: dict[str, int]) -> None:
    from imagetext.models.card import write_model_card
    from imagetext.prompts import DEFAULT_TEMPLATE

    rows = [("zero-shot, one template", "zero_shot_single"),
            (f"zero-shot, ensemble of {len(ensemble)} templates", "zero_shot_ensemble"),
            (f"this linear probe ({probe.features})", "classifier")]
    table = "\n".join(f"| {name} | {summary[k]['top1']:.1f} | {summary[k]['top5']:.1f} | "
                      f"{summary[k]['mean_per_class_recall']:.1f} |" for name, k in rows)
    per_class = ", ".join(f"{c} {v:.1f}" for c, v in metrics["per_class"].items())
    weighting = ", every class weighted equally" if probe.info.get("class_weight") else ""
    body = f"""# {probe.name}

A linear probe (scikit-learn logistic regression{weighting}, C = {probe.info['C']} chosen by
cross-validation on the train split) over the frozen `{model_name}` image embeddings
({probe.features}), trained by `imagetext train classifier` on {probe.info['n_train']} images of
{len(probe.labels)} classes ({', '.join(f'{c} {n}' for c, n in counts.items())}) from
`{probe.info['data']}`.

Use it with `imagetext classify IMAGE --classifier {probe.name}` (or `--model`), or
`imagetext serve --classifier FOLDER` for the web app's Classify tab. It needs the base model
`{probe.base_model}` with the same weights (fingerprint `{probe.base_fingerprint}`).

## Accuracy on the val split ({probe.info['n_val']} images), in %

| method | top-1 | top-5 | mean per-class recall |
| --- | --- | --- | --- |
{table}

Zero-shot uses the same base model: one template is `{DEFAULT_TEMPLATE}`, the ensemble
averages the text vectors of {len(ensemble)} templates. Per-class accuracy of the probe:
{per_class}. Train top-1: {probe.info['train_top1']:.1f}.
"""
    scores = {k: round(v / 100, 4) for k, v in (
        ("accuracy", summary["classifier"]["top1"]),
        ("mean_per_class_recall", summary["classifier"]["mean_per_class_recall"]),
        ("zero_shot_accuracy", summary["zero_shot_single"]["top1"]),
        ("zero_shot_ensemble_accuracy", summary["zero_shot_ensemble"]["top1"]))}
    write_model_card(out, body, probe.name, scores=scores, task="image-classification",
                     dataset=Path(str(probe.info["data"])).name, dataset_split="val",
                     base_model=None, pipeline_tag="image-classification",
                     tags=["linear-probe"],
                     score_names={"accuracy": "top-1 accuracy (linear probe)",
                                  "mean_per_class_recall": "mean per-class recall (linear probe)",
                                  "zero_shot_accuracy": "zero-shot top-1, one template",
                                  "zero_shot_ensemble_accuracy": "zero-shot top-1, prompt ensemble"})
