"""Self-critical sequence training: the CIDEr-D reward and the REINFORCE update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from imagetext.caption.decoders import build_decoder, select_rows
from imagetext.caption.tokenizer import split_words
from imagetext.train.scst import CiderD, sample_captions, sample_tokens, scst_loss
from tests.conftest import needs_flickr
from tests.hf_tiny import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.test_caption_model import SMALL, photos  # noqa: F401  (fixture)

REFS = [
    ["a dog runs on the grass", "a brown dog is running through the grass", "the dog plays in a field"],
    ["two children play in the water", "kids splash in a lake", "two kids swim in the water"],
    ["a man rides a bike down a hill", "a cyclist on a dirt road", "a man on a bicycle"],
    ["a dog jumps into the water", "a black dog swims in the lake", "a dog is in the water"],
]
HYPS = ["a dog runs in the grass", "a dog a dog a dog", "two kids in the water",
        "a man rides a red bicycle", "", "children play on the grass"]


def test_cider_d_equals_pycocoevalcap_on_the_same_documents():
    """Same documents => same document frequencies => the same score as pycocoevalcap's."""
    pairs = [(h, i % len(REFS)) for i, h in enumerate(HYPS)] + [(REFS[2][0], 2), (REFS[0][1], 3)]
    scorer = CiderScorer(n=4, sigma=6.0)
    refs_for_pairs = [REFS[i] for _, i in pairs]
    for hyp, refs in zip([h for h, _ in pairs], refs_for_pairs):
        scorer += (hyp, refs)
    _, expected = scorer.compute_score()
    ours = CiderD([[r.split() for r in refs] for refs in refs_for_pairs])
    got = [ours.score(hyp.split(), k) for k, (hyp, _) in enumerate(pairs)]
    assert np.allclose(got, expected, atol=1e-9)
    assert got[-2] > got[0] > got[4] == 0.0  # a reference itself scores highest; empty scores 0


def test_leave_one_out_baseline():
    # 2 images x 2 samples: each sample's baseline is the other sample of its image
    log_probs = torch.zeros(4, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    scst_loss(log_probs, mask, rewards, samples_per_image=2).backward()
    # advantages +1, -1, 0, 0; the gradient of -(adv * logp) / n_tokens raises the better sample
    n = mask.sum()
    assert torch.allclose(log_probs.grad, -torch.tensor([1.0, -1.0, 0.0, 0.0])[:, None] * mask / n)


@needs_flickr
def test_scst_raises_the_cider_of_sampled_captions(photos):  # noqa: F811
    rows, tok, fmap = photos
    torch.manual_seed(0)
    decoder = build_decoder("show-attend-tell", vocab_size=len(tok), **SMALL["show-attend-tell"]).train()
    cider = CiderD([[split_words(c)] for _, c in rows])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    k = 5
    owners = torch.arange(len(rows)).repeat_interleave(k)
    rewards = []
    for _ in range(60):
        memory = select_rows(decoder.encode(fmap), owners)
        tokens, log_probs, mask = sample_captions(decoder, memory, tok.bos_id, tok.eos_id,
                                                  banned=[tok.pad_id, tok.bos_id, tok.unk_id], max_length=16)
        # every sample stops at its <eos>: nothing is generated (or scored) after it
        ends = (tokens == tok.eos_id).float().cumsum(1)
        assert torch.equal(mask[:, 1:], (ends[:, :-1] == 0).float())
        reward = torch.tensor([cider.score(tok.decode(t).split(), i) for t, i in zip(tokens.tolist(), owners.tolist())])
        loss = scst_loss(log_probs, mask, reward, k)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(float(reward.mean()))
    assert np.mean(rewards[-10:]) > 2 * np.mean(rewards[:10]), rewards


def test_the_end_of_a_caption_is_rewarded_too():
    from imagetext.caption.tokenizer import EOS, WordTokenizer
    from imagetext.train.captioner import _reward_words

    tok = WordTokenizer.build([c for refs in REFS for c in refs], min_count=1)
    cider = CiderD([[r.split() + [EOS] for r in refs] for refs in REFS])
    plain = CiderD([[r.split() for r in refs] for refs in REFS])
    full, cut = tok.encode("a dog runs on the grass"), tok.encode("a dog runs on the")
    assert _reward_words(tok, full)[-1] == EOS
    assert _reward_words(tok, full[:-1]) == ["a", "dog", "runs", "on", "the", "grass"]  # never ended
    # with the end marker scored, the cut-off caption loses more against the complete one
    gap_with_end = cider.score(_reward_words(tok, full), 0) - cider.score(_reward_words(tok, cut), 0)
    gap_without = plain.score(["a", "dog", "runs", "on", "the", "grass"], 0) - plain.score(["a", "dog", "runs", "on", "the"], 0)
    assert gap_with_end > gap_without > 0


def test_sampled_tokens_follow_the_distribution_and_never_take_a_banned_id():
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.3, 0.0], [0.1, 0.0, 0.0, 0.0, 0.9]])
    log_probs = probs.log().repeat_interleave(20000, 0)
    tokens = sample_tokens(log_probs, torch.Generator().manual_seed(0)).view(2, -1)
    freq = torch.stack([torch.bincount(t, minlength=5) / t.numel() for t in tokens])
    assert torch.allclose(freq, probs, atol=0.012), freq  # 4 standard errors at p = 0.5
    assert freq[0, 0] == freq[0, 4] == freq[1, 1:4].sum() == 0.0
    # a uniform number at the very top of the range still lands on the last allowed id
    top = torch.tensor([[0.6, 0.4, 0.0]]).log()
    assert set(sample_tokens(top.repeat(1000, 1)).tolist()) <= {0, 1}


@needs_flickr
@pytest.mark.parametrize("arch", ["show-attend-tell", "transformer"])
def test_finished_rows_leave_the_batch_without_changing_the_log_probabilities(photos, arch):  # noqa: F811
    """Sampling compacts finished rows away; the log-probabilities it returns are those the
    full-batch teacher-forced pass gives the same tokens."""
    rows, tok, fmap = photos
    torch.manual_seed(1)
    decoder = build_decoder(arch, vocab_size=len(tok), **SMALL[arch]).eval()
    memory = select_rows(decoder.encode(fmap), torch.arange(len(rows)).repeat_interleave(4))
    banned = [tok.pad_id, tok.bos_id, tok.unk_id]
    tokens, log_probs, mask = sample_captions(decoder, memory, tok.bos_id, tok.eos_id, banned, max_length=12,
                                              generator=torch.Generator().manual_seed(0))
    lengths = mask.sum(1).long()
    assert len(set(lengths.tolist())) > 1  # rows did end at different steps
    order = lengths.argsort(descending=True, stable=True)
    inputs = torch.cat([torch.full((len(tokens), 1), tok.bos_id), tokens[:, :-1]], 1)[order]
    logits, _ = decoder(select_rows(memory, order), inputs, lengths[order])
    logits[..., banned] = float("-inf")
    expected = logits.log_softmax(-1).gather(2, tokens[order, :, None]).squeeze(2)
    expected = torch.where(mask[order] > 0, expected, 0.0)  # after <eos>: 0, as sampling returns
    assert torch.allclose(log_probs[order], expected, atol=1e-5)
