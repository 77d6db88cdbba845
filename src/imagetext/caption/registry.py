"""Captioning backends register under a name; captioners load by built-in name or folder.

A captioner folder holds `config.json` whose "backend" key names the registered class
(Hugging Face style). Built-in captioners live in `imagetext/caption/pretrained/<name>/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetext.caption.base import Captioner
from imagetext.errors import ImagetextError, InvalidInputError
from imagetext.models.base import read_config
from imagetext.plugins import Registry

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

# The captioner used when none is named; "default" is an alias of it.
DEFAULT_CAPTIONER = "lite0-flickr8k"
ALIASES = {"default": DEFAULT_CAPTIONER}

# Built-in backends, imported on first use (imagetext.plugins); other packages register
# theirs with @register_captioner("name") before `load_captioner` is called.
CAPTIONERS: Registry[type[Captioner]] = Registry("captioner backend", {
    "efficientnet-captioner": "imagetext.caption.efficientnet_captioner",
    "hf-captioner": "imagetext.caption.hf_captioners",
})
register_captioner = CAPTIONERS.register
captioner_class = CAPTIONERS.get
HF_MODEL_TYPES = {"blip": "hf-captioner", "vision-encoder-decoder": "hf-captioner"}


def builtin_captioners() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


class CaptionerNotFoundError(ImagetextError, LookupError):
    pass


def resolve_captioner(name_or_path: str | os.PathLike | None) -> Path:
    """Turn a built-in name, an alias or a folder path into a captioner folder."""
    name = str(name_or_path or DEFAULT_CAPTIONER)
    name = ALIASES.get(name, name)
    builtin = PRETRAINED_DIR / name
    if (builtin / "config.json").is_file():
        return builtin
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    from imagetext.models import hub

    if hub.is_hub_id(name) and not path.exists():  # org/name: local HF cache, download if allowed
        return hub.resolve_hub_model(name, looked=[f"a built-in captioner at {builtin}",
                                                   f"a folder with config.json at {path.resolve()}"])
    raise CaptionerNotFoundError(
        f"captioner {name!r} not found. Looked for a built-in captioner at {builtin} "
        f"(available: {', '.join(builtin_captioners()) or 'none'}) and for a folder with "
        f"config.json at {path.resolve()}"
    )


_CACHE: dict[str, Captioner] = {}


def load_captioner(name_or_path: str | os.PathLike | None = None, cache: bool = True) -> Captioner:
    """Load a captioner by built-in name, alias ("default"), folder (ours or a transformers
    BLIP / VisionEncoderDecoder folder) or hub id from the local cache (None = default)."""
    folder = resolve_captioner(name_or_path)
    key = str(folder.resolve())
    if cache and key in _CACHE:
        return _CACHE[key]
    config = read_config(folder)
    # a transformers BLIP / VisionEncoderDecoder folder has a model_type and no "backend"
    backend = config.get("backend") or HF_MODEL_TYPES.get(config.get("model_type"))
    if backend is None:
        raise InvalidInputError(f"{folder / 'config.json'} has no \"backend\" key naming the captioner class")
    captioner = captioner_class(backend).from_pretrained(folder)
    if cache:
        _CACHE[key] = captioner
    return captioner
