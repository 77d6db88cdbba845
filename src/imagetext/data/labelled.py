"""Labelled images (image -> one class) in the layouts people have, for classification.

`read_labelled(source)` reads:

| layout | what it looks like |
| --- | --- |
| ImageFolder | a folder of class folders, `root/<class>/*.jpg`; or split folders of class folders, `root/train/<class>/*.jpg`, `root/val/<class>/*.jpg` |
| CSV / TSV | a header with an image column (as for captions: `image`, `path`, `file`, ...) and a label column (`label`, `class`, `category`), optional `split` |
| JSONL / JSON list | objects with the same keys |

A CSV/JSONL file list is read by the caption readers (`data/readers.read_pairs`) with the
label column as the "caption": relative paths resolve the same way, and a row that cannot be
used (no image, empty label, image file not found, invalid JSON) is a bad row, reported and
skipped; so is an image listed again under another label. A folder holding such a file
(`labels.csv`, `labels.tsv`, `labels.jsonl`) reads it instead of being an ImageFolder.

Splits: `split="val"` keeps the rows of one split (a `split` column, or `train/` and `val/`
folders); `val_fraction` assigns a fraction of each class's images to val by a seeded shuffle
(stratified, so every class is in both) when the source has no split. `flickr8k_keyword_labels`
builds the labelled benchmark used in the README from Flickr8k's captions.
"""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imagetext.data.dataset import BadRow
from imagetext.data.readers import DatasetFormatError
from imagetext.errors import InvalidInputError
from imagetext.io.images import is_image_path

LABEL_COLUMNS = ("label", "class", "category", "labels")
LABEL_FILES = ("labels.csv", "labels.tsv", "labels.jsonl", "labels.json")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class LabelledImages:
    images: list[str]  # absolute paths
    labels: list[str]  # one per image
    splits: list[str | None]  # one per image
    bad_rows: list[BadRow] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> list[str]:
        """The class names, sorted."""
        return sorted(set(self.labels))

    @property
    def targets(self) -> list[int]:
        """Each image's class as an index into `classes`."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[label] for label in self.labels]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def split(self, name: str) -> LabelledImages:
        present = sorted({s for s in self.splits if s})
        if not present:
            raise InvalidInputError(f"{self.source} has no split information; give a val "
                                    "fraction to hold some images out")
        keep = [i for i, s in enumerate(self.splits) if s == name]
        if not keep:
            raise InvalidInputError(f"no images in split {name!r}; splits present: {', '.join(present)}")
        return self.subset(keep)

    def subset(self, keep: list[int]) -> LabelledImages:
        """The images at the positions `keep`, in that order."""
        return LabelledImages([self.images[i] for i in keep], [self.labels[i] for i in keep],
                              [self.splits[i] for i in keep], list(self.bad_rows), self.source)

    def summary(self) -> str:
        text = f"{len(self)} images in {len(self.classes)} classes"
        splits = Counter(s for s in self.splits if s)
        if splits:
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) + ")"
        if self.bad_rows:
            text += f"; {len(self.bad_rows)} bad rows skipped"
        return text


def stratified_split(data: LabelledImages, val_fraction: float, seed: int = 0) -> LabelledImages:
    """Every image assigned to "train" or "val": `val_fraction` of each class (at least one
    image of any class that has two) to val, chosen by a shuffle seeded with `seed`."""
    if not 0 < val_fraction < 1:
        raise InvalidInputError(f"the val fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    splits: list[str | None] = ["train"] * len(data)
    for label in data.classes:
        members = [i for i, lab in enumerate(data.labels) if lab == label]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        for i in members[:n_val]:
            splits[i] = "val"
    return LabelledImages(list(data.images), list(data.labels), splits, list(data.bad_rows),
                          data.source)


def read_labelled(source: str | os.PathLike, split: str | None = None,
                  val_fraction: float | None = None, seed: int = 0) -> LabelledImages:
    """Labelled images from an ImageFolder or a CSV/TSV/JSONL file list (see the module doc).

    With `val_fraction`, a source without splits is split per class first (a source with
    splits keeps its own). `split` then keeps one split."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"labelled data not found: {path}")
    if path.is_dir():
        listed = next((path / n for n in LABEL_FILES if (path / n).is_file()), None)
        data = _read_list(listed) if listed else _read_image_folder(path)
    else:
        data = _read_list(path)
    if len(data.classes) < 2:
        raise InvalidInputError(f"{path}: {len(data.classes)} class found; classification needs "
                                "at least two")
    if val_fraction is not None and not any(data.splits):
        data = stratified_split(data, val_fraction, seed)
    return data.split(split) if split else data


