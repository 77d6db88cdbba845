"""The body of `imagetext train clip` (the Typer wrapper in cli.py only declares options)."""

from __future__ import annotations

from pathlib import Path

from imagetext.errors import InvalidInputError
from imagetext.train.clip_train import MODES, DataSpec, train_clip
from imagetext.train.contrastive import TrainConfig
from imagetext.train.precision import check_precision


def run_train_clip(*, data, out, mode, val_data, images_dir, train_split, val_split, holdout, epochs,
                   batch_size, lr, weight_decay, warmup, temperature, precision, head_inputs, dim, dropout, conse_weight,
                   tune_text_layers, text_lr, flip, crop_views, tune_image_blocks, image_lr, base, tune, wise_alpha, image_size, vocab_size,
                   checkpoint_dir, resume, seed, threads, name, compare_with) -> Path:
    import torch

    if mode not in MODES:
        raise InvalidInputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    check_precision(precision)
    if threads:
        torch.set_num_threads(threads)
    spec = DataSpec(sources=list(data), val_sources=list(val_data or []), split=train_split,
                    val_split=val_split, holdout=holdout,
                    images_dir=str(images_dir) if images_dir else None, seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=warmup, temperature=temperature, precision=precision, seed=seed,
                         checkpoint_dir=str(checkpoint_dir or Path(out) / "checkpoints"), resume=resume)
    options = {
        "heads": {"head_inputs": [s.strip() for s in head_inputs.split(",") if s.strip()], "dim": dim,
                  "dropout": dropout, "conse_weight": conse_weight,
                  "tune_text_layers": tune_text_layers, "text_lr": text_lr,
                  "views": (("center", "flip") if flip else ("center",))
                  + tuple(f"crop{k}" for k in range(crop_views)),
                  "tune_image_blocks": tune_image_blocks, "image_lr": image_lr},
        "finetune": {"base": base, "tune": tune, "wise_alpha": wise_alpha, "image_size": image_size},
        "scratch": {"image_size": image_size or 96, "dim": dim, "vocab_size": vocab_size},
    }[mode]
    folder, _ = train_clip(spec, out, mode=mode, config=config, name=name,
                           compare_with=list(compare_with or []), **options)
    print(f"model saved in {folder}; use it with --model {folder}")
    return folder
