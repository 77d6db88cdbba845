"""The captioner interface every captioning backend implements.

A captioner turns preprocessed pixels into ranked captions::

    from imagetext.caption import load_captioner
    captioner = load_captioner()                       # the shipped default
    captioner.caption(["cat.jpg"])                     # -> ["a cat sitting on a couch"]
    pixels = np.stack([captioner.preprocess.load("cat.jpg")])
    captioner.generate(pixels, beam_size=3, num_return=2)
    # -> [[("a cat sitting on a couch", -0.41), ("a cat laying on a bed", -0.55)]]

Backends (the in-house Show-Attend-Tell / transformer captioners, BLIP, ViT-GPT2, ...)
subclass `Captioner`, register under a name with `@register_captioner("name")` and are
stored as a folder with `config.json` (its "backend" key names the class) plus weights
and a README.md model card, like the encoders in `imagetext.models`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image

from imagetext.errors import InvalidInputError
from imagetext.io.images import Preprocess

ImageSource = str | os.PathLike | bytes | Image.Image

# One image's result: (caption, score) pairs, best first. The score is the model's own
# ranking score (for beam search: the length-penalised sum of token log-probabilities);
# it is comparable between captions of one model, not across models.
Captions = list[tuple[str, float]]


def check_generation(beam_size: int, max_length: int, num_return: int) -> None:
    """The one check of decoding settings, for every captioner and the CLI and web before them."""
    if beam_size < 1 or max_length < 1:
        raise InvalidInputError("beam size and max length must be at least 1")
    if not 1 <= num_return <= beam_size:
        raise InvalidInputError(f"num_return ({num_return}) must be between 1 and the beam size "
                         f"({beam_size})")


class Captioner(ABC):
    """Base class of all captioning backends.

    Attributes:
        backend: the registry name written into config.json (set by `register_captioner`).
        name: human-readable model name, shown in reports and stored in indexes.
        preprocess: image -> CHW float32 array, the input `generate` expects (stacked).
    """

    backend: str = ""
    name: str
    preprocess: Preprocess

    @abstractmethod
    def generate(
        self,
        pixels: np.ndarray,
        beam_size: int = 3,
        max_length: int = 30,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        num_return: int = 1,
    ) -> list[Captions]:
        """Caption a (B, 3, H, W) float32 batch made by `self.preprocess`.

        beam_size: 1 is greedy decoding; >1 is beam search over `beam_size` hypotheses.
        max_length: most tokens generated per caption (words or sub-words, backend's unit).
        length_penalty: finished beams are ranked by sum(log p) / length**length_penalty
            (0 = raw sum, favours short captions; >1 favours longer ones).
        no_repeat_ngram_size: if > 0, no n-gram of this size may occur twice in a caption.
        num_return: how many captions per image (at most `beam_size`).
        Returns, per image, `num_return` (caption, score) pairs, best first.
        """

    def caption(
        self, images: Sequence[ImageSource], batch_size: int = 16, **generate_kwargs
    ) -> list[str]:
        """Open, preprocess and caption images (paths, bytes or PIL images): best caption each.

        Keyword arguments go to `generate` (beam_size, max_length, ...).
        """
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            raise TypeError("caption() takes a sequence of images; wrap a single image in a list")
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            pixels = np.stack([self.preprocess.load(im) for im in images[i : i + batch_size]])
            out.extend(c[0][0] for c in self.generate(pixels, **generate_kwargs))
        return out

    # -- folder convention -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Captioner:
        """Load from a folder holding config.json (+ weights)."""

    @abstractmethod
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json (with "backend") + weights so `from_pretrained(folder)` restores it."""

    def info(self) -> dict:
        return {"name": self.name, "backend": self.backend}
