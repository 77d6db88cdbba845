"""Backends register under a name; models load by built-in name or from a folder.

A model folder holds `config.json` whose "backend" key names the class that reads it
(Hugging Face style). Built-in models live in `imagetext/models/pretrained/<name>/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetext.models.base import ImageTextEncoder, read_config

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

# The model used when none is named. Aliases map friendly names to built-in folders.
DEFAULT_MODEL = "conse"
ALIASES = {"default": DEFAULT_MODEL}

_BACKENDS: dict[str, type[ImageTextEncoder]] = {}


def register_backend(name: str):
    def decorator(cls: type[ImageTextEncoder]) -> type[ImageTextEncoder]:
        cls.backend = name
        _BACKENDS[name] = cls
        return cls

    return decorator


def _import_builtin_backends() -> None:
    # imported lazily so that `imagetext --help` does not import torch
    import imagetext.models.conse  # noqa: F401


def backend_class(name: str) -> type[ImageTextEncoder]:
    _import_builtin_backends()
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def builtin_models() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


class ModelNotFoundError(LookupError):
    pass


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """Turn a built-in name, an alias or a folder path into a model folder."""
    name = str(name_or_path or DEFAULT_MODEL)
    name = ALIASES.get(name, name)
    builtin = PRETRAINED_DIR / name
    if (builtin / "config.json").is_file():
        return builtin
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    looked = [str(builtin), str(path.resolve())]
    raise ModelNotFoundError(
        f"model {name!r} not found. Looked for a built-in model "
        f"(available: {', '.join(builtin_models()) or 'none'}) and for a folder with "
        f"config.json at: {', '.join(looked)}"
    )


_CACHE: dict[str, ImageTextEncoder] = {}


def load_encoder(name_or_path: str | os.PathLike | None = None, cache: bool = True) -> ImageTextEncoder:
    """Load an image-text encoder by built-in name, alias or folder path."""
    folder = resolve_model(name_or_path)
    key = str(folder.resolve())
    if cache and key in _CACHE:
        return _CACHE[key]
    config = read_config(folder)
    encoder = backend_class(config["backend"]).from_pretrained(folder)
    if cache:
        _CACHE[key] = encoder
    return encoder
