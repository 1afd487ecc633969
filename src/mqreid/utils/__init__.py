"""Helpers below every other package of mqreid: they import nothing from it (only the standard library), so
``data``, ``engine``, ``visualize`` and the tools can all use them without an import that climbs upwards."""
