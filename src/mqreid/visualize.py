"""Figures of retrieval results and clusters, drawn with matplotlib (Agg) from image files.

- :func:`ranked_list_figure`: query rows with their top-k gallery matches under the Market-1501 protocol
  (gallery images of the query's id seen by the query's camera are left out), green/red borders for
  correct/wrong matches. Queries are the worst and the best by average precision and random ones.
- :func:`cluster_gallery_figure`: rows of cluster members (the largest clusters, the most impure ones,
  random ones) and a row of outliers.
- :func:`save_figure`: write a figure as a PNG through a temporary file renamed into place.

Arrays may be numpy arrays, lists or torch tensors (CPU or GPU). Nothing here imports torch.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mqreid.utils.atomic import write_atomic

__all__ = ["average_precision", "cluster_gallery_figure", "cluster_purity", "filtered_ranking",
           "ranked_list_figure", "save_figure", "select_clusters", "select_queries"]

# Figures are laid out in pixels at DPI: each image is shown at IMAGE_SIZE pixels whatever its resolution
# (64x32 images are enlarged, 256x128 ones reduced), and save_figure writes a 256-colour PNG, so the default
# 6 x 11 ranked list of photographs is about 550 x 750 pixels and at most about 150 KB.
DPI = 100
IMAGE_SIZE = (80, 40)         # (height, width) in pixels of each shown image (person crops are 2:1)
CAPTION_PX = 14               # room above each image for one line of caption
ROW_TITLE_PX = 16             # room above each row for the row title
CELL_PAD_PX = 8               # horizontal room between images
FONT_SIZE = 6.5               # points
CORRECT, WRONG, QUERY, NEUTRAL = "#1a9850", "#d73027", "#2166ac", "#999999"


# ---------------------------------------------------------------------------------------------- arrays
def _numpy(x: Any, name: str, ndim: int, dtype: type | None = None) -> np.ndarray:
    """``x`` (numpy, list or torch tensor) as a numpy array of ``ndim`` dimensions."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def _ids(x: Any, name: str, length: int, length_name: str) -> np.ndarray:
    arr = _numpy(x, name, 1)
    if arr.shape[0] != length:
        raise ValueError(f"{name}: expected {length} entries ({length_name}), got {arr.shape[0]}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------- ranking
def filtered_ranking(distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray,
                     g_camids: np.ndarray) -> np.ndarray:
    """Gallery indices sorted by ``distances`` [G] (ties keep gallery order), without the items of the
    query's id seen by the query's camera (Market-1501 protocol). Returns [G'] int64."""
    order = np.argsort(distances, kind="stable")
    keep = ~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))
    return order[keep]


def average_precision(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                      chunk_size: int = 64) -> np.ndarray:
    """Average precision of each query under the Market-1501 protocol.

    Args:
        distmat: [Q, G] distances (smaller = closer).
        q_pids, q_camids: [Q] ids and cameras of the queries; g_pids, g_camids: [G].
        chunk_size: queries ranked at once (memory O(chunk_size x G)).

    Returns:
        [Q] float64 AP, NaN for a query without a correct match on another camera.
    """
    dist = _numpy(distmat, "distmat", 2)
    num_q, num_g = dist.shape
    q_pids, q_camids = _ids(q_pids, "q_pids", num_q, "distmat rows"), _ids(q_camids, "q_camids", num_q, "distmat rows")
    g_pids, g_camids = _ids(g_pids, "g_pids", num_g, "distmat columns"), _ids(g_camids, "g_camids", num_g,
                                                                             "distmat columns")
    ap = np.full(num_q, np.nan)
    for start in range(0, num_q, chunk_size):
        rows = slice(start, start + chunk_size)
        order = np.argsort(dist[rows], axis=1, kind="stable")
        same_pid = g_pids[order] == q_pids[rows, None]
        keep = ~(same_pid & (g_camids[order] == q_camids[rows, None]))
        matches = same_pid & keep
        position = np.maximum(np.cumsum(keep, axis=1), 1)  # 1-based position in the filtered ranking
        precision = np.cumsum(matches, axis=1) / position
        num = matches.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[rows] = np.where(num > 0, (precision * matches).sum(axis=1) / num, np.nan)
    return ap


