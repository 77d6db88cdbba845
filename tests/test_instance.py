"""Instance features (imagetext.instance) and the instance-retrieval benchmark (eval/instance.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagetext.errors import InvalidInputError
from imagetext.instance.pooling import gem, l2n, mac, pool, rmac, rmac_regions
from imagetext.instance.whitening import PCAWhitening

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"


# -- pooling -------------------------------------------------------------------------------
def test_mac_is_the_maximum_over_positions():
    maps = np.zeros((2, 3, 4, 5), np.float32)
    maps[0, 0, 1, 2] = 7.0
    maps[0, 1, 3, 4] = -1.0  # a channel whose values are all <= 0 keeps its maximum, 0
    maps[0, 2] = np.arange(20).reshape(4, 5)
    maps[1, :, 0, 0] = [1, 2, 3]
    assert mac(maps).tolist() == [[7.0, 0.0, 19.0], [1.0, 2.0, 3.0]]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(mac(x), x.reshape(3, 8, -1).max(axis=2))


def test_rmac_regions_follow_tolias_et_al():
    # a square 7 x 7 map, 3 levels: the whole map, 2 x 2 regions of side 4, 3 x 3 of side 3
    regions = rmac_regions(7, 7, 3)
    assert regions == ([(0, 0, 7, 7)] + [(t, left, 4, 4) for t in (0, 3) for left in (0, 3)]
                       + [(t, left, 3, 3) for t in (0, 2, 4) for left in (0, 2, 4)])
    # a wide 7 x 10 map: the longer side gets one more region per level (~40% overlap)
    wide = rmac_regions(7, 10, 3)
    assert len(wide) == 2 + 6 + 12
    assert wide[:2] == [(0, 0, 7, 7), (0, 3, 7, 7)]
    assert all(t + s <= 7 and left + s <= 10 for t, left, s, _ in wide)
    # tall is wide transposed
    assert rmac_regions(10, 7, 3) == sorted([(left, t, s, s) for t, left, s, _ in wide],
                                            key=lambda r: (-r[2], r[0], r[1]))
    assert rmac_regions(1, 1, 3) == [(0, 0, 1, 1)]  # too small for levels 2 and 3


def test_rmac_sums_normalised_region_maxima():
    rng = np.random.default_rng(1)
    x = rng.random((2, 5, 7, 7)).astype(np.float32)
    want = sum(l2n(x[:, :, t : t + h, left : left + w].max(axis=(2, 3)))
               for t, left, h, w in rmac_regions(7, 7, 3))
    np.testing.assert_allclose(rmac(x), want, rtol=1e-6)
    # one level on a square map is MAC
    np.testing.assert_allclose(rmac(x, levels=1), l2n(mac(x)), rtol=1e-6)


def test_gem_spans_average_to_max_pooling():
    rng = np.random.default_rng(2)
    x = rng.random((2, 4, 5, 6)).astype(np.float32) + 0.01
    np.testing.assert_allclose(gem(x, p=1.0), x.mean(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(gem(x, p=500.0), mac(x), rtol=0.02)
    assert np.all(gem(x, 3.0) <= mac(x) + 1e-6) and np.all(gem(x, 3.0) >= x.mean(axis=(2, 3)) - 1e-6)
    with pytest.raises(ValueError):
        gem(x, p=0.0)


def test_pool_normalises_and_refuses_unknown_pooling():
    x = np.random.default_rng(3).random((3, 8, 7, 7)).astype(np.float32)
    for name in ("mac", "rmac", "gem"):
        np.testing.assert_allclose(np.linalg.norm(pool(x, name), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(x, "spoc")


# -- whitening -----------------------------------------------------------------------------
def test_pca_whitening_decorrelates_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    rotation = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    x = rng.standard_normal((500, 6)) * [5.0, 3.0, 2.0, 1.0, 0.5, 0.3] @ rotation + 3.0
    w = PCAWhitening.fit(x, power=0.5)
    z = (x - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(z.T), np.eye(6), atol=1e-3)
    assert np.all(np.diff(w.eigenvalues) <= 0)
    out = w(x)
    assert out.shape == (500, 6) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    w.save(tmp_path / "w.safetensors", {"config": {"stage": "s32"}})
    back, meta = PCAWhitening.load(tmp_path / "w.safetensors")
    assert meta == {"config": {"stage": "s32"}} and back.fitted_on == 500
    np.testing.assert_array_equal(back(x), out)
    assert PCAWhitening.fit(x, dim=2).dim == 2
    with pytest.raises(InvalidInputError, match="whitened dimension"):
        PCAWhitening.fit(x[:4], dim=5)
    with pytest.raises(InvalidInputError, match="6 dimensions"):
        w(x[:, :3])


# -- the extractor on real photos ----------------------------------------------------------
def _edited(path: Path) -> Image.Image:
    """A crop of 70% of the area, re-encoded as JPEG quality 50."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    cw, ch = round(w * 0.7 ** 0.5), round(h * 0.7 ** 0.5)
    buf = io.BytesIO()
    img.crop((w - cw, 0, w, ch)).save(buf, "JPEG", quality=50)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_an_edited_copy_is_nearest_its_original():
    from imagetext.instance.features import InstanceExtractor

    extractor = InstanceExtractor.default()
    photos = sorted(GALLERY.glob("*.jpg"))[:24]
    db = extractor.encode_images(photos)
    assert db.shape == (len(photos), extractor.dim) and db.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, rtol=1e-4)
    for i in (0, 7, 15):
        query = extractor.encode_images([_edited(photos[i])])[0]
        sims = db @ query
        assert int(np.argmax(sims)) == i, (photos[i].name, photos[int(np.argmax(sims))].name)
    # a copy turned by 90 degrees is found by the query's best turn
    from imagetext.instance.features import best_of_turns

    quarter = Image.open(photos[3]).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    turned = extractor.encode_turned([quarter])
    assert turned.shape == (1, 4, extractor.dim)
    assert int(np.argmax(best_of_turns(turned, db)[0])) == 3
    # the extractor takes a preprocessed batch, as an indexer gives it, and an empty one
    pixels = np.stack([extractor.load(p) for p in photos[:3]])
    np.testing.assert_allclose(extractor(pixels), db[:3], atol=1e-5)
    assert extractor(pixels[:0]).shape == (0, extractor.dim)


