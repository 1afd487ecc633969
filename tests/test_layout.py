"""The package's imports point one way: nothing imports upwards into ``engine`` from the Python API's
drawing module, and ``mqreid.utils`` imports nothing of mqreid (read from the source, nothing is run)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mqreid"


def mqreid_imports(path: Path) -> set[str]:
    """The mqreid modules ``path`` imports (absolute names; relative imports resolved against its package)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
    return {n for n in names if n == "mqreid" or n.startswith("mqreid.")}


def test_utils_import_nothing_of_mqreid():
    files = sorted((SRC / "utils").glob("*.py"))
    assert files, "src/mqreid/utils/ holds the atomic writer"
    for path in files:
        assert mqreid_imports(path) <= {"mqreid.utils"}, path


def test_visualize_and_the_data_package_do_not_import_the_engine():
    for path in [SRC / "visualize.py", *sorted((SRC / "data").glob("*.py"))]:
        upward = {n for n in mqreid_imports(path) if n.startswith("mqreid.engine")}
        assert not upward, f"{path.relative_to(SRC)} imports {upward}"


def test_the_atomic_writer_is_used_from_utils():
    users = [p for p in SRC.rglob("*.py") if "write_atomic" in p.read_text() or "atomic_path" in p.read_text()]
    for path in users:
        if path.parent.name == "utils":
            continue
        assert "mqreid.engine.atomic" not in mqreid_imports(path), path
    assert any(path.name == "visualize.py" for path in users)
