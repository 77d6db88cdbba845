"""Dataset readers: every supported format, merging, splits and bad-row reporting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import skimage

from imagetext.data import (
    DatasetFormatError,
    detect_format,
    holdout_split,
    merge_datasets,
    read_many,
    read_pairs,
)
from tests.conftest import FLICKR8K, needs_flickr

SAMPLES = Path(os.path.dirname(skimage.data.__file__))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        shutil.copy(SAMPLES / name, images / name)
    return tmp_path


def test_captions_tsv_folder_with_splits(folder: Path):
    (folder / "captions.tsv").write_text(
        "image\tcaption_index\tcaption\tsplit\n"
        "chelsea.png\t0\tA cat with \"orange\" fur .\ttrain\n"
        "chelsea.png\t1\tA  tabby   cat\ttrain\n"
        "coffee.png\t0\tA cup of coffee\tval\n"
    )
    d = read_pairs(folder)
    assert len(d) == 3 and d.bad_rows == []
    assert d.images == [str(folder / "images" / "chelsea.png"), str(folder / "images" / "coffee.png")]
    assert d.image_index == [0, 0, 1]
    assert d[0].caption == 'A cat with "orange" fur .'  # quotes kept: TSV is not quoted
    assert d[1].caption == "A tabby cat"  # whitespace normalised
    val = read_pairs(folder / "captions.tsv", split="val")
    assert [p.caption for p in val] == ["A cup of coffee"] and val[0].split == "val"
    with pytest.raises(ValueError, match="no pairs in split 'test'"):
        read_pairs(folder, split="test")


def test_bad_rows_are_reported_not_fatal(folder: Path):
    (folder / "captions.tsv").write_text(
        "image\tcaption\n"
        "chelsea.png\tA cat\n"
        "missing.jpg\tA ghost\n"
        "coffee.png\t\n"
        "astronaut.png\n"
    )
    d = read_pairs(folder)
    assert [p.caption for p in d] == ["A cat"]
    reasons = [str(b) for b in d.bad_rows]
    assert len(reasons) == 3
    assert "captions.tsv:3" in reasons[0] and "image file not found" in reasons[0]
    assert "empty caption" in reasons[1]
    assert "expected 2 fields" in reasons[2]
    assert "3 bad rows" in d.summary()


def test_no_usable_rows_is_a_clear_error(folder: Path):
    (folder / "captions.tsv").write_text("image\tcaption\nnope.jpg\tx\n")
    with pytest.raises(DatasetFormatError, match="no usable image-caption pairs.*not found"):
        read_pairs(folder)


def test_kaggle_captions_txt_with_unquoted_commas(folder: Path):
    (folder / "Images").mkdir()
    shutil.copy(SAMPLES / "rocket.jpg", folder / "Images" / "rocket.jpg")
    shutil.rmtree(folder / "images")
    (folder / "captions.txt").write_text(
        "image,caption\nrocket.jpg,A rocket on the pad , ready to launch .\n"
        'rocket.jpg,"A launch, seen from afar"\n'
    )
    assert detect_format(folder / "captions.txt") == "table"
    d = read_pairs(folder)
    assert [p.caption for p in d] == ["A rocket on the pad , ready to launch .", "A launch, seen from afar"]
    assert d.images == [str(folder / "Images" / "rocket.jpg")]


def test_flickr8k_token_file_with_split_lists(folder: Path):
    text = folder / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text(
        "chelsea.png#0\tA cat sits .\nchelsea.png#1\tA kitten .\ncoffee.png#0\tCoffee .\n"
    )
    (text / "Flickr_8k.trainImages.txt").write_text("chelsea.png\n")
    (text / "Flickr_8k.devImages.txt").write_text("coffee.png\n")
    assert detect_format(text / "Flickr8k.token.txt") == "flickr8k-token"
    d = read_pairs(text / "Flickr8k.token.txt")
    assert [(p.image_id, p.split) for p in d] == [
        ("chelsea.png", "train"), ("chelsea.png", "train"), ("coffee.png", "val")]
    assert len(read_pairs(folder / "Flickr8k_text", split="val")) == 1  # found inside the folder


def test_coco_captions_json(folder: Path):
    ann = folder / "annotations"
    ann.mkdir()
    os.rename(folder / "images", folder / "val2017")
    (ann / "captions_val2017.json").write_text(json.dumps({
        "info": {}, "images": [{"id": 7, "file_name": "chelsea.png"}, {"id": 9, "file_name": "coffee.png"}],
        "annotations": [{"image_id": 7, "caption": "a cat"}, {"image_id": 9, "caption": "coffee"},
                        {"image_id": 99, "caption": "orphan"}],
    }))
    d = read_pairs(folder)
    assert [(p.image_id, p.caption, p.split) for p in d] == [("7", "a cat", "val"), ("9", "coffee", "val")]
    assert "image_id 99" in str(d.bad_rows[0])
    assert d[0].image_path == str(folder / "val2017" / "chelsea.png")


def test_karpathy_json(folder: Path):
    (folder / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": [
        {"filename": "chelsea.png", "imgid": 0, "split": "restval",
         "sentences": [{"raw": "A cat .", "tokens": ["a", "cat"]}, {"tokens": ["the", "cat"]}]},
        {"filename": "coffee.png", "imgid": 1, "split": "test", "sentences": [{"raw": "Coffee ."}]},
    ]}))
    d = read_pairs(folder / "dataset_flickr8k.json")
    assert [(p.caption, p.split) for p in d] == [("A cat .", "train"), ("the cat", "train"), ("Coffee .", "test")]


def test_jsonl_and_json_list_and_csv(folder: Path, tmp_path: Path):
    (folder / "pairs.jsonl").write_text(
        json.dumps({"image": "chelsea.png", "captions": ["a cat", "a tabby"]}) + "\n"
        + "{broken\n"
        + json.dumps({"file_name": str(folder / "images" / "coffee.png"), "text": "coffee"}) + "\n"
    )
    d = read_pairs(folder / "pairs.jsonl")
    assert [p.caption for p in d] == ["a cat", "a tabby", "coffee"]
    assert "invalid JSON" in str(d.bad_rows[0])
    (folder / "pairs.json").write_text(json.dumps([{"path": "astronaut.png", "caption": "an astronaut"}]))
    assert read_pairs(folder / "pairs.json")[0].caption == "an astronaut"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "list.csv").write_text("photo,words\nchelsea.png,a cat\n")
    d = read_pairs(other / "list.csv", images_dir=folder / "images", image_column="photo",
                   caption_column="words")
    assert d[0].image_path == str(folder / "images" / "chelsea.png")
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        read_pairs(other / "list.csv", images_dir=folder / "images")
    with pytest.raises(DatasetFormatError, match="no image column"):
        read_pairs(other / "list.csv", images_dir=folder / "images", caption_column="words")


def test_conceptual_captions_tsv_maps_urls_to_local_files(folder: Path):
    (folder / "cc.tsv").write_text(
        "a cat on a sofa\thttps://example.com/img/chelsea.png?size=large\n"
        "not downloaded\thttps://example.com/x/y.jpg\n"
    )
    assert detect_format(folder / "cc.tsv") == "cc-tsv"
    d = read_pairs(folder / "cc.tsv")
    assert [p.caption for p in d] == ["a cat on a sofa"]
    assert "y.jpg" in str(d.bad_rows[0])
    (folder / "cc_header.tsv").write_text("caption\turl\ncoffee beans\thttps://e.com/coffee.png\n")
    assert read_pairs(folder / "cc_header.tsv")[0].image_path.endswith("coffee.png")


def test_merge_and_holdout(folder: Path):
    (folder / "a.csv").write_text("image,caption\nchelsea.png,a cat\ncoffee.png,coffee\n")
    (folder / "b.jsonl").write_text(json.dumps({"image": "astronaut.png", "caption": "astronaut"}) + "\n")
    merged = read_many([folder / "a.csv", folder / "b.jsonl"])
    assert len(merged) == 3 and len(merged.sources) == 2
    assert len(merge_datasets([merged, merged])) == 6
    with pytest.raises(ValueError, match="no split information"):
        merged.split("val")
    held = holdout_split(merge_datasets([merged, merged]), fraction=0.34, seed=1)
    val = held.split("val")
    assert len(val.images) == 1 and len(val) == 2  # both copies of the held-out image's captions
    assert not set(val.images) & set(held.split("train").images)


def test_unknown_format_and_missing_source(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("just some words\n")
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        read_pairs(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "nothing-here")
    with pytest.raises(DatasetFormatError, match="no caption file found"):
        read_pairs(tmp_path)


@needs_flickr
def test_flickr8k_shared_copy():
    val = read_pairs(FLICKR8K, split="val")
    assert len(val) == 5000 and len(val.images) == 1000 and val.bad_rows == []
    assert val.image_index[:6] == [0, 0, 0, 0, 0, 1]
