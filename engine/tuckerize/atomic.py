"""Atomic file writes: a temp file in the target directory, flushed to disk, then os.replace.

Readers (the worker, a retried job resuming from its checkpoint) see either the old file or the
complete new one, never a part.
"""
from __future__ import annotations

import json
import os
import tempfile


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically; the temp file is removed if anything fails on the way."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp's 0600 would hide the artifact from a service running as another user.
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())
