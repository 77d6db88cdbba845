"""Backends register under a name; models load by built-in name or from a folder.

A model folder holds `config.json` whose "backend" key names the class that reads it
(Hugging Face style). Built-in models live in `imagetext/models/pretrained/<name>/`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from imagetext.errors import ImagetextError, InvalidInputError
from imagetext.models.base import ImageTextEncoder, read_config
from imagetext.models.calibration import read_calibration
from imagetext.plugins import Registry

PRETRAINED_DIR = Path(__file__).parent / "pretrained"

# The model used when none is named. Aliases map friendly names to built-in folders.
# aligned-flickr8k: heads trained on Flickr8k (scripts/train_default_clip.sh) + ConSE ensemble;
# the training-free ConSE stays loadable as "conse".
DEFAULT_MODEL = "aligned-flickr8k"
ALIASES = {"default": DEFAULT_MODEL}

# The module of each built-in backend, imported only when a model of that backend loads: the
# PyTorch backends import torch (~1 s), which a query through a compiled model never needs.
ENCODERS: Registry[type[ImageTextEncoder]] = Registry("backend", {
    "aligned": "imagetext.models.aligned",
    "conse": "imagetext.models.conse",
    "hf-clip": "imagetext.models.hf_clip",
    "onnx": "imagetext.models.onnx_backend",
    "small-clip": "imagetext.models.small_clip",
})
register_backend = ENCODERS.register  # @register_backend("name") on an ImageTextEncoder class
backend_class = ENCODERS.get
# Backends whose models are compiled to ONNX once per machine (onnx_backend.compiled_encoder)
# and then run by ONNX Runtime, image and text tower alike, without importing torch.
COMPILED_BACKENDS = frozenset({"aligned", "conse"})
RUNTIMES = ("auto", "onnx", "torch")


def builtin_models() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


class ModelNotFoundError(ImagetextError, LookupError):
    pass


def resolve_model(name_or_path: str | os.PathLike | None, allow_download: bool | None = None) -> Path:
    """Turn a built-in name, an alias, a folder path or a Hugging Face hub id into a model
    folder. A hub id resolves from the local HF cache; it is downloaded only when allowed
    (`allow_download=True` or IMAGETEXT_ALLOW_DOWNLOAD=1; see imagetext.models.hub)."""
    name = str(name_or_path or DEFAULT_MODEL)
    name = ALIASES.get(name, name)
    builtin = PRETRAINED_DIR / name
    if (builtin / "config.json").is_file():
        return builtin
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    from imagetext.models import hub

    if hub.is_hub_id(name) and not path.exists():
        return hub.resolve_hub_model(name, allow_download, looked=[
            f"a built-in model (available: {', '.join(builtin_models()) or 'none'})",
            f"a folder with config.json at {path.resolve()}",
        ])
    looked = [str(builtin), str(path.resolve())]
    raise ModelNotFoundError(
        f"model {name!r} not found. Looked for a built-in model "
        f"(available: {', '.join(builtin_models()) or 'none'}) and for a folder with "
        f"config.json at: {', '.join(looked)}"
    )


# transformers folders (config.json with "model_type" but no "backend") that load as encoders
HF_MODEL_TYPES = {"clip": "hf-clip", "siglip": "hf-clip"}
HF_CAPTIONER_TYPES = {"blip", "vision-encoder-decoder"}


def backend_for_config(config: dict, folder: str | os.PathLike) -> str:
    """The backend named by config.json, or the one that reads this transformers model type."""
    if "backend" in config:
        return config["backend"]
    model_type = config.get("model_type")
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    if model_type in HF_CAPTIONER_TYPES:
        raise InvalidInputError(f"{folder} holds a captioning model ({model_type}), not an image-text "
                         "encoder; use it with `imagetext caption --model`")
    raise InvalidInputError(
        f"{Path(folder) / 'config.json'} has no \"backend\" key, and its model_type "
        f"{model_type!r} is not an image-text model imagetext can load "
        f"(supported transformers types: {', '.join(sorted(HF_MODEL_TYPES))})")


_CACHE: dict[str, ImageTextEncoder] = {}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".npz")


def folder_fingerprint(folder: Path) -> str:
    """A short hash of a model folder's config.json and weight files.

    Weight files up to 64 MB are hashed whole (the built-in models: milliseconds); larger
    ones (hub checkpoints) by size and their first and last MB, which is enough to tell a
    retrained file from the original without reading gigabytes on every open.
    """
    import hashlib

    h = hashlib.sha1((folder / "config.json").read_bytes())
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            if size <= 64 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


def load_encoder(name_or_path: str | os.PathLike | None = None, cache: bool = True,
                 allow_download: bool | None = None, runtime: str = "auto") -> ImageTextEncoder:
    """Load an image-text encoder by built-in name, alias, folder path or hub id.

    `runtime`: "auto" runs a model of a compiled backend (the embedded default and ConSE)
    through ONNX Runtime, compiling it on first use (checked against PyTorch), and falls back
    to PyTorch with a warning that says why; "onnx" raises instead of falling back; "torch"
    gives the PyTorch model (what training and export need). `encoder.runtime` says which.
    """
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    folder = resolve_model(name_or_path, allow_download)
    key = f"{folder.resolve()}:{runtime}"
    if cache and key in _CACHE:
        return _CACHE[key]
    config = read_config(folder)
    backend = backend_for_config(config, folder)
    fingerprint = folder_fingerprint(folder)
    built: list[ImageTextEncoder] = []  # the PyTorch model, built at most once

    def build() -> ImageTextEncoder:
        if not built:
            built.append(backend_class(backend).from_pretrained(folder))
        return built[0]

    fallback = None
    if runtime != "torch" and backend in COMPILED_BACKENDS:
        from imagetext.models.onnx_backend import CompileError, compiled_encoder

        try:
            encoder = compiled_encoder(folder, fingerprint, build)
        except CompileError as exc:
            if runtime == "onnx":
                raise
            fallback = str(exc)
            warnings.warn(f"{config.get('name', folder.name)} runs in PyTorch, not ONNX Runtime "
                          f"(slower): {exc}", RuntimeWarning, stacklevel=2)
    if fallback or runtime == "torch" or backend not in COMPILED_BACKENDS:
        encoder = build()
        encoder.runtime_fallback = fallback
    encoder.fingerprint = fingerprint
    encoder.calibration = read_calibration(folder)  # calibration.json: models/calibration.py
    if cache:
        _CACHE[key] = encoder
    return encoder
