"""Faults of the disk under an index, made for real: a disk that fills up while indexing (a
2 MB tmpfs), an index on a read-only disk (a tmpfs remounted read-only), a damaged
database file, and --index-dir pointing at a file. Each ends in one readable line and a
consistent index. Mounting needs root; where it is not allowed the test skips."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import flickr_images, needs_flickr
from tests.robustness.helpers import (
    assert_one_line_error,
    check_index,
    cli,
    cli_json,
    remount,
    tmpfs,
)


def _photos(tmp_path, photos, n_flickr: int = 0):
    root = tmp_path / "photos"
    root.mkdir()
    for p in photos.values():
        shutil.copy(p, root / p.name)
    for p in flickr_images(n_flickr) if n_flickr else []:
        shutil.copy(p, root / p.name)
    return root


@pytest.mark.slow
@needs_flickr
def test_a_disk_that_fills_up_leaves_a_consistent_index(tmp_path, photos):
    root = _photos(tmp_path, photos, n_flickr=150)  # ~1.6 MB of index: more than the disk
    n = len(list(root.iterdir()))
    with tmpfs(tmp_path / "small-disk", "1m") as disk:
        index_dir = disk / "index"
        proc = cli("index", root, "--index-dir", index_dir, "--batch-size", "8", "-q", check=False)
        line = assert_one_line_error(proc, "the disk is full")
        assert not list(index_dir.glob("*.tmp")), "a temporary file was left on the full disk"
        state = check_index(root, index_dir)  # opens, FAISS in step (in memory), no mix
        assert 0 < state["n"] < n
        info = cli_json("info", "-c", root, "--index-dir", index_dir)["collection"]
        assert info["n_images"] == state["n"]
        hits = json.loads(cli("search", "a dog", "-k", "3", "-c", root, "--index-dir", index_dir,
                              "--json").stdout)
        assert len(hits) == 3
        # a second try on the still-full disk fails the same way, and loses nothing
        again = cli("index", root, "--index-dir", index_dir, "-q", check=False)
        assert_one_line_error(again, "the disk is full")
        assert check_index(root, index_dir)["n"] >= state["n"]
        # room again: the run resumes and ends with every photo once
        kept = check_index(root, index_dir)["n"]
        remount(disk, "size=64m")
        report = cli_json("index", root, "--index-dir", index_dir, "-q")
        assert report["n_images"] == n and report["embedded"] + report["duplicates"] == n - kept
        assert check_index(root, index_dir)["n"] == n
    print(f"\ndisk full after {state['n']} of {n} photos: {line}")


def test_a_read_only_index_answers_queries(tmp_path, photos):
    with tmpfs(tmp_path / "archive", "64m") as disk:
        root = _photos(disk, photos)
        cli("index", root, "-q")
        cli("index", root, "-q")  # a second run (no changes) leaves no WAL behind either
        remount(disk, "ro")
        with pytest.raises(OSError):
            (root / "probe").write_text("x")  # the disk is read-only, even for root
        hits = json.loads(cli("search", "a cat", "-k", "2", "-c", root, "--json").stdout)
        assert os.path.basename(hits[0]["path"]) == "chelsea.png"
        similar = json.loads(cli("similar", root / "coffee.png", "-k", "2", "--json",
                                 cwd=root).stdout)
        assert len(similar) == 2 and all(os.path.basename(h["path"]) != "coffee.png" for h in similar)
        info = cli_json("info", "-c", root)["collection"]
        assert info["n_images"] == len(photos) and info["read_only"] is True
        assert "read-only" in cli("info", "-c", root).stdout
        assert_one_line_error(cli("index", root, "-q", check=False), "read-only")
        assert_one_line_error(cli("index", root, "--reindex", "--model", "conse", "-q",
                                  check=False), "read-only")
        assert check_index(root)["n"] == len(photos)
        remount(disk, "rw")  # so that the tmpfs can be unmounted cleanly


def test_a_read_only_folder_without_an_index_says_where_to_put_one(tmp_path, photos):
    with tmpfs(tmp_path / "archive", "64m") as disk:
        root = _photos(disk, photos)
        remount(disk, "ro")
        assert_one_line_error(cli("index", root, "-q", check=False), "read-only", "--index-dir")
        report = cli_json("index", root, "--index-dir", tmp_path / "elsewhere", "-q")
        assert report["n_images"] == len(photos)
        remount(disk, "rw")


def test_a_damaged_database_names_the_fix(tmp_path, photos):
    root = _photos(tmp_path, photos)
    cli("index", root, "-q")
    db = root / ".imagetext" / "index.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    for args in (["search", "a cat", "-c", root], ["info", "-c", root], ["index", root, "-q"],
                 ["similar", root / "coffee.png", "-c", root]):
        assert_one_line_error(cli(*args, check=False), "damaged", f"imagetext index {root} --rebuild")
    rebuilt = cli("index", root, "--rebuild", "-q")
    assert "could not be read" in rebuilt.stderr
    assert check_index(root)["n"] == len(photos)
    top = json.loads(cli("search", "a cat", "-k", "1", "-c", root, "--json").stdout)[0]
    assert os.path.basename(top["path"]) == "chelsea.png"

    # half a database (a copy cut short): damaged too, rebuilt the same way
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    proc = cli("search", "a cat", "-c", root, check=False)
    assert_one_line_error(proc, "--rebuild")
    cli("index", root, "--rebuild", "-q")
    assert check_index(root)["n"] == len(photos)


def test_index_dir_that_is_a_file_is_a_clear_error(tmp_path, photos):
    root = _photos(tmp_path, photos)
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    assert_one_line_error(cli("index", root, "--index-dir", afile, "-q", check=False),
                          "is a file, not a folder")
    assert_one_line_error(cli("index", root, "--index-dir", afile / "sub", "-q", check=False),
                          "cannot create the index folder")
    assert_one_line_error(cli("search", "a cat", "-c", root, "--index-dir", afile, check=False),
                          "is a file, not a folder")
    assert_one_line_error(cli("index", afile, "-q", check=False), "not a folder")
    assert afile.read_text() == "x"
