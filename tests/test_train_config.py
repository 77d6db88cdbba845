"""One source for each training setting: the trainers' config dataclasses (train/config.py).

These checks fail when a CLI option's default, a decoder constructor's default or a trainer
drifts from it again (as `train clip`'s 12 epochs against TrainConfig's 10 once did).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.main import get_command

from imagetext.cli import app
from imagetext.train.config import CaptionTrainConfig, TrainConfig

# CLI option -> config field, where the names differ
CLIP_FIELDS = {"warmup": "warmup_steps"}
CAPTION_FIELDS = {"beam": "final_beam"}


def option_defaults(*path: str) -> dict:
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p.default for p in command.params}


@pytest.mark.parametrize("command, config, renamed", [
    (("train", "clip"), TrainConfig(), CLIP_FIELDS),
    (("train", "captioner"), CaptionTrainConfig(), CAPTION_FIELDS),
])
def test_training_options_default_to_the_trainers_config(command, config, renamed):
    defaults = option_defaults(*command)
    fields = {f.name for f in dataclasses.fields(config)}
    shared = {option: renamed.get(option, option) for option in defaults
              if renamed.get(option, option) in fields and option not in ("resume", "stop_after")}
    assert len(shared) >= 8, shared
    for option, field in shared.items():
        assert defaults[option] == getattr(config, field), option


def test_decoder_defaults_are_the_shipped_captioners_sizes():
    from imagetext.caption.decoders import build_decoder
    from imagetext.caption.registry import PRETRAINED_DIR

    shipped = json.loads((PRETRAINED_DIR / "lite0-flickr8k" / "config.json").read_text())
    assert shipped["arch"] == "show-attend-tell"
    built = build_decoder("show-attend-tell", vocab_size=shipped["decoder"]["vocab_size"]).config
    assert built == shipped["decoder"]


def test_the_captioner_trainer_leaves_the_callers_config_alone(tmp_path):
    from imagetext.train.captioner import train_captioner

    config = CaptionTrainConfig(arch="sat")
    with pytest.raises((FileNotFoundError, ValueError)):
        train_captioner(tmp_path / "no-such-data", tmp_path / "out", config, log=lambda *_: None)
    assert config == CaptionTrainConfig(arch="sat")  # no alias or default lr written into it
