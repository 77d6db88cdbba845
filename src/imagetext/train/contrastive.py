"""Contrastive (CLIP-loss) training for every `imagetext train clip` mode, as a task of the
one training loop (train/loop.py).

A mode is a `ContrastiveTask`: it owns the trainable model, makes batches, turns a batch
into (image vectors, text vectors) and measures validation Recall@K. This module adds the
symmetric InfoNCE loss with a learnable temperature and selection on the sum of the recalls;
the loop does the rest (AdamW, linear warm-up + cosine decay, gradient clipping, bf16
autocast, progress bar, best epoch, atomic checkpoints `last.pt` / `best.pt` that resume
exactly).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from imagetext.errors import InvalidInputError
from imagetext.train.clip_loss import LogitScale, clip_loss
from imagetext.train.config import TrainConfig
from imagetext.train.loop import EpochStats, LoopSettings, Phase, atomic_save, rich_progress, train
from imagetext.train.precision import full_precision

SELECTION_METRIC = "rsum"  # sum of the six recalls: the usual model-selection number


class ContrastiveTask(Protocol):
    model: nn.Module  # everything trainable (frozen parts have requires_grad False)

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def batches(self, epoch: int, batch_size: int, generator: torch.Generator) -> Iterator[Any]: ...

    def forward(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image vectors, text vectors, image ids or None), both L2-normalised, row i matching."""
        ...

    def validate(self) -> dict[str, float]:
        """Recall@K on the held-out split (keys t2i_r1 ... i2t_r10)."""
        ...

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups (e.g. a lower learning rate for unfrozen tower blocks)."""
        ...


@dataclass
class TrainResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    temperature: float = 0.0
    seconds: float = 0.0


def default_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings' scales and 1-d params."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def rsum(metrics: dict[str, float]) -> float:
    return float(sum(v for k, v in metrics.items() if k.startswith(("t2i_r", "i2t_r"))))


class _ClipLossTask:
    """A ContrastiveTask as a task of the training loop: the CLIP loss with a learnable
    temperature, validation Recall@K, the best weights also written to best.pt."""

    def __init__(self, task: ContrastiveTask, config: TrainConfig, ckpt_dir: Path | None):
        self.task, self.config, self.ckpt_dir = task, config, ckpt_dir
        self.logit_scale = LogitScale(config.temperature, learnable=config.learn_temperature)

    def param_groups(self) -> list[dict]:
        groups = self.task.param_groups(self.config.lr, self.config.weight_decay)
        if self.config.learn_temperature:
            groups.append({"params": list(self.logit_scale.parameters()), "lr": self.config.lr,
                           "weight_decay": 0.0})
        return groups

    def steps_per_epoch(self) -> int:
        return self.task.steps_per_epoch(self.config.batch_size)

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self.task.batches(epoch, self.config.batch_size, generator)

    def train_mode(self, epoch: int, phase: Phase) -> None:
        self.task.model.train()

    def loss(self, batch: Any, epoch: int, phase: Phase) -> torch.Tensor:
        image_vecs, text_vecs, ids = self.task.forward(batch)  # under the precision's autocast
        self._batch = len(image_vecs)
        with full_precision():
            return clip_loss(image_vecs, text_vecs, self.logit_scale(), ids)

    def batch_size(self, batch: Any) -> int:
        return self._batch

    def evaluate(self, epoch: int, stats: EpochStats | None) -> dict:
        self.task.model.eval()
        metrics = self.task.validate()
        return {"epoch": epoch, "loss": stats.loss, **metrics, "rsum": rsum(metrics),
                "temperature": self.logit_scale.temperature, "seconds": round(stats.seconds, 1)}

    def state_dict(self) -> dict:
        return {"model": self.task.model.state_dict(), "logit_scale": self.logit_scale.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.task.model.load_state_dict(state["model"])
        self.logit_scale.load_state_dict(state["logit_scale"])

    def on_best(self, epoch: int, record: dict) -> None:
        if self.ckpt_dir:
            atomic_save({"model": self.task.model.state_dict(), "metrics": record,
                         "config": asdict(self.config)}, self.ckpt_dir / "best.pt")


def _describe(record: dict) -> str:
    return f"val T→I R@5 {record.get('t2i_r5', 0):.1f}  I→T R@5 {record.get('i2t_r5', 0):.1f}"


def train_contrastive(task: ContrastiveTask, config: TrainConfig) -> TrainResult:
    """Train `task.model` with the CLIP loss; returns the best validation epoch and its weights."""
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    adapter = _ClipLossTask(task, config, ckpt_dir)
    steps = adapter.steps_per_epoch()
    if steps < 1:
        raise InvalidInputError(f"batch size {config.batch_size} is larger than the training set")
    progress, close = rich_progress(_describe) if config.progress else (None, None)
    settings = LoopSettings(
        phases=[Phase(config.epochs, warmup_steps=min(config.warmup_steps, steps * config.epochs // 5))],
        select=SELECTION_METRIC, seed=config.seed, grad_clip=config.grad_clip,
        precision=config.precision, checkpoint=ckpt_dir / "last.pt" if ckpt_dir else None,
        resume=config.resume, stop_after=config.stop_after, progress=progress)
    try:
        result = train(adapter, settings)
    finally:
        if close:
            close()
    best = result.best_state
    adapter.load_state_dict(best)
    temperature = adapter.logit_scale.temperature
    return TrainResult(result.best_epoch, result.best_record, result.history, best["model"], temperature,
                       result.seconds)
