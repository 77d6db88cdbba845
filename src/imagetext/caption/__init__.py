"""Image captioning: the Captioner interface, the registry, in-house models and decoding."""

from imagetext.caption.base import Captioner, Captions, ImageSource
from imagetext.caption.registry import (
    DEFAULT_CAPTIONER,
    CaptionerNotFoundError,
    builtin_captioners,
    load_captioner,
    register_captioner,
)

__all__ = [
    "DEFAULT_CAPTIONER",
    "Captioner",
    "CaptionerNotFoundError",
    "Captions",
    "ImageSource",
    "builtin_captioners",
    "load_captioner",
    "register_captioner",
]
