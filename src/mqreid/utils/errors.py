"""One format for a bad setting, shared by the start-up check and the components: ``<name>=<value>: expected
<what>``, the value written as it is typed on the command line."""

from __future__ import annotations

from typing import Any


def typed(value: Any) -> str:
    """A value as it is typed on the command line (``true``, ``null``, ``abc``, ``0.5``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value) if str(value) else "''"


def setting_problem(name: str, value: Any, expected: str) -> str:
    """``<name>=<value as typed>: expected <expected>``, the one line the start-up check prints per setting."""
    return f"{name}={typed(value)}: expected {expected}"


class SettingError(ValueError):
    """A bad value of one setting, for a component that does not know the config group it is built from
    (a clusterer is ``DBSCANClusterer(eps=...)`` in Python and ``clusterer.eps`` on the command line).

    ``str(err)`` is ``<name>=<value>: expected <what>``; the start-up check prefixes the group, so the user
    reads ``clusterer.eps=-1: expected ...``."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        self.name, self.value, self.expected = name, value, expected
        super().__init__(setting_problem(name, value, expected))
