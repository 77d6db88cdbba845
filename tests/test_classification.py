"""Labelled data, classification metrics, the linear-probe classifier (train, save, load,
classify by it from Python, the CLI and the web app) and `eval classify`, on real photos:
the demo gallery's animals and landmarks, and Flickr8k's keyword-labelled photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imagetext.data.labelled import read_labelled, stratified_split, write_labels_csv
from imagetext.errors import InvalidInputError
from imagetext.eval.classification import classification_metrics
from tests.conftest import FLICKR8K, needs_flickr

GALLERY = Path(__file__).resolve().parents[1] / "src" / "imagetext" / "demo_gallery"
ANIMALS = ["chelsea-the-cat", "cow", "german-shepherd", "duck", "giraffes", "hedgehog", "horses",
           "kangaroo", "koala", "owl", "panda", "pig", "polar-bear", "sheep"]
LANDMARKS = ["brandenburg-gate", "colosseum", "eiffel-tower", "empire-state-building",
             "golden-temple", "great-wall-of-china", "leaning-tower-of-pisa", "machu-picchu",
             "neuschwanstein-castle", "pyramid-of-giza", "statue-of-liberty",
             "sydney-opera-house", "taj-mahal", "chinese-pagoda"]
N_TRAIN = 5  # per class: the rest (9 per class) are held out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder with train/ and val/ of two classes: 5 train photos a class, 9 val."""
    root = tmp_path_factory.mktemp("labelled")
    for label, names in (("animal", ANIMALS), ("landmark", LANDMARKS)):
        for i, name in enumerate(names):
            split = "train" if i < N_TRAIN else "val"
            (root / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(GALLERY / f"{name}.jpg", root / split / label / f"{name}.jpg")
    return root


@pytest.fixture(scope="module")
def default_encoder():
    from imagetext.models.registry import load_encoder

    return load_encoder()


@pytest.fixture(scope="module")
def probe_folder(image_folder, default_encoder, tmp_path_factory) -> tuple[Path, dict]:
    from imagetext.train.classifier import train_classifier

    out = tmp_path_factory.mktemp("probe") / "animal-or-landmark"
    result = train_classifier(image_folder, out, model=None, cs=(0.01, 0.1, 1.0))
    return out, result


# -- labelled data ------------------------------------------------------------------------------
def test_image_folder_with_split_folders(image_folder):
    data = read_labelled(image_folder)
    assert data.classes == ["animal", "landmark"]
    assert len(data) == 28 and data.split("train").counts() == {"animal": 5, "landmark": 5}
    assert data.split("val").counts() == {"animal": 9, "landmark": 9}
    assert all(Path(p).is_file() for p in data.images)


def test_flat_image_folder_is_split_per_class(tmp_path):
    for label, names in (("animal", ANIMALS[:4]), ("landmark", LANDMARKS[:6])):
        (tmp_path / label).mkdir()
        for name in names:
            shutil.copy(GALLERY / f"{name}.jpg", tmp_path / label / f"{name}.jpg")
    (tmp_path / "animal" / "notes.txt").write_text("not an image")
    data = read_labelled(tmp_path)
    assert data.counts() == {"animal": 4, "landmark": 6} and not any(data.splits)
    with pytest.raises(InvalidInputError, match="no split information"):
        data.split("val")
    split = read_labelled(tmp_path, val_fraction=0.25)
    assert split.split("val").counts() == {"animal": 1, "landmark": 2}  # every class in val
    assert split.split("train").counts() == {"animal": 3, "landmark": 4}
    assert stratified_split(data, 0.25).splits == split.splits  # seeded: the same split again


def test_csv_and_jsonl_lists_report_bad_rows(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ANIMALS[:3] + LANDMARKS[:3]:
        shutil.copy(GALLERY / f"{name}.jpg", images / f"{name}.jpg")
    rows = [f"{n}.jpg,animal" for n in ANIMALS[:3]] + [f"{n}.jpg,landmark" for n in LANDMARKS[:3]]
    rows += ["missing.jpg,animal", "cow.jpg,", f"{ANIMALS[0]}.jpg,landmark"]
    (tmp_path / "labels.csv").write_text("file,class\n" + "\n".join(rows) + "\n")
    data = read_labelled(tmp_path)  # the folder's labels.csv
    assert data.counts() == {"animal": 3, "landmark": 3}
    reasons = " | ".join(str(b) for b in data.bad_rows)
    assert len(data.bad_rows) == 3, reasons
    assert "not found" in reasons and "empty caption" in reasons and "listed as both" in reasons
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": Path(p).name, "label": lab,
                                           "split": "train" if i % 2 else "val"})
                               for i, (p, lab) in enumerate(zip(data.images, data.labels)))
                     + "\n{not json\n")
    from_jsonl = read_labelled(jsonl)
    assert sorted(from_jsonl.images) == sorted(data.images)
    assert len(from_jsonl.bad_rows) == 1 and "invalid JSON" in str(from_jsonl.bad_rows[0])
    assert len(from_jsonl.split("val")) == 3
    # written and read back
    again = read_labelled(write_labels_csv(from_jsonl, tmp_path / "out" / "labels.csv"))
    assert again.images == from_jsonl.images and again.splits == from_jsonl.splits


