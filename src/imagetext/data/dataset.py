"""Image-caption pairs as one in-memory dataset, whatever file format they came from.

A `PairDataset` is a list of `Pair(image_path, caption, image_id, split)` plus the rows that
could not be read (`bad_rows`, reported rather than fatal). Several images have several
captions (Flickr8k: 5 each), so the dataset also exposes its distinct images in order of
first appearance and, for each pair, the index of its image: what retrieval training and
evaluation need.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from imagetext.errors import InvalidInputError


@dataclass(frozen=True)
class Pair:
    image_path: str  # absolute path of a local image file
    caption: str
    image_id: str  # stable name of the image within its source (file name, COCO id, ...)
    split: str | None = None  # "train" / "val" / "test" when the source says


@dataclass(frozen=True)
class BadRow:
    source: str  # file the row came from
    line: int  # 1-based line (or record) number in that file; 0 when not line-based
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.reason}"


@dataclass
class PairDataset:
    pairs: list[Pair]
    bad_rows: list[BadRow] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._images: list[str] | None = None
        self._image_index: list[int] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return self.pairs[i]

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    @property
    def captions(self) -> list[str]:
        return [p.caption for p in self.pairs]

    def captions_by_image(self) -> dict[str, list[str]]:
        """Each image path with its captions, in the dataset's order of first appearance."""
        by_image: dict[str, list[str]] = {}
        for p in self.pairs:
            by_image.setdefault(p.image_path, []).append(p.caption)
        return by_image

    def _index_images(self) -> None:
        position: dict[str, int] = {}
        index = []
        for p in self.pairs:
            index.append(position.setdefault(p.image_path, len(position)))
        self._images = list(position)
        self._image_index = index

    @property
    def images(self) -> list[str]:
        """Distinct image paths, in order of first appearance."""
        if self._images is None:
            self._index_images()
        return list(self._images)

    @property
    def image_index(self) -> list[int]:
        """For each pair, the index of its image in `images`."""
        if self._image_index is None:
            self._index_images()
        return list(self._image_index)

    @property
    def splits(self) -> list[str]:
        return sorted({p.split for p in self.pairs if p.split is not None})

    def split(self, name: str) -> PairDataset:
        """The pairs of one split; a clear error when the source has no such split."""
        if not any(p.split is not None for p in self.pairs):
            raise InvalidInputError(
                f"{', '.join(self.sources) or 'this dataset'} has no split information; "
                "use holdout_split() or give a separate validation source"
            )
        chosen = [p for p in self.pairs if p.split == name]
        if not chosen:
            raise InvalidInputError(f"no pairs in split {name!r}; splits present: {', '.join(self.splits)}")
        return PairDataset(chosen, list(self.bad_rows), list(self.sources))

    def summary(self) -> str:
        text = f"{len(self.pairs)} pairs, {len(self.images)} images"
        if self.splits:
            text += f" (splits: {', '.join(self.splits)})"
        if self.bad_rows:
            text += f"; {len(self.bad_rows)} bad rows skipped"
        return text


def merge_datasets(datasets: Iterable[PairDataset]) -> PairDataset:
    """One dataset holding the pairs (and bad-row reports) of several, in order."""
    pairs: list[Pair] = []
    bad: list[BadRow] = []
    sources: list[str] = []
    for d in datasets:
        pairs.extend(d.pairs)
        bad.extend(d.bad_rows)
        sources.extend(d.sources)
    return PairDataset(pairs, bad, sources)


def holdout_split(dataset: PairDataset, fraction: float = 0.1, seed: int = 0,
                  names: Sequence[str] = ("train", "val")) -> PairDataset:
    """Assign whole images (all their captions together) to train/val at random.

    Splitting by image, not by pair, keeps a validation image's captions out of training.
    """
    if not 0 < fraction < 1:
        raise InvalidInputError(f"holdout fraction must be between 0 and 1, got {fraction}")
    images = dataset.images
    rng = random.Random(seed)
    order = list(range(len(images)))
    rng.shuffle(order)
    n_val = max(1, round(fraction * len(images)))
    val = {images[i] for i in order[:n_val]}
    pairs = [
        Pair(p.image_path, p.caption, p.image_id, names[1] if p.image_path in val else names[0])
        for p in dataset.pairs
    ]
    return PairDataset(pairs, list(dataset.bad_rows), list(dataset.sources))
