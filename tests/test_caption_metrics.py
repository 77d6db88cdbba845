"""Caption metrics: pycocoevalcap checked against independent implementations."""

from __future__ import annotations

import shutil

import pytest

from imagetext.eval.caption_metrics import caption_scores
from tests.conftest import FLICKR8K, flickr_captions

REFS = {
    "a": ["a dog runs across the green grass", "a brown dog is running on grass",
          "the dog runs through a field"],
    "b": ["two children play in the sand at the beach", "kids playing on a sandy beach",
          "two kids dig in the sand"],
    "c": ["a man rides a bike down a dirt road", "a cyclist on a dirt path",
          "a person riding a bicycle on a trail"],
}
HYPS = {"a": "a brown dog runs on the grass", "b": "two children playing on the beach",
        "c": "a man riding a bike on a dirt road"}


def test_perfect_hypothesis_scores_one():
    refs = {k: [v[0]] for k, v in REFS.items()}
    hyps = {k: v[0] for k, v in REFS.items()}
    s = caption_scores(refs, hyps, tokenize="simple", meteor=shutil.which("java") is not None)
    for m in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert s[m] == pytest.approx(1.0, abs=1e-6), m
    if "meteor" in s:
        assert s["meteor"] > 0.99
    # CIDEr-D of an exact match is 10 x the mean tf-idf cosine (1.0) ... but with 3 images
    # the idf of shared words is ~0, so only check that a perfect caption beats a good one
    assert s["cider"] > caption_scores(refs, HYPS, tokenize="simple", meteor=False)["cider"]


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = flickr_captions("val", 200) if (FLICKR8K / "captions.tsv").is_file() else REFS
    # hypothesis: another human caption of the same image, scored against the other four
    hyps = {k: v[0] for k, v in refs.items()}
    others = {k: v[1:] for k, v in refs.items()}
    ours = caption_scores(others, hyps, tokenize="simple", meteor=False)
    from imagetext.caption.tokenizer import split_words

    tok = {k: " ".join(split_words(v)) for k, v in hyps.items()}
    n_refs = min(len(v) for v in others.values())
    ref_streams = [[" ".join(split_words(others[k][j])) for k in hyps] for j in range(n_refs)]
    for n in (1, 2, 3, 4):
        sb = sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=n, smooth_method="none",
                                    effective_order=False)
        theirs = sb.corpus_score(list(tok.values()), ref_streams).score / 100
        assert ours[f"bleu{n}"] == pytest.approx(theirs, abs=2e-3), n


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    refs = flickr_captions("val", 200) if (FLICKR8K / "captions.tsv").is_file() else REFS
    hyps = {k: v[0] for k, v in refs.items()}
    others = {k: v[1:] for k, v in refs.items()}
    ours = caption_scores(others, hyps, tokenize="simple", meteor=False, metrics=("rouge_l",))
    # COCO's ROUGE-L: per image, best LCS precision and best LCS recall over the references,
    # combined as an F-measure with beta = 1.2; averaged over images
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    beta2 = 1.2**2
    total = 0.0
    for k, hyp in hyps.items():
        scores = [scorer.score(r.lower(), hyp.lower())["rougeL"] for r in others[k]]
        p = max(s.precision for s in scores)
        r = max(s.recall for s in scores)
        total += (1 + beta2) * p * r / (r + beta2 * p) if p and r else 0.0
    assert ours["rouge_l"] == pytest.approx(total / len(hyps), abs=2e-3)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer and METEOR need Java")
def test_ptb_tokenizer_and_meteor_run():
    s = caption_scores(REFS, HYPS)
    assert set(s) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    assert 0.2 < s["meteor"] < 1.0 and 0.3 < s["bleu1"] < 1.0


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no references"):
        caption_scores({"a": ["x"]}, {"b": "y"}, tokenize="simple")
    with pytest.raises(ValueError, match="tokenize"):
        caption_scores({"a": ["x"]}, {"a": "y"}, tokenize="bpe")
