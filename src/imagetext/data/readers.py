"""Readers for the image-caption formats users have, all producing a `PairDataset`.

`read_pairs(source)` detects the format from the file (or the folder's contents):

| format | what it looks like |
| --- | --- |
| `table` | CSV/TSV with a header naming an image column and a caption column, optional `split`: our `captions.tsv` (+ `images/`), the Kaggle Flickr8k `captions.txt` (`image,caption`), generic CSV, Conceptual-Captions-style TSV with `caption`/`url` headers |
| `cc-tsv` | headerless Conceptual Captions TSV: `caption \\t url`, images downloaded into `images_dir` under the URL's file name |
| `flickr8k-token` | the original `Flickr8k.token.txt` (`image.jpg#n \\t caption`), with the `Flickr_8k.{train,dev,test}Images.txt` split lists when present |
| `coco` | COCO captions JSON (`images` + `annotations`) |
| `karpathy` | Karpathy-split JSON (`dataset_flickr8k.json`, `dataset_coco.json`: `images[].sentences[].raw`, `split`) |
| `jsonl` | one JSON object per line (or a `.json` list of objects) with image and caption keys (`captions` may be a list) |

Relative image paths resolve against `images_dir`, else the first of `images/`, `Images/`,
`Flicker8k_Dataset/`, `Flickr8k_Dataset/` beside the file, else the file's folder. A row
that cannot be used (missing field, empty caption, image file not found) becomes a
`BadRow` in `dataset.bad_rows` and reading carries on; only a source with no usable row
at all is an error.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from imagetext.data.dataset import BadRow, Pair, PairDataset, merge_datasets
from imagetext.errors import ImagetextError, InvalidInputError

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "file_name", "filename", "file",
                 "path", "img", "image_file", "image_name", "url", "image_url")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "raw", "title", "description", "alt")
SPLIT_COLUMNS = ("split", "set", "subset")
IMAGE_FOLDERS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr8k_images")
FORMATS = ("table", "cc-tsv", "flickr8k-token", "coco", "karpathy", "jsonl")
SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val", "restval": "train"}
_TOKEN_LINE = re.compile(r"^[^\t#]+#\d+\t")


class DatasetFormatError(ImagetextError, ValueError):
    """A source could not be read at all (unknown format, no usable rows)."""


def _norm_split(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return SPLIT_ALIASES.get(value, value) or None


class _Builder:
    """Collects pairs and bad rows; checks each image file once."""

    def __init__(self, source: Path, images_dir: Path):
        self.source = str(source)
        self.images_dir = images_dir
        self.pairs: list[Pair] = []
        self.bad: list[BadRow] = []
        self._exists: dict[str, bool] = {}

    def resolve(self, image: str) -> str:
        if image.startswith(("http://", "https://")):
            # a URL: the image must have been downloaded into images_dir under its file name
            image = unquote(Path(urlparse(image).path).name)
        path = Path(image).expanduser()
        if not path.is_absolute():
            path = self.images_dir / path
        return os.path.abspath(path)

    def add(self, line: int, image: str | None, caption: str | None, image_id: str | None = None,
            split: str | None = None) -> None:
        if not image or not str(image).strip():
            self.bad.append(BadRow(self.source, line, "no image field"))
            return
        if caption is None or not str(caption).strip():
            self.bad.append(BadRow(self.source, line, f"empty caption for {image}"))
            return
        path = self.resolve(str(image).strip())
        if path not in self._exists:
            self._exists[path] = os.path.isfile(path)
        if not self._exists[path]:
            self.bad.append(BadRow(self.source, line, f"image file not found: {path}"))
            return
        caption = " ".join(str(caption).split())
        self.pairs.append(Pair(path, caption, str(image_id or Path(path).name), _norm_split(split)))

    def dataset(self) -> PairDataset:
        if not self.pairs:
            reasons = "; ".join(str(b) for b in self.bad[:3])
            raise DatasetFormatError(
                f"no usable image-caption pairs in {self.source} (images looked up in "
                f"{self.images_dir})" + (f"; first problems: {reasons}" if reasons else "")
            )
        return PairDataset(self.pairs, self.bad, [self.source])


def _default_images_dir(source: Path) -> Path:
    base = source.parent
    for name in IMAGE_FOLDERS:
        if (base / name).is_dir():
            return base / name
    return base


def _pick(columns: Sequence[str], candidates: Sequence[str]) -> int | None:
    lowered = [c.strip().lower() for c in columns]
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    return None


def _sniff_delimiter(first_line: str, suffix: str) -> str:
    if suffix == ".tsv" or "\t" in first_line:
        return "\t"
    return ","


def _read_table(source: Path, b: _Builder, image_column: str | None, caption_column: str | None) -> None:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(source, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        delimiter = _sniff_delimiter(first, source.suffix.lower())
        # quoting: TSVs (captions.tsv, CC) never quote, and captions contain stray quotes
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(rows, None)
        if header is None:
            raise DatasetFormatError(f"{source} is empty")
        img_i = _pick(header, [image_column.lower()] if image_column else IMAGE_COLUMNS)
        cap_i = _pick(header, [caption_column.lower()] if caption_column else CAPTION_COLUMNS)
        split_i = _pick(header, SPLIT_COLUMNS)
        if img_i is None or cap_i is None:
            raise DatasetFormatError(
                f"{source}: header {header} has no "
                + ("image" if img_i is None else "caption")
                + f" column; expected one of {IMAGE_COLUMNS if img_i is None else CAPTION_COLUMNS}"
                " (or pass image_column= / caption_column=)"
            )
        n = len(header)
        for line, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) > n and cap_i == n - 1:
                # an unquoted comma inside the last (caption) column, as in Kaggle's captions.txt
                row = row[: n - 1] + [delimiter.join(row[n - 1 :])]
            if len(row) < n:
                b.bad.append(BadRow(str(source), line, f"expected {n} fields, got {len(row)}"))
                continue
            b.add(line, row[img_i], row[cap_i], split=row[split_i] if split_i is not None else None)


def _read_cc_tsv(source: Path, b: _Builder) -> None:
    with open(source, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            fields = text.rstrip("\n").split("\t")
            if len(fields) < 2:
                b.bad.append(BadRow(str(source), line, "expected caption<TAB>url"))
                continue
            b.add(line, fields[1], fields[0])


def _flickr8k_splits(folder: Path) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split, name in (("train", "trainImages"), ("val", "devImages"), ("test", "testImages")):
        path = folder / f"Flickr_8k.{name}.txt"
        if path.is_file():
            for name_ in path.read_text().split():
                split_of[name_] = split
    return split_of


def _read_flickr8k_token(source: Path, b: _Builder) -> None:
    split_of = _flickr8k_splits(source.parent)
    with open(source, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            key, sep, caption = text.rstrip("\n").partition("\t")
            image = key.rsplit("#", 1)[0]
            if not sep:
                b.bad.append(BadRow(str(source), line, "expected image.jpg#n<TAB>caption"))
                continue
            b.add(line, image, caption, image_id=image, split=split_of.get(image))


def _split_from_name(name: str) -> str | None:
    name = name.lower()
    for key, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if key in name:
            return split
    return None


def _read_coco(source: Path, data: dict, b: _Builder) -> None:
    files = {}
    for img in data.get("images", []):
        if "id" in img and "file_name" in img:
            files[img["id"]] = img["file_name"]
    split = _split_from_name(source.stem)
    for n, ann in enumerate(data.get("annotations", []), start=1):
        image_id = ann.get("image_id")
        if image_id not in files:
            b.bad.append(BadRow(str(source), n, f"annotation {n}: image_id {image_id!r} not in 'images'"))
            continue
        b.add(n, files[image_id], ann.get("caption"), image_id=str(image_id), split=split)


def _read_karpathy(source: Path, data: dict, b: _Builder) -> None:
    for n, img in enumerate(data.get("images", []), start=1):
        name = img.get("filename")
        if name and img.get("filepath"):
            name = f"{img['filepath']}/{name}"
        sentences = img.get("sentences") or []
        if not sentences:
            b.bad.append(BadRow(str(source), n, f"image {n} ({name}) has no sentences"))
        for s in sentences:
            caption = s.get("raw") or " ".join(s.get("tokens", []))
            b.add(n, name, caption, image_id=str(img.get("cocoid", img.get("imgid", name))),
                  split=img.get("split"))


def _records_to_pairs(source: Path, records: Iterable[tuple[int, object]], b: _Builder,
                      image_column: str | None, caption_column: str | None) -> None:
    image_keys = [image_column] if image_column else IMAGE_COLUMNS
    caption_keys = [caption_column] if caption_column else CAPTION_COLUMNS
    for line, rec in records:
        if not isinstance(rec, dict):
            b.bad.append(BadRow(str(source), line, "not a JSON object"))
            continue
        lowered = {str(k).lower(): v for k, v in rec.items()}
        image = next((lowered[k] for k in image_keys if k in lowered), None)
        caption = next((lowered[k] for k in caption_keys if k in lowered), None)
        split = next((lowered[k] for k in SPLIT_COLUMNS if k in lowered), None)
        captions = caption if isinstance(caption, list) else [caption]
        for c in captions:
            b.add(line, image, c if isinstance(c, str) or c is None else str(c),
                  split=str(split) if split is not None else None)


def _read_jsonl(source: Path, b: _Builder, image_column: str | None, caption_column: str | None) -> None:
    def records():
        with open(source, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    yield line, json.loads(text)
                except json.JSONDecodeError as exc:
                    b.bad.append(BadRow(str(source), line, f"invalid JSON ({exc.msg})"))

    _records_to_pairs(source, records(), b, image_column, caption_column)


def detect_format(source: Path) -> str:
    """The format of a caption file, from its suffix and first bytes."""
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        with open(source, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            return "jsonl"
        data_head = head[:4096]
        if '"annotations"' in data_head or '"info"' in data_head or '"licenses"' in data_head:
            return "coco"
        if '"sentences"' in data_head or '"dataset"' in data_head:
            return "karpathy"
        return "coco"  # decided properly after loading (see _read_json)
    with open(source, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    if _TOKEN_LINE.match(first):
        return "flickr8k-token"
    delimiter = _sniff_delimiter(first, suffix)
    header = [c.strip().lower() for c in first.rstrip("\n").split(delimiter)]
    if _pick(header, IMAGE_COLUMNS) is not None and _pick(header, CAPTION_COLUMNS) is not None:
        return "table"
    if delimiter == "\t" and len(header) >= 2 and header[1].startswith(("http://", "https://")):
        return "cc-tsv"
    raise DatasetFormatError(
        f"cannot tell the format of {source}: expected a CSV/TSV with image and caption "
        "columns, a Flickr8k token file, COCO/Karpathy JSON or JSONL"
    )


def _find_in_folder(folder: Path) -> Path:
    candidates = ["captions.tsv", "captions.csv", "captions.txt", "captions.jsonl",
                  "Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt", "results_20130124.token",
                  "dataset_flickr8k.json", "captions.json"]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("annotations/captions_*.json"))
    if found:
        return found[0]
    raise DatasetFormatError(
        f"no caption file found in {folder}; looked for {', '.join(candidates)} and "
        "annotations/captions_*.json. Pass the caption file itself."
    )


def _read_json(source: Path, b: _Builder, image_column: str | None, caption_column: str | None) -> None:
    with open(source, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{source} is not valid JSON ({exc})") from None
    if isinstance(data, list):
        _records_to_pairs(source, enumerate(data, start=1), b, image_column, caption_column)
    elif isinstance(data, dict) and "annotations" in data:
        _read_coco(source, data, b)
    elif isinstance(data, dict) and any("sentences" in img for img in data.get("images", [])[:5]):
        _read_karpathy(source, data, b)
    else:
        raise DatasetFormatError(f"{source}: JSON is neither COCO captions, Karpathy splits nor a list of records")


def _coco_images_dir(source: Path) -> Path | None:
    # annotations/captions_train2017.json -> ../train2017 (the COCO download layout)
    stem = source.stem.split("_", 1)[-1]
    for base in (source.parent, source.parent.parent):
        if (base / stem).is_dir():
            return base / stem
    return None


def read_pairs(
    source: str | os.PathLike,
    split: str | None = None,
    images_dir: str | os.PathLike | None = None,
    format: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> PairDataset:
    """Read image-caption pairs from a caption file or a dataset folder.

    `split` keeps one split ("train", "val", "test"; Flickr8k's "dev" reads as "val").
    `images_dir` is where relative image paths live. `format` overrides detection (one of
    FORMATS). Unusable rows are kept in `bad_rows`, not raised.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset source not found: {path}")
    if path.is_dir():
        path = _find_in_folder(path)
    if format is None and (image_column or caption_column) and path.suffix.lower() not in (".json", ".jsonl"):
        format = "table"  # the caller named the columns of a CSV/TSV
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    if images_dir is not None:
        root = Path(images_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"images folder not found: {root}")
    elif fmt == "coco":
        root = _coco_images_dir(path) or _default_images_dir(path)
    elif fmt == "flickr8k-token" and path.parent.name == "Flickr8k_text":
        root = _default_images_dir(path.parent)
    else:
        root = _default_images_dir(path)
    b = _Builder(path, root)
    if fmt == "table":
        _read_table(path, b, image_column, caption_column)
    elif fmt == "cc-tsv":
        _read_cc_tsv(path, b)
    elif fmt == "flickr8k-token":
        _read_flickr8k_token(path, b)
    elif fmt == "jsonl" and path.suffix.lower() == ".jsonl":
        _read_jsonl(path, b, image_column, caption_column)
    else:
        _read_json(path, b, image_column, caption_column)
    dataset = b.dataset()
    return dataset.split(split) if split else dataset


def read_many(sources: Sequence[str | os.PathLike], split: str | None = None,
              images_dir: str | os.PathLike | None = None) -> PairDataset:
    """Read and merge several sources into one training set."""
    if not sources:
        raise InvalidInputError("no dataset sources given")
    return merge_datasets(read_pairs(s, split=split, images_dir=images_dir) for s in sources)
