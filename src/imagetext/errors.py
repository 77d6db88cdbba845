"""Errors a user can cause: each message says what is wrong and, where there is one, the fix.

The CLI prints any `ImagetextError` as one line (`error: ...`) and exits non-zero, without a
traceback; everything else is a bug and keeps its traceback. Each class also keeps the
built-in base it had before this module existed (ValueError, RuntimeError, ...) so code that
catches those still works.
"""

from __future__ import annotations

import sqlite3


class ImagetextError(Exception):
    """An error a user can cause; its message is the whole story."""


class InvalidInputError(ImagetextError, ValueError):
    """Input a user gave that cannot be used (an empty query, a single label, an unknown option,
    a dataset without the split asked for); the message says what to give instead."""


class ModelMismatchError(ImagetextError, RuntimeError):
    """The index was built with another model, or other weights of the same one."""


class IndexBusyError(ImagetextError, RuntimeError):
    """Another process holds the index's writer lock (it is indexing)."""


class IndexLocationError(ImagetextError, OSError):
    """The index folder cannot be used: it is a file, or cannot be created."""


class IndexReadOnlyError(ImagetextError, sqlite3.OperationalError):
    """The index is on a read-only disk or folder: it answers queries, but cannot change."""


class IndexCorruptError(ImagetextError, sqlite3.DatabaseError):
    """The index database is damaged; the message names the command that rebuilds it."""


class IndexWriteError(ImagetextError, OSError):
    """Writing the index failed (disk full, I/O error); what was committed before is kept."""
