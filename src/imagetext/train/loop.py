"""The one training loop every trainer runs: `train(task, settings)`.

A trainer is a `TrainingTask`: it owns the model, its optimizer parameter groups, the batches of
an epoch, the loss of a batch and the per-epoch evaluation (whose record carries the metric
that selects the best epoch). The loop does the rest, the same way for every task:

- AdamW over the task's parameter groups, gradient clipping;
- the learning rate of every step from one schedule, `warmup_cosine`, in one or more
  `Phase`s (e.g. the captioner's cross-entropy epochs, then its SCST epochs at their own rate);
- precision: the loss is computed under `precision.cpu_autocast` (fp32 or bf16);
- one random-number generator per run (`numpy.random.Generator`, seeded from `seed`) that
  the task draws its batches from; the torch generator (dropout, sampling) is seeded once
  per run too, and both are part of the checkpoint;
- an atomic checkpoint after every epoch (written to a temporary file, then `os.replace`),
  from which `resume` continues exactly; `stop_after` ends a run early;
- best-epoch selection on `select` (largest, or smallest with `minimize`), keeping the best
  weights in memory and in the checkpoint, with the task's `on_best` hook;
- a progress callback, called after every step and every epoch (`rich_progress` draws a bar).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from imagetext.errors import InvalidInputError
from imagetext.train.precision import cpu_autocast


def warmup_cosine(step: int, warmup: int, total: int, peak: float = 1.0, end: float = 0.0) -> float:
    """The learning rate at `step` (0-based): a linear warm-up to `peak` over `warmup` steps,
    then half a cosine from `peak` down to `end` at step `total` (and `end` after it).
    `end == peak` is a constant rate after the warm-up."""
    if step < warmup:
        return peak * (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Phase:
    """A run of epochs under one learning-rate curve: each parameter group's rate is its own
    `lr` times `warmup_cosine(step, warmup_steps, epochs * steps_per_epoch, 1, end)`, or, with
    `lr` set here, that rate in place of the first group's (the others keep their ratio to it)."""

    epochs: int
    warmup_steps: int = 0
    end: float = 0.0  # the rate at the end of the phase, as a fraction of its peak (1.0: constant)
    lr: float | None = None
    # `end` as an absolute rate instead (with `lr`): how the captioner's SCST phase is configured
    end_lr: float | None = None
    name: str = ""

    def lr_at(self, step: int, steps_per_epoch: int, peak: float) -> float:
        peak = self.lr if self.lr is not None else peak
        end = self.end_lr if self.end_lr is not None else self.end * peak
        return warmup_cosine(step, self.warmup_steps, self.epochs * steps_per_epoch, peak, end)


@dataclass
class LoopSettings:
    phases: Sequence[Phase]  # the run's epochs, phase after phase
    select: str  # the record key that selects the best epoch
    minimize: bool = False
    seed: int = 0
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    checkpoint: Path | None = None  # the resumable checkpoint (history.json is written beside it)
    resume: bool = False
    stop_after: int | None = None  # end this run after this many epochs in all (continue with resume)
    baseline: bool = False  # evaluate before training too: history[0], and the weights to beat
    progress: Callable[[Progress], None] | None = None

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


@dataclass
class Progress:
    """What the loop reports after each step (`record` None) and each epoch (its record)."""

    epoch: int  # 0-based
    epochs: int
    step: int  # steps done in this epoch
    steps: int
    loss: float  # mean over this epoch's steps so far
    samples_per_s: float
    record: dict | None = None


@dataclass
class EpochStats:
    """The loop's account of an epoch's training, handed to `TrainingTask.evaluate`."""

    loss: float  # mean of the batches' losses
    lr: float  # the first parameter group's rate at the epoch's last step
    seconds: float
    phase: Phase


class TrainingTask(Protocol):
    def param_groups(self) -> list[dict]:
        """AdamW parameter groups, each with its "params", "lr" and "weight_decay"."""
        ...

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Any]:
        """The epoch's batches, drawn with the run's generator."""
        ...

    def train_mode(self, epoch: int, phase: Phase) -> None:
        """Set the modules' train/eval modes for this epoch."""
        ...

    def loss(self, batch: Any, epoch: int, phase: Phase) -> torch.Tensor:
        """The loss to minimise on one batch (run under the precision's autocast)."""
        ...

    def batch_size(self, batch: Any) -> int: ...

    def evaluate(self, epoch: int, stats: EpochStats | None) -> dict:
        """The epoch's history record (with the `select` metric); stats None: the baseline."""
        ...

    def state_dict(self) -> dict:
        """The trained weights (and whatever else the task must restore on resume)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; refuse (InvalidInputError) a state from another setup."""
        ...

    def on_best(self, epoch: int, record: dict) -> None:
        """Called when `epoch` becomes the best so far (e.g. to save a model folder)."""
        ...


@dataclass
class LoopResult:
    best_epoch: int  # 0-based; -1 = the baseline (nothing trained beat the starting weights)
    best_record: dict
    best_state: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def atomic_save(payload: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename it over `path`: a reader, or
    a run killed half way, sees the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _detached(state: dict) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}


