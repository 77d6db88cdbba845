"""Trained image classifiers over a frozen image-text model's embeddings (a linear probe):
`LinearProbe` (from_pretrained / save_pretrained a model folder), `is_classifier_folder`.
Trained by `imagetext train classifier` (train/classifier.py)."""

from imagetext.classify.linear_probe import (  # noqa: F401
    CLASSIFIER_KIND,
    LinearProbe,
    is_classifier_folder,
)
