"""The one training loop (train/loop.py) on a tiny regression task: a run stopped after an
epoch and resumed ends with the same weights as an uninterrupted one, checkpoints are
replaced atomically, the best epoch is selected, and the schedule is warm-up + cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imagetext.train.loop import LoopSettings, Phase, train, warmup_cosine


class TinyTask:
    """y = x @ w on 64 random points, a linear model with dropout, batches of 8."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))
        self.saved_best: list[int] = []

    def param_groups(self):
        return [{"params": list(self.model.parameters()), "lr": 0.05, "weight_decay": 0.0}]

    def steps_per_epoch(self):
        return 8

    def batches(self, epoch, rng):
        order = rng.permutation(64)
        return [order[i : i + 8] for i in range(0, 64, 8)]

    def train_mode(self, epoch, phase):
        self.model.train()

    def loss(self, batch, epoch, phase):
        idx = torch.from_numpy(batch)
        return torch.nn.functional.mse_loss(self.model(self.x[idx]).squeeze(1), self.y[idx])

    def batch_size(self, batch):
        return len(batch)

    def evaluate(self, epoch, stats):
        self.model.eval()
        val = float(torch.nn.functional.mse_loss(self.model(self.x).squeeze(1), self.y))
        return {"epoch": epoch, "val_loss": val, "train_loss": stats.loss if stats else None}

    def state_dict(self):
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])

    def on_best(self, epoch, record):
        self.saved_best.append(epoch)


def run(checkpoint=None, **kw):
    torch.manual_seed(0)  # the same initial weights
    task = TinyTask()
    settings = LoopSettings(phases=[Phase(3, warmup_steps=4, end=0.1), Phase(1, lr=0.01, end=1.0)],
                            select="val_loss", minimize=True, seed=7, checkpoint=checkpoint, **kw)
    return task, train(task, settings)


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(tmp_path):
    straight, full = run()
    assert len(full.history) == 4 and full.history[-1]["val_loss"] < full.history[0]["val_loss"]
    ckpt = tmp_path / "run" / "checkpoint.pt"
    _, first = run(ckpt, stop_after=1)
    assert [h["epoch"] for h in first.history] == [0]
    resumed, second = run(ckpt, resume=True)
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3]
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert second.history == full.history
    assert second.best_epoch == full.best_epoch
    best = min(range(4), key=lambda e: full.history[e]["val_loss"])
    assert full.best_epoch == best and straight.saved_best[-1] == best
    for k, v in full.best_state["model"].items():
        assert torch.equal(v, second.best_state["model"][k])


def test_another_seed_trains_otherwise():
    _, a = run()
    torch.manual_seed(0)
    task = TinyTask()
    b = train(task, LoopSettings(phases=[Phase(3, warmup_steps=4, end=0.1), Phase(1, lr=0.01, end=1.0)],
                                 select="val_loss", minimize=True, seed=8))
    assert a.history[0]["val_loss"] != b.history[0]["val_loss"]


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    """A run killed while writing its checkpoint leaves the previous checkpoint whole."""
    ckpt = tmp_path / "checkpoint.pt"
    run(ckpt, stop_after=1)
    before = ckpt.read_bytes()
    saves = []
    real_save = torch.save

    def dying_save(obj, path, *a, **kw):
        saves.append(str(path))
        with open(path, "wb") as f:  # half a file, then the process "dies"
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, resume=True, stop_after=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert saves and all(p != str(ckpt) for p in saves)  # written beside it, not over it
    assert ckpt.read_bytes() == before
    _, resumed = run(ckpt, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]


def test_schedule_warms_up_then_falls_along_a_cosine_to_its_end():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == 1.0
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(12, 4, 20, peak=2.0, end=1.0) == pytest.approx(1.5)
    assert warmup_cosine(99, 0, 20, peak=1e-3, end=1e-3) == 1e-3  # constant
    rates = [warmup_cosine(s, 0, 10, 1.0, 0.1) for s in range(11)]
    assert rates == sorted(rates, reverse=True) and math.isclose(rates[-1], 0.1)


def test_the_loop_sets_each_steps_learning_rate_from_its_phase():
    lrs = []

    class Recording(TinyTask):
        def loss(self, batch, epoch, phase):
            lrs.append(self.optimizer_lr())
            return super().loss(batch, epoch, phase)

    torch.manual_seed(0)
    task = Recording()
    groups = task.param_groups()
    task.param_groups = lambda: groups
    task.optimizer_lr = lambda: groups[0]["lr"]
    phases = [Phase(2, warmup_steps=4, end=0.1), Phase(1, lr=0.01, end_lr=0.001)]
    train(task, LoopSettings(phases=phases, select="val_loss", minimize=True))
    expected = [warmup_cosine(s, 4, 16, 0.05, 0.005) for s in range(16)]
    expected += [warmup_cosine(s, 0, 8, 0.01, 0.001) for s in range(8)]
    np.testing.assert_allclose(lrs, expected)
