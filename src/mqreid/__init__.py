"""mqreid: unsupervised re-identification with clustering and a multi-queue memory.

``mqreid.ReIDModel`` and ``mqreid.rank_gallery`` (see :mod:`mqreid.inference`) are imported on first
access, so ``import mqreid`` itself stays cheap (no torch import).
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"ReIDModel": "mqreid.inference", "rank_gallery": "mqreid.inference"}

__all__ = ["ReIDModel", "__version__", "rank_gallery"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mqreid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
