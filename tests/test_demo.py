"""The demo gallery: shipped real photos, each credited, copied by prepare_demo_gallery, and
the example searches the web app suggests finding their photo with the default model."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imagetext.demo import (
    CREDITS_MD,
    EXAMPLE_QUERIES,
    GALLERY,
    default_demo_dir,
    demo_photos,
    prepare_demo_gallery,
)

LICENCES = {"Public domain", "CC0-1.0", "CC-BY-2.0", "CC-BY-3.0", "CC-BY-4.0"}


def test_every_shipped_photo_is_a_real_credited_photo():
    photos = demo_photos()
    shipped = sorted(p.name for p in GALLERY.iterdir() if p.suffix == ".jpg")
    assert shipped == sorted(photo.file for photo in photos)  # none uncredited, none missing
    assert len(photos) >= 40
    credits_md = (GALLERY / CREDITS_MD).read_text(encoding="utf-8")
    for photo in photos:
        assert photo.licence in LICENCES, photo
        assert photo.author and photo.shows and photo.package, photo
        assert photo.source.startswith("https://"), photo
        assert f"| {photo.file} |" in credits_md
        with Image.open(GALLERY / photo.file) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 200 <= max(image.size) <= 640, (photo.file, image.size)
            image.load()  # decodes completely
    size = sum((GALLERY / photo.file).stat().st_size for photo in photos)
    assert size < 4_000_000
    assert {file for _, file in EXAMPLE_QUERIES} <= set(shipped)


def test_prepare_demo_gallery_copies_the_photos_and_credits(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    (folder / "mine.jpg").write_bytes((GALLERY / demo_photos()[0].file).read_bytes())
    assert prepare_demo_gallery(folder) == folder
    for name in [photo.file for photo in demo_photos()] + [CREDITS_MD]:
        assert (folder / name).read_bytes() == (GALLERY / name).read_bytes(), name
    assert (folder / "mine.jpg").is_file()  # a folder given explicitly is only added to


def test_the_cache_folder_loses_files_of_an_older_gallery(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGETEXT_CACHE", str(tmp_path / "cache"))
    cache = default_demo_dir()
    (cache / ".imagetext").mkdir(parents=True)
    (cache / ".imagetext" / "index.sqlite").write_bytes(b"kept")
    (cache / "brick.png").write_bytes(b"an old texture")  # the old scikit-image gallery
    (cache / "CREDITS.txt").write_text("old credits\n")
    first = demo_photos()[0].file
    (cache / first).write_bytes(b"an older version of a photo")

    assert prepare_demo_gallery() == cache
    names = {p.name for p in cache.iterdir() if p.is_file()}
    assert names == {photo.file for photo in demo_photos()} | {CREDITS_MD}
    assert (cache / first).read_bytes() == (GALLERY / first).read_bytes()
    assert (cache / ".imagetext" / "index.sqlite").read_bytes() == b"kept"


@pytest.mark.slow
def test_the_example_searches_find_their_photo_with_the_default_model(tmp_path):
    from imagetext.api import Collection

    root = prepare_demo_gallery(tmp_path / "demo")
    with Collection.open(root) as col:
        report = col.index()
        assert report.added == len(demo_photos()) and not report.failed
        for query, expected in EXAMPLE_QUERIES:
            top3 = [Path(hit.path).name for hit in col.search(query, k=3)]
            assert expected in top3, (query, top3)
