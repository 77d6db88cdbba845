"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr (0-1 scale).

`caption_scores(references, hypotheses)` scores one hypothesis per image against all of
that image's references, with the COCO caption evaluation's own PTB tokenizer (Java) by
default, as published numbers are computed. `tokenize="simple"` uses our word splitter
instead (no Java, ~10x faster) for per-epoch validation during training. METEOR also
needs Java; SPICE is left out (it downloads Stanford CoreNLP at run time).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping, Sequence

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def _check(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> None:
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    missing = [k for k in hypotheses if k not in references or not references[k]]
    if missing:
        raise ValueError(f"{len(missing)} hypotheses have no references (e.g. {missing[0]!r})")


def _tokenize(texts: Mapping[str, Sequence[str]], how: str) -> dict[str, list[str]]:
    if how == "simple":
        from imagetext.caption.tokenizer import split_words

        return {k: [" ".join(split_words(t)) for t in v] for k, v in texts.items()}
    if how == "ptb":
        if shutil.which("java") is None:
            raise RuntimeError("the PTB tokenizer needs Java on PATH; use tokenize='simple'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(io.StringIO()):
            return PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts.items()})
    raise ValueError(f"tokenize must be 'ptb' or 'simple', not {how!r}")


def caption_scores(
    references: Mapping[str, Sequence[str]],
    hypotheses: Mapping[str, str],
    tokenize: str = "ptb",
    meteor: bool = True,
    metrics: Sequence[str] = METRICS,
) -> dict[str, float]:
    """Corpus-level scores of `hypotheses[id]` against `references[id]` (all of them).

    Returns {"bleu1".."bleu4", "meteor", "rouge_l", "cider"} (those asked for in `metrics`;
    METEOR only when `meteor` is true) as floats on the 0-1 scale, CIDEr on its usual
    0-10 scale (1.0 = 100 in papers' CIDEr x 100 tables).
    """
    _check(references, hypotheses)
    keys = list(hypotheses)
    gts = _tokenize({k: list(references[k]) for k in keys}, tokenize)
    res = _tokenize({k: [hypotheses[k]] for k in keys}, tokenize)
    # pycocoevalcap's scorers reject empty strings in some versions; a lone empty caption
    # scores as a caption with one unmatchable token
    res = {k: [v[0] if v[0].strip() else "<empty>"] for k, v in res.items()}
    wanted = set(metrics)
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        if wanted & {"bleu1", "bleu2", "bleu3", "bleu4"}:
            from pycocoevalcap.bleu.bleu import Bleu

            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                if f"bleu{n + 1}" in wanted:
                    out[f"bleu{n + 1}"] = float(bleu[n])
        if meteor and "meteor" in wanted:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()  # a Java subprocess, ended when the scorer is collected
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
            del scorer
        if "rouge_l" in wanted:
            from pycocoevalcap.rouge.rouge import Rouge

            out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        if "cider" in wanted:
            from pycocoevalcap.cider.cider import Cider

            out["cider"] = float(Cider().compute_score(gts, res)[0])
    return {m: out[m] for m in METRICS if m in out}
