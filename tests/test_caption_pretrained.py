"""The shipped default captioner: it loads by name, is small, documented, and sensible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import skimage.data

from imagetext.caption import DEFAULT_CAPTIONER, builtin_captioners, load_captioner
from imagetext.caption.registry import PRETRAINED_DIR
from imagetext.caption.tokenizer import split_words
from tests.conftest import FLICKR8K, needs_flickr

PHOTOS = Path(skimage.data.__file__).parent
ANIMAL_WORDS = {"cat", "cats", "kitten", "kitty", "animal", "animals", "pet"}


def test_default_captioner_folder_is_complete_and_small():
    assert DEFAULT_CAPTIONER in builtin_captioners()
    folder = PRETRAINED_DIR / DEFAULT_CAPTIONER
    config = json.loads((folder / "config.json").read_text())
    assert config["backend"] == "efficientnet-captioner"
    assert (folder / "model.safetensors").stat().st_size < 40e6
    card = (folder / "README.md").read_text()
    for needed in ("Flickr8k", "research use only", "BLEU-4", "CIDEr", "show-attend-tell",
                   "transformer", "scripts/train_default_captioner.sh"):
        assert needed in card, needed


def test_default_captioner_card_is_rebuilt_from_its_metrics():
    """The card is generated from metrics.json (every run's per-epoch history): they agree."""
    from imagetext.caption.model_card import model_card

    folder = PRETRAINED_DIR / DEFAULT_CAPTIONER
    results = json.loads((folder / "metrics.json").read_text())
    chosen = max(results, key=lambda r: r["cider"])
    assert chosen["arch"] == json.loads((folder / "config.json").read_text())["arch"]
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    assert model_card(results, chosen, size_mb) == (folder / "README.md").read_text()


@pytest.mark.xfail(strict=True, reason="the shipped lite0-flickr8k (val CIDEr 0.55) knows Flickr8k's "
                   "world, where animals are dogs: it calls the cat photo 'a brown dog is in the air'. Remove "
                   "this mark once a better captioner ships (strict: passing turns into a failure).")
def test_cat_photo_caption_mentions_a_cat_or_animal():
    captioner = load_captioner()
    for beam in (1, 3):
        text = captioner.caption([PHOTOS / "chelsea.png"], beam_size=beam)[0]
        assert ANIMAL_WORDS & set(text.split()), text


# function words, left out when captions and references are compared word by word
STOP_WORDS = {"a", "an", "the", "is", "are", "in", "on", "of", "with", "and", "at", "to", "his",
              "her", "their", "its", "into", "while", "for", "by", "from", "as", "up", "down",
              "out", "over", "near", "some", "one", "two", "three", "four", "five", "other",
              "another"}


def _content_words(text: str) -> set[str]:
    return set(split_words(text)) - STOP_WORDS


@needs_flickr
def test_val_photos_captions_name_what_their_own_references_name():
    """40 real photos of the kind it was trained for (Flickr8k val, never trained on): most
    captions share content words with the photo's own 5 references, and far more than with the
    references of another photo (so a caption that fits every photo cannot pass)."""
    from imagetext.train.captioner import load_caption_split

    val = load_caption_split(FLICKR8K, "val")
    first = sorted(range(len(val.ids)), key=lambda i: val.ids[i])[:40]  # the 40 first file names
    ids = [val.ids[i] for i in first]
    refs = {val.ids[i]: val.captions[i] for i in first}
    captions = load_captioner().caption([val.images[i] for i in first], beam_size=3)

    def shared(caption: str, image: str) -> int:
        return len(_content_words(caption) & set().union(*map(_content_words, refs[image])))

    own = [shared(c, i) for c, i in zip(captions, ids)]
    other = [shared(c, ids[(k + 7) % len(ids)]) for k, c in enumerate(captions)]
    assert sum(n > 0 for n in own) >= 30, list(zip(captions, own))  # measured: 36 of 40
    assert sum(own) > 2.5 * sum(other), (sum(own), sum(other))  # measured: 78 vs 15


def test_default_alias_and_several_captions():
    captioner = load_captioner("default")
    assert captioner is load_captioner(DEFAULT_CAPTIONER)
    pixels = captioner.preprocess.load(PHOTOS / "coffee.png")[None]
    hyps = captioner.generate(pixels, beam_size=3, num_return=3)[0]
    assert len(hyps) == 3 and all(c for c, _ in hyps)
    assert [s for _, s in hyps] == sorted((s for _, s in hyps), reverse=True)


def test_the_python_api_captions_and_reports_unreadable_images(tmp_path):
    from imagetext.api import caption

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    report = caption([str(PHOTOS / "coffee.png"), str(broken)], beam=3, num_return=2)
    assert report.model == DEFAULT_CAPTIONER
    (result,) = report.results
    assert result.image.endswith("coffee.png") and len(result.captions) == 2
    assert result.caption == result.captions[0][0] and result.captions[0][1] >= result.captions[1][1]
    assert [p for p, _ in report.failed] == [str(broken)]
    assert set(report.to_dict()["results"][0]) == {"image", "caption", "score", "captions"}
    with pytest.raises(ValueError, match="num_return"):
        caption([str(PHOTOS / "coffee.png")], beam=2, num_return=3)
