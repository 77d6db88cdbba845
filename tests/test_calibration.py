"""Calibrated scores on real photos: the classification temperature, search relevance and
moderation thresholds of the default model's calibration.json (fitted on Flickr8k val by
scripts/calibrate_default_model.py), and what models without one do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    FLICKR8K,
    SAMPLE_PHOTOS,
    flickr_captions,
    flickr_images,
    needs_flickr,
    skimage_photo,
)

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "src/imagetext/models/pretrained/aligned-flickr8k"


@pytest.fixture(scope="module")
def default():
    from imagetext.models.registry import load_encoder

    return load_encoder("aligned-flickr8k")


def flickr(name: str) -> str:
    return str(FLICKR8K / "images" / name)


# -- where the calibration lives ---------------------------------------------------------------
def test_calibration_is_read_with_the_model_and_is_no_part_of_its_fingerprint(default, tmp_path):
    from imagetext.models.calibration import read_calibration, write_calibration
    from imagetext.models.registry import PRETRAINED_DIR, folder_fingerprint, load_encoder

    assert {"classify", "search", "moderation"} <= set(default.calibration)
    assert default.calibration["fingerprint"] == default.fingerprint  # fitted for these weights
    assert "calibration" not in json.loads((DEFAULT_FOLDER / "config.json").read_text())
    assert load_encoder("conse").calibration == {}  # a model without calibration.json

    folder = tmp_path / "conse-copy"
    shutil.copytree(PRETRAINED_DIR / "conse", folder)
    before = folder_fingerprint(folder)
    write_calibration(folder, {"classify": {"temperature": 0.05}})
    assert folder_fingerprint(folder) == before  # indexes built with the model stay valid
    assert load_encoder(folder, cache=False).calibration == {"classify": {"temperature": 0.05}}
    (folder / "calibration.json").write_text("{not json")
    with pytest.raises(ValueError, match="calibration.json"):
        read_calibration(folder)


# -- classification ----------------------------------------------------------------------------
@needs_flickr
def test_the_fitted_temperature_makes_confidence_match_accuracy_on_held_out_photos(default):
    from imagetext import api
    from imagetext.train.calibrate import SUBJECT_CLASSES, fold_of, keyword_labels

    # fold 1 of val: photos the temperature was not fitted on, labelled by their captions
    labelled = {p: y for p, y in keyword_labels(flickr_captions("val"), SUBJECT_CLASSES).items()
                if fold_of(p) == 1}
    names, truth = list(labelled)[:150], np.array(list(labelled.values())[:150])
    results = api.classify([flickr(n) for n in names], list(SUBJECT_CLASSES), model=default)
    assert all(r.calibrated for r in results)
    probs = np.array([r.scores for r in results])
    accuracy = (probs.argmax(1) == truth).mean()
    # the same similarities at the model's logit scale 100, as classify did before
    sims = np.array([r.similarities for r in results])
    raw = np.exp(100 * (sims - sims.max(1, keepdims=True)))
    raw /= raw.sum(1, keepdims=True)
    assert 0.5 < accuracy < 0.85
    assert abs(probs.max(1).mean() - accuracy) < 0.1  # confidence ~ accuracy
    assert raw.max(1).mean() - accuracy > 0.2  # logit scale 100: far more sure than right


def test_calibrated_scores_are_not_saturated_on_real_photos(default, photos):
    from imagetext import api

    cases = [("coffee", "cup of coffee, cat, car"), ("chelsea", "cat, dog, car"),
             ("astronaut", "person, dog, car")]
    for name, labels in cases:
        (r,) = api.classify([str(photos[name])], labels, model=default)
        sims = np.array(r.similarities)
        at_100 = np.exp(100 * (sims - sims.max()))
        assert at_100.max() / at_100.sum() > 0.999  # the logit scale: certainty, always
        assert r.top == labels.split(",")[0]
        assert 0.6 < max(r.scores) < 0.99 and abs(sum(r.scores) - 1) < 1e-5, (name, r.scores)
        assert sorted(r.scores)[-2] > 0.005  # the runner-up keeps some weight


# -- moderation --------------------------------------------------------------------------------
@needs_flickr
def test_moderation_flags_few_ordinary_photos_and_catches_clear_cases(default, photos):
    from imagetext import api
    from imagetext.train.calibrate import moderation_mentions

    captions = flickr_captions("val")
    ordinary = [n for n, caps in captions.items() if moderation_mentions(caps) == ([], [])][:200]
    results = api.moderate([flickr(n) for n in ordinary], model=default)
    assert all(r.calibrated and r.labels == list(api.UNSAFE_LABELS) for r in results)
    flagged = [r.image for r in results if r.flagged]
    assert len(flagged) <= 2, flagged  # at most 1% of 200 ordinary photos
    assert not any(r.flagged for r in api.moderate([str(p) for p in photos.values()], model=default))

    # val photos whose captions say so (the thresholds were fitted on ordinary photos only)
    gun, karate = "3005872315_e6771763bd.jpg", "3697456750_460aea7252.jpg"
    assert "weapons" in moderation_mentions(captions[gun])[0]
    assert "violence" in moderation_mentions(captions[karate])[0]
    strict = api.moderate([flickr(gun), flickr(karate)], model=default)
    assert [r.flagged for r in strict] == [["weapons"], ["violence"]]
    for r in strict:  # flagged exactly where the flag score reaches 0.5
        assert r.flagged == [lab for lab, s in zip(r.labels, r.scores) if s >= 0.5]
    stricter = api.moderate([flickr(gun), flickr(karate)], model=default, threshold=0.9)
    assert [r.flagged for r in stricter] == [[], []]


def test_models_without_calibration_keep_the_uncalibrated_preset(photos):
    from imagetext import api

    (r,) = api.moderate([str(photos["coffee"])], model="conse")
    assert not r.calibrated
    assert r.labels == list(api.FALLBACK_SAFE_LABELS + api.FALLBACK_UNSAFE_LABELS)
    assert abs(sum(r.scores) - 1) < 1e-5 and set(r.flagged) <= set(api.FALLBACK_UNSAFE_LABELS)
    (c,) = api.classify([str(photos["chelsea"])], "cat, dog", model="conse")
    sims = np.array(c.similarities)
    expected = np.exp(30 * (sims - sims.max()))  # ConSE's own logit scale
    assert not c.calibrated and np.allclose(c.scores, expected / expected.sum(), atol=1e-5)


def test_moderation_help_states_the_figures_of_the_calibration():
    from imagetext.cli import MODERATION_HELP

    m = json.loads((DEFAULT_FOLDER / "calibration.json").read_text())["moderation"]
    measured = m["measured"]
    assert (f"{measured['val_ordinary_flagged']} of the {measured['val_ordinary']} ordinary "
            f"photos") in MODERATION_HELP
    for c in m["categories"]:
        got = c["measured"]
        if got["val_positives"]:
            assert f"{c['name']} {got['val_positives_flagged']}/{got['val_positives']}" in MODERATION_HELP
        assert f"{c['name']} {got['val_ordinary_flagged']}" in MODERATION_HELP


# -- search ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def indexed_gallery(tmp_path_factory) -> Path:
    """The sample photos and 24 Flickr8k val photos (none with a horse), indexed."""
    from imagetext.api import Collection

    root = tmp_path_factory.mktemp("calibrated") / "gallery"
    (root / "flickr").mkdir(parents=True)
    for name in SAMPLE_PHOTOS:
        shutil.copy(skimage_photo(name), root / name)
    for path in flickr_images(24):
        shutil.copy(path, root / "flickr" / path.name)
    with Collection.open(root, model="aligned-flickr8k") as col:
        col.index()
    return root


HORSE = ("horse", "horses", "pony", "ponies")


@needs_flickr
def test_search_relevance_says_weak_without_a_match_and_strong_for_a_captions_own_image(indexed_gallery):
    from imagetext.api import Collection

    captions = flickr_captions("val", 24)
    assert not any(w in c.lower().split() for caps in captions.values() for c in caps for w in HORSE)
    with Collection.open(indexed_gallery) as col:
        horse = col.search("a horse", k=5)
        assert [h.match for h in horse] == ["weak"] * 5
        assert all(0 <= h.relevance < 0.5 for h in horse)
        for caption, own in (("Three dogs on a grassy hill", "1032122270_ea6f0beedb.jpg"),
                             ("A tan colored dog is jumping into an outdoor pool .",
                              "1178705300_c224d9a4f1.jpg")):
            (hit,) = col.search(caption, k=1)
            assert Path(hit.path).name == own and hit.match == "strong" and hit.relevance > 0.8
        cat = col.search("a cat", k=10)
        assert Path(cat[0].path).name == "chelsea.png" and cat[0].match == "strong"
        rel = [h.relevance for h in cat]
        assert rel == sorted(rel, reverse=True)  # a monotone map of the score
        assert set(cat[0].to_dict()) >= {"relevance", "match", "score", "path"}


@needs_flickr
def test_cli_search_shows_relevance_and_says_when_nothing_matches(indexed_gallery):
    def search(*args):
        return subprocess.run([sys.executable, "-m", "imagetext.cli", "search", *args, "-c",
                               str(indexed_gallery)], capture_output=True, text=True, check=True)

    horse = search("a horse", "-k", "3")
    assert "no strong match for 'a horse'" in horse.stderr
    lines = horse.stdout.splitlines()
    assert len(lines) == 3 and all(line.split()[1] == "weak" for line in lines)
    assert lines[0].split()[0].endswith("%")
    dogs = search("Three dogs on a grassy hill", "-k", "2")
    first = dogs.stdout.splitlines()[0].split()
    assert first[1] == "strong" and first[-1].endswith("1032122270_ea6f0beedb.jpg")
    assert "no strong match" not in dogs.stderr
    hits = json.loads(search("a horse", "-k", "2", "--json").stdout)
    assert [h["match"] for h in hits] == ["weak", "weak"] and hits[0]["relevance"] < 0.5


def test_search_without_a_calibration_has_no_relevance(tmp_path, photos):
    from imagetext.api import Collection

    for name in ("chelsea", "coffee"):
        shutil.copy(photos[name], tmp_path / photos[name].name)
    with Collection.open(tmp_path, model="conse") as col:
        col.index()
        hits = col.search("a cat", k=2)
    assert Path(hits[0].path).name == "chelsea.png"
    assert [(h.relevance, h.match) for h in hits] == [(None, None)] * 2


@needs_flickr
def test_captioned_results_are_rated_by_the_captioned_map(tmp_path, default):
    from imagetext.api import Collection
    from imagetext.caption.registry import load_captioner
    from imagetext.index.fusion import CAPTION_WEIGHT
    from imagetext.models.calibration import search_relevance

    for path in flickr_images(8):
        shutil.copy(path, tmp_path / path.name)
    with Collection.open(tmp_path, model="aligned-flickr8k") as col:
        col.index(captioner=load_captioner(None))
        hits = col.search("Three dogs on a grassy hill", k=8)
    assert all(h.caption for h in hits)  # every result fused with its caption
    assert Path(hits[0].path).name == "1032122270_ea6f0beedb.jpg" and hits[0].match == "strong"
    scores = np.array([h.score for h in hits])
    fused = search_relevance(default.calibration, scores, np.ones(8, bool), CAPTION_WEIGHT)
    plain = search_relevance(default.calibration, scores, np.zeros(8, bool), CAPTION_WEIGHT)
    assert np.allclose([h.relevance for h in hits], fused, atol=1e-4)
    assert not np.allclose(fused, plain, atol=1e-3)  # not the uncaptioned map


@needs_flickr
@pytest.mark.slow
def test_the_shipped_calibration_is_what_the_fitting_code_gives():
    from imagetext.train.calibrate import calibrate

    shipped = json.loads((DEFAULT_FOLDER / "calibration.json").read_text())
    fresh = calibrate("aligned-flickr8k", str(FLICKR8K), train_split=None, captioner=None,
                      log=lambda _: None)
    assert fresh["classify"]["temperature"] == pytest.approx(shipped["classify"]["temperature"], rel=1e-3)
    for key in ("slope", "cut"):
        assert fresh["search"]["image"][key] == pytest.approx(shipped["search"]["image"][key], rel=1e-3)
    got = {c["name"]: c["threshold"] for c in fresh["moderation"]["categories"]}
    assert got == pytest.approx({c["name"]: c["threshold"] for c in shipped["moderation"]["categories"]},
                                abs=1e-4)
    assert fresh["moderation"]["measured"]["val_ordinary_flagged"] <= 0.01 * fresh["moderation"]["measured"]["val_ordinary"]
