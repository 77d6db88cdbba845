"""ImageNet-1k class names (index, WordNet id, lemmas, definition), shipped as data."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CLASSES_TSV = Path(__file__).parent / "imagenet_classes.tsv"


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    lemmas: tuple[str, ...]
    definition: str

    @property
    def name(self) -> str:
        return self.lemmas[0]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    with open(CLASSES_TSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    classes = tuple(
        ImageNetClass(int(r["index"]), r["wnid"], tuple(s.strip() for s in r["lemmas"].split(",")),
                      r["definition"])
        for r in rows
    )
    assert [c.index for c in classes] == list(range(1000)), "classes.tsv must list 0..999"
    return classes