def test_the_compiled_default_model_gives_the_instance_feature_in_its_image_run():
    from imagetext.instance.features import InstanceExtractor
    from imagetext.models.registry import load_encoder

    encoder = load_encoder(None)  # the compiled default model
    if not hasattr(encoder, "image_outputs"):
        pytest.skip(f"the default model runs in {encoder.runtime}, not compiled")
    extractor = InstanceExtractor.default()
    photos = sorted(GALLERY.glob("*.jpg"))[:4]
    pixels = np.stack([encoder.preprocess.load(p) for p in photos])
    outs = encoder.image_outputs(pixels)
    emb = encoder.encode_pixels(pixels)
    np.testing.assert_allclose(l2n(outs["semantic"]), emb.semantic, atol=1e-6)
    np.testing.assert_allclose(l2n(outs["visual"]), emb.visual, atol=1e-6)
    # one image run of the index's batch gives what the extractor's own tower run gives
    np.testing.assert_allclose(extractor.vectors_from_maps(outs), extractor(pixels), atol=1e-4)


# -- the benchmark -------------------------------------------------------------------------
def test_transformations_are_deterministic():
    from imagetext.eval.instance import TRANSFORMS, transform_image

    img = Image.open(GALLERY / "coffee.jpg").convert("RGB")
    for kind in TRANSFORMS:
        a, b = transform_image(img, kind, 0, 3), transform_image(img, kind, 0, 3)
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), kind
        assert not np.array_equal(np.asarray(a.resize(img.size)), np.asarray(img)), kind
    seeds = {transform_image(img, "crop", s, 3).size for s in range(5)}
    assert len(seeds) > 1
    with pytest.raises(InvalidInputError, match="unknown transformation"):
        transform_image(img, "sepia", 0, 0)