def _split_thirds(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` nearly equal counts, the first ones the largest (6, 3 -> 2, 2, 2)."""
    counts = []
    for i in range(parts):
        counts.append(math.ceil((n - sum(counts)) / (parts - i)))
    return counts


def select_queries(ap: Any, num_queries: int, seed: int = 0) -> list[tuple[int, str]]:
    """Queries to show: the worst by AP, the best by AP and random ones (a third each, worst first).

    Args:
        ap: [Q] average precision per query, NaN for queries without a correct match (see
            :func:`average_precision`); those are only drawn as random ones when nothing else is left.
        num_queries: how many (at most Q).
        seed: seed of the random draw.

    Returns:
        ``(query index, kind)`` pairs, kind in ``"worst"``, ``"best"``, ``"random"``: worst ones by
        increasing AP, best ones by decreasing AP, random ones by index. Ties go to the lower index.
    """
    ap = _numpy(ap, "ap", 1, float)
    num_queries = _check_count("num_queries", num_queries)
    n = min(num_queries, len(ap))
    n_worst, n_best, _ = _split_thirds(n, 3)
    valid = np.flatnonzero(np.isfinite(ap))
    ascending = valid[np.lexsort((valid, ap[valid]))]
    descending = valid[np.lexsort((valid, -ap[valid]))]
    worst = [int(i) for i in ascending[:n_worst]]
    best = [int(i) for i in descending if int(i) not in worst][:n_best]
    chosen = set(worst) | set(best)
    rng = np.random.default_rng(seed)
    n_random = n - len(worst) - len(best)
    pool = np.array([i for i in valid if int(i) not in chosen], dtype=np.int64)
    picked = rng.choice(pool, size=min(n_random, len(pool)), replace=False) if len(pool) else pool
    if len(picked) < n_random:  # not enough queries with a match: fill with the others
        rest = np.setdiff1d(np.arange(len(ap)), np.concatenate([pool, list(chosen)]).astype(np.int64))
        picked = np.concatenate([picked, rng.choice(rest, size=n_random - len(picked), replace=False)])
    random = sorted(int(i) for i in picked)
    return [(i, "worst") for i in worst] + [(i, "best") for i in best] + [(i, "random") for i in random]


# ---------------------------------------------------------------------------------------------- clusters
def cluster_purity(labels: Any, true_pids: Any) -> dict[int, tuple[float, int]]:
    """Per cluster (label >= 0): (purity = share of its most frequent true id, that id)."""
    labels = _numpy(labels, "labels", 1).astype(np.int64)
    true = _ids(true_pids, "true_pids", len(labels), "one per label")
    out = {}
    for c in np.unique(labels[labels >= 0]):
        ids, counts = np.unique(true[labels == c], return_counts=True)
        best = int(np.argmax(counts))  # np.unique sorts ids, so ties go to the lowest id
        out[int(c)] = (float(counts[best] / counts.sum()), int(ids[best]))
    return out


def select_clusters(labels: Any, true_pids: Any | None, num_clusters: int, seed: int = 0) -> list[tuple[int, str]]:
    """Clusters to show: the largest, the most impure (when ``true_pids`` is given) and random ones.

    With true ids the rows are split in thirds (largest, most impure, random), without them in halves
    (largest, random). Ties go to the lower cluster id; the most impure among equally pure clusters are
    the larger ones. Returns ``(cluster id, kind)`` pairs, kind in ``"largest"``, ``"most impure"``,
    ``"random"``.
    """
    labels = _numpy(labels, "labels", 1).astype(np.int64)
    num_clusters = _check_count("num_clusters", num_clusters)
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    n = min(num_clusters, len(ids))
    counts = _split_thirds(n, 3) if true_pids is not None else [*_split_thirds(n, 2)[:1], 0]
    largest = [int(c) for c in ids[np.lexsort((ids, -sizes))][:counts[0]]]
    impure: list[int] = []
    if true_pids is not None:
        purity = cluster_purity(labels, true_pids)
        p = np.array([purity[int(c)][0] for c in ids])
        impure = [int(c) for c in ids[np.lexsort((ids, -sizes, p))] if int(c) not in largest][:counts[1]]
    rest = np.array([int(c) for c in ids if int(c) not in largest and int(c) not in impure], dtype=np.int64)
    n_random = n - len(largest) - len(impure)
    random = sorted(int(c) for c in np.random.default_rng(seed).choice(rest, size=n_random, replace=False)) \
        if n_random else []
    return [(c, "largest") for c in largest] + [(c, "most impure") for c in impure] + [(c, "random") for c in random]


# ---------------------------------------------------------------------------------------------- drawing
class _Thumbnails:
    """Images read from files and resized to ``size`` (height, width), cached by path."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"image_size must be positive (height, width), got {size!r}")
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        key = str(path)
        if key not in self.cache:
            if not Path(key).is_file():
                raise FileNotFoundError(f"image file {key} does not exist")
            try:
                with Image.open(key) as img:
                    img = img.convert("RGB").resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(f"cannot read image {key}: {err}") from err
            self.cache[key] = np.asarray(img)
        return self.cache[key]


def _grid_figure(rows: int, cols: int, image_size: tuple[int, int], caption_lines: int = 1) -> tuple[Figure, list]:
    """A figure of ``rows`` subfigures (one per row, each with a title) of ``cols`` image axes each,
    sized so every image is shown at ``image_size`` pixels below a caption of ``caption_lines`` lines.
    Returns the figure and the [rows] (subfigure, [cols] axes) pairs."""
    height, width = image_size
    caption_px = 4 + (CAPTION_PX - 4) * caption_lines
    row_px = ROW_TITLE_PX + caption_px + height + 4
    col_px = width + CELL_PAD_PX
    fig_w, fig_h = cols * col_px + 8, rows * row_px + 4
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    subfigs = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    out = []
    for sf in subfigs:
        axes = sf.subplots(1, cols, squeeze=False, gridspec_kw=dict(
            left=4 / fig_w, right=1 - 4 / fig_w, bottom=4 / row_px, top=1 - (ROW_TITLE_PX + caption_px) / row_px,
            wspace=CELL_PAD_PX / width))[0]
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_axis_off()
        out.append((sf, axes))
    return fig, out


_ROW_TITLE = dict(fontsize=FONT_SIZE + 1, x=0.01, y=0.995, ha="left", va="top")


def _show(ax, image: np.ndarray, caption: str, border: str | None) -> None:
    """``image`` [h, w, 3] in ``ax`` with ``caption`` above and a coloured frame (None: no frame)."""
    ax.set_axis_on()
    ax.imshow(image, interpolation="nearest")
    ax.set_title(caption, fontsize=FONT_SIZE, pad=2, color=border if border not in (None, NEUTRAL) else "black")
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_edgecolor(border)
            spine.set_linewidth(2.0)


def _format_distance(d: float) -> str:
    return f"{d:.3f}" if abs(d) < 100 else f"{d:.3g}"


def ranked_list_figure(query_paths: Sequence[str | os.PathLike], gallery_paths: Sequence[str | os.PathLike],
                       distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, *,
                       num_queries: int = 6, topk: int = 10, seed: int = 0,
                       image_size: tuple[int, int] = IMAGE_SIZE) -> Figure:
    """Rows of a query and its ``topk`` closest gallery images under the Market-1501 protocol.

    Args:
        query_paths: [Q] image files of the queries; gallery_paths: [G] of the gallery.
        distmat: [Q, G] query-gallery distances (smaller = closer).
        q_pids, q_camids: [Q] ids and cameras of the queries; g_pids, g_camids: [G] of the gallery.
        num_queries: rows: the worst and the best queries by AP and random ones, about a third each
            (:func:`select_queries`; reproducible for a given ``seed``).
        topk: gallery images per row, after leaving out those of the query's id and camera.
        image_size: (height, width) in pixels each image is shown at.

    Returns:
        The figure: each row is titled with the kind of query, its index, id, camera and AP; the query comes
        first (blue frame), then its matches with their rank and distance, framed green (same id) or red.
    """
    dist = _numpy(distmat, "distmat", 2)
    if not np.issubdtype(dist.dtype, np.number):
        raise ValueError(f"distmat: expected numbers, got dtype {dist.dtype}")
    num_q, num_g = dist.shape
    if len(query_paths) != num_q or len(gallery_paths) != num_g:
        raise ValueError(f"distmat is [{num_q}, {num_g}] but there are {len(query_paths)} query_paths and "
                         f"{len(gallery_paths)} gallery_paths")
    if num_q == 0 or num_g == 0:
        raise ValueError(f"ranked_list_figure: distmat is empty ({num_q} queries, {num_g} gallery items)")
    topk = _check_count("topk", topk)
    q_pids, q_camids = _ids(q_pids, "q_pids", num_q, "Q"), _ids(q_camids, "q_camids", num_q, "Q")
    g_pids, g_camids = _ids(g_pids, "g_pids", num_g, "G"), _ids(g_camids, "g_camids", num_g, "G")
    ap = average_precision(dist, q_pids, g_pids, q_camids, g_camids)
    chosen = select_queries(ap, num_queries, seed)
    thumb = _Thumbnails(image_size)
    fig, rows = _grid_figure(len(chosen), topk + 1, thumb.size, caption_lines=2)
    for (q, kind), (sf, axes) in zip(chosen, rows):
        score = f"AP {ap[q]:.2f}" if np.isfinite(ap[q]) else "no match on another camera"
        sf.suptitle(f"{kind}: query {q}, id {q_pids[q]}, cam {q_camids[q]}, {score}", **_ROW_TITLE)
        _show(axes[0], thumb(query_paths[q]), "query", QUERY)
        ranking = filtered_ranking(dist[q], q_pids[q], q_camids[q], g_pids, g_camids)[:topk]
        for rank, (g, ax) in enumerate(zip(ranking, axes[1:]), start=1):
            _show(ax, thumb(gallery_paths[g]), f"#{rank}\n{_format_distance(dist[q, g])}",
                  CORRECT if g_pids[g] == q_pids[q] else WRONG)
    return fig


def cluster_gallery_figure(paths: Sequence[str | os.PathLike], labels: Any, true_pids: Any | None = None, *,
                           num_clusters: int = 6, per_cluster: int = 10, seed: int = 0,
                           image_size: tuple[int, int] = IMAGE_SIZE) -> Figure:
    """Rows of cluster members: the largest clusters, the most impure ones, random ones, then outliers.

    Args:
        paths: [N] image files (e.g. the training set).
        labels: [N] cluster of each image, -1 = outlier.
        true_pids: [N] true ids, or None when unknown; with them clusters are ranked by purity (share of the
            most frequent true id), each image is captioned with its id and framed green when it has its
            cluster's majority id, red otherwise.
        num_clusters: cluster rows (:func:`select_clusters`); a row of outliers is added when there are any.
        per_cluster: images per row, a random (seeded) sample of larger clusters, in index order.
        image_size: (height, width) in pixels each image is shown at.

    Returns:
        The figure; rows are titled with the cluster id, its size, its purity (when known) and why it was
        chosen.
    """
    labels = _numpy(labels, "labels", 1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer cluster ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if len(paths) != len(labels):
        raise ValueError(f"labels has {len(labels)} entries for {len(paths)} paths")
    true = _ids(true_pids, "true_pids", len(labels), "one per path") if true_pids is not None else None
    per_cluster = _check_count("per_cluster", per_cluster)
    rng = np.random.default_rng(seed)
    chosen = select_clusters(labels, true, num_clusters, seed)
    purity = cluster_purity(labels, true) if true is not None else {}
    rows: list[tuple[str, np.ndarray, int | None]] = []
    for c, kind in chosen:
        members = np.flatnonzero(labels == c)
        title = f"cluster {c}: {len(members)} images"
        if c in purity:
            title += f", purity {purity[c][0]:.2f} (majority id {purity[c][1]})"
        rows.append((f"{title}; {kind}", members, purity[c][1] if c in purity else None))
    outliers = np.flatnonzero(labels < 0)
    if len(outliers):
        rows.append((f"outliers: {len(outliers)} images ({len(outliers) / len(labels):.0%})", outliers, None))
    if not rows:
        raise ValueError("cluster_gallery_figure: no image to show (labels is empty)")
    shown_rows = []
    for title, members, majority in rows:
        shown = np.sort(rng.choice(members, size=per_cluster, replace=False)) if len(members) > per_cluster \
            else members
        if true is None:
            shown_rows.append((title, [paths[i] for i in shown], [f"#{i}" for i in shown]))
        else:
            borders = [NEUTRAL if majority is None else (CORRECT if true[i] == majority else WRONG) for i in shown]
            shown_rows.append((title, [paths[i] for i in shown], [f"id {true[i]}" for i in shown], borders))
    return image_rows_figure(shown_rows, cols=per_cluster, image_size=image_size)


def image_rows_figure(rows: Sequence[tuple], *, cols: int | None = None,
                      image_size: tuple[int, int] = IMAGE_SIZE) -> Figure:
    """Rows of images in the given order, each row ``(title, paths, captions)`` or ``(title, paths, captions,
    borders)`` with a frame colour (or None) per image (e.g. a few identities of a dataset across its cameras:
    ``bench/identity_picture.py``). ``cols``: images per row (default the longest row's)."""
    if not rows or not any(len(row[1]) for row in rows):
        raise ValueError("image_rows_figure: no image to show")
    for title, paths, captions, *borders in rows:
        if len(paths) != len(captions) or any(len(b) != len(paths) for b in borders):
            raise ValueError(f"image_rows_figure: row {title!r} has {len(paths)} paths and {len(captions)} captions"
                             + "".join(f" and {len(b)} borders" for b in borders))
    thumb = _Thumbnails(image_size)
    fig, grid = _grid_figure(len(rows), cols or max(len(row[1]) for row in rows), thumb.size)
    for (title, paths, captions, *borders), (sf, axes) in zip(rows, grid):
        sf.suptitle(title, **_ROW_TITLE)
        for path, caption, border, ax in zip(paths, captions, borders[0] if borders else [None] * len(paths), axes):
            _show(ax, thumb(path), caption, border)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float | None = None, colors: int | None = 256) -> Path:
    """Write ``fig`` as a PNG to ``path`` (folders created) through a temporary file renamed into place.

    Args:
        dpi: resolution; default the figure's own (:data:`DPI` for the figures of this module, which are laid
            out in pixels).
        colors: reduce the picture to a palette of this many colours (median cut, no dithering), about a third
            of the size of a full-colour PNG for photographs; None keeps full RGB(A).

    Returns:
        ``path`` as a ``Path``.
    """
    if colors is not None and not (isinstance(colors, int) and 2 <= colors <= 256):
        raise ValueError(f"colors must be an int in [2, 256] or None, got {colors!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(f) -> None:
        if colors is None:
            fig.savefig(f, format="png", dpi=dpi or fig.dpi)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi or fig.dpi)
        with Image.open(buffer) as img:
            rgb = img.convert("RGB")
        rgb.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(f, format="PNG",
                                                                                              optimize=True)

    write_atomic(path, write)
    return path


