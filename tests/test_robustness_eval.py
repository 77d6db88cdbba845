"""`eval robustness`: the degradations themselves, the metric per level for retrieval (on
Flickr8k val photos) and classification (on the demo gallery's animals and landmarks), and
the curve PNG."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagetext.errors import InvalidInputError
from imagetext.eval.robustness import degrade, parse_levels
from tests.conftest import FLICKR8K, needs_flickr

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"


@pytest.fixture(scope="module")
def crop() -> Image.Image:
    img = Image.open(GALLERY / "kingfisher.jpg").convert("RGB")
    return img.resize((224, 224))


def _detail(img: Image.Image) -> float:
    """Mean absolute difference between neighbouring pixels: what blur removes."""
    a = np.asarray(img.convert("L"), np.float32)
    return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean())


def test_blur_removes_more_detail_at_each_level(crop):
    details = [_detail(degrade(crop, "blur", s)) for s in (0, 1, 2, 4, 8)]
    assert details == sorted(details, reverse=True) and details[-1] < 0.25 * details[0]
    assert degrade(crop, "blur", 0) is crop


def test_jpeg_and_noise_degrade_and_are_seeded(crop):
    base = np.asarray(crop, np.float32)
    errors = [np.abs(np.asarray(degrade(crop, "jpeg", q), np.float32) - base).mean() for q in (90, 30, 5)]
    assert errors == sorted(errors) and errors[0] > 0
    noisy = np.asarray(degrade(crop, "noise", 25, seed=3), np.float32)
    assert 15 < np.std(noisy - base) < 26  # clipping at 0 and 255 trims a little
    assert np.array_equal(noisy, np.asarray(degrade(crop, "noise", 25, seed=3), np.float32))
    assert not np.array_equal(noisy, np.asarray(degrade(crop, "noise", 25, seed=4), np.float32))


def test_levels_are_checked():
    assert parse_levels("0,1, 2,4,8", "blur") == [0, 1, 2, 4, 8]
    for text, kind in (("a,b", "blur"), ("-1", "noise"), ("0,50", "jpeg"), ("101", "jpeg")):
        with pytest.raises(InvalidInputError):
            parse_levels(text, kind)
    with pytest.raises(InvalidInputError, match="unknown degradation"):
        degrade(Image.new("RGB", (8, 8)), "fog", 1)


@needs_flickr
@pytest.mark.slow
def test_retrieval_per_blur_level_and_the_curve(tmp_path):
    """At blur 0 the figures are exactly `eval retrieval`'s; blur costs recall; the PNG is a
    real chart (two coloured curves on white)."""
    from imagetext.eval.retrieval import evaluate_retrieval
    from imagetext.eval.robustness import evaluate_robustness
    from imagetext.models.registry import load_encoder

    encoder = load_encoder()
    r = evaluate_robustness(FLICKR8K, "retrieval", {"blur": [0, 8]}, split="val", model=encoder,
                            limit=40, out_png=tmp_path / "curve.png")
    clean = evaluate_retrieval(str(FLICKR8K), "val", model=encoder, limit=40)
    plain = [row["plain"] for row in r["rows"]]
    assert {k: plain[0][k] for k in clean if k.startswith(("t2i", "i2t"))} == {
        k: v for k, v in clean.items() if k.startswith(("t2i", "i2t"))}
    assert plain[1]["t2i_r5"] < plain[0]["t2i_r5"] - 10
    assert set(r["rows"][0]) == {"kind", "level", "plain", "blur_aware"}
    (png,) = r["png"]
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 500
        arr = np.asarray(img.convert("RGB"), np.int32)
    coloured = (arr.max(2) - arr.min(2)) > 80  # matplotlib's blue and orange lines
    assert 200 < coloured.sum() < 0.2 * coloured.size


def test_classification_per_level_and_the_cli(tmp_path):
    """Zero-shot on animals vs landmarks (14 each) stays far above chance when lightly
    blurred; the CLI prints the table, writes the PNG, and refuses a bad level in one line."""
    root = tmp_path / "data"
    for label, names in (("animal", ["cow", "owl", "panda", "pig", "sheep", "koala"]),
                         ("landmark", ["colosseum", "taj-mahal", "eiffel-tower", "machu-picchu",
                                       "pyramid-of-giza", "great-wall-of-china"])):
        (root / label).mkdir(parents=True)
        for name in names:
            shutil.copy(GALLERY / f"{name}.jpg", root / label / f"{name}.jpg")
    png = tmp_path / "curve.png"
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "eval", "robustness", "--data",
                           str(root), "--task", "classify", "--split", "val", "--val-fraction", "0.5",
                           "--blur", "0,2", "--jpeg", "20", "--png", str(png), "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert [(row["kind"], row["level"]) for row in r["rows"]] == [("blur", 0), ("blur", 2), ("jpeg", 20)]
    assert r["n_images"] == 6
    for row in r["rows"]:
        assert row["zero_shot_single"]["top1"] >= 80.0, row
    assert sorted(Path(p).name for p in r["png"]) == ["curve_blur.png", "curve_jpeg.png"]
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "eval", "robustness", "--data",
                           str(root), "--task", "classify", "--jpeg", "0"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "JPEG qualities between 1 and 100" in proc.stderr
    assert "Traceback" not in proc.stderr