def test_retrieval_metrics_and_thresholds():
    from imagetext.eval.instance import choose_threshold, precision_recall, retrieval_metrics

    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.85], [0.2, 0.5, 0.1]])
    m = retrieval_metrics(scores, np.array([0, 1, 2]), ["a", "a", "b"])
    assert m["per_transform"]["a"] == {"map": 0.75, "r1": 0.5}  # ranks 1 and 2
    assert m["per_transform"]["b"] == {"map": round(1 / 3, 4), "r1": 0.0}  # rank 3
    labels = np.zeros((3, 3), bool)
    labels[[0, 1, 2], [0, 1, 2]] = True
    s, lab = scores.ravel(), labels.ravel()
    t = choose_threshold(s, lab, "precision", 1.0)
    assert t == 0.9 and precision_recall(s, lab, t) == (1.0, 1 / 3)
    t = choose_threshold(s, lab, "recall", 1.0)
    assert t == 0.1 and precision_recall(s, lab, t)[1] == 1.0


def _small_dataset(root: Path) -> Path:
    """A captions.tsv dataset of demo-gallery photos: 10 in val, 14 in train."""
    photos = sorted(GALLERY.glob("*.jpg"))
    (root / "images").mkdir(parents=True)
    lines = ["image\tcaption_index\tcaption\tsplit"]
    for i, p in enumerate(photos[:24]):
        (root / "images" / p.name).write_bytes(p.read_bytes())
        lines.append(f"{p.name}\t0\ta photo of {p.stem.replace('-', ' ')}\t{'val' if i < 10 else 'train'}")
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow  # the default model and the tower on ~50 images: 15-45 s on 2 shared cores
def test_the_benchmark_runs_on_a_few_photos(tmp_path):
    from imagetext.eval.instance import evaluate_instance

    data = _small_dataset(tmp_path / "data")
    kinds = ("crop", "rot90", "jpeg")
    r = evaluate_instance(str(data), split="val", n=2, n_whitening=8, n_reference_database=6,
                          n_reference=2, stages=("head",), poolings=("mac",), transforms=kinds,
                          rotations=True)
    assert r["n_database"] == 10 and r["n_queries"] == 2 * len(kinds)
    assert set(r["features"]) == {"pooled-1280", "semantic", "pooled-1280+w7", "mac-head-224",
                                  "mac-head-224+w7", "mac-head-224+rot", "mac-head-224+w7+rot",
                                  "mac-head-224+turn", "mac-head-224+w7+turn"}
    for name, f in r["features"].items():
        assert set(f["per_transform"]) == set(kinds)
        assert 0.0 <= f["mean_r1"] <= 1.0 and 0.0 < f["mean_map"] <= 1.0, name
        assert set(f["duplicates"]) == {"exact copies", "edits", "same scene"}
        assert f["ms_per_image"] > 0
    assert r["best"] in r["features"] and r["best"] not in ("pooled-1280", "semantic")
    # easy on 10 photos: the baseline finds the re-encoded originals, and a turned query
    # finds the photo it was turned from
    assert r["features"]["pooled-1280"]["per_transform"]["jpeg"]["r1"] == 1.0
    assert r["features"]["mac-head-224+rot"]["per_transform"]["rot90"]["r1"] == 1.0
    # ... and so does one stored turn of each photo, as `duplicates --turned` compares them
    assert r["features"]["mac-head-224+turn"]["per_transform"]["rot90"]["r1"] == 1.0
    # exact copies as `duplicates` finds them: the re-encoded ones pass the pixel check
    exact = r["features"]["mac-head-224"]["duplicates"]["exact copies"]
    assert exact["pixel_threshold"] > 0.5 and exact["precision"] == 1.0 and exact["recall"] >= 1 / 6