def test_one_class_or_no_label_column_is_a_clear_error(tmp_path):
    (tmp_path / "only").mkdir()
    shutil.copy(GALLERY / "cow.jpg", tmp_path / "only" / "cow.jpg")
    with pytest.raises(InvalidInputError, match="at least two"):
        read_labelled(tmp_path)
    bad = tmp_path / "list.csv"
    bad.write_text("image,caption\ncow.jpg,a cow\n")
    from imagetext.errors import ImagetextError

    with pytest.raises(ImagetextError, match="no label column"):
        read_labelled(bad)


# -- metrics ------------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7],
                       [0.5, 0.1, 0.4]])
    m = classification_metrics(scores, [0, 1, 1, 2, 2], ["a", "b", "c"])
    assert m["top1"] == 60.0  # 0, 1 and 3 right
    assert m["per_class"] == {"a": 100.0, "b": 50.0, "c": 50.0}
    assert m["mean_per_class_recall"] == pytest.approx(66.67, abs=0.01)
    assert m["top5"] == 100.0  # 3 classes: top-3 holds everything
    assert m["confusion"] == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]


# -- the linear probe ---------------------------------------------------------------------------
def test_probe_on_a_few_real_photos_beats_chance_on_held_out_ones(probe_folder):
    out, result = probe_folder
    assert result["n_train"] == 10 and result["n_val"] == 18
    # 18 held-out photos of 2 classes: chance is 50%
    assert result["val"]["classifier"]["top1"] >= 80.0, result
    assert set(result["per_class"]) == {"animal", "landmark"}
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}


