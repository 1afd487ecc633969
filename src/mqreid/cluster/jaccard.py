"""Sparse k-reciprocal Jaccard distance (Zhong et al., CVPR 2017, "Re-ranking person
re-identification with k-reciprocal encoding"), exact and with memory O(N·k).

It gives the same numbers as the dense formulation used by Cluster Contrast / SpCL
(``compute_jaccard_distance``), step by step:

1. ranking: the ``L = k1`` most similar points of each point (itself included), see
   :mod:`mqreid.cluster.knn` for the tie order;
2. k-reciprocal sets: ``j in R(i, k)`` when ``j`` is among the first ``k + 1`` entries of ``i``'s
   ranking and ``i`` among ``j``'s (rankings are only ``L`` long, so ``R(i, k1)`` uses ``k1``);
3. expansion: ``R(c, round(k1 / 2))`` is added for every ``c in R(i, k1)`` whose half-set has more
   than 2/3 of its members in ``R(i, k1)``;
4. weights ``V[i, j] = softmax_j(-(2 - 2 cos(i, j)))`` over the expanded set;
5. query expansion (``k2 > 1``): ``V[i]`` becomes the mean of the rows of its ``k2`` first ranked;
6. ``d(i, j) = 1 - m / (2 - m)`` with ``m = sum_l min(V[i, l], V[j, l])``, clamped at 0.

Steps 1-5 run on the features' device with torch ops: the rankings are fixed-width [N, L] arrays,
so the reciprocity checks (step 2) and the expansion test (step 3) are gathers and comparisons
over [rows, k1 + 1, k1 / 2 + 1] blocks, the expanded sets are deduplicated by sorting, and the
query expansion is a sparse product (on the CPU, torch's port of scipy's, which gives the same
bits). Step 6 visits only pairs sharing a column of ``V``, a variable number per column, and runs
on the CPU (numpy), as does DBSCAN on its result.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from mqreid.cluster.knn import as_unit_features, device_type, knn_search, resolve_backend, single_threaded_on_host
from mqreid.utils.errors import SettingError

log = logging.getLogger(__name__)

# Overlap-step chunking: small chunks keep temporaries in cache and out of fresh mmap pages
# (3x faster than 8M-triple chunks at N=13k, measured). The encoding works on blocks of rows with
# at most 16 * PAIR_BUDGET (row, neighbour, neighbour's neighbour) entries.
PAIR_BUDGET = 1 << 17  # (r, c, l) triples expanded per chunk
ACCUMULATOR = 1 << 21  # dense accumulator window (rows x columns, 16 MB)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c); numpy has no vectorised form."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    offsets = np.repeat(starts.astype(np.int64) - np.cumsum(counts) + counts, counts)
    return offsets + np.arange(total, dtype=np.int64)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a step's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# On the CPU a few primitives go through numpy, measured faster there (its vectorised sort 3x, its
# searchsorted and nonzero ~30%, its einsum on small chunks 8x); elsewhere, and with this False (the
# tests run the torch code that accelerators run this way), torch's.
NUMPY_ON_HOST = True


def _host(t: torch.Tensor) -> bool:
    return NUMPY_ON_HOST and t.device.type == "cpu"


def _sort(t: torch.Tensor) -> torch.Tensor:
    """Sorted copy of a 1-D tensor."""
    return torch.from_numpy(np.sort(t.numpy())) if _host(t) else torch.sort(t).values


def _searchsorted(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``torch.searchsorted`` of 1-D tensors."""
    if _host(keys):
        return torch.from_numpy(np.searchsorted(sorted_keys.numpy(), keys.numpy()))
    return torch.searchsorted(sorted_keys, keys)


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the true entries of the flattened ``mask``."""
    return torch.from_numpy(np.flatnonzero(mask.numpy())) if _host(mask) else torch.nonzero(mask.reshape(-1)).squeeze(1)


def reciprocal_mask(rank: torch.Tensor, k: int) -> torch.Tensor:
    """[N, K] bool, ``K = min(k + 1, L)``: whether ``rank[i, p]`` is in R(i, k), i.e. whether ``i``
    is among the first ``K`` entries of the ranking of ``rank[i, p]``.

    ``rank`` [N, L]: neighbour indices of each point, best first, on any device.
    """
    n, width = rank.shape[0], min(k + 1, rank.shape[1])
    prefix = rank[:, :width].contiguous()
    out = torch.empty((n, width), dtype=torch.bool, device=rank.device)
    step = max(1, 16 * PAIR_BUDGET // (width * width))
    for s in range(0, n, step):
        e = min(n, s + step)
        back = prefix.index_select(0, prefix[s:e].reshape(-1)).view(e - s, width, width)
        out[s:e] = (back == torch.arange(s, e, device=rank.device)[:, None, None]).any(-1)
    return out


def reciprocal_sets(rank: np.ndarray | torch.Tensor, k: int) -> sp.csr_matrix:
    """k-reciprocal neighbour sets R(i, k) as a binary CSR [N, N] (sorted indices).

    ``rank`` [N, L]: neighbour indices of each point, best first. ``j in R(i, k)`` iff ``j`` is in
    ``rank[i, :k + 1]`` and ``i`` in ``rank[j, :k + 1]``.
    """
    rank = torch.as_tensor(rank)
    mask = reciprocal_mask(rank, k)
    n = rank.shape[0]
    rows = torch.arange(n, device=rank.device)[:, None].expand_as(mask)[mask].cpu().numpy()
    cols = rank[:, :mask.shape[1]][mask].cpu().numpy()
    r = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    r.sort_indices()
    return r


def _expanded_entries(rank: torch.Tensor, k1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 2-3: the expanded k-reciprocal set of every point, as entries sorted by (row, column),
    distinct: (rows [E], cols [E], place [E]): ``place`` is the column's position in the row's
    ranking, or ``L`` when it is not in it.

    For each row ``i`` and each ``c = rank[i, p]`` of R(i, k1), the members ``j`` of R(c, k1/2)
    (the first ``k1/2 + 1`` of ``c``'s ranking, masked) are looked up among the kNN pairs, as keys
    ``i * N + j`` in the sorted keys of all (i, rank[i, t]) pairs: one binary search gives whether
    ``j`` is in ``i``'s ranking, where, and so whether it is in R(i, k1). The expanded set is R(i, k1)
    plus the members outside it of every accepted half-set; entries are deduplicated by sorting
    keys ``(i * N + j) * (L + 1) + place``. A block of rows holds at most ``16 * PAIR_BUDGET``
    (row, neighbour, neighbour's neighbour) entries.
    """
    n, length = rank.shape
    dev = rank.device
    r1 = reciprocal_mask(rank, k1)  # [N, K1]
    rh = reciprocal_mask(rank, int(np.around(k1 / 2)))  # [N, Kh]
    k1w, khw = r1.shape[1], rh.shape[1]
    half_size = rh.sum(1).double()
    in_r1 = torch.zeros((n, length), dtype=torch.bool, device=dev)
    in_r1[:, :k1w] = r1
    in_r1 = in_r1.view(-1)
    ranked, where = rank.sort(dim=1)  # each ranking sorted, and each sorted entry's place in it
    pair_keys = (torch.arange(n, device=dev)[:, None] * n + ranked).view(-1)  # sorted
    where = where.view(-1)
    half = rank[:, :khw].reshape(-1)
    out = []
    step = max(1, 16 * PAIR_BUDGET // (k1w * khw))
    for s in range(0, n, step):
        e = min(n, s + step)
        c = rank[s:e, :k1w].reshape(-1)  # [B * K1]
        valid = rh.index_select(0, c).view(e - s, k1w, khw) & r1[s:e, :, None]
        f = _flatnonzero(valid)  # (b, p, q): member q of R(c = rank[s + b, p], k1/2)
        pair = f // khw  # (b, p) as b * K1 + p
        row = pair // k1w + s
        keys = row * n + half.index_select(0, c.index_select(0, pair) * khw + f % khw)
        pos = _searchsorted(pair_keys, keys).clamp_(max=len(pair_keys) - 1)
        found = pair_keys.index_select(0, pos) == keys
        place = torch.where(found, where.index_select(0, pos), length)  # the member's position in the row's ranking
        hit = found & in_r1.index_select(0, row * length + place.clamp(max=length - 1))
        overlap = torch.zeros(len(c), dtype=torch.float64, device=dev).index_add_(0, pair, hit.double())
        accepted = r1[s:e].reshape(-1) & (overlap > 2 / 3 * half_size.index_select(0, c))  # same float comparison as the reference
        extra = _flatnonzero(accepted.index_select(0, pair) & ~hit)  # members outside R(i, k1) of accepted half-sets
        f1 = _flatnonzero(r1[s:e])
        packed = _sort(torch.cat([((f1 // k1w + s) * n + c.index_select(0, f1)) * (length + 1) + f1 % k1w,
                                  keys.index_select(0, extra) * (length + 1) + place.index_select(0, extra)]))
        first = torch.ones_like(packed, dtype=torch.bool)
        first[1:] = packed[1:] != packed[:-1]
        out.append(packed.index_select(0, _flatnonzero(first)))
    packed = torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=dev)
    place, pair = packed % (length + 1), packed // (length + 1)
    return pair // n, pair % n, place


def _pair_dots(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[rows[e]] . x[cols[e]]`` for every e (float32 products, float64 result on x's device),
    gathered in ~8 MB chunks that stay in cache (on CPU, numpy's einsum on such chunks was 8x
    faster than torch or than 64 MB chunks). Float16 features are converted per chunk."""
    out = torch.empty(len(rows), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 21) // x.shape[1])
    if _host(x):
        xn, rn, cn, on = x.numpy(), rows.numpy(), cols.numpy(), out.numpy()
        for a in range(0, len(rn), step):
            r, c = rn[a:a + step], cn[a:a + step]
            on[a:a + step] = np.einsum("ij,ij->i", xn[r].astype(np.float32), xn[c].astype(np.float32))
        return out
    for a in range(0, len(rows), step):
        r, c = rows[a:a + step], cols[a:a + step]
        out[a:a + step] = (x[r].float() * x[c].float()).sum(1).double()
    return out


def _coo(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """A coalesced sparse COO tensor [n, n] from entries already sorted by (row, column), distinct."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False,
                                   is_coalesced=True)


def _encode(x: torch.Tensor, rank: torch.Tensor, sims: torch.Tensor, k1: int, k2: int,
            row_scale: torch.Tensor | None) -> torch.Tensor:
    """Steps 2-5 on x's device: ``V`` as a coalesced sparse COO tensor [N, N] (float64)."""
    n, length = rank.shape
    rows, cols, place = _expanded_entries(rank, k1)
    known = place < length
    # similarities from the kNN lists where the pair is in them, else computed
    cos = sims.reshape(-1).index_select(0, rows * length + place.clamp(max=length - 1)).double()
    missing = _flatnonzero(~known)
    cos.index_copy_(0, missing, _pair_dots(x, rows.index_select(0, missing), cols.index_select(0, missing)))
    logits = -(2.0 - 2.0 * cos)
    if row_scale is not None:
        logits = logits / row_scale.index_select(0, rows)
    row_max = torch.full((n,), -torch.inf, dtype=torch.float64, device=x.device)
    row_max.scatter_reduce_(0, rows, logits, "amax")
    w = torch.exp(logits - row_max.index_select(0, rows))  # softmax per row, shifted for stability
    w /= torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, rows, w).index_select(0, rows)
    del place, known, cos, missing, logits, row_max  # memory: the product below is the peak
    v = _coo(rows, cols, w, n)
    del rows, cols, w
    if k2 != 1:
        length = min(k2, rank.shape[1])
        first = rank[:, :length].sort(dim=1).values  # the mean of these rows, in index order
        qe = _coo(torch.arange(n, device=x.device).repeat_interleave(length), first.reshape(-1),
                  torch.full((n * length,), 1.0 / float(length), dtype=torch.float64, device=x.device), n)
        with warnings.catch_warnings():  # the product goes through torch's sparse CSR, a beta feature
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            v = torch.sparse.mm(qe, v).coalesce()
    return v


def _to_scipy(v: torch.Tensor) -> sp.csr_matrix:
    """A coalesced sparse COO tensor [N, N] as a scipy CSR matrix with sorted indices (on the host)."""
    n = v.shape[0]
    idx = v.indices().cpu().numpy()
    data = v.values().cpu().numpy()
    indptr = np.concatenate([[0], np.cumsum(np.bincount(idx[0], minlength=n))])
    out = sp.csr_matrix((data, idx[1], indptr), shape=(n, n))
    out.has_sorted_indices = True
    return out


def k_reciprocal_encoding(
    x: torch.Tensor,
    rank: np.ndarray | torch.Tensor,
    sims: np.ndarray | torch.Tensor,
    k1: int,
    k2: int,
    row_scale: np.ndarray | torch.Tensor | None = None,
) -> sp.csr_matrix:
    """Steps 2-5: the sparse k-reciprocal feature ``V`` [N, N] (float64, rows sum to 1), computed
    on x's device and returned as a scipy CSR matrix.

    Args:
        x: [N, D] unit-norm features (for similarities missing from the kNN lists).
        rank, sims: [N, L] kNN indices and similarities, best first (numpy or torch).
        k1, k2: reciprocal-set size and query-expansion size.
        row_scale: [N] optional divisor of the squared distance ``2 - 2 cos`` in the weights of
            row i (the re-ranking of Zhong et al. divides by the row's largest distance).
    """
    dev = x.device
    rank = torch.as_tensor(rank).to(dev, torch.int64)
    sims = torch.as_tensor(sims).to(dev, torch.float32)
    scale = None if row_scale is None else torch.as_tensor(row_scale).to(dev, torch.float64)
    with torch.no_grad(), single_threaded_on_host(dev):
        return _to_scipy(_encode(x, rank, sims, k1, k2, scale))


def min_overlap(a: sp.csr_matrix, b: sp.csr_matrix | None = None,
                keep: Callable[[np.ndarray], np.ndarray] | None = None) -> sp.csr_matrix:
    """``m[r, c] = sum_l min(a[r, l], b[c, l])`` for every pair sharing a column (CSR [R, C]).

    With ``b=None`` (``b = a``) only pairs ``c > r`` are computed (the matrix is symmetric) and
    the strictly upper triangle is returned. Work grows with the number of (r, c, l) triples
    that share a column; memory with one chunk of them plus a fixed ``ACCUMULATOR`` window, plus
    the result: ``keep`` (overlaps -> bool mask), applied chunk by chunk, stores fewer pairs.
    """
    upper = b is None
    b = a if upper else b
    a = sp.csr_matrix(a)
    a.sort_indices()
    bc = sp.csc_matrix(b)
    bc.sort_indices()
    n_rows, n_cols = a.shape[0], b.shape[0]
    col = a.indices.astype(np.int64)
    if upper:
        # position of every entry of `a` inside the CSC layout of the same matrix
        ids = sp.csr_matrix((np.arange(1, a.nnz + 1, dtype=np.float64), a.indices, a.indptr), shape=a.shape)
        csc_pos = np.empty(a.nnz, np.int64)
        csc_pos[ids.tocsc().data.astype(np.int64) - 1] = np.arange(a.nnz)
        starts = csc_pos + 1
    else:
        starts = bc.indptr[col].astype(np.int64)
    counts = bc.indptr[col + 1] - starts
    row_of = np.repeat(np.arange(n_rows), np.diff(a.indptr))
    cum = np.concatenate([[0], np.cumsum(np.bincount(row_of, weights=counts, minlength=n_rows))])
    rows_per_chunk = max(1, ACCUMULATOR // max(1, n_cols))
    # Summing the values of repeated (r, c) keys: a dense accumulator over a window of rows,
    # reused across chunks and reset only where touched, beats sorting the keys (scipy's
    # duplicate summation) by ~3x; numpy has no hash-based group-by.
    acc = np.zeros(min(n_rows, rows_per_chunk) * n_cols)
    owner = np.zeros(len(acc), np.int64)
    out_vals, out_cols = [np.zeros(0)], [np.zeros(0, np.int64)]
    row_nnz = np.zeros(n_rows, np.int64)
    r0 = 0
    while r0 < n_rows:
        r1 = min(n_rows, r0 + rows_per_chunk, max(r0 + 1, int(np.searchsorted(cum, cum[r0] + PAIR_BUDGET, "right")) - 1))
        e0, e1 = a.indptr[r0], a.indptr[r1]
        cnt = counts[e0:e1]
        other = _ranges(starts[e0:e1], cnt)
        keys = np.repeat(row_of[e0:e1] - r0, cnt) * n_cols + bc.indices[other]
        np.add.at(acc, keys, np.minimum(np.repeat(a.data[e0:e1], cnt), bc.data[other]))
        order = np.arange(len(keys))
        owner[keys] = order
        distinct = np.sort(keys[owner[keys] == order])  # one representative per key
        vals = acc[distinct]
        acc[distinct] = 0.0
        if keep is not None:
            kept = keep(vals)
            distinct, vals = distinct[kept], vals[kept]
        row_nnz[r0:r1] = np.bincount(distinct // n_cols, minlength=r1 - r0)
        out_vals.append(vals)
        out_cols.append(distinct % n_cols)
        r0 = r1
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    return sp.csr_matrix((np.concatenate(out_vals), np.concatenate(out_cols), indptr), shape=(n_rows, n_cols))


def overlap_to_distance(m: np.ndarray) -> np.ndarray:
    """Jaccard distance ``1 - m / (2 - m)`` of overlaps ``m``, clamped at 0."""
    return np.maximum(1.0 - m / (2.0 - m), 0.0)


def jaccard_distance_with_steps(
    features: torch.Tensor | np.ndarray,
    k1: int,
    k2: int,
    knn: str,
    max_distance: float | None,
    cameras: np.ndarray | torch.Tensor | None = None,
    camera_params: dict[str, int] | None = None,
) -> tuple[sp.csr_matrix, list[tuple[str, float, str]]]:
    """:func:`jaccard_distance` and its steps: [(name, seconds, device type)]. With ``cameras`` [N], the
    camera-aware distance with ``camera_params`` (``k1_intra``, ``k1_inter``, ``k2_intra``, ``k2_inter``)."""
    for name, value in (("k1", k1), ("k2", k2)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise SettingError(name, value, "an integer >= 1")
    start = time.perf_counter()
    shape = tuple(getattr(features, "shape", ()))
    choice = resolve_backend(knn, shape[0] if shape else 0, shape[1] if len(shape) == 2 else 0,
                             device_type(features))
    x = as_unit_features(features, keep_half=choice.backend == "approx")
    n = x.shape[0]
    if cameras is not None:  # CA-Jaccard: rankings per camera, no half-k1 expansion (k1 and k2 unused)
        from mqreid.cluster.camera_jaccard import camera_aware_v  # it builds on this module's steps

        v, steps = camera_aware_v(x, cameras, choice, **(camera_params or {}))
    else:
        sims, rank = knn_search(x, min(k1, n), backend=choice, as_tensors=True)
        _sync(x.device)
        steps = [("kNN", time.perf_counter() - start, choice.device)]
        t0 = time.perf_counter()
        with torch.no_grad(), single_threaded_on_host(x.device):
            v = _to_scipy(_encode(x, torch.as_tensor(rank).to(x.device), torch.as_tensor(sims).to(x.device), k1, k2,
                                  None))
        steps.append(("encoding", time.perf_counter() - t0, x.device.type))
        del sims, rank
    t0 = time.perf_counter()
    limit = np.float32(1.0) if max_distance is None else np.float32(max_distance)

    def stored(m: np.ndarray) -> np.ndarray:
        dist = overlap_to_distance(m).astype(np.float32)
        # an overlap too small to move a float32 below 1 means "not a neighbour" (limit 1: every neighbour)
        return (dist < 1) & (dist <= limit)

    upper = min_overlap(v, keep=stored)
    del v
    m = upper + upper.T + sp.identity(n, format="csr")  # m(i, i) := 1, i.e. d(i, i) = 0
    del upper
    m = m.tocsr()
    m.sort_indices()
    graph = sp.csr_matrix((overlap_to_distance(m.data).astype(np.float32), m.indices, m.indptr), shape=(n, n))
    steps.append(("overlap", time.perf_counter() - t0, "cpu"))
    return graph, steps


def format_steps(steps: list[tuple[str, float, str]]) -> str:
    """``kNN 1.20 s (cuda), encoding 0.80 s (cuda), ...``: each step's time and where it ran."""
    return ", ".join(f"{name} {seconds:.2f} s ({device})" for name, seconds, device in steps)


def jaccard_distance(
    features: torch.Tensor | np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    knn: str = "auto",
    max_distance: float | None = None,
    cameras: np.ndarray | torch.Tensor | None = None,
    k1_intra: int = 5,
    k1_inter: int = 20,
    k2_intra: int = 2,
    k2_inter: int = 4,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distance of ``features`` [N, D] (CPU or CUDA, numpy or torch).

    With ``cameras`` [N] (integer camera ids) it is the camera-aware distance (CA-Jaccard, see
    :mod:`mqreid.cluster.camera_jaccard`): k-reciprocal neighbours within the same camera (``k1_intra``)
    and across the other cameras (``k1_inter``), their union encoded without the half-``k1`` expansion,
    and a query expansion over ``k2_intra`` same-camera rows (the point itself included) and ``k2_inter``
    other-camera rows; ``k1`` and ``k2`` are then unused. The defaults are the authors' published
    commands. Without ``cameras`` the result does not depend on the camera settings.

    Returns a float32 ``scipy.sparse.csr_matrix`` [N, N] with an explicit entry for every pair
    whose distance is below 1 (absent entries mean 1) and an explicit 0 on the diagonal (a point is
    its own neighbour, also in the degenerate case where its row of ``V`` is empty). Non-normalised
    features are L2-normalised; NaN/inf raise ``ValueError``. ``k1`` larger than N is clamped to N
    (every ranking then holds all points); ``k2`` is clamped to the ranking length.

    ``knn``: kNN backend (see :mod:`mqreid.cluster.knn`; with ``approx`` float16 features stay
    float16). ``max_distance``: store only pairs with a (float32) distance <= it; DBSCAN with
    ``eps = max_distance`` sees exactly the same neighbourhoods from a graph many times smaller.
    The kNN and the encoding run on the features' device, the overlaps on the CPU; the log line
    gives each step's time and device.
    """
    params = dict(k1_intra=k1_intra, k1_inter=k1_inter, k2_intra=k2_intra, k2_inter=k2_inter)
    graph, steps = jaccard_distance_with_steps(features, k1, k2, knn, max_distance, cameras, params)
    n = graph.shape[0]
    log.info("%sJaccard distance: N=%d, %d stored pairs (%.1f per row); %s; total %.2f s",
             "" if cameras is None else "Camera-aware ", n, graph.nnz,
             graph.nnz / n, format_steps(steps), sum(s for _, s, _ in steps))
    return graph
