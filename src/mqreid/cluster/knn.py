"""Inner-product k-nearest-neighbour search: exact (blocked GEMM + top-k, or faiss) or approximate.

Backends (``knn=`` of the clusterers):

- ``torch``: exact, on the features' device; blocked GEMM over the upper triangle of the symmetric
  similarity matrix (numpy BLAS on CPU, full-width panels + top-k on an accelerator).
- ``faiss``: exact; faiss ``IndexFlatIP`` (computes all N x N similarities). CUDA features get a
  GPU index when faiss has GPU support (the ``mqreid[faiss-gpu]`` extra); without it they are
  searched on the CPU, with a warning.
- ``approx``: approximate, for N beyond exact reach (needs faiss), on the CPU: an inverted-file
  partition by faiss k-means, searched cell by cell with one GEMM per cell, then checked: rows
  whose lists may miss neighbours are searched further (:func:`_approx_candidates`).
- ``auto``: on the CPU ``torch`` (measured faster than ``faiss``, which computes both triangles) up
  to :data:`AUTO_APPROX_ABOVE` points, the measured switch point (see its comment), above it
  ``approx`` when faiss imports, else ``torch`` with a warning giving the expected time. On an
  accelerator ``torch`` on the device up to :data:`DEVICE_EXACT_MACS` multiply-adds (N^2 D), faiss
  or not (a faiss GPU index is used only when asked for, ``faiss``), above it ``approx``.

The choice is a pure function, :func:`choose_backend`, of the request, N, D, the device type and
faiss's support; :func:`resolve_backend` logs it with the device and the reason.

Tie order (identical on the exact backends): neighbours are sorted by decreasing similarity;
among equal similarities the point itself comes first (self-search only), then the lower index.
Each backend first keeps the ``k + 1`` best candidates per row; a row whose k-th and (k+1)-th
similarities are equal (a tie across the cut, e.g. duplicate features) is recomputed exactly
against every base point, so which of several tied points are kept never depends on the backend
(``approx`` sorts the same way but does not recompute ties).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.special import ndtr

from mqreid.utils.errors import SettingError

log = logging.getLogger(__name__)

Backend = Literal["auto", "faiss", "torch", "approx"]
BACKENDS = ("auto", "faiss", "torch", "approx")
FaissSupport = Literal["none", "cpu", "gpu"]
_NORM_TOL = 1e-3
# Largest N that ``auto`` searches exactly on the CPU, measured with ``bench/bench_scale.py --knn-only``
# (table and settings in docs/clustering.md, "kNN backends"). The exact kNN costs N^2 D / 2 multiply-adds
# (upper triangle); what ``approx`` costs depends on how many rows its check searches against all points.
# On clustered features with 10% background (11-16% of rows searched in full) the two break even at 50k
# points (D = 256 and D = 2048) and approx is 1.7x faster at 100k, 2.1x at 200k; on loose features
# (noise 1.5: 88-97% of rows searched in full) approx is slower at every N (2.2x at 50k, 1.9x at 100k,
# 1.7x at 200k): its full searches alone cost ~0.9 N^2 D. The switch is the first measured N at which the
# gain on clustered features covers the loss on loose ones (both ratios fall with N).
AUTO_APPROX_ABOVE = 200_000
# Largest N^2 * D that ``auto`` searches exactly on an accelerator (full-width panels, both triangles):
# at ~1e13 fp32 multiply-adds per second (an A100; an H100 is ~3x faster) 1M x 2048 (2e15) takes ~3.5 min
# and this limit (~2.2M points at D = 2048, 6.2M at D = 256) ~17 min, about what the CPU cell search
# takes there on a many-core host.
DEVICE_EXACT_MACS = 1e16
_EXACT_FLOPS = 1e11  # CPU multiply-adds per second assumed for the expected time in the warning
_DEVICE_MACS = 1e13  # accelerator multiply-adds per second assumed for the expected time
# approx: cells = CELLS_PER_SQRT_N * sqrt(N) k-means cells (faiss's guideline is 4-16 sqrt(N));
# each cell is searched in its PROBE_CELLS nearest cells (itself included).
CELLS_PER_SQRT_N = 4
PROBE_CELLS = 16
# approx, the check of every row (see _approx_candidates): the CENTROIDS_KEPT nearest centroids of
# each point are kept from its cell assignment; a row whose expected number of missed neighbours
# exceeds MISS_BUDGET is searched in up to WIDEN_CELLS more cells, or against all points; the lists
# of CHECK_RANDOM random rows and of the CHECK_ISOLATED most isolated ones are then compared with an
# exact search, and the budget is divided by 10 (up to CHECK_ROUNDS times) until both recalls
# reach RECALL_TARGET.
CENTROIDS_KEPT = 32
MISS_BUDGET = 0.25
WIDEN_CELLS = 32
CHECK_RANDOM = 500
CHECK_ISOLATED = 100
CHECK_ROUNDS = 4
RECALL_TARGET = 0.99
_TAIL_BINS = 16
_CHUNK = 1 << 16  # rows converted to float32 at a time when features are float16


class KnnChoice(NamedTuple):
    """A resolved backend: ``backend`` (``torch``, ``faiss`` or ``approx``), ``device`` (where the
    search runs: ``cpu``, ``cuda``, ...), ``reason`` (logged) and ``warn`` (log as a warning: the
    search runs somewhere slower than the features' device, or takes long)."""

    backend: str
    device: str
    reason: str
    warn: bool = False


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


@contextlib.contextmanager
def single_threaded_on_host(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops in the block on one thread (restored afterwards); no-op on an accelerator.

    For the many small gathers, comparisons and sorts of index arrays after a GEMM (kNN list
    order, k-reciprocal encoding): they are memory-bound, and handing each op to the intra-op pool
    cost more than it saved: on the shared 2-core development machine the encoding of 1,500 points
    took 3.2 s on two threads and 0.9 s on one, of 20k points 20 s and 10 s (a numpy formulation of
    the same steps, one thread too: 0.9 s and 12-16 s).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def device_type(features) -> str:
    """The device type of ``features``: a tensor's (``cpu``, ``cuda``, ...), ``cpu`` for arrays."""
    return features.device.type if isinstance(features, torch.Tensor) else "cpu"


def _faiss_available() -> bool:
    try:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU-feature probe
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_support() -> str:
    """``none`` (faiss does not import), ``gpu`` (GPU support and a visible GPU) or ``cpu``."""
    if not _faiss_available():
        return "none"
    import faiss

    try:
        gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    except RuntimeError:  # a GPU build without a usable driver
        gpus = 0
    return "gpu" if gpus > 0 else "cpu"


def check_params(owner: object, positive_ints: tuple[str, ...]) -> None:
    """Validate a clusterer's integer parameters (each >= 1) and its ``knn`` backend name."""
    for name in positive_ints:
        value = getattr(owner, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise SettingError(name, value, "an integer >= 1")
    if owner.knn not in BACKENDS:
        raise SettingError("knn", owner.knn, f"one of {', '.join(BACKENDS)}")


def choose_backend(backend: str, n: int, dim: int, device: str = "cpu", faiss: FaissSupport = "cpu") -> KnnChoice:
    """Where and how ``n`` points of dimension ``dim`` on a ``device`` (type: ``cpu``, ``cuda``, ...)
    are searched, given faiss's ``faiss`` support (``none``, ``cpu`` or ``gpu``). Pure: no import, no
    logging (:func:`resolve_backend` logs the result). Raises ``ValueError`` for an unknown name, or
    for ``faiss``/``approx`` without faiss."""
    if backend not in BACKENDS:
        raise ValueError(f"knn backend: expected one of {BACKENDS}, got {backend!r}")
    if backend in ("faiss", "approx") and faiss == "none":
        raise ValueError(f"knn={backend!r} needs faiss, which is not installed (pip install faiss-cpu, or the "
                         f"mqreid[faiss] extra; mqreid[faiss-gpu] for CUDA); knn=torch searches exactly without it")
    on_host = device == "cpu"
    macs = float(n) * n * dim
    if backend == "torch":
        return KnnChoice("torch", device, "exact: GEMM + top-k on the features' device")
    if backend == "faiss":
        if on_host:
            return KnnChoice("faiss", "cpu", "exact: faiss IndexFlatIP")
        if faiss == "gpu":
            return KnnChoice("faiss", device, "exact: faiss GPU IndexFlatIP")
        return KnnChoice("faiss", "cpu", f"exact: faiss has no GPU support (faiss-cpu installed): searching the {device} "
                         "features on the CPU, copied to the host; install the mqreid[faiss-gpu] extra or use knn=torch",
                         warn=True)
    if backend == "approx":
        if on_host:
            return KnnChoice("approx", "cpu", "approximate: k-means cells")
        return KnnChoice("approx", "cpu", f"approximate: the cell search runs on the CPU, the {device} features copied "
                         "to the host; knn=torch searches exactly on the device", warn=True)
    if not on_host:
        if macs <= DEVICE_EXACT_MACS:
            return KnnChoice("torch", device, f"auto: exact on the device, N^2 D = {macs:.1e} multiply-adds "
                             f"<= {DEVICE_EXACT_MACS:.0e}")
        if faiss != "none":
            return KnnChoice("approx", "cpu", f"auto: N^2 D = {macs:.1e} multiply-adds > {DEVICE_EXACT_MACS:.0e}, "
                             f"beyond the exact search on the device: approximate, the cell search on the CPU")
        return KnnChoice("torch", device, f"auto: N^2 D = {macs:.1e} multiply-adds > {DEVICE_EXACT_MACS:.0e} would be "
                         f"approx, but faiss is not installed (pip install faiss-cpu): exact on the device, expect "
                         f"roughly {macs / _DEVICE_MACS / 60:.0f} min", warn=True)
    switch = f"the CPU switch point AUTO_APPROX_ABOVE = {AUTO_APPROX_ABOVE}"
    if n <= AUTO_APPROX_ABOVE:
        return KnnChoice("torch", "cpu", f"auto: exact, {n} points <= {switch}")
    if faiss != "none":
        return KnnChoice("approx", "cpu", f"auto: approximate, {n} points > {switch}")
    return KnnChoice("torch", "cpu", f"auto: exact for {n} points (above {switch} it would be approx, but "
                     f"faiss is not installed: pip install faiss-cpu); expect roughly "
                     f"{macs / _EXACT_FLOPS / 60:.0f} min", warn=True)


def resolve_backend(backend: str, n: int = 0, dim: int = 0, device: str = "cpu") -> KnnChoice:
    """:func:`choose_backend` with faiss's actual support, logged (a warning when ``warn``)."""
    if backend not in BACKENDS:  # before importing faiss
        raise ValueError(f"knn backend: expected one of {BACKENDS}, got {backend!r}")
    choice = choose_backend(backend, n, dim, device, _faiss_support())
    log.log(logging.WARNING if choice.warn else logging.INFO, "kNN backend: %s on %s (%s)",
            choice.backend, choice.device, choice.reason)
    return choice


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


def _faiss_candidates(x: torch.Tensor, base: torch.Tensor | None, m: int, on_device: bool):
    """The ``m`` best base rows by faiss ``IndexFlatIP``: a GPU index on the features' device when
    ``on_device`` (see :func:`choose_backend`), else on the CPU."""
    import faiss

    y = x if base is None else base
    yn = y.detach().cpu().numpy()
    index = faiss.IndexFlatIP(yn.shape[1])
    if on_device:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), x.device.index or 0, index)
    index.add(yn)
    sims, idx = index.search(x.detach().cpu().numpy(), min(m, yn.shape[0]))
    return torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _scan_rows(xn: np.ndarray, rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``m`` most similar points of the ``rows`` of ``xn`` against all its rows (float16 rows
    are converted a chunk at a time); (sims [R, m] unsorted, idx [R, m])."""
    import faiss

    n = len(xn)
    sims, idx = np.empty((len(rows), m), np.float32), np.empty((len(rows), m), np.int64)
    for a in range(0, len(rows), 1 << 14):
        q = _f32(xn[rows[a:a + (1 << 14)]])
        best_v, best_i = np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64)
        for s in range(0, n, _CHUNK):
            v, i = faiss.knn(q, _f32(xn[s:s + _CHUNK]), min(m, n - s), metric=faiss.METRIC_INNER_PRODUCT)
            best_v, top = _topk(np.concatenate([best_v, v], 1), min(m, s + v.shape[1]), 0)
            best_i = np.take_along_axis(np.concatenate([best_i, i + s], 1), top, 1)
        sims[a:a + len(q)], idx[a:a + len(q)] = best_v, best_i
    return sims, idx


class _Cells:
    """The k-means partition of the approximate search and what :func:`_approx_candidates` needs to
    estimate, for a row, how many points of the cells it has not searched are more similar than its
    m-th neighbour: each point's ``CENTROIDS_KEPT`` nearest centroids (``csims``, ``cids``), and per
    cell its size, the norm of its points' mean (the expected similarity of a query to the cell's
    points is about ``norm * (query . centroid)``) and the spread of those similarities
    (``sqrt((1 - norm^2) / D)`` for a spread that is the same in every direction)."""

    def __init__(self, xn: np.ndarray, m: int, seed: int):
        import faiss

        n, d = xn.shape
        self.count = max(1, min(int(CELLS_PER_SQRT_N * math.sqrt(n)), n // max(39, m)))  # faiss wants >= 39 per centroid
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, 39 * self.count), replace=False))
        kmeans = faiss.Kmeans(d, self.count, niter=10, spherical=True, seed=seed)
        kmeans.train(_f32(xn[sample]))
        centroids = kmeans.centroids
        kept = min(CENTROIDS_KEPT, self.count)
        self.csims, self.cids = np.empty((n, kept), np.float32), np.empty((n, kept), np.int64)
        sums = torch.zeros(self.count, d)
        for s in range(0, n, _CHUNK):
            chunk = _f32(xn[s:s + _CHUNK])
            self.csims[s:s + _CHUNK], self.cids[s:s + _CHUNK] = faiss.knn(
                chunk, centroids, kept, metric=faiss.METRIC_INNER_PRODUCT)
            sums.index_add_(0, torch.from_numpy(self.cids[s:s + _CHUNK, 0]), torch.from_numpy(chunk))
        self.cell = self.cids[:, 0]
        self.size = np.bincount(self.cell, minlength=self.count)
        self.norm = np.minimum(sums.norm(dim=1).double().numpy() / np.maximum(self.size, 1), 1.0)
        self.spread = np.sqrt(np.maximum(1.0 - self.norm ** 2, 1e-4) / d)
        centroid_sims = centroids @ centroids.T
        np.fill_diagonal(centroid_sims, np.inf)  # a cell always probes itself
        probes = min(PROBE_CELLS, self.count)
        self.probe = np.argpartition(-centroid_sims, probes - 1, axis=1)[:, :probes]
        order = np.argsort(self.cell, kind="stable")
        bounds = np.searchsorted(self.cell[order], np.arange(self.count + 1))
        self.members = [order[bounds[c]:bounds[c + 1]] for c in range(self.count)]
        # cells beyond a point's kept nearest ones, in bins of similar norm: each bin is bounded by
        # its largest norm and spread
        bins = np.array_split(np.argsort(self.norm), min(_TAIL_BINS, self.count))
        self.bin_size = np.array([self.size[b].sum() for b in bins], np.float64)
        self.bin_norm = np.array([self.norm[b].max() for b in bins])
        self.bin_spread = np.array([self.spread[b].max() for b in bins])

    def probed(self, rows: np.ndarray) -> np.ndarray:
        """[R, kept] bool: which kept nearest centroids of ``rows`` are probed by their own cell."""
        probe = self.probe[self.cell[rows]]
        return (self.cids[rows, :, None] == probe[:, None, :]).any(-1)

    def expected_misses(self, rows: np.ndarray, kth: np.ndarray, searched: np.ndarray):
        """Expected number of points more similar than ``kth`` [R] in the cells that ``rows`` have
        not searched (``searched`` [R, kept] marks their kept centroids searched): (per kept centroid
        [R, kept], beyond the kept ones [R])."""
        cids = self.cids[rows]
        z = (kth[:, None] - self.norm[cids] * self.csims[rows]) / self.spread[cids]
        near = np.where(searched, 0.0, self.size[cids] * ndtr(-z))
        # beyond the kept centroids, every similarity to a centroid is at most the last kept one's
        last = self.csims[rows, -1].astype(np.float64)
        far = (self.bin_size[None, :] * ndtr(-(kth[:, None] - self.bin_norm[None, :] * np.maximum(last, 0)[:, None])
                                              / self.bin_spread[None, :]))
        far *= np.maximum(0.0, 1.0 - self.size[cids].sum(1) / max(1, len(self.cell)))[:, None]
        return near, far.sum(1) if self.count > cids.shape[1] else np.zeros(len(rows))


def _approx_candidates(x: torch.Tensor, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``m`` most similar points of each row of ``x`` (self-search), by cells, checked.

    An inverted file: faiss k-means (spherical, inner product) splits the points into
    ``CELLS_PER_SQRT_N * sqrt(N)`` cells; every cell is searched in its ``PROBE_CELLS`` nearest
    cells (by centroid similarity, itself included) with one exact GEMM per cell. Probing per cell
    rather than per query (faiss's ``IndexIVFFlat``) turns the search into BLAS GEMMs: at
    100k x 2048, faiss's per-query scan of 8 cells took ~60 s, memory-bound; HNSW was not used
    because building its graph at D = 2048 costs thousands of non-BLAS distances per point.

    Cells serve points whose neighbours lie in nearby cells; an isolated point (one that belongs
    to no identity) has neighbours spread over all cells, and its list from 16 cells would be
    mostly wrong: it would find other isolated points of its region as mutual neighbours and make
    clusters of them. So every row is checked: from its nearest centroids and the cells' sizes,
    norms and spreads (:class:`_Cells`), the expected number of points in cells it has not searched
    that are more similar than its m-th neighbour. Rows above ``MISS_BUDGET`` are searched in the
    cells that contribute most (up to ``WIDEN_CELLS`` more), or against all points when that would
    not be enough. The model assumes a spread that is the same in every direction; the result is
    measured: ``CHECK_RANDOM`` random rows and the ``CHECK_ISOLATED`` rows with the lowest m-th
    similarity are searched exactly, and while either recall is below ``RECALL_TARGET`` the budget
    is divided by 10 and the search widened again (logged; checked rows keep their exact lists).

    Similarities of the found neighbours are exact. Works on float16 features (converted per
    cell), so memory is the features plus one cell's candidates. Rows whose probed cells hold
    fewer than ``m`` points (tiny N) are searched against all points.
    """
    import faiss

    xn = x.detach().cpu().numpy()  # numpy gathers rows ~10x faster than torch indexing on CPU
    n = len(xn)
    cells = _Cells(xn, m, seed)
    sims = np.empty((n, m), np.float32)
    idx = np.empty((n, m), np.int64)
    exact = np.zeros(n, bool)  # rows searched against every point
    for c in range(cells.count):
        if len(cells.members[c]) == 0:
            continue
        base = np.sort(np.concatenate([cells.members[p] for p in cells.probe[c]]))
        if len(base) < m:
            base = np.arange(n)
            exact[cells.members[c]] = True
        # faiss.knn: GEMM + top-k in faiss (numpy's BLAS was 4-8x slower once faiss's OpenMP ran)
        v, i = faiss.knn(_f32(xn[cells.members[c]]), _f32(xn[base]), m, metric=faiss.METRIC_INNER_PRODUCT)
        sims[cells.members[c]], idx[cells.members[c]] = v, base[i]
    if exact.all():
        return sims, idx
    searched = np.concatenate([cells.probed(np.arange(s, min(n, s + _CHUNK))) for s in range(0, n, _CHUNK)])
    budget, widened, checked, truth, recalls = MISS_BUDGET, np.zeros(n, bool), None, None, (1.0, 1.0)
    for _ in range(CHECK_ROUNDS):
        todo, plans = [], []
        for s in range(0, n, _CHUNK):
            rows = np.arange(s, min(n, s + _CHUNK))
            rows = rows[~exact[rows]]
            near, far = cells.expected_misses(rows, sims[rows].min(1).astype(np.float64), searched[rows])
            total = near.sum(1) + far
            over = total > budget
            rows, near, total, far = rows[over], near[over], total[over], far[over]
            order = np.argsort(-near, axis=1)
            left = total[:, None] - np.cumsum(np.take_along_axis(near, order, 1), axis=1)
            enough = (left <= budget) & (far[:, None] <= budget)
            need = np.where(enough.any(1), enough.argmax(1) + 1, np.iinfo(np.int64).max)
            todo.append(rows)
            plans.append((rows[need <= WIDEN_CELLS], order[need <= WIDEN_CELLS], need[need <= WIDEN_CELLS]))
        todo = np.concatenate(todo)
        scan = np.setdiff1d(todo, np.concatenate([p[0] for p in plans]))
        for rows, order, need in plans:
            widened[rows] = True
            _widen(xn, cells, rows, order, need, sims, idx, searched)
        if len(scan):
            sims[scan], idx[scan] = _scan_rows(xn, scan, m)
            exact[scan] = True
        if checked is None:
            rng = np.random.default_rng(seed + 1)
            random = rng.choice(n, min(n, CHECK_RANDOM), replace=False)
            rest = np.setdiff1d(np.flatnonzero(~exact), random)
            isolated = rest[np.argsort(sims[rest].min(1), kind="stable")[:CHECK_ISOLATED]]
            checked = (random, isolated)
            truth = _scan_rows(xn, np.concatenate(checked), m)
        kth = truth[0].min(1)  # a found similarity >= the exact m-th is a right neighbour
        hits = np.minimum((sims[np.concatenate(checked)] >= kth[:, None] - 1e-6).sum(1), m) / m
        recalls = (float(hits[:len(checked[0])].mean()), float(hits[len(checked[0]):].mean()) if len(checked[1]) else 1.0)
        if min(recalls) >= RECALL_TARGET:
            break
        budget /= 10
    scanned = int(exact.sum())
    rows = np.concatenate(checked)
    sims[rows], idx[rows] = truth
    level = logging.INFO if min(recalls) >= RECALL_TARGET else logging.WARNING
    log.log(level, "approx kNN: %d points in %d cells, %d probed per cell; %d rows searched in more cells, %d against "
            "all points (%.1f%%); recall@%d of the checked rows: %.4f on %d random, %.4f on the %d most isolated "
            "(expected misses per row <= %.3g)", n, cells.count, cells.probe.shape[1], (widened & ~exact).sum(), scanned,
            100 * scanned / n, m, recalls[0], len(checked[0]), recalls[1], len(checked[1]), budget)
    return sims, idx


def _widen(xn: np.ndarray, cells: _Cells, rows: np.ndarray, order: np.ndarray, need: np.ndarray,
           sims: np.ndarray, idx: np.ndarray, searched: np.ndarray) -> None:
    """Search each of ``rows`` in the first ``need`` cells of its kept centroids in ``order`` too,
    merging the neighbours found into ``sims``/``idx`` and marking them ``searched`` (in place)."""
    import faiss

    if len(rows) == 0:
        return
    m = sims.shape[1]
    take = np.arange(order.shape[1])[None, :] < need[:, None]
    take &= ~np.take_along_axis(searched[rows], order, 1)  # a cell searched already would repeat its points
    local, col = np.nonzero(take)
    pos = order[local, col]  # position among the row's kept centroids
    cell = cells.cids[rows[local], pos]
    searched[rows[local], pos] = True
    by_cell = np.argsort(cell, kind="stable")
    local, cell = local[by_cell], cell[by_cell]
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], cell, [cells.count]])))
    found_rows, found_idx, found_sims = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = cells.members[cell[a]]
        if len(members) == 0:
            continue
        v, i = faiss.knn(_f32(xn[rows[local[a:b]]]), _f32(xn[members]), min(m, len(members)),
                         metric=faiss.METRIC_INNER_PRODUCT)
        found_rows.append(np.repeat(local[a:b], v.shape[1]))
        found_idx.append(members[i.ravel()])
        found_sims.append(v.ravel())
    if found_rows:
        sims[rows], idx[rows] = _merge_topk(sims[rows], idx[rows], np.concatenate(found_rows),
                                            np.concatenate(found_idx), np.concatenate(found_sims))


