"""Inner-product k-nearest-neighbour search: exact (blocked GEMM + top-k, or faiss) or approximate.

Backends (``knn=`` of the clusterers):

- ``torch``: exact; blocked GEMM over the upper triangle of the symmetric similarity matrix (numpy
  BLAS on CPU, full-width panels + top-k on an accelerator).
- ``faiss``: exact; faiss ``IndexFlatIP`` (computes all N x N similarities; a GPU index for CUDA
  features when faiss has GPU support).
- ``approx``: approximate, for N beyond exact reach (needs faiss): an inverted-file partition by
  faiss k-means, searched cell by cell with one GEMM per cell (:func:`_approx_candidates`).
- ``auto``: ``torch`` up to :data:`AUTO_APPROX_ABOVE` points (measured faster than ``faiss``,
  which computes both triangles); above it ``approx`` when faiss imports, else ``torch`` with a
  warning giving the expected time.

Tie order (identical on the exact backends): neighbours are sorted by decreasing similarity;
among equal similarities the point itself comes first (self-search only), then the lower index.
Each backend first keeps the ``k + 1`` best candidates per row; a row whose k-th and (k+1)-th
similarities are equal (a tie across the cut, e.g. duplicate features) is recomputed exactly
against every base point, so which of several tied points are kept never depends on the backend
(``approx`` sorts the same way but does not recompute ties).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Backend = Literal["auto", "faiss", "torch", "approx"]
BACKENDS = ("auto", "faiss", "torch", "approx")
_NORM_TOL = 1e-3
# Largest N that ``auto`` searches exactly: the exact kNN costs N^2 * D multiply-adds (upper
# triangle), 2.6 min at 100k x 2048 on the 2-core development CPU and growing quadratically.
AUTO_APPROX_ABOVE = 100_000
_EXACT_FLOPS = 1e11  # multiply-adds per second assumed for the expected time in the warning
# approx: cells = CELLS_PER_SQRT_N * sqrt(N) k-means cells (faiss's guideline is 4-16 sqrt(N));
# each cell is searched in its PROBE_CELLS nearest cells (itself included).
CELLS_PER_SQRT_N = 4
PROBE_CELLS = 16
_CHUNK = 1 << 16  # rows converted to float32 at a time when features are float16


def as_unit_features(features: torch.Tensor | np.ndarray, name: str = "features",
                     keep_half: bool = False) -> torch.Tensor:
    """Validate ``features`` [N, D] and return them as a float32 tensor with unit-norm rows.

    The device of a tensor input is kept. Rows whose norm differs from 1 by more than 1e-3 are
    L2-normalised (logged once). Raises ``ValueError`` naming ``name`` for a wrong shape,
    NaN/inf values, or an all-zero row (which has no direction). With ``keep_half``, float16
    features (e.g. a memory-mapped array) stay float16 and are checked in chunks, so a million
    2048-d features never exist as float32 at once.
    """
    x = torch.as_tensor(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] array, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name}: expected a float array, got dtype {x.dtype}")
    if keep_half and x.dtype == torch.float16:
        norms = torch.cat([x[s:s + _CHUNK].float().norm(dim=1) for s in range(0, len(x), _CHUNK)])
    else:
        x = x.float()
        norms = x.norm(dim=1)
    if not bool(torch.isfinite(norms).all()):  # finite norms imply finite entries: one pass, not two
        if not all(bool(torch.isfinite(x[s:s + _CHUNK]).all()) for s in range(0, len(x), _CHUNK)):
            raise ValueError(f"{name}: contains NaN or inf values")
        norms = torch.cat([x[s:s + _CHUNK].double().norm(dim=1).float() for s in range(0, len(x), _CHUNK)])
    if bool((norms == 0).any()):
        raise ValueError(f"{name}: row {int(torch.nonzero(norms == 0)[0])} is all zeros; cannot normalise")
    if bool(((norms - 1).abs() > _NORM_TOL).any()):
        log.info("%s are not L2-normalised; normalising rows", name)
        if x.dtype == torch.float16:
            return torch.cat([(x[s:s + _CHUNK].float() / norms[s:s + _CHUNK, None]).half()
                              for s in range(0, len(x), _CHUNK)])
        x = x / norms[:, None]
    return x.contiguous()


def _faiss_available() -> bool:
    try:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU-feature probe
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def check_params(owner: object, positive_ints: tuple[str, ...]) -> None:
    """Validate a clusterer's integer parameters (each >= 1) and its ``knn`` backend name."""
    for name in positive_ints:
        value = getattr(owner, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if owner.knn not in BACKENDS:
        raise ValueError(f"knn: expected one of {BACKENDS}, got {owner.knn!r}")


def resolve_backend(backend: str, n: int = 0, dim: int = 0) -> str:
    """The backend that searches ``n`` points of dimension ``dim``: validates the name and maps
    ``auto`` (logged) to ``torch``, or above :data:`AUTO_APPROX_ABOVE` points to ``approx``."""
    if backend not in BACKENDS:
        raise ValueError(f"knn backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if n <= AUTO_APPROX_ABOVE:
            backend = "torch"
            log.info("kNN backend: torch (auto, exact)")
        elif _faiss_available():
            backend = "approx"
            log.info("kNN backend: approx (auto: %d points > %d)", n, AUTO_APPROX_ABOVE)
        else:
            backend = "torch"
            log.warning("kNN backend: torch, exact, for %d points (auto: above %d it would be approx, but faiss "
                        "is not installed: pip install faiss-cpu); expect roughly %.0f min", n, AUTO_APPROX_ABOVE,
                        n * n * dim / _EXACT_FLOPS / 60)
    elif backend in ("faiss", "approx") and not _faiss_available():
        raise ValueError(f"knn={backend!r} needs faiss, which is not installed (pip install faiss-cpu, or the "
                         f"mqreid[faiss] extra); knn=torch searches exactly without it")
    return backend


def _matmul_t(a: torch.Tensor, b: torch.Tensor, buffer: np.ndarray | None = None) -> torch.Tensor:
    """``a @ b.T`` [A, B]. On CPU through numpy's BLAS (OpenBLAS sgemm measured ~20% faster than
    torch's MKL matmul on the development CPU), written into ``buffer`` (float32, >= A*B
    elements) when given: reusing it avoids page-faulting a fresh block per call."""
    if a.device.type != "cpu":
        return a @ b.T
    if buffer is None:
        return torch.from_numpy(a.numpy() @ b.numpy().T)
    out = buffer[: a.shape[0] * b.shape[0]].reshape(a.shape[0], b.shape[0])
    np.matmul(a.numpy(), b.numpy().T, out=out)
    return torch.from_numpy(out)


def _topk(sims: np.ndarray, m: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest entries of each row of ``sims`` (unsorted, padded with -inf to ``m``
    columns when a row is shorter) and their column indices plus ``offset``."""
    v, i = torch.topk(torch.from_numpy(sims), min(m, sims.shape[1]), dim=1)  # faster than argpartition
    pad = ((0, 0), (0, m - v.shape[1]))
    return np.pad(v.numpy(), pad, constant_values=-np.inf), np.pad(i.numpy() + offset, pad)


def _merge_topk(vals: np.ndarray, idx: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                new_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best ``m`` of each row of ``vals``/``idx`` [R, m] together with extra candidates
    (``rows`` [E] local row, ``cols`` [E] base index, ``new_vals`` [E]): one padded top-k."""
    if len(rows) == 0:
        return vals, idx
    small = len(vals) <= np.iinfo(np.int16).max  # radix sort for int16 keys
    order = np.argsort(rows.astype(np.int16) if small else rows, kind="stable")
    rows = rows[order]
    counts = np.bincount(rows, minlength=len(vals))
    pos = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows] + vals.shape[1]
    pad_v = np.full((len(vals), pos.max() + 1), -np.inf, np.float32)
    pad_i = np.zeros(pad_v.shape, np.int64)
    pad_v[:, :vals.shape[1]], pad_i[:, :vals.shape[1]] = vals, idx
    pad_v[rows, pos], pad_i[rows, pos] = new_vals[order], cols[order]
    v, i = _topk(pad_v, vals.shape[1], 0)
    return v, np.take_along_axis(pad_i, i, 1)


def _blocked_candidates(x: np.ndarray, base: np.ndarray | None, m: int, block: int):
    """The ``m`` most similar base rows of each row of ``x`` by blocked exact GEMM (CPU).

    Self-search (``base is None``) computes only the blocks on and above the diagonal of the
    symmetric similarity matrix and uses each off-diagonal block for both its rows and columns.
    A full top-k runs once per row block (on its diagonal block, or its first base block); every
    later block is only compared with each row's m-th best similarity in that first block (a
    lower bound of its final m-th best), and the few entries above it are merged once per row
    block. This selection costs a small fraction of the GEMM; a top-k of every block (and of its
    transpose) cost about as much as the GEMM itself. Returns (sims [N, m], idx [N, m]) unsorted.
    """
    n = x.shape[0]
    y = x if base is None else base
    starts = range(0, n, block)
    buffer = np.empty(block * min(block, y.shape[0]), np.float32)  # reused: no page faults per block

    def sims_of(s, t):
        out = buffer[:len(x[s:s + block]) * len(y[t:t + block])].reshape(len(x[s:s + block]), -1)
        return np.matmul(x[s:s + block], y[t:t + block].T, out=out)

    best = {s: _topk(sims_of(s, s if base is None else 0), m, s if base is None else 0) for s in starts}
    thr = {s: np.ascontiguousarray(best[s][0][:, -1]) for s in starts}  # -inf if the block was narrow
    extra = {s: [] for s in starts}  # row block -> [(local rows, base index, sims)]
    for s in starts:
        for t in range(s + block if base is None else block, y.shape[0], block):
            sims = sims_of(s, t)
            mask = sims > thr[s][:, None]
            if base is None:
                mask |= sims > thr[t][None, :]
            r, c = np.divmod(np.flatnonzero(mask), mask.shape[1])  # 6x faster than 2-D nonzero
            vals = sims[r, c]
            keep = vals > thr[s][r]
            extra[s].append((r[keep], c[keep] + t, vals[keep]))
            if base is None:  # the same block, transposed, for the rows of block t
                keep = vals > thr[t][c]
                extra[t].append((c[keep], r[keep] + s, vals[keep]))
        # every block of row block s has been seen (those left of the diagonal as transposes)
        parts = extra.pop(s)
        if parts:
            best[s] = _merge_topk(*best[s], *(np.concatenate(p) for p in zip(*parts)))
    return np.concatenate([best[s][0] for s in starts]), np.concatenate([best[s][1] for s in starts])


def _device_candidates(x: torch.Tensor, base: torch.Tensor | None, m: int, block: int):
    """The ``m`` best base rows of each row on an accelerator: full-width GEMM panels + top-k."""
    y = x if base is None else base
    rows = max(1, min(block, (1 << 28) // y.shape[0]))  # <= 1 GB of similarities per panel
    out = [torch.topk(x[s:s + rows] @ y.T, m, dim=1) for s in range(0, x.shape[0], rows)]
    return torch.cat([v for v, _ in out]), torch.cat([i for _, i in out])


def _faiss_candidates(x: torch.Tensor, base: torch.Tensor | None, m: int):
    """The ``m`` best base rows by faiss ``IndexFlatIP`` (a GPU index for CUDA inputs when available)."""
    import faiss

    y = x if base is None else base
    yn = y.detach().cpu().numpy()
    index = faiss.IndexFlatIP(yn.shape[1])
    if x.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), x.device.index or 0, index)
    index.add(yn)
    sims, idx = index.search(x.detach().cpu().numpy(), min(m, yn.shape[0]))
    return torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64))


