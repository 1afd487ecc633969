"""Atomic file writes: a file is either the previous version or the complete new one, never a truncated one.

Every file mqreid writes (checkpoints, JSON, metrics, pictures, reports, ONNX graphs) goes through here.
No third-party imports, so light tools can use it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _file_mode() -> int:
    """The permissions ``open()`` would give a new file under the process umask (0o644 for umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is fsynced and renamed to ``path``.

    On any error (a crash, a full disk) the temporary file is removed and the error propagates, so ``path``
    keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())  # mkstemp creates the file readable by its owner only
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a file opened with ``mode`` and put it in place atomically (see
    :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
