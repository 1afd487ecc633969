"""Training curves of one or more runs from their ``metrics.jsonl``.

    mqreid-plot outputs/2026-11-24/10-00-00                 # -> <run>/curves.png
    mqreid-plot multirun/.../0 multirun/.../1 [--out cmp.png]  # overlaid -> <parent of 0>/curves_compare.png

Four panels against the epoch: mAP and Rank-1 (evaluated epochs, epoch 0 = before training); the number of
clusters and the outlier ratio; pseudo-label quality (ARI, NMI, purity; only when the training ids are
known); the loss and the temperature. Missing, null and NaN values are left out; a panel with nothing to show
says so. Several runs are drawn in one colour each, the metrics of a panel in different line styles.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mqreid.visualize import save_figure

__all__ = ["PANELS", "curves_figure", "load_series", "main", "metrics_file", "plot_runs", "read_metrics"]

Series = dict[str, tuple[np.ndarray, np.ndarray]]

# (title, [(key, label)] on the left axis, [(key, label)] on a right axis, left axis label, right axis label)
PANELS = (
    ("Retrieval", [("mAP", "mAP"), ("rank1", "Rank-1")], [], "%", None),
    ("Clustering", [("clusters", "clusters")], [("outlier_ratio", "outlier ratio")], "clusters", "outlier ratio"),
    ("Pseudo-label quality", [("ari", "ARI"), ("nmi", "NMI"), ("purity", "purity")], [], "score", None),
    ("Training", [("loss", "loss")], [("temperature", "temperature")], "loss", "temperature"),
)
STYLES = ("-", "--", ":")


def metrics_file(run: str | os.PathLike) -> Path:
    """``run``'s ``metrics.jsonl`` (``run`` is a run directory or the file itself)."""
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        where = f"run directory {run} has no metrics.jsonl" if run.is_dir() else f"{run} does not exist"
        raise FileNotFoundError(f"{where} (expected a run directory written by train.py, or its metrics.jsonl)")
    return path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (one JSON object with an integer ``epoch`` per line).

    A last line without its newline that is not valid JSON (being written) is ignored; any other bad line,
    or a file without rows, raises a ValueError naming the file and line.
    """
    path = metrics_file(path)
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the trainer is writing this line
            raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}): {line[:80]!r}") from err
        if not isinstance(row, dict) or isinstance(row.get("epoch"), bool) or not isinstance(row.get("epoch"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer 'epoch', got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} is empty: no epoch has been logged yet")
    return rows


def load_series(run: str | os.PathLike) -> Series:
    """Every numeric metric of a run as ``{key: (epochs [n] int64, values [n] float64)}``, sorted by epoch.

    Only finite values are kept (null and NaN are dropped), so e.g. ``mAP`` holds the evaluated epochs only.
    When an epoch was logged twice (a resumed run) its last row wins.
    """
    by_epoch: dict[int, dict] = {}
    for row in read_metrics(run):
        by_epoch[row["epoch"]] = row
    series: dict[str, tuple[list[int], list[float]]] = {}
    for epoch in sorted(by_epoch):
        for key, value in by_epoch[epoch].items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                epochs, values = series.setdefault(key, ([], []))
                epochs.append(epoch)
                values.append(float(value))
    return {k: (np.array(e, dtype=np.int64), np.array(v, dtype=np.float64)) for k, (e, v) in series.items()}


def curves_figure(runs: Mapping[str, Series], title: str | None = None) -> Figure:
    """The four panels of :data:`PANELS` for ``runs`` (``{label: load_series(...)}``, drawn in order)."""
    if not runs:
        raise ValueError("curves_figure: no run given")
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    several = len(runs) > 1
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (panel, left, right, left_label, right_label) in zip(axes, PANELS):
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        twin = ax.twinx() if right else None
        handles, drawn = [], False
        for i, (key, label) in enumerate(left + right):
            target = ax if i < len(left) else twin
            style = STYLES[i % len(STYLES)]
            present = False
            for j, series in enumerate(runs.values()):
                if key not in series:
                    continue
                epochs, values = series[key]
                color = colors[j] if several else f"C{i}"
                target.plot(epochs, values, style, color=color, marker="o", markersize=3, linewidth=1.5)
                present = True
            if present:
                drawn = True
                handles.append(Line2D([], [], linestyle=style, marker="o", markersize=3,
                                      color="black" if several else f"C{i}", label=label))
        ax.set_ylabel(left_label)
        if twin is not None:
            twin.set_ylabel(right_label)
        if drawn:  # on the top axes, so no line of the twin axes crosses it
            (twin or ax).legend(handles=handles, fontsize=8, loc="best")
        else:
            names = ", ".join(label for _, label in left + right)
            ax.text(0.5, 0.5, f"no {names} in metrics.jsonl", transform=ax.transAxes, ha="center", va="center",
                    color="gray")
    if several:
        fig.legend(handles=[Line2D([], [], color=c, linewidth=2, label=name) for c, name in zip(colors, runs)],
                   loc="outside lower center", ncols=min(len(runs), 4), fontsize=9)
    fig.suptitle(title or (next(iter(runs)) if not several else f"{len(runs)} runs"))
    return fig


def _labels(paths: Sequence[Path]) -> list[str]:
    """Run names for the legend: the folder names, or the paths below their common folder when names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    names = [str(p.resolve().relative_to(common)) or p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def plot_runs(runs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Path:
    """Draw the curves of ``runs`` (run directories or metrics.jsonl files) and write them as a PNG.

    ``out`` defaults to ``<run>/curves.png`` for one run and to ``curves_compare.png`` in the first run's
    parent folder for several. Returns the path written.
    """
    if not runs:
        raise ValueError("plot_runs: no run given")
    files = [metrics_file(r) for r in runs]
    dirs = [f.parent for f in files]
    series = {name: load_series(f) for name, f in zip(_labels(dirs), files)}
    if out is None:
        out = dirs[0] / "curves.png" if len(dirs) == 1 else dirs[0].parent / "curves_compare.png"
    fig = curves_figure(series, title=str(dirs[0]) if len(dirs) == 1 else None)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqreid-plot", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or their metrics.jsonl files)")
    parser.add_argument("--out", metavar="PNG", help="the picture to write (default: <run>/curves.png for one run, "
                                                     "curves_compare.png beside the first run for several)")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.runs, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"mqreid-plot: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