def _better(value: float, best: dict | None, settings: LoopSettings) -> bool:
    if best is None:
        return True
    old = best["record"][settings.select]
    return value < old if settings.minimize else value > old


def _phase_of(epoch: int, phases: Sequence[Phase]) -> tuple[Phase, int]:
    """The phase of `epoch` and the index of its first epoch."""
    start = 0
    for phase in phases:
        if epoch < start + phase.epochs:
            return phase, start
        start += phase.epochs
    raise IndexError(epoch)


def train(task: TrainingTask, settings: LoopSettings) -> LoopResult:
    """Train `task` through `settings.phases`; returns the best epoch's record and weights."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    groups = task.param_groups()
    for g in groups:
        g.setdefault("peak_lr", g["lr"])
    base_lr = groups[0]["peak_lr"]
    optimizer = torch.optim.AdamW(groups)
    trainable = [p for g in groups for p in g["params"]]
    steps = task.steps_per_epoch()
    if steps < 1:
        raise InvalidInputError("the batch size is larger than the training set")

    history: list[dict] = []
    best: dict | None = None
    start_epoch, phase_step = 0, 0
    ckpt = Path(settings.checkpoint) if settings.checkpoint else None
    if ckpt and settings.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        task.load_state_dict(saved["task"])
        optimizer.load_state_dict(saved["optimizer"])
        for g, peak in zip(optimizer.param_groups, (g["peak_lr"] for g in groups)):
            g["peak_lr"] = peak  # this run's settings, not the saved run's
        torch.set_rng_state(saved["torch_rng"])
        rng.bit_generator.state = saved["rng"]
        history, best, start_epoch, phase_step = saved["history"], saved["best"], saved["epoch"], saved["phase_step"]
    elif settings.baseline:
        record = task.evaluate(-1, None)
        history.append(record)
        best = {"epoch": -1, "record": record, "state": _detached(task.state_dict())}

    autocast = cpu_autocast(settings.precision)
    started = time.perf_counter()
    epochs = settings.epochs
    last = epochs if settings.stop_after is None else min(epochs, settings.stop_after)
    for epoch in range(start_epoch, last):
        phase, phase_start = _phase_of(epoch, settings.phases)
        if epoch == phase_start:
            phase_step = 0
        task.train_mode(epoch, phase)
        t0, seen, loss_sum, n = time.perf_counter(), 0, 0.0, 0
        for batch in task.batches(epoch, rng):
            lr = phase.lr_at(phase_step, steps, base_lr)
            for g in optimizer.param_groups:  # the first group at `lr`, the others in proportion
                g["lr"] = lr * (g["peak_lr"] / base_lr)
            with autocast:
                loss = task.loss(batch, epoch, phase)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            phase_step += 1
            seen += task.batch_size(batch)
            loss_sum, n = loss_sum + loss.item(), n + 1
            if settings.progress:
                settings.progress(Progress(epoch, epochs, n, steps, loss_sum / n,
                                           seen / max(time.perf_counter() - t0, 1e-9)))
        stats = EpochStats(loss_sum / max(n, 1), optimizer.param_groups[0]["lr"], time.perf_counter() - t0, phase)
        with torch.no_grad():
            record = task.evaluate(epoch, stats)
        history.append(record)
        if _better(record[settings.select], best, settings):
            best = {"epoch": epoch, "record": record, "state": _detached(task.state_dict())}
            task.on_best(epoch, record)
        if settings.progress:
            settings.progress(Progress(epoch, epochs, n, steps, stats.loss, 0.0, record))
        if ckpt:
            atomic_save({"task": task.state_dict(), "optimizer": optimizer.state_dict(),
                         "torch_rng": torch.get_rng_state(), "rng": rng.bit_generator.state,
                         "history": history, "best": best, "epoch": epoch + 1, "phase_step": phase_step},
                        ckpt)
            (ckpt.parent / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    if best is None:
        raise InvalidInputError("no epoch was trained (epochs already done? check the epochs and resume)")
    return LoopResult(best["epoch"], best["record"], best["state"], history, time.perf_counter() - started)


def rich_progress(describe: Callable[[dict], str] | None = None):
    """A progress callback drawing one rich bar per epoch (loss and samples/s, then the
    epoch's record through `describe`), and a function that closes it."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    bar = Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
              TimeRemainingColumn(), transient=False)
    jobs: dict[int, Any] = {}

    def update(p: Progress) -> None:
        if not jobs:
            bar.start()
        if p.epoch not in jobs:
            jobs[p.epoch] = bar.add_task(f"epoch {p.epoch + 1}/{p.epochs}", total=p.steps, info="")
        if p.record is None:
            bar.update(jobs[p.epoch], completed=p.step, info=f"loss {p.loss:.3f}  {p.samples_per_s:.0f} samples/s")
        else:
            bar.update(jobs[p.epoch], info=f"loss {p.loss:.3f}" + (f"  {describe(p.record)}" if describe else ""))

    def close() -> None:
        if jobs:
            bar.stop()

    return update, close
