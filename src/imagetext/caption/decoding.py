"""Greedy decoding and batched beam search for the decoders in `caption.decoders`.

Written here rather than borrowed from transformers' `generate`: our decoders are plain
nn.Modules with their own recurrent/prefix state (not `PreTrainedModel`s), and the whole
search is ~100 lines. Both searches share the scoring rule, so beam 1 equals greedy:
a finished caption scores sum(log p) / length ** length_penalty, where length counts the
generated tokens including <eos>. `no_immediate_repeat` forbids a token right after itself
("a a guitar"): 7 of Flickr8k's 35,000 captions do that, all typos or quotes, but a decoder
trained with SCST on CIDEr does it in ~1% of its captions.

Beam search is batched over images: B images x K beams run as one (B*K)-row batch per
step; a caption is finished when it emits <eos>, an image is done once it has K finished
captions and its best live beam, scored at the current length, does not beat them
(Hugging Face's default rule), and beams still alive at `max_length` are finished as
they are.
"""

from __future__ import annotations

import torch

from imagetext.caption.base import check_generation
from imagetext.caption.decoders import State, select_rows


def _banned_ngram_tokens(prefix: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already present in `prefix` (generated part)."""
    if n <= 0 or len(prefix) < n - 1:
        return []
    if n == 1:
        return list(prefix)
    tail = tuple(prefix[len(prefix) - n + 1 :])
    return [prefix[i + n - 1] for i in range(len(prefix) - n + 1)
            if tuple(prefix[i : i + n - 1]) == tail]


def _apply_constraints(log_probs: torch.Tensor, generated: torch.Tensor, banned: list[int],
                       no_repeat_ngram_size: int, no_immediate_repeat: bool = False) -> torch.Tensor:
    if banned:
        log_probs[:, banned] = float("-inf")
    if no_immediate_repeat and generated.shape[1]:
        log_probs.scatter_(1, generated[:, -1:], float("-inf"))
    if no_repeat_ngram_size > 0 and generated.shape[1] >= no_repeat_ngram_size - 1:
        for row, seq in enumerate(generated.tolist()):
            bad = _banned_ngram_tokens(seq, no_repeat_ngram_size)
            if bad:
                log_probs[row, bad] = float("-inf")
    return log_probs


@torch.inference_mode()
def greedy_decode(decoder, memory: State, bos_id: int, eos_id: int, max_length: int = 30,
                  length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                  banned_ids: list[int] | None = None, no_immediate_repeat: bool = False,
                  ) -> list[tuple[list[int], float]]:
    """Most likely next token at each step. Returns (token ids without <eos>, score) per image."""
    banned = list(banned_ids or [])
    batch = next(iter(memory.values())).shape[0]
    state = decoder.init_state(memory)
    prefix = torch.full((batch, 1), bos_id, dtype=torch.long)
    total = torch.zeros(batch)
    lengths = torch.zeros(batch)
    alive = torch.ones(batch, dtype=torch.bool)
    for _ in range(max_length):
        log_probs, state = decoder.step(state, prefix)
        log_probs = _apply_constraints(log_probs.float(), prefix[:, 1:], banned, no_repeat_ngram_size,
                                       no_immediate_repeat)
        best, token = log_probs.max(-1)
        token = torch.where(alive, token, torch.full_like(token, eos_id))
        total += torch.where(alive, best, torch.zeros_like(best))
        lengths += alive.float()
        prefix = torch.cat([prefix, token[:, None]], 1)
        alive &= token != eos_id
        if not alive.any():
            break
    results = []
    for row in range(batch):
        ids = prefix[row, 1:].tolist()
        ids = ids[: ids.index(eos_id)] if eos_id in ids else ids
        score = float(total[row]) / (float(lengths[row]) ** length_penalty)
        results.append((ids, score))
    return results


@torch.inference_mode()
def beam_search(decoder, memory: State, bos_id: int, eos_id: int, beam_size: int = 3,
                max_length: int = 30, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                num_return: int = 1, banned_ids: list[int] | None = None,
                no_immediate_repeat: bool = False) -> list[list[tuple[list[int], float]]]:
    """Batched beam search. Returns per image `num_return` (token ids, score), best first."""
    check_generation(beam_size, max_length, num_return)
    banned = list(banned_ids or [])
    k = beam_size
    batch = next(iter(memory.values())).shape[0]
    state = select_rows(decoder.init_state(memory), torch.arange(batch).repeat_interleave(k))
    prefix = torch.full((batch * k, 1), bos_id, dtype=torch.long)
    scores = torch.full((batch, k), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not repeat
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch

    for step in range(max_length):
        log_probs, state = decoder.step(state, prefix)
        log_probs = _apply_constraints(log_probs.float(), prefix[:, 1:], banned, no_repeat_ngram_size,
                                       no_immediate_repeat)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)
        length = step + 1
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            rows, toks, scs = [], [], []
            if not done[b]:
                for rank, (s, idx) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                    if s == float("-inf"):
                        break
                    beam, token = divmod(idx, vocab)
                    row = b * k + beam
                    if token == eos_id:
                        if rank < k:  # as in HF: an <eos> outside the top k is not a contender
                            finished[b].append((s / length ** length_penalty, prefix[row, 1:].tolist()))
                    else:
                        rows.append(row)
                        toks.append(token)
                        scs.append(s)
                    if len(rows) == k:
                        break
                if len(finished[b]) >= k:
                    # HF's default stopping rule: done when the best live beam, scored at the
                    # current length, no longer beats the k-th best finished caption
                    worst = sorted((h[0] for h in finished[b]), reverse=True)[k - 1]
                    if max(scs, default=float("-inf")) / length ** length_penalty <= worst:
                        done[b] = True
            if done[b] or not rows:  # keep the row count fixed with dead beams
                done[b] = True
                rows, toks, scs = [b * k] * k, [eos_id] * k, [float("-inf")] * k
            while len(rows) < k:
                rows.append(rows[0])
                toks.append(toks[0])
                scs.append(float("-inf"))
            next_rows += rows
            next_tokens += toks
            next_scores += scs
        if all(done):
            break
        index = torch.tensor(next_rows)
        state = select_rows(state, index)
        prefix = torch.cat([prefix.index_select(0, index), torch.tensor(next_tokens)[:, None]], 1)
        scores = torch.tensor(next_scores).view(batch, k)

    results = []
    for b in range(batch):
        hyps = list(finished[b])
        if not done[b]:  # ran into max_length: beams still alive count as finished
            for j in range(k):
                s = float(scores[b, j])
                if s > float("-inf"):
                    hyps.append((s / (prefix.shape[1] - 1) ** length_penalty, prefix[b * k + j, 1:].tolist()))
        hyps.sort(key=lambda h: -h[0])
        results.append([(ids, score) for score, ids in hyps[:num_return]])
    return results
