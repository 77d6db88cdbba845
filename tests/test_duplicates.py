"""Near-duplicates (`imagetext duplicates`, index/duplicates.py) on real photos indexed with the
default model: demo-gallery photos, an exact copy (resized and re-saved) and an edited copy
(cropped, resized, JPEG) of two of them, and scikit-image's stereo pair of one scene (the
same motorcycle photographed from two points a few centimetres apart)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import skimage_photo
from tests.test_cli import run

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"
DISTRACTORS = ["astronaut.jpg", "chelsea-the-cat.jpg", "coffee.jpg", "koala.jpg", "sunset.jpg",
               "kingfisher.jpg"]


def edited_copy(src: Path, dst: Path) -> None:
    """A crop (about 80% of the area, off-centre), resized to 70%, saved as JPEG quality 60."""
    with Image.open(src) as img:
        w, h = img.size
        crop = img.convert("RGB").crop((int(0.08 * w), int(0.06 * h), int(0.95 * w), int(0.97 * h)))
        crop = crop.resize((int(crop.width * 0.7), int(crop.height * 0.7)), Image.Resampling.LANCZOS)
    crop.save(dst, "JPEG", quality=60)


def exact_copy(src: Path, dst: Path) -> None:
    """The whole photo resized to half and saved again (JPEG quality 85)."""
    with Image.open(src) as img:
        img.convert("RGB").resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(
            dst, "JPEG", quality=85)


def make_gallery(root: Path) -> Path:
    (root / "edits").mkdir(parents=True)
    for name in [*DISTRACTORS, "brandenburg-gate.jpg", "colosseum.jpg"]:
        (root / name).write_bytes((GALLERY / name).read_bytes())
    edited_copy(GALLERY / "brandenburg-gate.jpg", root / "edits" / "brandenburg-gate-edited.jpg")
    exact_copy(GALLERY / "colosseum.jpg", root / "edits" / "colosseum-small.jpg")
    for side in ("left", "right"):
        (root / f"motorcycle_{side}.png").write_bytes(skimage_photo(f"motorcycle_{side}.png").read_bytes())
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    from imagetext.api import Collection

    root = make_gallery(tmp_path_factory.mktemp("dups") / "photos")
    col = Collection.open(root)
    report = col.index()
    assert not report.failed
    yield col
    col.close()


def _groups(result) -> list[set[str]]:
    return [{Path(p.path).name for p in g.photos} for g in result.groups]


def _kept(result, name: str) -> str:
    group = next(g for g in result.groups if name in {Path(p.path).name for p in g.photos})
    return Path(group.keep.path).name


def test_an_edited_copy_is_grouped_with_its_original_which_is_kept(collection):
    from imagetext.api import duplicates

    result = duplicates(collection, "edits")
    groups = _groups(result)
    assert {"brandenburg-gate.jpg", "brandenburg-gate-edited.jpg"} in groups
    assert _kept(result, "brandenburg-gate-edited.jpg") == "brandenburg-gate.jpg"  # more pixels
    assert {"colosseum.jpg", "colosseum-small.jpg"} in groups
    assert _kept(result, "colosseum-small.jpg") == "colosseum.jpg"
    grouped = set().union(*groups)
    assert not grouped & set(DISTRACTORS)
    g = next(g for g in result.groups if g.keep.path.endswith("brandenburg-gate.jpg"))
    assert g.keep.keep and g.keep.similarity == 1.0 and (g.keep.width, g.keep.height) == (640, 480)
    other = g.others[0]
    assert not other.keep and result.threshold <= other.similarity < 1.0
    assert other.width * other.height < 640 * 480 and other.bytes == os.stat(other.path).st_size
    # every photo of a group is itself a near-duplicate of the one kept
    assert all(p.similarity >= result.threshold for g in result.groups for p in g.photos)
    assert result.others == [p.path for g in result.groups for p in g.others]
    assert result.preset == "edits" and result.n_images == len(collection) == 12
    # the instance feature, which the default model stores for every photo while indexing
    assert result.vectors == "instance"
    visual = duplicates(collection, "edits", vectors="visual")
    assert visual.vectors == "visual" and visual.threshold != result.threshold
    assert {"brandenburg-gate.jpg", "brandenburg-gate-edited.jpg"} in _groups(visual)


def test_two_shots_of_one_scene_are_grouped_at_same_scene_but_not_at_exact_copies(collection):
    from imagetext.api import duplicates

    pair = {"motorcycle_left.png", "motorcycle_right.png"}
    scene = duplicates(collection, "scene")
    assert pair in _groups(scene)
    exact = duplicates(collection, "exact")
    assert not any(pair <= g for g in _groups(exact))
    # exact copies: the resized re-save is one, the crop is not
    assert {"colosseum.jpg", "colosseum-small.jpg"} in _groups(exact)
    edits = duplicates(collection, "edits")
    assert edits.threshold > scene.threshold and edits.pixel_threshold is None
    # exact: the candidates of "scene" without turned copies, then the pixels
    assert exact.threshold == duplicates(collection, "scene", turned=False).threshold
    assert 0.5 < exact.pixel_threshold < 1.0
    # a threshold instead of a preset; the same answer twice (deterministic order)
    assert duplicates(collection, threshold=0.9999).groups == []
    assert duplicates(collection, "scene").to_dict()["groups"] == scene.to_dict()["groups"]


def test_pairs_at_the_threshold_count_and_a_chain_splits_into_stars():
    from imagetext.index.duplicates import components, similar_pairs, star_groups

    angles = np.radians([0.0, 30.0, 60.0, 90.0, 180.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    i, j, s = similar_pairs(x, float(np.float32(np.cos(np.radians(30.0)))))
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 2), (2, 3)]
    assert np.allclose(s, np.cos(np.radians(30.0)), atol=1e-6)
    assert [c.tolist() for c in components(len(x), i, j)] == [[0, 1, 2, 3]]  # a chain
    neighbours = {0: {1}, 1: {0, 2}, 2: {1, 3}, 3: {2}}
    # every member next to the photo kept: 0 keeps 1, then 2 keeps 3; or 1 keeps 0 and 2
    assert star_groups([0, 1, 2, 3], neighbours) == [[0, 1], [2, 3]]
    assert star_groups([1, 3, 0, 2], neighbours) == [[1, 0, 2]]  # 3 left alone


def test_sharpness_is_lower_for_a_blurred_photo(tmp_path):
    from imagetext.index.duplicates import sharpness

    src = GALLERY / "brandenburg-gate.jpg"
    with Image.open(src) as img:
        img.filter(ImageFilter.GaussianBlur(2)).save(tmp_path / "blurred.png")
        img.save(tmp_path / "same.png")
    assert sharpness(tmp_path / "blurred.png") < 0.5 * sharpness(tmp_path / "same.png")


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file under root but the index: content hash, size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".imagetext" not in path.relative_to(root).parts:
            st = path.stat()
            out[str(path.relative_to(root))] = (hashlib.sha1(path.read_bytes()).hexdigest(),
                                                st.st_size, st.st_mtime_ns)
    return out


def test_the_cli_lists_groups_and_touches_no_file_without_a_flag(collection):
    root = collection.root
    before = _snapshot(root)
    for preset in ("exact", "edits", "scene"):
        out = json.loads(run("duplicates", str(root), "--preset", preset, "--json").stdout)
        assert out["preset"] == preset and out["n_groups"] == len(out["groups"]) > 0
        for g in out["groups"]:
            assert g["photos"][0]["keep"] and g["keep"] == g["photos"][0]["path"]
            assert not any(p["keep"] for p in g["photos"][1:])
    text = run("duplicates", str(root)).stdout
    assert "KEEP" in text and "brandenburg-gate-edited.jpg" in text
    assert _snapshot(root) == before
    # bad input: one line, no traceback
    for args, message in ((["--preset", "blurry"], "unknown preset"),
                          (["--vectors", "caption"], "no preset thresholds"),
                          (["--move-to", str(root / "elsewhere")], "outside the collection")):
        proc = run("duplicates", str(root), *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(root) == before


def test_write_list_and_move_to_move_the_others_and_the_index_follows(tmp_path):
    from imagetext.api import Collection, duplicates

    root = make_gallery(tmp_path / "photos")
    with Collection.open(root) as col:
        col.index()
        n = len(col)
    dest = tmp_path / "review"
    (dest / "edits").mkdir(parents=True)
    taken = dest / "edits" / "brandenburg-gate-edited.jpg"
    taken.write_bytes(b"a file of the user's, not to be replaced")
    listed = tmp_path / "others.txt"
    out = json.loads(run("duplicates", str(root), "--preset", "edits", "--write-list", str(listed),
                         "--move-to", str(dest), "--json").stdout)
    others = [p["path"] for g in out["groups"] for p in g["photos"][1:]]
    assert listed.read_text().splitlines() == others and len(others) == out["n_others"] >= 2
    moved = {Path(m["from"]).name: Path(m["to"]) for m in out["moved"]}
    assert set(moved) == {Path(p).name for p in others}
    # collision-safe: the user's file stays, the moved one takes the next free name
    assert taken.read_bytes() == b"a file of the user's, not to be replaced"
    assert moved["brandenburg-gate-edited.jpg"] == dest / "edits" / "brandenburg-gate-edited (2).jpg"
    for path in others:
        assert not Path(path).exists() and moved[Path(path).name].is_file()
    assert (root / "brandenburg-gate.jpg").is_file() and (root / "colosseum.jpg").is_file()
    # the kept photo's bytes went nowhere: the moved file is the one that was in the folder
    edited = io.BytesIO()
    edited_copy(GALLERY / "brandenburg-gate.jpg", edited)
    assert moved["brandenburg-gate-edited.jpg"].read_bytes() == edited.getvalue()
    with Collection.open(root) as col:
        assert len(col) == n - len(others)
        assert all(col.indexed_id(p) is None for p in others)
        assert duplicates(col, "edits").groups == []


def test_move_to_with_a_read_only_index_moves_nothing(tmp_path):
    """The index on a read-only disk (a tmpfs remounted read-only) could not follow a move, so
    --move-to refuses before touching a file."""
    from tests.robustness.helpers import assert_one_line_error, remount, tmpfs

    root = make_gallery(tmp_path / "photos")
    with tmpfs(tmp_path / "disk", "64m") as disk:
        index_dir = disk / "index"
        run("index", str(root), "--index-dir", str(index_dir), "-q")
        remount(disk, "ro")
        try:
            before = _snapshot(root)
            proc = run("duplicates", "-c", str(root), "--index-dir", str(index_dir), "--move-to",
                       str(tmp_path / "review"), check=False)
            assert_one_line_error(proc, "read-only", "no file was moved")
            assert _snapshot(root) == before and not (tmp_path / "review").exists()
            # reviewing still works on a read-only index
            out = json.loads(run("duplicates", "-c", str(root), "--index-dir", str(index_dir),
                                 "--json").stdout)
            assert out["n_groups"] >= 2
        finally:
            remount(disk, "rw")


def add_without_instance_vectors(col, files: list[Path]) -> None:
    """Store `files` (under the collection's folder) as images embedded elsewhere with only
    semantic and visual vectors (add_embedded), as an index made by Ray before instance
    vectors, or by another model, holds them."""
    from imagetext.index.records import EmbeddedImage

    emb = col.encoder.encode_images(files)
    records = []
    for n, path in enumerate(files):
        data = path.read_bytes()
        with Image.open(path) as img:
            w, h = img.size
        records.append(EmbeddedImage(path.relative_to(col.root).as_posix(), len(data),
                                     path.stat().st_mtime, hashlib.sha1(data).hexdigest(),
                                     w, h, emb.semantic[n], emb.visual[n]))
    col.add_embedded(records)
    assert len(col.vectors("instance")[0]) == 0


def test_without_instance_vectors_the_visual_ones_are_grouped(tmp_path):
    """An index whose images have no instance vector (embedded elsewhere, add_embedded without
    one) falls back to the visual vectors, with their own thresholds."""
    from imagetext.api import Collection, duplicates

    root = tmp_path / "photos"
    root.mkdir()
    (root / "gate.jpg").write_bytes((GALLERY / "brandenburg-gate.jpg").read_bytes())
    edited_copy(GALLERY / "brandenburg-gate.jpg", root / "gate-edited.jpg")
    (root / "koala.jpg").write_bytes((GALLERY / "koala.jpg").read_bytes())
    files = sorted(root.iterdir())
    with Collection.open(root) as col:
        add_without_instance_vectors(col, files)
        result = duplicates(col, "edits")
        assert result.vectors == "visual" and _groups(result) == [{"gate.jpg", "gate-edited.jpg"}]
