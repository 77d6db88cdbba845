"""Hubness correction (CSLS) of an aligned model's similarities: the formula, the bank in the
model folder, and search, ranking and evaluation ordering by the corrected scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagetext.models.aligned import AlignedEncoder
from imagetext.models.hubness import BANK_FILE, HubnessCorrection
from imagetext.models.registry import PRETRAINED_DIR
from tests.conftest import flickr_images


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_offsets_follow_the_csls_formula():
    rng = np.random.default_rng(0)
    unit = _unit
    images, texts = unit(rng.normal(size=(7, 16))), unit(rng.normal(size=(5, 16)))
    image_bank, text_bank = unit(rng.normal(size=(40, 16))), unit(rng.normal(size=(30, 16)))
    h = HubnessCorrection(image_bank, text_bank, k=4, beta=0.7)
    # r_t(image): mean of its 4 nearest bank texts; r_i(text): mean of its 4 nearest bank images
    r_image = np.array([np.sort(text_bank @ images[i])[-4:].mean() for i in range(7)])
    r_text = np.array([np.sort(image_bank @ texts[j])[-4:].mean() for j in range(5)])
    np.testing.assert_allclose(h.image_offsets(images), 0.7 * r_image, atol=1e-5)
    np.testing.assert_allclose(h.text_offsets(texts), 0.7 * r_text, atol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        HubnessCorrection(image_bank, text_bank[:, :8])


@pytest.fixture(scope="module")
def hub_model(tmp_path_factory):
    """The shipped model (without its own bank) given a small bank of 12 Flickr8k val photos."""
    folder = tmp_path_factory.mktemp("model") / "aligned-hub"
    shutil.copytree(PRETRAINED_DIR / "aligned-flickr8k", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("hubness", None)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / BANK_FILE).unlink(missing_ok=True)
    encoder = AlignedEncoder.from_pretrained(folder)
    assert encoder.hubness is None
    images = [str(p) for p in flickr_images(12)]
    captions = ["a dog runs on the grass", "a man rides a bike", "children play in the water",
                "a woman in a red coat", "two dogs fight over a ball", "a boy jumps off a rock",
                "a crowd at a concert", "a girl with a pink umbrella", "a skier on a slope",
                "a black dog swims", "people walk down a street", "a surfer rides a wave"]
    encoder.set_hubness_bank(images, captions, k=3, beta=0.5)
    encoder.save_pretrained(folder)
    return folder


def test_bank_round_trips_through_the_model_folder(hub_model, photos):
    encoder = AlignedEncoder.from_pretrained(hub_model)
    assert encoder.hubness is not None and encoder.hubness_settings["k"] == 3
    assert (hub_model / BANK_FILE).is_file()
    images = encoder.encode_images([str(photos["chelsea"]), str(photos["coffee"])]).semantic
    texts = encoder.encode_texts(["a cat", "a cup of coffee", "a dog runs on the grass"])
    corrected = encoder.similarity(images, texts)
    h = encoder.hubness
    np.testing.assert_allclose(corrected, images @ texts.T - h.image_offsets(images)[:, None]
                               - h.text_offsets(texts)[None, :], atol=1e-5)
    assert not np.allclose(corrected, images @ texts.T)
    # the bank is kept unmixed: the trained model alone (conse_weight 0) still has its banks
    config = json.loads((hub_model / "config.json").read_text())
    alone = hub_model.parent / "alone"
    shutil.copytree(hub_model, alone)
    (alone / "config.json").write_text(json.dumps({**config, "conse_weight": 0.0}))
    trained_only = AlignedEncoder.from_pretrained(alone)
    assert trained_only.hubness.image_bank.shape[1] == trained_only.dim < encoder.dim
    (alone / BANK_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=BANK_FILE):
        AlignedEncoder.from_pretrained(alone)


def test_search_rank_and_classify_order_by_the_corrected_scores(hub_model, gallery):
    from imagetext.api import Collection, classify, rank

    encoder = AlignedEncoder.from_pretrained(hub_model)
    col = Collection.open(gallery, model=str(hub_model))
    col.index(batch_size=8)
    paths = sorted(str(p) for p in gallery.rglob("*") if p.suffix in (".png", ".jpg"))
    images = encoder.encode_images(paths).semantic
    for query in ("a cat", "a dog runs through the grass"):
        expected = encoder.similarity(images, encoder.encode_texts([query]))[:, 0]
        order = [Path(paths[i]).name for i in np.argsort(-expected, kind="stable")[:5]]
        assert [Path(r.path).name for r in col.search(query, k=5)] == order
        assert [Path(r.image).name for r in rank(query, paths, model=encoder)][:5] == order
        plain = images @ encoder.encode_texts([query])[0]
        assert not np.allclose(expected, plain)
    assert Path(col.search("a cat", k=1)[0].path).name == "chelsea.png"
    result = classify([str(gallery / "coffee.png")], "cat, dog, cup of coffee, car", model=encoder)
    assert result[0].top == "cup of coffee"


def test_index_stores_each_images_offset_and_search_reports_the_query_scale(hub_model, gallery, tmp_path):
    """Indexing stores every image's hubness offset once; search scores are cos - offset(image)
    (the query's own offset left out, as `rank` does), so a right match reads above zero; a
    changed correction (another beta in config.json) makes the stored offsets stale and they are
    recomputed, never mixed."""
    from imagetext.api import Collection, rank

    encoder = AlignedEncoder.from_pretrained(hub_model)
    index_dir = tmp_path / "index"
    col = Collection.open(gallery, index_dir=index_dir, model=str(hub_model))
    col.index(batch_size=8)
    store = col.store
    assert store.ids_without_offset() == []
    ids = [i for _, _, i in store.file_states().values()]
    vecs = col.vector_index("semantic").get(ids)
    offsets = store.offsets(ids)
    np.testing.assert_allclose([offsets[i] for i in ids],
                               encoder.image_offsets(np.stack([vecs[i] for i in ids])), atol=1e-5)

    query = encoder.encode_texts(["a cat"])[0]
    results = col.search("a cat", k=3)
    for r in results:
        image_id = next(i for p, (_, _, i) in store.file_states().items() if str(gallery / p) == r.path)
        assert r.score == pytest.approx(float(vecs[image_id] @ query) - offsets[image_id], abs=1e-5)
    assert Path(results[0].path).name == "chelsea.png" and results[0].score > 0
    ranked = rank("a cat", [results[0].path], model=encoder)
    assert ranked[0].score == pytest.approx(results[0].score, abs=1e-4)
    # the score differs from the symmetric similarity only by the query's own offset
    full = encoder.similarity(vecs[ids[0]][None], query[None])[0, 0]
    assert encoder.query_scores(vecs[ids[0]][None], query)[0] == pytest.approx(
        full + encoder.text_offsets(query[None])[0], abs=1e-5)
    col.close()

    changed = tmp_path / "beta1"
    shutil.copytree(hub_model, changed)
    config = json.loads((changed / "config.json").read_text())
    config["hubness"]["beta"] = 1.0
    (changed / "config.json").write_text(json.dumps(config))
    other = AlignedEncoder.from_pretrained(changed)
    col = Collection.open(gallery, index_dir=index_dir, model=str(changed))
    top = col.search("a cat", k=1)[0]
    top_id = next(i for p, (_, _, i) in col.store.file_states().items() if str(gallery / p) == top.path)
    expected = other.query_scores(vecs[top_id][None], query)[0]
    assert top.score == pytest.approx(float(expected), abs=1e-5)
    assert col.store.offsets([top_id])[top_id] == pytest.approx(2 * offsets[top_id], abs=1e-5)
    col.close()
