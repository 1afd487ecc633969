"""Checkpoints: written atomically, loaded safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_KEYS = ("model", "epoch", "config")


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, fsync it, then rename it into place.

    A crash at any point leaves either the previous file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON through a temporary file renamed into place (never a half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``; errors name the file and what was expected."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .pt file written by train.py, "
                                f"or a run directory containing checkpoints/last.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"cannot load checkpoint {path}: {err}") from err
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not an mqreid checkpoint: it lacks {missing} (expected the keys "
                         f"{list(CHECKPOINT_KEYS)}, as written by train.py)")
    state["path"] = str(path)
    return state
