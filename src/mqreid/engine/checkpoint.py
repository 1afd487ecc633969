"""Checkpoints and run files: written atomically, loaded safely, with a format version.

Format 2 (this version): ``last.pt`` = {"format", "model", "temperature", "optimizer", "scheduler", "scaler",
"epoch", "global_step", "history", "results", "config"}; ``best.pt`` = {"format", "model", "epoch",
"metrics", "config"}. Format 1 (files without "format") had the same keys plus "memory" and "rng", which
were never needed: they load as they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mqreid.utils.atomic import write_atomic

FORMAT_VERSION = 2
CHECKPOINT_KEYS = ("model", "epoch", "config")


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`mqreid.utils.atomic.write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so that it serialises as valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (NaN -> null)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda f: f.write(to_json(obj, indent=2)), mode="w")


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not one that train.py wrote."""


class MissingCheckpoint(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``; errors name the file and what was expected.

    ``path`` is a ``.pt`` file or a run directory (its ``checkpoints/last.pt``). The result has
    ``state["path"]`` (the file read) and ``state["format"]``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise MissingCheckpoint(f"checkpoint {path} does not exist (expected a .pt file written by train.py, "
                                f"or a run directory containing checkpoints/last.pt)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a checkpoint: a .pt file written by train.py is a zip archive (torch.save), "
                         f"this file is not one (it starts with {magic!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be loaded safely: it is a torch file, but it holds objects other than "
                         f"tensors and plain containers, or it is damaged; mqreid loads only what train.py writes "
                         f"(and never unpickles arbitrary objects)") from err
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an mqreid checkpoint: it lacks {missing} (expected the keys "
                         f"{list(CHECKPOINT_KEYS)}, as written by train.py)")
    version = state.get("format", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}, newer than this mqreid reads "
                         f"({FORMAT_VERSION}): upgrade mqreid to load it")
    state["format"] = version
    state["path"] = str(path)
    return state


def network_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """``(network, stored config, file read)`` of a checkpoint: the backbone rebuilt from the stored
    ``backbone`` config with ``pretrained=False`` (the checkpoint holds every weight), on the CPU."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    state = load_checkpoint(path, map_location="cpu")
    config, where = state["config"], state["path"]
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict) \
            or "_target_" not in config["backbone"]:
        raise CheckpointError(f"{where}: the stored config has no 'backbone' node with a '_target_'; "
                              f"was the checkpoint written by train.py?")
    size = config.get("input") or {}
    if not isinstance(size, dict) or not isinstance(size.get("height"), int) \
            or not isinstance(size.get("width"), int):
        raise CheckpointError(f"{where}: the stored config lacks integer 'input.height' and 'input.width' "
                              f"(got input={size!r})")
    network = instantiate(OmegaConf.create(config["backbone"]), pretrained=False)
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{where}: the weights do not fit the stored backbone "
                              f"{config['backbone'].get('arch', config['backbone']['_target_'])}: {err}") from err
    return network, config, where
