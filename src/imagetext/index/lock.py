"""The collection's writer lock: an flock on `<index>/lock`.

Every change to the index, destructive or not (indexing, a rebuild, clear), happens under
it, so a second writer is refused (IndexBusyError) before it touches anything. A reader
takes it briefly, and only when free, for the optional writes of the query path (saving a
FAISS file it had to rebuild, storing score offsets): `try_writing`.
"""

from __future__ import annotations

import errno
import fcntl
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from imagetext.errors import IndexBusyError, IndexReadOnlyError, IndexWriteError

# how long a writer waits for the lock (held briefly by a reader saving a FAISS file)
LOCK_WAIT_SECONDS = 1.0
# what an optional write (see try_writing) may meet and shrug off
OPTIONAL_WRITE_ERRORS = (IndexWriteError, sqlite3.OperationalError)


class WriterLock:
    """The writer lock of the index in `index_dir` (reentrant within this object).
    `readonly()` says whether the index is known to be read-only: then it is not even tried."""

    def __init__(self, index_dir: Path, root: Path, readonly: Callable[[], bool]):
        self.index_dir, self.root, self._readonly = index_dir, root, readonly
        self._file = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self, wait: float = LOCK_WAIT_SECONDS) -> None:
        """Take the lock, or raise IndexBusyError / IndexReadOnlyError without having changed
        anything. Waits up to `wait` seconds for a reader that is saving a FAISS file; a
        writer holds it far longer than that."""
        if self._depth:
            self._depth += 1
            return
        try:
            if self._readonly():
                raise PermissionError(errno.EROFS, "read-only")
            lock = open(self.index_dir / "lock", "a")  # noqa: SIM115  (held until released)
        except OSError as exc:
            why = "a read-only disk or folder" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
                else exc.strerror
            raise IndexReadOnlyError(
                f"the index in {self.index_dir} is read-only ({why}): search, similar and info "
                f"work, but indexing needs write access (or --index-dir on a writable disk)") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.close()
                    raise IndexBusyError(f"another process is indexing {self.root}; nothing was "
                                         f"changed. Run this again when it has finished.") from None
                time.sleep(0.05)
        self._file, self._depth = lock, 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def release_all(self) -> None:
        if self._file is not None:
            self._depth = 1
            self.release()

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def try_writing(self) -> Iterator[bool | None]:
        """For optional writes on the query path (saving a FAISS file, storing offsets):
        yields True holding the lock, False while another process writes (the caller then
        leaves the index alone), None on a read-only index."""
        if self._depth:
            yield True
            return
        try:
            self.acquire(wait=0)
        except IndexBusyError:
            yield False
            return
        except IndexReadOnlyError:
            yield None
            return
        try:
            yield True
        finally:
            self.release()
