"""The one contrastive training loop shared by every `imagetext train clip` mode.

A mode is a `ContrastiveTask`: it owns the trainable model, makes batches, turns a batch
into (image vectors, text vectors) and measures validation Recall@K. The loop does the
rest: symmetric InfoNCE with a learnable temperature, AdamW, linear warm-up + cosine decay,
gradient clipping, optional bfloat16 autocast, a progress bar with loss and throughput,
validation each epoch with the best state kept, and checkpoints that resume exactly
(weights, optimizer, schedule, random-number generators).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
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
from imagetext.train.precision import cpu_autocast

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


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def rsum(metrics: dict[str, float]) -> float:
    return float(sum(v for k, v in metrics.items() if k.startswith(("t2i_r", "i2t_r"))))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def train_contrastive(task: ContrastiveTask, config: TrainConfig) -> TrainResult:
    """Train `task.model` with the CLIP loss; returns the best validation epoch and its weights."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    logit_scale = LogitScale(config.temperature, learnable=config.learn_temperature)
    groups = task.param_groups(config.lr, config.weight_decay)
    if config.learn_temperature:
        groups.append({"params": list(logit_scale.parameters()), "lr": config.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    steps = task.steps_per_epoch(config.batch_size)
    if steps < 1:
        raise InvalidInputError(f"batch size {config.batch_size} is larger than the training set")
    total = steps * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, min(config.warmup_steps, total // 5), total))
    trainable = [p for g in groups for p in g["params"]]

    history: list[dict] = []
    best: dict | None = None
    start_epoch = 0
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if ckpt_dir and config.resume and (ckpt_dir / "last.pt").is_file():
        state = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=False)
        task.model.load_state_dict(state["model"])
        logit_scale.load_state_dict(state["logit_scale"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1

    autocast = cpu_autocast(config.precision)
    started = time.perf_counter()
    bar = None
    if config.progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                       TimeRemainingColumn(), transient=False)
        bar.start()
    try:
        last_epoch = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
        for epoch in range(start_epoch, last_epoch):
            task.model.train()
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            job = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps, info="") if bar else None
            t0, seen, loss_sum, n = time.perf_counter(), 0, 0.0, 0
            for batch in task.batches(epoch, config.batch_size, generator):
                with autocast:
                    image_vecs, text_vecs, ids = task.forward(batch)
                loss = clip_loss(image_vecs, text_vecs, logit_scale(), ids)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                scheduler.step()
                seen += len(image_vecs)
                loss_sum, n = loss_sum + loss.item(), n + 1
                if bar:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.update(job, advance=1, info=f"loss {loss_sum / n:.3f}  {rate:.0f} pairs/s")
            task.model.eval()
            with torch.no_grad():
                metrics = task.validate()
            record = {"epoch": epoch, "loss": loss_sum / max(n, 1), **metrics,
                      "rsum": rsum(metrics), "temperature": logit_scale.temperature,
                      "seconds": round(time.perf_counter() - t0, 1)}
            history.append(record)
            if bar:
                bar.update(job, info=f"loss {record['loss']:.3f}  val T→I R@5 {metrics.get('t2i_r5', 0):.1f}"
                                     f"  I→T R@5 {metrics.get('i2t_r5', 0):.1f}")
            if best is None or record["rsum"] > best["metrics"]["rsum"]:
                best = {"epoch": epoch, "metrics": record,
                        "model": copy.deepcopy({k: v.detach().clone() for k, v in task.model.state_dict().items()}),
                        "temperature": logit_scale.temperature}
                if ckpt_dir:
                    _save(ckpt_dir / "best.pt", {"model": best["model"], "metrics": record,
                                                 "config": asdict(config)})
            if ckpt_dir:
                _save(ckpt_dir / "last.pt", {
                    "model": task.model.state_dict(), "logit_scale": logit_scale.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(), "history": history, "best": best, "epoch": epoch,
                    "config": asdict(config)})
                (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1))
    finally:
        if bar:
            bar.stop()
    if best is None:
        raise RuntimeError("no epoch was trained (epochs already done? check --epochs / --resume)")
    return TrainResult(best["epoch"], best["metrics"], history, best["model"], best["temperature"],
                       time.perf_counter() - started)