def _approx_candidates(x: torch.Tensor, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``m`` most similar points of each row of ``x`` (self-search), by cells.

    An inverted file: faiss k-means (spherical, inner product) splits the points into
    ``CELLS_PER_SQRT_N * sqrt(N)`` cells; every cell is searched in its ``PROBE_CELLS`` nearest
    cells (by centroid similarity, itself included) with one exact GEMM per cell. Probing per cell
    rather than per query (faiss's ``IndexIVFFlat``) turns the search into BLAS GEMMs: at
    100k x 2048, faiss's per-query scan of 8 cells took ~60 s, memory-bound; HNSW was not used
    because building its graph at D = 2048 costs thousands of non-BLAS distances per point.
    Similarities of the found neighbours are exact. Works on float16 features (converted per
    cell), so memory is the features plus one cell's candidates. Rows whose probed cells hold
    fewer than ``m`` points (tiny N) are searched against all points.
    """
    import faiss

    xn = x.detach().cpu().numpy()  # numpy gathers rows ~10x faster than torch indexing on CPU
    n, d = xn.shape
    f32 = lambda a: np.ascontiguousarray(a, np.float32)
    cells = max(1, min(int(CELLS_PER_SQRT_N * math.sqrt(n)), n // max(39, m)))  # faiss wants >= 39 per centroid
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 39 * cells), replace=False))
    kmeans = faiss.Kmeans(d, cells, niter=10, spherical=True, seed=seed)
    kmeans.train(f32(xn[sample]))
    cell = np.concatenate([kmeans.index.search(f32(xn[s:s + _CHUNK]), 1)[1][:, 0]
                           for s in range(0, n, _CHUNK)])
    centroid_sims = kmeans.centroids @ kmeans.centroids.T
    np.fill_diagonal(centroid_sims, np.inf)  # a cell always probes itself
    probes = min(PROBE_CELLS, cells)
    probe = np.argpartition(-centroid_sims, probes - 1, axis=1)[:, :probes]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(cells + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(cells)]
    sims = np.empty((n, m), np.float32)
    idx = np.empty((n, m), np.int64)
    for c in range(cells):
        if len(members[c]) == 0:
            continue
        base = np.sort(np.concatenate([members[p] for p in probe[c]]))
        if len(base) < m:
            base = np.arange(n)
        # faiss.knn: GEMM + top-k in faiss (numpy's BLAS was 4-8x slower once faiss's OpenMP ran)
        v, i = faiss.knn(f32(xn[members[c]]), f32(xn[base]), m, metric=faiss.METRIC_INNER_PRODUCT)
        sims[members[c]], idx[members[c]] = v, base[i]
    return sims, idx


def _sort_rows(sims: np.ndarray, idx: np.ndarray, self_search: bool) -> np.ndarray:
    """Row-wise order: decreasing similarity, then self first (self-search), then lower index."""
    n = sims.shape[0]
    not_self = idx != np.arange(n)[:, None] if self_search else np.zeros_like(idx, dtype=bool)
    return np.lexsort((idx, not_self, -sims), axis=1)  # the last key sorts first


def _exact_rows(x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, k: int, self_search: bool):
    """Exact top-``k`` with the documented tie order for a few ``rows``: one full row each."""
    out_s = np.empty((len(rows), k), np.float32)
    out_i = np.empty((len(rows), k), np.int64)
    step = max(1, 2**24 // y.shape[0])
    cols = np.arange(y.shape[0])
    for a in range(0, len(rows), step):
        r = rows[a:a + step]
        sims = _matmul_t(x[torch.as_tensor(r, device=x.device)], y).cpu().numpy()
        is_self = (cols[None, :] == r[:, None]) if self_search else np.zeros(sims.shape, bool)
        for b in range(len(r)):  # only rows with a tie across the k-th place; rare
            order = np.lexsort((cols, ~is_self[b], -sims[b]))[:k]
            out_s[a + b], out_i[a + b] = sims[b, order], order
    return out_s, out_i


def knn_search(
    features: torch.Tensor | np.ndarray,
    k: int,
    *,
    base: torch.Tensor | np.ndarray | None = None,
    backend: Backend = "auto",
    exclude_self: bool = False,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product kNN (exact unless the backend is, or ``auto`` resolves to, ``approx``).

    Args:
        features: [N, D] query features (L2-normalised by :func:`as_unit_features` if needed);
            a CUDA tensor is searched on its device.
        k: neighbours per row; clamped to the number of base points (minus one with
            ``exclude_self``).
        base: [M, D] points to search in; ``None`` searches ``features`` in itself.
        backend: ``"torch"`` (exact, blocked GEMM + top-k; numpy BLAS on CPU), ``"faiss"``
            (exact, IndexFlatIP), ``"approx"`` (faiss k-means cells, self-search only; float16
            features stay float16) or ``"auto"`` (torch up to ``AUTO_APPROX_ABOVE`` points, then
            approx when faiss imports; the choice is logged). See the module docstring.
        exclude_self: self-search only: drop each point from its own list.
        block_size: rows per GEMM block of the torch backend.

    Returns:
        sims [N, k'] float32 (decreasing per row) and idx [N, k'] int64 into the base, as numpy
        arrays, with the tie order documented in this module.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if exclude_self and base is not None:
        raise ValueError("exclude_self: only valid for self-search (base=None)")
    shape = tuple(getattr(features, "shape", ()))
    backend = resolve_backend(backend, shape[0] if shape else 0, shape[1] if len(shape) == 2 else 0)
    if backend == "approx" and base is not None:
        raise ValueError("knn='approx': only self-search (base=None) is supported")
    x = as_unit_features(features, keep_half=backend == "approx")
    y = None if base is None else as_unit_features(base, "base").to(x.device)
    if y is not None and y.shape[1] != x.shape[1]:
        raise ValueError(f"base: expected dimension {x.shape[1]}, got {y.shape[1]}")
    n_base = x.shape[0] if y is None else y.shape[0]
    self_search = y is None
    k = int(min(k, n_base - 1 if exclude_self else n_base))
    if k < 1:
        n = x.shape[0]
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    want = k + int(exclude_self)  # self is removed afterwards
    m = min(want + 1, n_base)  # one extra to detect a tie across the cut
    if backend == "approx":
        sims, idx = _approx_candidates(x, m)
    elif backend == "faiss":
        sims, idx = _faiss_candidates(x, y, m)
    else:
        with torch.no_grad():
            if x.device.type == "cpu":
                sims, idx = _blocked_candidates(x.numpy(), None if y is None else y.numpy(), m, block_size)
            else:
                sims, idx = _device_candidates(x, y, m, block_size)
    sims, idx = torch.as_tensor(sims).cpu().numpy().astype(np.float32), torch.as_tensor(idx).cpu().numpy()
    order = _sort_rows(sims, idx, self_search)
    sims, idx = np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)
    if m > want and backend != "approx":
        tied = np.flatnonzero(sims[:, want - 1] == sims[:, want])
        if len(tied):
            ts, ti = _exact_rows(x, x if y is None else y, tied, want, self_search)
            sims[tied, :want], idx[tied, :want] = ts, ti
    sims, idx = sims[:, :want], idx[:, :want]
    if exclude_self:
        is_self = idx == np.arange(len(idx))[:, None]
        is_self[~is_self.any(1), -1] = True  # self not in the list: drop the last entry
        keep = ~is_self
        sims = sims[keep].reshape(len(idx), k)
        idx = idx[keep].reshape(len(idx), k)
    return np.ascontiguousarray(sims), np.ascontiguousarray(idx)