def test_classifier_folder_round_trip_and_model_card(probe_folder, image_folder, default_encoder):
    from huggingface_hub import ModelCard

    from imagetext.classify import LinearProbe, is_classifier_folder

    out, result = probe_folder
    assert is_classifier_folder(out) and not is_classifier_folder(image_folder)
    probe = LinearProbe.from_pretrained(out)
    assert probe.labels == ["animal", "landmark"] and probe.features == "semantic"
    assert probe.base_fingerprint == default_encoder.fingerprint
    emb = default_encoder.encode_images([str(GALLERY / "tiger-in-the-snow.jpg"),
                                         str(GALLERY / "taj-mahal.jpg")])
    probs = probe.predict_proba(emb)
    assert np.allclose(probs.sum(1), 1.0) and list(probs.argmax(1)) == [0, 1]
    card = ModelCard.load(out / "README.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["accuracy"] == pytest.approx(result["val"]["classifier"]["top1"] / 100)
    assert "zero_shot_accuracy" in metrics and "zero_shot_ensemble_accuracy" in metrics
    assert "| this linear probe" in card.text and "| zero-shot, one template" in card.text


def test_api_classify_by_a_trained_classifier(probe_folder, default_encoder):
    from imagetext import api

    out, _ = probe_folder
    images = [str(GALLERY / "tiger-in-the-snow.jpg"), str(GALLERY / "eiffel-tower.jpg")]
    by_option = api.classify(images, classifier=out)
    by_model = api.classify(images, model=str(out))
    assert [r.top for r in by_option] == [r.top for r in by_model] == ["animal", "landmark"]
    assert by_option[0].labels == ["animal", "landmark"]
    assert by_option[0].scores == pytest.approx(by_model[0].scores)
    with pytest.raises(InvalidInputError, match="its own labels"):
        api.classify(images, "cat, dog", classifier=out)
    with pytest.raises(InvalidInputError, match="trained on the embeddings"):
        api.classify(images, classifier=out, model="conse")


def test_eval_classify_writes_confusion_pngs(probe_folder, image_folder, tmp_path, default_encoder):
    from imagetext.eval.classification import evaluate_classification

    out, result = probe_folder
    r = evaluate_classification(image_folder, "val", model=default_encoder, classifiers=[out],
                                out_dir=tmp_path)
    assert r["n_images"] == 18
    assert r["classifier"]["top1"] == result["val"]["classifier"]["top1"]
    for key in ("zero_shot_single", "zero_shot_ensemble", "classifier"):
        m = r[key]
        assert np.asarray(m["confusion"]).sum() == 18
        assert np.trace(np.asarray(m["confusion"])) == round(m["top1"] * 18 / 100)
        with Image.open(m["confusion_png"]) as png:
            assert png.format == "PNG" and png.width > 300 and png.height > 300
            # not a blank canvas: the heat map has dark cells
            assert np.asarray(png.convert("L")).min() < 80
    assert r["zero_shot_ensemble"]["method"].startswith("zero-shot, ensemble of")


def test_cli_train_eval_and_classify_by_classifier(image_folder, tmp_path):
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "imagetext.cli", *args], capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    folder = tmp_path / "clf"
    trained = json.loads(run("train", "classifier", "--data", str(image_folder), "--out",
                             str(folder), "--c", "0.1", "--balanced", "--json"))
    assert trained["C"] == 0.1 and trained["val"]["classifier"]["top1"] >= 80.0
    assert json.loads((folder / "config.json").read_text())["class_weight"] == "balanced"
    evaluated = json.loads(run("eval", "classify", "--data", str(image_folder), "--classifier",
                               str(folder), "--out", str(tmp_path / "png"), "--json"))
    assert evaluated["classifier"]["top1"] == trained["val"]["classifier"]["top1"]
    assert Path(evaluated["zero_shot_single"]["confusion_png"]).is_file()
    text = run("classify", str(GALLERY / "owl.jpg"), "--classifier", str(folder))
    assert text.splitlines()[1].split()[-1] == "animal"
    proc = subprocess.run([sys.executable, "-m", "imagetext.cli", "classify",
                           str(GALLERY / "owl.jpg")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "--classifier" in proc.stderr


# -- the web app --------------------------------------------------------------------------------
def test_web_classify_tab_and_api_offer_the_trained_classifier(probe_folder, tmp_path):
    from imagetext.api import Collection
    from imagetext.web import create_app
    from tests.web_server import start_server

    out, _ = probe_folder
    root = tmp_path / "gallery"
    root.mkdir()
    for name in ("owl", "colosseum"):
        shutil.copy(GALLERY / f"{name}.jpg", root / f"{name}.jpg")
    with Collection.open(root) as col:
        col.index()
    server, thread, url = start_server(create_app(root, classifier=out, release_memory=False))
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            page = client.get("/classify").text
            assert 'value="classifier"' in page and "animal-or-landmark" in page
            files = {"file": ("owl.jpg", (GALLERY / "owl.jpg").read_bytes(), "image/jpeg")}
            r = client.post("/api/classify", files=files, data={"preset": "classifier"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["top"] == "animal" and body["labels"] == ["animal", "landmark"]
            assert body["preset"] == "classifier" and body["classifier"] == "animal-or-landmark"
            files = {"file": ("c.jpg", (GALLERY / "colosseum.jpg").read_bytes(), "image/jpeg")}
            r = client.post("/classify", files=files, data={"preset": "classifier"})
            assert r.status_code == 200 and "Probabilities of the trained classifier" in r.text
            r = client.post("/api/classify", files=files, data={"preset": "nonsense"})
            assert r.status_code == 400 and "classifier" in r.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_web_without_a_classifier_answers_its_preset_with_a_400(photos):
    from tests.web_server import shared_server

    server = shared_server()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/api/classify", data={"preset": "classifier"},
                        files={"file": ("c.png", photos["chelsea"].read_bytes(), "image/png")})
    assert r.status_code == 400 and "--classifier" in r.json()["detail"]


# -- the Flickr8k benchmark ---------------------------------------------------------------------
@needs_flickr
def test_flickr8k_keyword_labels_are_unambiguous():
    from imagetext.data.labelled import flickr8k_keyword_labels
    from imagetext.train.calibrate import SCENE_CLASSES, _words

    data = flickr8k_keyword_labels(FLICKR8K, "scene")
    assert data.classes == sorted(SCENE_CLASSES)
    assert {s for s in data.splits} >= {"train", "val"}
    captions: dict[str, list[str]] = {}
    for line in (FLICKR8K / "captions.tsv").read_text().splitlines()[1:]:
        image, _, caption, _ = line.split("\t")
        captions.setdefault(str(FLICKR8K / "images" / image), []).append(caption)
    patterns = {c: _words(p) for c, p in SCENE_CLASSES.items()}
    for image, label in list(zip(data.images, data.labels))[:300]:
        caps = captions[image]
        assert sum(bool(patterns[label].search(c)) for c in caps) >= 2
        assert not any(patterns[o].search(c) for o in patterns if o != label for c in caps)


@needs_flickr
@pytest.mark.slow
def test_probe_on_flickr8k_scenes_beats_chance(tmp_path):
    """Six scene classes, 15 train photos each: held-out photos well above chance (16.7%)."""
    from imagetext.data.labelled import LabelledImages, flickr8k_keyword_labels
    from imagetext.train.classifier import train_classifier

    data = flickr8k_keyword_labels(FLICKR8K, "scene")
    keep = []
    for split, n in (("train", 15), ("val", 10)):
        for label in data.classes:
            keep += [i for i, (lab, s) in enumerate(zip(data.labels, data.splits))
                     if lab == label and s == split][:n]
    small = LabelledImages([data.images[i] for i in keep], [data.labels[i] for i in keep],
                           [data.splits[i] for i in keep])
    result = train_classifier(write_labels_csv(small, tmp_path / "labels.csv"), tmp_path / "clf")
    assert result["n_train"] == 90 and result["n_val"] == 60
    assert result["val"]["classifier"]["top1"] >= 50.0, result["val"]
