"""Fine-tune a pretrained transformers captioner (BLIP, ViT-GPT2, ViT-BERT) on image-caption pairs.

The captioner training loop of `imagetext train captioner` trains the in-house decoders on
cached EfficientNet features; a pretrained BLIP / VisionEncoderDecoder model is instead
trained end to end through its own hook, `HFCaptioner.forward_train(pixels, captions)`
(teacher-forced cross-entropy), as a task of the same training loop (train/loop.py). It reads the pairs with the same data readers
(`imagetext.train.clip_train.load_train_val`), keeps the epoch with the lowest validation
loss and writes an `hf-captioner` model folder that `--model` accepts.

    from imagetext.train.hf_captioner_finetune import finetune_hf_captioner
    finetune_hf_captioner("data/flickr8k", init="Salesforce/blip-image-captioning-base",
                          out="blip-flickr8k", epochs=1)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from imagetext.errors import InvalidInputError
from imagetext.train.loop import EpochStats, LoopSettings, Phase, Progress, train


class _FinetuneTask:
    """Teacher-forced cross-entropy of a transformers captioner, as a task of the training loop;
    the record's `val_loss` (on the first validation pairs) selects the best epoch."""

    def __init__(self, captioner, pairs: list, val_pairs: list, lr: float, batch_size: int,
                 weight_decay: float, log=print):
        self.log = log
        self.captioner, self.model, self.pairs, self.val_pairs = captioner, captioner.model, pairs, val_pairs
        self.lr, self.size, self.weight_decay = lr, batch_size, weight_decay

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.lr,
                 "weight_decay": self.weight_decay}]

    def steps_per_epoch(self) -> int:
        return len(self.pairs) // self.size

    def batches(self, epoch: int, rng: np.random.Generator):
        order = rng.permutation(len(self.pairs))
        return [[self.pairs[i] for i in order[b : b + self.size]]
                for b in range(0, len(order) - self.size + 1, self.size)]

    def train_mode(self, epoch: int, phase: Phase) -> None:
        self.model.train()

    def loss(self, batch: list, epoch: int = 0, phase: Phase | None = None) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([self.captioner.preprocess.load(p.image_path) for p in batch]))
        return self.captioner.forward_train(pixels, [p.caption for p in batch])

    def batch_size(self, batch: list) -> int:
        return len(batch)

    def evaluate(self, epoch: int, stats: EpochStats | None) -> dict:
        self.model.eval()
        losses = [float(self.loss(self.val_pairs[i : i + self.size]))
                  for i in range(0, len(self.val_pairs), self.size)]
        val_loss = float(np.mean(losses)) if losses else float("nan")
        if stats is None:
            self.log(f"epoch 0: val loss {val_loss:.4f} (the starting weights)")
        return {"epoch": epoch + 1, **({"train_loss": stats.loss} if stats else {}), "val_loss": val_loss}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def on_best(self, epoch: int, record: dict) -> None:
        pass


def finetune_hf_captioner(data: str | os.PathLike, init: str | os.PathLike, out: str | os.PathLike,
                          epochs: int = 1, lr: float = 1e-5, batch_size: int = 8,
                          weight_decay: float = 0.05, max_pairs: int | None = None, seed: int = 0,
                          name: str | None = None, log=print) -> dict:
    """Train `init` (a folder or hub id of a BLIP / VisionEncoderDecoder model) on `data` at a
    constant learning rate; save the best epoch (validation loss; epoch 0 = the starting
    weights) to `out`. Returns the per-epoch history."""
    from imagetext.caption.hf_captioners import HFCaptioner
    from imagetext.caption.registry import resolve_captioner
    from imagetext.models.hub import is_hub_id, resolve_hub_model
    from imagetext.train.clip_train import DataSpec, load_train_val

    folder = Path(init)
    if not (folder / "config.json").is_file():
        folder = resolve_hub_model(str(init)) if is_hub_id(str(init)) else resolve_captioner(init)
    captioner = HFCaptioner.from_pretrained(folder)
    train_data, val = load_train_val(DataSpec(sources=[str(data)], seed=seed), log=log)
    pairs = list(train_data.pairs)
    if max_pairs:  # a random subset, drawn once from the seed
        pairs = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))[:max_pairs]]
    if not pairs:
        raise InvalidInputError(f"no training pairs in {data}")
    if len(pairs) < batch_size:
        log(f"batch size {batch_size} is larger than the {len(pairs)} training pairs: batches of {len(pairs)}")
        batch_size = len(pairs)
    task = _FinetuneTask(captioner, pairs, list(val.pairs)[: max(batch_size * 8, 64)], lr, batch_size,
                         weight_decay, log)

    def progress(p: Progress) -> None:
        if p.record is not None:
            log(f"epoch {p.record['epoch']}: train loss {p.record['train_loss']:.4f}, "
                f"val loss {p.record['val_loss']:.4f}")

    result = train(task, LoopSettings([Phase(epochs, end=1.0)], select="val_loss", minimize=True, seed=seed,
                                      baseline=True, progress=progress))
    task.load_state_dict(result.best_state)
    captioner.model.eval()
    captioner.name = name or Path(out).name
    captioner.save_pretrained(out)
    return {"out": str(out), "history": result.history, "best_val_loss": result.best_record["val_loss"]}
