"""Finding a collection's image files: what is read, and what is skipped and why.

Regular files with an image extension, up to a size cap, in the folder and its non-hidden
subfolders; symbolic links only when they point inside the folder (or anywhere with
follow_links=True). Everything else that looks like an image (a named pipe, a socket, a
device, a link out of the folder, a dangling or looping link, a file over the cap, a name
the index cannot hold) is reported with the reason; none of them stops a run.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagetext.index.store import path_to_db
from imagetext.io.images import DEFAULT_MAX_FILE_BYTES, is_image_path, not_regular, too_large


@dataclass
class Scanned:
    """One entry of the scan: a file to read (`reason` None) or one skipped, and why."""

    rel: str  # path relative to the root, POSIX separators (surrogate-escaped if not UTF-8)
    path: Path  # the file to open: the entry itself, or where its symbolic link points
    st: os.stat_result | None
    reason: str | None = None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_folder(root: Path, skip: Path | None = None, follow_links: bool = False,
                max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Scanned]:
    """Every image file under `root` (recursively, no hidden files or folders, not `skip`),
    in a stable order: those to read, and those skipped with the reason.

    Only regular files are read, and none over `max_bytes`. A symbolic link is followed when
    it points inside `root` (a linked folder inside is not walked twice), or anywhere with
    `follow_links` (each folder walked once, so link loops end); a link pointing out of the
    folder otherwise, a dangling one and a loop are skipped and reported. Files whose name
    has no image extension are not looked at, so neither are links to them."""
    real_root = os.path.realpath(root)
    skip_real = os.path.realpath(skip) if skip is not None else None
    walked = {real_root}
    stack: list[tuple[Path, str]] = [(Path(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if prefix:  # an unreadable subfolder: say so, go on with the rest
                yield Scanned(prefix.rstrip("/"), folder, None,
                              f"folder not readable ({exc.strerror or exc})")
                continue
            raise
        subfolders: list[tuple[Path, str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel, path = prefix + name, Path(entry.path)
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if skip_real is None or os.path.realpath(path) != skip_real:
                    subfolders.append((path, rel + "/"))
                continue
            if is_link:
                found = _follow_link(path, rel, real_root, skip_real, follow_links, walked)
                if isinstance(found, tuple):
                    subfolders.append(found)
                    continue
                if found is None:
                    continue
                if found.reason is None and found.st.st_size > max_bytes:
                    found.reason = too_large(found.st.st_size, max_bytes)
                yield _storable(found)
                continue
            if not is_image_path(name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                yield Scanned(rel, path, None, f"cannot read ({exc.strerror or exc})")
                continue
            reason = (not_regular(st.st_mode) if not stat.S_ISREG(st.st_mode)
                      else too_large(st.st_size, max_bytes) if st.st_size > max_bytes else None)
            yield _storable(Scanned(rel, path, st, reason))
        stack.extend(reversed(subfolders))


def _follow_link(path: Path, rel: str, real_root: str, skip_real: str | None, follow_links: bool,
                 walked: set[str]) -> Scanned | tuple[Path, str] | None:
    """What a symbolic link in the collection is: a file to read or skip (Scanned), a folder
    to walk (its path and prefix), or nothing to report (None)."""
    image = is_image_path(path.name)
    try:
        st = os.stat(path)
    except OSError as exc:
        if not image and Path(path.name).suffix:
            return None  # a broken link to some other kind of file: not ours to report
        if exc.errno == errno.ELOOP:
            return Scanned(rel, path, None, "symbolic link loop")
        if exc.errno == errno.ENOENT:
            return Scanned(rel, path, None, f"dangling symbolic link (to {os.readlink(path)!r}, "
                                             f"which does not exist)")
        return Scanned(rel, path, None, f"cannot follow symbolic link ({exc.strerror or exc})")
    target = os.path.realpath(path)
    inside = _inside(target, real_root)
    if stat.S_ISDIR(st.st_mode):
        if skip_real is not None and _inside(target, skip_real):
            return None
        if inside:
            return None  # walked under its real name already
        if not follow_links:
            return Scanned(rel, path, None, "symbolic link to a folder outside the collection "
                                            "(--follow-links follows it)")
        if target in walked:
            return None  # a loop, or a folder walked already: once is enough
        walked.add(target)
        return (path, rel + "/")
    if not image:
        return None
    if not inside and not follow_links:
        return Scanned(rel, path, None, "symbolic link to a file outside the collection "
                                        "(--follow-links indexes it)")
    reason = None if stat.S_ISREG(st.st_mode) else not_regular(st.st_mode)
    return Scanned(rel, Path(target), st, reason)


def _storable(entry: Scanned) -> Scanned:
    """A name the index cannot hold is skipped (never fatal to a batch)."""
    if entry.reason is None:
        try:
            path_to_db(entry.rel)
        except UnicodeError:
            entry.reason = "file name cannot be stored in the index (not a valid file name encoding)"
    return entry