def _read_image_folder(root: Path) -> LabelledImages:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_FOLDERS]
    if split_dirs and len(split_dirs) == len(subdirs):
        parts = [(SPLIT_FOLDERS[p.name.lower()], p) for p in split_dirs]
    else:
        parts = [(None, root)]
    images, labels, splits = [], [], []
    for split, base in parts:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and is_image_path(f) and not f.name.startswith("."):
                    images.append(os.path.abspath(f))
                    labels.append(class_dir.name)
                    splits.append(split)
    if not images:
        raise DatasetFormatError(
            f"no labelled images in {root}: expected class folders of images (root/<class>/*.jpg, "
            f"or root/train/<class>/*.jpg and root/val/<class>/*.jpg) or one of {', '.join(LABEL_FILES)}")
    return LabelledImages(images, labels, splits, [], str(root))


def _label_column(path: Path) -> str:
    """The label column (or key) a file list uses: the first of LABEL_COLUMNS it has."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(65536)
    if path.suffix.lower() in (".jsonl", ".json"):
        lowered = head.lower()
        found = [c for c in LABEL_COLUMNS if f'"{c}"' in lowered]
    else:
        first = head.splitlines()[0] if head else ""
        delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
        header = [c.strip().lower() for c in next(csv.reader([first], delimiter=delimiter), [])]
        found = [c for c in LABEL_COLUMNS if c in header]
    if not found:
        raise DatasetFormatError(f"{path}: no label column; name it one of {', '.join(LABEL_COLUMNS)}")
    return found[0]


def _read_list(path: Path) -> LabelledImages:
    from imagetext.data.readers import read_pairs

    fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "table"
    pairs = read_pairs(path, format=fmt, caption_column=_label_column(path))
    bad = list(pairs.bad_rows)
    seen: dict[str, str] = {}
    images, labels, splits = [], [], []
    for p in pairs:
        if p.image_path in seen:
            if seen[p.image_path] != p.caption:
                bad.append(BadRow(str(path), 0, f"{p.image_path} is listed as both "
                                  f"{seen[p.image_path]!r} and {p.caption!r}; kept the first"))
            continue
        seen[p.image_path] = p.caption
        images.append(p.image_path)
        labels.append(p.caption)
        splits.append(p.split)
    return LabelledImages(images, labels, splits, bad, str(path))


def write_labels_csv(data: LabelledImages, out: str | os.PathLike) -> Path:
    """Write `data` as a file list (image,label,split) that read_labelled reads back."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split"])
        for image, label, split in zip(data.images, data.labels, data.splits):
            w.writerow([image, label, split or ""])
    return out


# -- a labelled benchmark from Flickr8k's captions ---------------------------------------------
def flickr8k_keyword_labels(data: str | os.PathLike, task: str = "scene",
                            min_captions: int = 2) -> LabelledImages:
    """Flickr8k photos labelled by the words of their captions, unambiguous photos only.

    The classes and their word lists are those the default model's calibration uses
    (train/calibrate.py: `scene` = water, snow, grass, beach, street, mountain; `subject` =
    dog, cat, horse, bird, child, man, woman, bicycle, car, boat). A photo belongs to a class
    when at least `min_captions` of its 5 captions name it and no caption names another class
    of the task (so "a dog runs through the snow by a lake" is in no scene class); every
    other photo is left out. Splits are Flickr8k's own (train 6000, val 1000, test 1000).
    """
    from imagetext.data.readers import read_pairs
    from imagetext.train.calibrate import CLASSIFY_TASKS, keyword_labels

    if task not in CLASSIFY_TASKS:
        raise InvalidInputError(f"unknown task {task!r}; choose from {', '.join(CLASSIFY_TASKS)}")
    classes = CLASSIFY_TASKS[task]
    pairs = read_pairs(data)
    captions = pairs.captions_by_image()
    split_of = {p.image_path: p.split for p in pairs}
    names = list(classes)
    labelled = keyword_labels(captions, classes, min_captions)
    images = [img for img in captions if img in labelled]  # the dataset's order
    return LabelledImages(images, [names[labelled[i]] for i in images],
                          [split_of[i] for i in images], list(pairs.bad_rows), str(data))
