"""Model cards are huggingface_hub ModelCards: the README.md a trainer writes parses with
`ModelCard.load` and its model-index holds the scores the card's text reports."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from imagetext.data.dataset import Pair, PairDataset
from imagetext.train.clip_train import RECALLS, write_model_card
from imagetext.train.config import TrainConfig
from imagetext.train.contrastive import TrainResult


def _pairs(split: str, n: int) -> PairDataset:
    pairs = [Pair(f"/data/flickr8k/images/{split}{i}.jpg", f"caption {i}", f"{split}{i}.jpg", split)
             for i in range(n)]
    return PairDataset(pairs, sources=["/data/flickr8k/captions.tsv"])


def test_the_clip_trainers_card_holds_the_validation_recalls(tmp_path):
    metrics = {"t2i_r1": 11.5, "t2i_r5": 30.25, "t2i_r10": 41.0, "i2t_r1": 12.0, "i2t_r5": 33.0,
               "i2t_r10": 45.5, "rsum": 173.25, "loss": 1.5}
    result = TrainResult(best_epoch=2, best_metrics=metrics, history=[{"epoch": 0, **metrics}],
                         temperature=0.05, seconds=60.0)
    folder = tmp_path / "tiny-aligned"
    folder.mkdir()
    write_model_card(folder, result, "heads", _pairs("train", 6), _pairs("val", 3), TrainConfig(epochs=4),
                     compared={"conse": dict.fromkeys(RECALLS, 1.0)})
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "tiny-aligned" and card.data.library_name == "imagetext"
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == {k: metrics[k] for k in RECALLS}
    assert {r.dataset_name for r in card.data.eval_results} == {"flickr8k"}
    assert {r.metric_name for r in card.data.eval_results} >= {"T→I R@1", "I→T R@10"}
    assert "best epoch 3 of 4" in card.text and "| conse |" in card.text and "| 11.5 |" in card.text
    assert json.loads((folder / "training_history.json").read_text())[0]["t2i_r5"] == 30.25


def test_the_shipped_captioners_card_holds_its_scores():
    """lite0-flickr8k's README.md is `model_card` of its metrics.json (test_caption_pretrained
    checks the text); its model-index carries the shipped run's val scores."""
    from imagetext.caption.registry import PRETRAINED_DIR

    folder = PRETRAINED_DIR / "lite0-flickr8k"
    chosen = max(json.loads((folder / "metrics.json").read_text()), key=lambda r: r["cider"])
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-to-text" and card.data.license == "other"
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores["cider"] == pytest.approx(chosen["cider"]) and scores["bleu4"] == pytest.approx(chosen["bleu4"])
    assert {r.dataset_split for r in card.data.eval_results} == {"val"}
    assert card.text.lstrip().startswith("# lite0-flickr8k")


def test_a_card_without_scores_has_no_model_index(tmp_path):
    from imagetext.models.card import write_model_card as save_card

    save_card(tmp_path, "# plain\n\ntext\n", "plain", tags=["onnx"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results is None and card.data.tags == ["imagetext", "onnx"]
    assert card.text.strip() == "# plain\n\ntext"
