"""`imagetext train clip`: read the pairs, build the task of the chosen mode, train, save.

Modes (one training loop, train/contrastive.py):
- `heads`: frozen towers + trained projection heads on cached features, optionally with
  MiniLM's last layers tuned (train/clip_frozen.py). This is how the default model is made.
- `finetune`: the whole dual encoder of an existing model, end to end on augmented images,
  with WiSE-FT weight interpolation towards the starting weights (train/clip_finetune.py).
- `scratch`: a small CLIP (small CNN + small transformer with its own tokenizer) from
  random weights (train/clip_scratch.py).
The best validation epoch is saved as a model folder (config.json, model.safetensors,
README.md model card with the scores) that `load_encoder(folder)` and `--model` accept.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from imagetext.data.dataset import PairDataset, holdout_split
from imagetext.data.readers import read_many
from imagetext.errors import InvalidInputError
from imagetext.train.contrastive import TrainConfig, TrainResult, train_contrastive

MODES = ("heads", "finetune", "scratch")


@dataclass
class DataSpec:
    sources: Sequence[str]
    val_sources: Sequence[str] = ()
    split: str | None = "train"  # used when the sources carry split information
    val_split: str | None = "val"
    holdout: float = 0.1  # fraction of images held out when there is no validation split
    images_dir: str | None = None
    seed: int = 0


def load_train_val(spec: DataSpec, log=print) -> tuple[PairDataset, PairDataset]:
    data = read_many(list(spec.sources), images_dir=spec.images_dir)
    for bad in data.bad_rows[:5]:
        log(f"skipped bad row: {bad}")
    if len(data.bad_rows) > 5:
        log(f"... {len(data.bad_rows) - 5} more bad rows skipped")
    if spec.val_sources:
        val = read_many(list(spec.val_sources), split=spec.val_split if _has_splits(spec.val_sources) else None,
                        images_dir=spec.images_dir)
        train = data.split(spec.split) if spec.split and data.splits else data
    elif spec.split and spec.val_split and spec.split in data.splits and spec.val_split in data.splits:
        train, val = data.split(spec.split), data.split(spec.val_split)
    else:
        held = holdout_split(data, spec.holdout, seed=spec.seed)
        train, val = held.split("train"), held.split("val")
        log(f"no '{spec.val_split}' split in the data: holding out {spec.holdout:.0%} of the images")
    overlap = set(train.images) & set(val.images)
    if overlap:
        raise InvalidInputError(f"{len(overlap)} images are in both the training and the validation data")
    log(f"train: {train.summary()}; val: {val.summary()}")
    return train, val


def _has_splits(sources: Sequence[str]) -> bool:
    from imagetext.data.readers import read_pairs

    return all(read_pairs(s).splits for s in sources)


def reproduce_command() -> str:
    args = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv and sys.argv[0] else []
    return " ".join(shlex.quote(a) for a in args)


RECALLS = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"]


def evaluate_encoder(encoder, dataset: PairDataset) -> dict[str, float]:
    """Recall@K of a finished encoder on a dataset, through its inference path."""
    from imagetext.eval.retrieval import recall_at_k

    emb = encoder.encode_images(dataset.images)
    return recall_at_k(emb.semantic, encoder.encode_texts(dataset.captions), dataset.image_index)


def recall_table(rows: dict[str, dict]) -> str:
    header = "| model | " + " | ".join(n.replace("t2i_r", "T→I R@").replace("i2t_r", "I→T R@")
                                      for n in RECALLS) + " |"
    lines = [header, "|" + " --- |" * (len(RECALLS) + 1)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[n]:.1f}" for n in RECALLS) + " |")
    return "\n".join(lines)


RECALL_NAMES = {n: n.replace("t2i_r", "T→I R@").replace("i2t_r", "I→T R@") for n in RECALLS}


def _dataset_name(sources: Sequence[str]) -> str:
    """The data's name for the card: each source's folder (a file's parent folder)."""
    return ", ".join(dict.fromkeys(Path(s).parent.name if Path(s).suffix else Path(s).name for s in sources))


def write_model_card(folder: Path, result: TrainResult, mode: str, train: PairDataset, val: PairDataset,
                     config: TrainConfig, compared: dict[str, dict] | None = None, extra: str = "") -> None:
    """README.md (a huggingface_hub ModelCard: its model-index holds the validation recalls)
    and training_history.json."""
    from imagetext.models.card import write_model_card as save_card

    rows = {**(compared or {}), f"{folder.name} (this model)": result.best_metrics}
    body = f"""# {folder.name}

Trained with `imagetext train clip --mode {mode}` on {train.summary()}
(sources: {', '.join(train.sources)}); selected on the validation data ({val.summary()}) by
the sum of the six recalls: best epoch {result.best_epoch + 1} of {config.epochs}.

## Validation Recall@K (%)

Measured on the validation data with the saved model's own inference path (images through
the exported tower, texts through the text tower), next to the models named by `--compare-with`.

{recall_table(rows)}

## Training

- command: `{reproduce_command()}`
- settings: {json.dumps(asdict(config))}
- learned temperature: {result.temperature:.4f}; training time {result.seconds / 60:.1f} min
{extra}
"""
    save_card(folder, body, folder.name, scores={k: result.best_metrics[k] for k in RECALLS},
              score_names=RECALL_NAMES, task="image-text-retrieval", dataset=_dataset_name(val.sources),
              dataset_split="validation", tags=["image-text-retrieval", f"train-clip-{mode}"])
    (folder / "training_history.json").write_text(json.dumps(result.history, indent=1) + "\n")


def train_clip(spec: DataSpec, out: str | os.PathLike, mode: str = "heads", config: TrainConfig | None = None,
               name: str | None = None, log=print, compare_with: Sequence[str] = (),
               **mode_options) -> tuple[Path, TrainResult]:
    """Train in `mode` and save the best epoch as a model folder at `out`."""
    if mode not in MODES:
        raise InvalidInputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    config = config or TrainConfig()
    out = Path(out)
    name = name or out.name
    train, val = load_train_val(spec, log=log)
    import torch

    torch.manual_seed(config.seed)  # the heads' initial weights are part of the reproducible run
    if mode == "heads":
        from imagetext.train.clip_frozen import FrozenFeaturesTask, FrozenSetup, ImageHeadConfig

        head = ImageHeadConfig(inputs=list(mode_options.get("head_inputs", ["pooled", "fmap"])),
                               dim=mode_options.get("dim", 512), width=mode_options.get("width", 512),
                               dropout=mode_options.get("dropout", 0.5))
        setup = FrozenSetup(head, tuned_text_layers=mode_options.get("tune_text_layers", 0),
                            text_lr=mode_options.get("text_lr", 5e-5),
                            views=tuple(mode_options.get("views", ("center", "flip"))),
                            tuned_image_blocks=mode_options.get("tune_image_blocks", 0),
                            image_lr=mode_options.get("image_lr", 1e-4))
        task = FrozenFeaturesTask(train, val, setup, progress=config.progress)
        result = train_contrastive(task, config)
        task.model.load_state_dict(result.best_state)
        encoder = task.to_encoder(name, {"trained_on": ", ".join(train.sources)},
                                  conse_weight=mode_options.get("conse_weight", 0.0))
    elif mode == "finetune":
        from imagetext.train.clip_finetune import FinetuneTask

        task = FinetuneTask(train, val, base=mode_options.get("base"), progress=config.progress,
                            image_size=mode_options.get("image_size"), tune=mode_options.get("tune", "all"))
        result = train_contrastive(task, config)
        task.model.load_state_dict(result.best_state)
        encoder = task.to_encoder(name, wise_alpha=mode_options.get("wise_alpha", 0.5), log=log)
    else:
        from imagetext.train.clip_scratch import ScratchTask

        task = ScratchTask(train, val, image_size=mode_options.get("image_size", 96),
                           dim=mode_options.get("dim", 256), vocab_size=mode_options.get("vocab_size", 4000),
                           progress=config.progress)
        result = train_contrastive(task, config)
        task.model.load_state_dict(result.best_state)
        encoder = task.to_encoder(name)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out)
    from imagetext.models.registry import load_encoder

    compared = {}
    if mode == "heads" and mode_options.get("conse_weight"):
        compared["trained heads alone (validation during training)"] = dict(result.best_metrics)
    # the numbers in the card come from the saved folder, read back from disk (in PyTorch:
    # compiling every trained model for ONNX Runtime would only add time, and a compiled
    # model is checked against its PyTorch vectors anyway)
    result.best_metrics = {**result.best_metrics,
                           **evaluate_encoder(load_encoder(out, cache=False, runtime="torch"), val)}
    for other in compare_with:
        compared[other] = evaluate_encoder(load_encoder(other, runtime="torch"), val)
        log(f"{other} on the validation data: " + ", ".join(f"{k} {compared[other][k]:.1f}" for k in RECALLS))
    write_model_card(out, result, mode, train, val, config, compared)
    log(f"saved {out} (best epoch {result.best_epoch + 1}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.best_metrics.items() if k[:3] in ("t2i", "i2t")) + ")")
    return out, result

