"""Body of `imagetext caption`: caption image files (imagetext.api.caption), print text or JSON."""

from __future__ import annotations

import json
import sys


def caption_images(paths: list[str], model: str | None = None, beam: int = 3, max_length: int = 30,
                   length_penalty: float = 1.0, no_repeat_ngram: int = 0, num_return: int = 1,
                   as_json: bool = False, batch_size: int = 16) -> int:
    """Caption `paths`; unreadable files are reported and skipped. Returns the failure count."""
    from imagetext.api import caption

    report = caption(paths, model=model, beam=beam, max_length=max_length,
                     length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram,
                     num_return=num_return, batch_size=batch_size)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for r in report.results:
            if num_return > 1:
                print(r.image)
                for c, score in r.captions:
                    print(f"  {round(score, 4):8.3f}  {c}")
            else:
                print(f"{r.image}\t{r.caption}")
    for p, reason in report.failed:
        print(f"error: {p}: {reason}", file=sys.stderr)
    if report.failed and not report.results:
        sys.exit(1)
    return len(report.failed)
