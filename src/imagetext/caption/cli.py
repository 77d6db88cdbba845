"""Body of `imagetext caption`: caption image files and print text or JSON."""

from __future__ import annotations

import json
import sys

import numpy as np


def caption_images(paths: list[str], model: str | None = None, beam: int = 3, max_length: int = 30,
                   length_penalty: float = 1.0, no_repeat_ngram: int = 0, num_return: int = 1,
                   as_json: bool = False, batch_size: int = 16) -> int:
    """Caption `paths`; unreadable files are reported and skipped. Returns the failure count."""
    from imagetext.caption.registry import load_captioner
    from imagetext.io.images import ImageLoadError

    if num_return > beam:
        raise ValueError(f"--num-return ({num_return}) cannot exceed --beam ({beam})")
    captioner = load_captioner(model)
    results, failed = [], []
    for i in range(0, len(paths), batch_size):
        batch, pixels = [], []
        for p in paths[i : i + batch_size]:
            try:
                pixels.append(captioner.preprocess.load(p))
                batch.append(p)
            except ImageLoadError as exc:
                failed.append((p, exc.reason))
        if not batch:
            continue
        out = captioner.generate(np.stack(pixels), beam_size=beam, max_length=max_length,
                                 length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram,
                                 num_return=num_return)
        for p, hyps in zip(batch, out):
            results.append({"image": p, "caption": hyps[0][0], "score": round(hyps[0][1], 4),
                            **({"captions": [{"caption": c, "score": round(s, 4)} for c, s in hyps]}
                               if num_return > 1 else {})})
    if as_json:
        print(json.dumps({"model": captioner.name, "results": results,
                          "failed": [{"image": p, "error": r} for p, r in failed]},
                         indent=2, ensure_ascii=False))
    else:
        for r in results:
            if num_return > 1:
                print(r["image"])
                for c in r["captions"]:
                    print(f"  {c['score']:8.3f}  {c['caption']}")
            else:
                print(f"{r['image']}\t{r['caption']}")
    for p, reason in failed:
        print(f"error: {p}: {reason}", file=sys.stderr)
    if failed and not results:
        sys.exit(1)
    return len(failed)
