"""Fine-tune a pretrained transformers captioner (BLIP, ViT-GPT2, ViT-BERT) on image-caption pairs.

The captioner training loop of `imagetext train captioner` trains the in-house decoders on
cached EfficientNet features; a pretrained BLIP / VisionEncoderDecoder model is instead
trained end to end through its own hook, `HFCaptioner.forward_train(pixels, captions)`
(teacher-forced cross-entropy). This loop reads the pairs with the same data readers
(`imagetext.train.clip_train.load_train_val`), keeps the epoch with the lowest validation
loss and writes an `hf-captioner` model folder that `--model` accepts.

    from imagetext.train.hf_captioner_finetune import finetune_hf_captioner
    finetune_hf_captioner("data/flickr8k", init="Salesforce/blip-image-captioning-base",
                          out="blip-flickr8k", epochs=1)
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import torch


def finetune_hf_captioner(data: str | os.PathLike, init: str | os.PathLike, out: str | os.PathLike,
                          epochs: int = 1, lr: float = 1e-5, batch_size: int = 8,
                          weight_decay: float = 0.05, max_pairs: int | None = None, seed: int = 0,
                          name: str | None = None, log=print) -> dict:
    """Train `init` (a folder or hub id of a BLIP / VisionEncoderDecoder model) on `data`;
    save the best epoch (validation loss) to `out`. Returns the per-epoch history."""
    from imagetext.caption.hf_captioners import HFCaptioner
    from imagetext.caption.registry import resolve_captioner
    from imagetext.models.hub import is_hub_id, resolve_hub_model
    from imagetext.train.clip_train import DataSpec, load_train_val

    folder = Path(init)
    if not (folder / "config.json").is_file():
        folder = resolve_hub_model(str(init)) if is_hub_id(str(init)) else resolve_captioner(init)
    captioner = HFCaptioner.from_pretrained(folder)
    train, val = load_train_val(DataSpec(sources=[str(data)], seed=seed), log=log)
    pairs = list(train.pairs)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    if max_pairs:
        rng.shuffle(pairs)
        pairs = pairs[:max_pairs]
    model = captioner.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)

    def batch_loss(batch) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([captioner.preprocess.load(p.image_path) for p in batch]))
        return captioner.forward_train(pixels, [p.caption for p in batch])

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        vpairs = list(val.pairs)[: max(batch_size * 8, 64)]
        losses = [float(batch_loss(vpairs[i : i + batch_size]))
                  for i in range(0, len(vpairs), batch_size)]
        return float(np.mean(losses)) if losses else float("nan")

    history = [{"epoch": 0, "val_loss": val_loss()}]
    log(f"epoch 0: val loss {history[0]['val_loss']:.4f}")
    best_state, best = copy.deepcopy(model.state_dict()), history[0]["val_loss"]
    for epoch in range(1, epochs + 1):
        model.train()
        rng.shuffle(pairs)
        total = 0.0
        steps = 0
        for i in range(0, len(pairs) - batch_size + 1, batch_size):
            loss = batch_loss(pairs[i : i + batch_size])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        record = {"epoch": epoch, "train_loss": total / max(steps, 1), "val_loss": val_loss()}
        history.append(record)
        log(f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
        if record["val_loss"] < best:
            best, best_state = record["val_loss"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    captioner.name = name or Path(out).name
    captioner.save_pretrained(out)
    return {"out": str(out), "history": history, "best_val_loss": best}
