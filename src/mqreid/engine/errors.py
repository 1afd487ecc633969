"""Mistakes a user can fix, reported as one clear message instead of a traceback.

The start-up check (:mod:`mqreid.engine.validate`) and the data and checkpoint loaders raise these with a
message that names the setting or the file and what was expected; the entry points print it and exit with
status 2, as they do for invalid settings. Errors from anywhere else keep their traceback.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.errors import InstantiationException

from mqreid.data.base import DatasetError

from .checkpoint import CheckpointError
from .validate import ConfigError

DATA_ROOT_ADVICE = ("If the data is already elsewhere, point data_root at the folder that holds it "
                    "(data_root=/path/to/datasets on the command line, or MQREID_DATA=/path/to/datasets in the "
                    "environment); datasets live under <data_root>/<name>/.")


def user_error(err: BaseException) -> BaseException | None:
    """The user-facing error inside ``err`` (Hydra wraps a constructor's error in InstantiationException)."""
    seen = err
    while seen is not None:
        if isinstance(seen, (ConfigError, DatasetError, CheckpointError)):
            return seen
        seen = seen.__cause__ if isinstance(seen, InstantiationException) or seen.__cause__ is not None else None
    return None


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a user error's message (without the traceback) and exit with status 2."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        found = user_error(err)
        if found is None:
            raise
        message = str(found)
        if isinstance(found, DatasetError) and message.startswith(("missing folder", "missing CSV", "missing list")) \
                and "data_root" not in message:
            message = f"{message}\n{DATA_ROOT_ADVICE}"
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
