"""Hugging Face hub ids (`openai/clip-vit-base-patch32`) as model names, offline first.

A hub id resolves to a snapshot folder of the local Hugging Face cache (the layout
`huggingface_hub` writes: `<cache>/models--org--name/refs/main` holds a commit hash and
`<cache>/models--org--name/snapshots/<hash>/` the files). The caches searched, in order:
`$HF_HUB_CACHE`, `$HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
`~/.cache/huggingface/hub`.

Nothing is downloaded unless the user allows it: `IMAGETEXT_ALLOW_DOWNLOAD=1` in the
environment, the CLI's `--allow-download` flag, or `allow_download=True` in the API. A
download fetches only what inference needs (configs, tokenizer files, safetensors weights)
into the standard cache, so the next run finds it offline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imagetext.models.registry import ModelNotFoundError

ALLOW_DOWNLOAD_ENV = "IMAGETEXT_ALLOW_DOWNLOAD"

# org/name, optionally @revision (a branch, tag or commit); the same characters the hub allows
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<revision>[\w.\-/]+))?$")

# what inference needs from a repo; other weight formats (TF, Flax, ONNX, OpenCLIP's own)
# are skipped so that a download is not several times bigger than the model
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.spm"]
SAFETENSORS_PATTERNS = ["model.safetensors", "model-*.safetensors"]
TORCH_BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin"]


def split_hub_id(name: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) if `name` has the form of a hub id, else None."""
    m = _HUB_ID.match(str(name))
    if not m or ".." in m.group("repo") or m.group("repo").endswith((".", "-")):
        return None
    return m.group("repo"), m.group("revision")


def is_hub_id(name: str) -> bool:
    return split_hub_id(name) is not None


def download_allowed(allow_download: bool | None = None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dirs() -> list[Path]:
    """The Hugging Face cache folders to search, in order, without duplicates."""
    env = os.environ
    candidates = [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE")]
    if env.get("HF_HOME"):
        candidates.append(os.path.join(env["HF_HOME"], "hub"))
    if env.get("XDG_CACHE_HOME"):
        candidates.append(os.path.join(env["XDG_CACHE_HOME"], "huggingface", "hub"))
    candidates.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"))
    out: list[Path] = []
    for c in candidates:
        if c:
            p = Path(c).expanduser()
            if p not in out:
                out.append(p)
    return out


def repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def find_cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` (with its config.json), or None."""
    from huggingface_hub import try_to_load_from_cache

    for cache in hub_cache_dirs():
        if not (cache / repo_folder_name(repo_id)).is_dir():
            continue
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache, revision=revision)
        if isinstance(found, str):
            return Path(found).parent
        if revision is None:
            # no refs/main (e.g. only a tagged revision was downloaded): newest snapshot
            snapshots = cache / repo_folder_name(repo_id) / "snapshots"
            usable = [s for s in snapshots.glob("*") if (s / "config.json").is_file()]
            if usable:
                return max(usable, key=lambda s: s.stat().st_mtime)
    return None


def hub_id_of_snapshot(folder: str | os.PathLike) -> str | None:
    """`org/name` if `folder` is a snapshot folder of a Hugging Face cache, else None."""
    parts = Path(folder).resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/", 1)
    return None


def download_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the files inference needs into the standard Hugging Face cache."""
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(repo_id, revision=revision)
    has_safetensors = any(f.startswith("model") and f.endswith(".safetensors") for f in files)
    patterns = CONFIG_PATTERNS + (SAFETENSORS_PATTERNS if has_safetensors else TORCH_BIN_PATTERNS)
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def not_found_message(name: str, looked: list[str] | None = None) -> str:
    split = split_hub_id(name)
    lines = [f"model {name!r} not found."]
    lines.append("Looked for:")
    for place in looked or []:
        lines.append(f"  - {place}")
    if split:
        repo_id, revision = split
        for cache in hub_cache_dirs():
            lines.append(f"  - Hugging Face cache: {cache / repo_folder_name(repo_id)}"
                         + (f" (revision {revision})" if revision else ""))
        lines.append("To get it:")
        lines.append(f"  - allow a download: add --allow-download, or set {ALLOW_DOWNLOAD_ENV}=1;")
        lines.append(f"  - or on a machine with network: `hf download {repo_id}` and copy its "
                     "~/.cache/huggingface/hub here (or point HF_HOME / HF_HUB_CACHE at it);")
        lines.append("  - or pass the path of a folder holding the model's config.json and weights.")
    else:
        lines.append("Pass a built-in model name, a folder holding config.json, or a Hugging Face "
                     "hub id like openai/clip-vit-base-patch32.")
    return "\n".join(lines)


def resolve_hub_model(name: str, allow_download: bool | None = None,
                      looked: list[str] | None = None) -> Path:
    """The local folder of hub id `name`: from the cache, or downloaded if allowed.

    Raises ModelNotFoundError with where it looked and how to get the model.
    """
    split = split_hub_id(name)
    if split is None:
        raise ModelNotFoundError(not_found_message(name, looked))
    repo_id, revision = split
    folder = find_cached_snapshot(repo_id, revision)
    if folder is not None:
        return folder
    if download_allowed(allow_download):
        try:
            folder = download_snapshot(repo_id, revision)
        except Exception as exc:  # network down, repo missing or gated: say so plainly
            raise ModelNotFoundError(
                not_found_message(name, looked) + f"\nThe download failed: {exc}"
            ) from exc
        if (folder / "config.json").is_file():
            return folder
        raise ModelNotFoundError(f"downloaded {repo_id} to {folder}, but it has no config.json; "
                                 "it is not a transformers model")
    raise ModelNotFoundError(not_found_message(name, looked))
