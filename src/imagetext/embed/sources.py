"""What an embedding job reads: a list of `Item`s, each a file or a member of a tar archive.

Items are planned on the driver (a folder scan, a file list, the members of a webdataset tar
set) and read where they are embedded: locally, or on a Ray worker, which then needs the same
paths (shared storage). A tar member is read by its byte offset in the (uncompressed) tar, so
any worker can read any member without walking the archive.

webdataset tars are read with Python's tarfile rather than the `webdataset` package: a
webdataset shard is a plain POSIX tar whose members are named `KEY.EXT`, and we need only its
image members with their offsets (to spread them over workers); the package's pipeline of
streaming iterators, decoders and torch DataLoader glue would be one more dependency for
none of that.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from imagetext.errors import InvalidInputError
from imagetext.io.images import (
    DEFAULT_MAX_FILE_BYTES,
    ImageLoadError,
    is_image_path,
    read_regular_file,
    too_large,
)


@dataclass(frozen=True)
class Item:
    """One image to embed. `rel` is the name it is stored under (relative to the collection
    root for files; `TAR/MEMBER` for a tar member); `path` is the file to open (the tar for a
    member, read at `offset`, `length` bytes)."""

    rel: str
    path: str
    size: int
    mtime: float
    offset: int = -1  # >= 0: a member of the tar `path`, its data at this byte offset
    length: int = 0

    def to_row(self) -> dict:
        """A row Ray Data / Arrow can carry: names as bytes (a file name need not be UTF-8)."""
        row = asdict(self)
        row["rel"], row["path"] = os.fsencode(self.rel), os.fsencode(self.path)
        return row

    @classmethod
    def from_row(cls, row: dict) -> Item:
        return cls(os.fsdecode(bytes(row["rel"])), os.fsdecode(bytes(row["path"])),
                   int(row["size"]), float(row["mtime"]), int(row["offset"]), int(row["length"]))


def read_item(item: Item, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of an item: a regular file of at most `max_bytes` (io.images), or a tar
    member. Raises ImageLoadError with the reason."""
    if item.offset < 0:
        return read_regular_file(item.path, max_bytes)
    if item.length > max_bytes:
        raise ImageLoadError(item.rel, too_large(item.length, max_bytes))
    try:
        with open(item.path, "rb") as f:
            f.seek(item.offset)
            data = f.read(item.length)
    except OSError as exc:
        raise ImageLoadError(item.rel, f"cannot read the tar ({exc.strerror or exc})") from None
    if len(data) != item.length:
        raise ImageLoadError(item.rel, "truncated tar member")
    return data


def folder_items(root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 follow_links: bool = False) -> tuple[list[Item], list[tuple[str, str]]]:
    """The image files under `root`, as a collection's index scan finds them (same rules:
    regular files, links inside the folder, no hidden entries), and those skipped with why."""
    from imagetext.index.collection import INDEX_DIRNAME
    from imagetext.index.scan import scan_folder

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise InvalidInputError(f"not a folder: {root}")
    items, skipped = [], []
    for entry in scan_folder(root, skip=root / INDEX_DIRNAME, follow_links=follow_links,
                             max_bytes=max_bytes):
        if entry.reason is not None:
            skipped.append((entry.rel, entry.reason))
        else:
            items.append(Item(entry.rel, str(entry.path), entry.st.st_size, entry.st.st_mtime))
    return items, skipped


def list_items(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[Item], list[tuple[str, str]]]:
    """The files named in `list_file`, one path a line (blank lines and `#` comments
    skipped; relative paths are relative to the list's folder). Each is stored relative to
    `root` (default: the list's folder), where a collection will find it; one outside `root`
    is skipped and reported."""
    list_file = Path(list_file).expanduser()
    try:
        lines = list_file.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        raise InvalidInputError(f"file list not found: {list_file}") from None
    base = list_file.resolve().parent
    root = Path(root).expanduser().resolve() if root is not None else base
    items, skipped, seen = [], [], set()
    for line in lines:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        path = Path(os.path.abspath(base / name))
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            skipped.append((str(path), f"outside the --root folder {root}"))
            continue
        if rel in seen:
            continue
        seen.add(rel)
        try:
            st = os.stat(path)
        except OSError as exc:
            skipped.append((rel, "file not found" if isinstance(exc, FileNotFoundError)
                            else f"cannot read ({exc.strerror or exc})"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append((rel, "not a regular file; only regular files are read"))
        elif st.st_size > max_bytes:
            skipped.append((rel, too_large(st.st_size, max_bytes)))
        else:
            items.append(Item(rel, str(path), st.st_size, st.st_mtime))
    return items, skipped


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard notation: `shards-{000..009}.tar` -> shards-000.tar ... shards-009.tar
    (zero padding kept; several ranges multiply)."""
    parts = re.split(r"\{(\d+)\.\.(\d+)\}", pattern)
    ranges = []
    for lo, hi in zip(parts[1::3], parts[2::3]):
        width = len(lo)
        ranges.append([str(i).zfill(width) for i in range(int(lo), int(hi) + 1)])
    return ["".join(itertools.chain.from_iterable(zip(parts[0::3], (*combo, ""))))
            for combo in itertools.product(*ranges)]


def tar_items(patterns: list[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES,
              ) -> tuple[list[Item], list[tuple[str, str]]]:
    """The image members of a webdataset tar set (`shards-{000..009}.tar`, several patterns
    allowed). Each is stored as `TARNAME/MEMBER`. Only uncompressed tars (webdataset's own
    format): a member is read by its offset, which a compressed tar does not have."""
    items, skipped = [], []
    for pattern in patterns:
        for name in expand_braces(pattern):
            tar = Path(name).expanduser().resolve()
            if not tar.is_file():
                raise InvalidInputError(f"tar not found: {name}")
            try:
                with tarfile.open(tar, "r:") as archive:
                    members = archive.getmembers()
            except tarfile.ReadError as exc:
                raise InvalidInputError(f"{name} is not an uncompressed tar ({exc}); webdataset "
                                        f"shards are plain .tar files") from None
            for m in members:
                if not is_image_path(m.name):
                    continue
                rel = f"{tar.name}/{m.name}"
                if not m.isreg():
                    skipped.append((rel, "not a regular file in the tar"))
                elif m.size > max_bytes:
                    skipped.append((rel, too_large(m.size, max_bytes)))
                else:
                    items.append(Item(rel, str(tar), m.size, float(m.mtime), m.offset_data, m.size))
    return items, skipped