def _sort_rows(sims: torch.Tensor, idx: torch.Tensor, self_ids: torch.Tensor | None) -> torch.Tensor:
    """Row-wise order: decreasing similarity, then self first (``self_ids`` [R]: each row's own
    index, or ``None``), then lower index; three stable sorts, least significant key first."""
    order = torch.argsort(idx, dim=1, stable=True)
    if self_ids is not None:
        not_self = (idx.gather(1, order) != self_ids[:, None]).to(torch.uint8)
        order = order.gather(1, torch.argsort(not_self, dim=1, stable=True))
    neg = -sims.gather(1, order) + 0.0  # + 0.0: -0.0 and 0.0 are one key
    return order.gather(1, torch.argsort(neg, dim=1, stable=True))


def _exact_rows(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, k: int, self_search: bool):
    """Exact top-``k`` with the documented tie order for a few ``rows``: one full row each."""
    out_s, out_i = [], []
    step = max(1, 2**24 // y.shape[0])
    cols = torch.arange(y.shape[0], device=x.device)
    for a in range(0, len(rows), step):  # only rows with a tie across the k-th place; rare
        r = rows[a:a + step]
        sims = _matmul_t(x[r], y).to(x.device)
        full = cols.expand(len(r), -1)
        order = _sort_rows(sims, full, r if self_search else None)[:, :k]
        out_s.append(sims.gather(1, order))
        out_i.append(full.gather(1, order))
    return torch.cat(out_s), torch.cat(out_i)


def knn_search(
    features: torch.Tensor | np.ndarray,
    k: int,
    *,
    base: torch.Tensor | np.ndarray | None = None,
    backend: Backend | KnnChoice = "auto",
    exclude_self: bool = False,
    block_size: int = 4096,
    as_tensors: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
    """Inner-product kNN (exact unless the backend is, or ``auto`` resolves to, ``approx``).

    Args:
        features: [N, D] query features (L2-normalised by :func:`as_unit_features` if needed);
            a CUDA tensor is searched on its device (``torch``, and ``faiss`` with GPU support).
        k: neighbours per row; clamped to the number of base points (minus one with
            ``exclude_self``).
        base: [M, D] points to search in; ``None`` searches ``features`` in itself.
        backend: ``"torch"`` (exact, blocked GEMM + top-k; numpy BLAS on CPU), ``"faiss"``
            (exact, IndexFlatIP), ``"approx"`` (faiss k-means cells, self-search only; float16
            features stay float16) or ``"auto"`` (see :func:`choose_backend`; the choice is
            logged), or a :class:`KnnChoice` from :func:`resolve_backend` (not logged again).
        exclude_self: self-search only: drop each point from its own list.
        block_size: rows per GEMM block of the torch backend.
        as_tensors: return torch tensors on the features' device instead of numpy arrays.

    Returns:
        sims [N, k'] float32 (decreasing per row) and idx [N, k'] int64 into the base, with the
        tie order documented in this module.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if exclude_self and base is not None:
        raise ValueError("exclude_self: only valid for self-search (base=None)")
    shape = tuple(getattr(features, "shape", ()))
    choice = backend if isinstance(backend, KnnChoice) else resolve_backend(
        backend, shape[0] if shape else 0, shape[1] if len(shape) == 2 else 0, device_type(features))
    if choice.backend == "approx" and base is not None:
        raise ValueError("knn='approx': only self-search (base=None) is supported")
    x = as_unit_features(features, keep_half=choice.backend == "approx")
    y = None if base is None else as_unit_features(base, "base").to(x.device)
    if y is not None and y.shape[1] != x.shape[1]:
        raise ValueError(f"base: expected dimension {x.shape[1]}, got {y.shape[1]}")
    n, n_base = x.shape[0], x.shape[0] if y is None else y.shape[0]
    self_search = y is None
    k = int(min(k, n_base - 1 if exclude_self else n_base))
    if k < 1:
        sims, idx = torch.zeros((n, 0), device=x.device), torch.zeros((n, 0), dtype=torch.int64, device=x.device)
    else:
        want = k + int(exclude_self)  # self is removed afterwards
        m = min(want + 1, n_base)  # one extra to detect a tie across the cut
        with torch.no_grad():
            if choice.backend == "approx":
                sims, idx = _approx_candidates(x, m)
            elif choice.backend == "faiss":
                sims, idx = _faiss_candidates(x, y, m, on_device=choice.device != "cpu")
            elif x.device.type == "cpu":
                sims, idx = _blocked_candidates(x.numpy(), None if y is None else y.numpy(), m, block_size)
            else:
                sims, idx = _device_candidates(x, y, m, block_size)
        with torch.no_grad(), single_threaded_on_host(x.device):
            sims = torch.as_tensor(sims).to(x.device, torch.float32)
            idx = torch.as_tensor(idx).to(x.device, torch.int64)
            row_ids = torch.arange(n, device=x.device)
            order = _sort_rows(sims, idx, row_ids if self_search else None)
            sims, idx = sims.gather(1, order), idx.gather(1, order)
            if m > want and choice.backend != "approx":
                tied = torch.nonzero(sims[:, want - 1] == sims[:, want]).flatten()
                if len(tied):
                    ts, ti = _exact_rows(x, x if y is None else y, tied, want, self_search)
                    sims[tied, :want], idx[tied, :want] = ts, ti
            sims, idx = sims[:, :want], idx[:, :want]
            if exclude_self:
                is_self = idx == row_ids[:, None]
                is_self[~is_self.any(1), -1] = True  # self not in the list: drop the last entry
                sims, idx = sims[~is_self].reshape(n, k), idx[~is_self].reshape(n, k)
    if as_tensors:
        return sims.contiguous(), idx.contiguous()
    return np.ascontiguousarray(sims.cpu().numpy()), np.ascontiguousarray(idx.cpu().numpy())
