"""Camera-aware Jaccard distance (CA-Jaccard; Chen et al., CVPR 2024, "CA-Jaccard: Camera-aware Jaccard
Distance for Person Re-identification"), sparse, memory O(N·k).

It changes two steps of the k-reciprocal encoding of :mod:`mqreid.cluster.jaccard` and keeps the rest:

1. two rankings per point instead of one: the *intra-camera* ranking (its own camera's points by
   decreasing similarity, itself first) and the *inter-camera* ranking (the other cameras' points). As in
   the authors' code, which ranks ``d + 999 * [other camera]`` and ``d + 999 * [same camera]``, a ranking
   whose own part is too short continues with the other part (a camera with one image: its intra ranking
   is itself, then its nearest images of other cameras);
2. k-reciprocal sets ``R_intra(i, k1_intra)`` and ``R_inter(i, k1_inter)``, each on its own ranking
   (``j`` in the first ``k + 1`` of ``i``'s ranking and ``i`` in the first ``k + 1`` of ``j``'s), and their
   union is the encoded set: no half-``k1`` expansion;
3. weights ``softmax_j(-(2 - 2 cos(i, j)))`` over the union (as before);
4. local query expansion over the first ``k2_intra`` entries of the intra ranking (``i`` itself and its
   ``k2_intra - 1`` nearest same-camera points) and the first ``k2_inter`` of the inter ranking: ``V[i]``
   becomes the mean of these ``k2_intra + k2_inter`` rows (a row listed twice counts twice, as in
   ``np.mean`` over the authors' index list);
5. the usual Jaccard ``1 - m / (2 - m)`` of the overlaps (:func:`mqreid.cluster.jaccard.min_overlap`).

The rankings come from exact searches: a kNN self-search within each camera, and one pass over the products
between cameras in which each camera meets the later ones once and both sides take their top-k. Together
about half of one ``N x N`` GEMM, as the plain Jaccard's self-search over the upper triangle.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from mqreid.cluster.jaccard import _coo, _sync, _to_scipy, reciprocal_mask
from mqreid.cluster.knn import KnnChoice, _matmul_t, _sort_rows, knn_search, resolve_backend, single_threaded_on_host
from mqreid.utils.errors import SettingError

# The authors' defaults (chenyiyuu/CA-Jaccard, train_caj.py and the README's training commands).
K1_INTRA = 5        # --k1-intra 5 (argparse default)
K1_INTER = 20       # --k1-inter 20 (argparse default)
K2_INTRA = 2        # --k2-intra 2 in the README's Market-1501 / MSMT17 / VeRi commands (argparse default 3)
K2_INTER = 4        # --k2-inter 4 in the same commands (argparse default 3)
K2_FIRST = 3        # caj_rerank.py sets k2_intra = k2_inter = 3 at epoch 0 ("warm-up"), whatever the flags


def check_camera_params(**params: int) -> None:
    """Each value an integer >= 0; ``k2_intra + k2_inter >= 1`` (and the same for the ``*_first`` pair)."""
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SettingError(name, value, "an integer >= 0")
    for intra, inter in (("k2_intra", "k2_inter"), ("k2_intra_first", "k2_inter_first")):
        a, b = params.get(intra), params.get(inter)
        if a is not None and b is not None and a + b < 1:  # a pair not given is not checked
            raise SettingError(inter, b, f"{intra} + {inter} >= 1 with {intra}={a} (the query expansion averages "
                                         f"that many rows; {intra}=1 {inter}=0 turns it off)")


def camera_tensor(cameras, n: int, device: torch.device) -> torch.Tensor:
    """``cameras`` [N] (numpy or torch, integers) as an int64 tensor on ``device``; a clear error otherwise."""
    cams = torch.as_tensor(np.asarray(cameras) if not isinstance(cameras, torch.Tensor) else cameras)
    if cams.shape != (n,):
        raise ValueError(f"cameras: expected shape ({n},), one camera id per feature row, got {tuple(cams.shape)}")
    if cams.is_floating_point() or cams.is_complex() or cams.dtype == torch.bool:
        raise ValueError(f"cameras: expected integer camera ids, got dtype {cams.dtype}")
    return cams.to(device, torch.int64)


# Neighbours whose float32 similarities from different GEMM tiles differ by at most this may be equal
NEAR_TIE = 1e-5
# Inter-camera search: tiles of at most TILE_ELEMENTS similarities (128 MB in float32)
TILE_ELEMENTS = 1 << 25


def _inter_camera_candidates(x: torch.Tensor, groups: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar points of other cameras for every point (unsorted; -inf / -1 where a camera's
    others are fewer): (sims [N, k], idx [N, k]).

    With the points ordered by camera, camera a is multiplied once with all later cameras' points,
    ``x_a @ x_later.T`` in tiles of rows, and the products serve both sides: a top-k along each row gives
    a's candidates among the later cameras, a top-k along each column gives every later point its
    candidates in a. The work is half of the ``N x N`` products outside the cameras' own blocks, as the
    plain Jaccard's self-search uses the upper triangle (searching every camera against all others would
    do it twice), in large products (small per-pair products ran at a fifth of the BLAS speed here). Each
    point keeps its top ``k`` of all its candidates once, at the end.
    """
    n, dev = x.shape[0], x.device
    order = torch.cat(groups)
    xs = x.index_select(0, order)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    rows_found: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # per camera: its candidates in later cameras
    cols_found: list[tuple[int, torch.Tensor, torch.Tensor]] = []    # (first position, vals, idx) over later points
    buffer = np.empty(TILE_ELEMENTS + n, np.float32) if dev.type == "cpu" else None
    for a in range(len(groups)):
        sa, ea = int(bounds[a]), int(bounds[a + 1])
        later = n - ea
        if later == 0:
            rows_found.append(None)
            continue
        rows = max(1, min(ea - sa, TILE_ELEMENTS // later))
        rv = torch.empty((ea - sa, min(k, later)), dtype=torch.float32, device=dev)
        ri = torch.empty((ea - sa, min(k, later)), dtype=torch.int64, device=dev)
        col_v, col_i = [], []
        for s in range(sa, ea, rows):
            e = min(ea, s + rows)
            sims = _matmul_t(xs[s:e], xs[ea:], buffer).to(dev, torch.float32)  # [e - s, later]
            top = sims.topk(min(k, later), dim=1)
            rv[s - sa:e - sa], ri[s - sa:e - sa] = top.values, top.indices + ea
            top = sims.t().contiguous().topk(min(k, e - s), dim=1)  # contiguous: faster than along dim 0
            col_v.append(top.values)
            col_i.append(top.indices + s)
        rows_found.append((rv, ri))
        cols_found.append((ea, torch.cat(col_v, 1), torch.cat(col_i, 1)))
    vals = torch.full((n, k), float("-inf"), dtype=torch.float32, device=dev)
    idx = torch.full((n, k), -1, dtype=torch.int64, device=dev)
    for b in range(len(groups)):
        sb, eb = int(bounds[b]), int(bounds[b + 1])
        blocks = [] if rows_found[b] is None else [rows_found[b]]
        blocks += [(v[sb - first:eb - first], i[sb - first:eb - first]) for first, v, i in cols_found if first <= sb]
        if not blocks:
            continue
        cv, ci = torch.cat([v for v, _ in blocks], 1), torch.cat([i for _, i in blocks], 1)
        top = cv.topk(min(k, cv.shape[1]), dim=1)
        width = top.values.shape[1]
        vals[sb:eb, :width], idx[sb:eb, :width] = top.values, order[ci.gather(1, top.indices)]
    out_v, out_i = torch.empty_like(vals), torch.empty_like(idx)
    out_v[order], out_i[order] = vals, idx  # back from camera order to the points' own
    return out_v, out_i


def _exact_dots(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[R, K] float64 ``x[rows[r]] . x[cols[r, j]]``. Products of float32 values are exact in float64 and every
    pair is summed by the same reduction, so copies of an image on several cameras tie exactly: the GEMM
    tiles' float32 results may differ in the last bit, and the tie order (the lower index first) would be
    chance. 1,024 pairs (32 MB) at a time; for the few rows with near-equal neighbours."""
    r = rows[:, None].expand(cols.shape).reshape(-1)
    c = cols.reshape(-1)
    out = torch.empty(len(c), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 21) // x.shape[1])
    for s in range(0, len(c), step):
        out[s:s + step] = (x[r[s:s + step]].double() * x[c[s:s + step]].double()).sum(1)
    return out.view(cols.shape)


def _ordered(sims: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows by decreasing similarity, ties to the lower index (the kNN searches' order)."""
    order = _sort_rows(sims, idx, None)
    return sims.gather(1, order), idx.gather(1, order)


def camera_rankings(x: torch.Tensor, cameras: torch.Tensor, width: int,
                    choice: KnnChoice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The intra- and inter-camera rankings of every point: ``(intra_sims, intra_rank, inter_sims,
    inter_rank)``, each [N, W] with ``W = min(width, N)``, best first, on x's device.

    Row ``i`` of the intra ranking lists the points of ``i``'s camera (``i`` first, then by decreasing
    similarity, ties to the lower index), continued by the other cameras' points when the camera has fewer
    than ``W``; the inter ranking lists the other cameras' points, continued by the own camera's.

    The intra lists come from a kNN self-search per camera (``choice``'s backend), the inter lists from
    :func:`_inter_camera_candidates`, exact; the ``W + 1``-th candidate is kept to find rows with a tie
    across the cut, which are searched again against all their other-camera points with the exact tie
    order.
    """
    n = x.shape[0]
    w = min(width, n)
    cams = torch.unique(cameras).tolist()  # the host knows the ids anyway
    groups = [torch.nonzero(cameras == cam).squeeze(1) for cam in cams]
    out_s, out_r = _inter_camera_candidates(x, groups, min(w + 1, n))
    intra_s = torch.empty((n, w), dtype=torch.float32, device=x.device)
    inter_s = torch.empty_like(intra_s)
    intra_r = torch.empty((n, w), dtype=torch.int64, device=x.device)
    inter_r = torch.empty_like(intra_r)
    for own in groups:
        others = n - len(own)
        s_in, r_in = knn_search(x.index_select(0, own), min(w, len(own)), backend=choice, as_tensors=True)
        r_in = own[r_in]
        kept = min(w + 1, others)
        s_out, r_out = _ordered(out_s[own, :kept].double(), out_r[own, :kept])
        # near-equal neighbours (copies of an image on several cameras, e.g.): their similarities again, exactly,
        # so that their order is the tie order and not the tiles' last bit
        near = torch.nonzero(((s_out[:, :-1] - s_out[:, 1:]) <= NEAR_TIE).any(1)).squeeze(1)
        if len(near):
            s_out[near], r_out[near] = _ordered(_exact_dots(x, own[near], r_out[near]), r_out[near])
        if others > w:  # rows whose w-th and (w+1)-th are equal: which tied point is kept must not be chance
            tied = torch.nonzero(s_out[:, w - 1] == s_out[:, w]).squeeze(1)
            if len(tied):  # rare (copies of an image, e.g.): every other-camera point, one exact product each
                rest = torch.ones(n, dtype=torch.bool, device=x.device)
                rest[own] = False
                rest = torch.nonzero(rest).squeeze(1)
                for row in tied.tolist():
                    sims = _exact_dots(x, own[row:row + 1], rest[None, :])
                    ts, tr = _ordered(sims, rest[None, :])
                    s_out[row, :w], r_out[row, :w] = ts[0, :w], tr[0, :w]
        s_out, r_out = s_out[:, :w].float(), r_out[:, :w]
        intra_s[own], intra_r[own] = torch.cat([s_in, s_out], 1)[:, :w], torch.cat([r_in, r_out], 1)[:, :w]
        inter_s[own], inter_r[own] = torch.cat([s_out, s_in], 1)[:, :w], torch.cat([r_out, r_in], 1)[:, :w]
    return intra_s, intra_r, inter_s, inter_r


def _reciprocal_entries(rank: torch.Tensor, sims: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """(rows, cols, sims) of the k-reciprocal sets R(i, k) on one ranking, in row order."""
    mask = reciprocal_mask(rank, k)
    width = mask.shape[1]
    rows = torch.arange(rank.shape[0], device=rank.device)[:, None].expand_as(mask)[mask]
    return rows, rank[:, :width][mask], sims[:, :width][mask]


def camera_aware_encoding(x: torch.Tensor, intra: tuple[torch.Tensor, torch.Tensor],
                          inter: tuple[torch.Tensor, torch.Tensor], k1_intra: int, k1_inter: int,
                          k2_intra: int, k2_inter: int) -> torch.Tensor:
    """Steps 2-4: ``V`` [N, N] as a coalesced sparse COO tensor (float64, rows sum to 1) on x's device.

    ``intra``, ``inter``: (sims [N, W], rank [N, W]) from :func:`camera_rankings`.
    """
    n = x.shape[0]
    dev = x.device
    (intra_s, intra_r), (inter_s, inter_r) = intra, inter
    ri, ci, si = _reciprocal_entries(intra_r, intra_s, k1_intra)
    re, ce, se = _reciprocal_entries(inter_r, inter_s, k1_inter)
    rows, cols, cos = torch.cat([ri, re]), torch.cat([ci, ce]), torch.cat([si, se])
    # the union: one entry per (row, column), sorted; a pair in both sets (only where a ranking was
    # continued with the other one's points) keeps the intra entry (stable sort, intra first)
    keys = rows * n + cols
    order = torch.argsort(keys, stable=True)
    keys, cos = keys[order], cos[order]
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, cos = keys[first], cos[first].double()
    rows, cols = keys // n, keys % n
    logits = -(2.0 - 2.0 * cos)
    row_max = torch.full((n,), -torch.inf, dtype=torch.float64, device=dev).scatter_reduce_(0, rows, logits, "amax")
    w = torch.exp(logits - row_max.index_select(0, rows))  # softmax per row, shifted for stability
    w /= torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, rows, w).index_select(0, rows)
    v = _coo(rows, cols, w, n)
    a, b = min(k2_intra, intra_r.shape[1]), min(k2_inter, inter_r.shape[1])
    if a == 1 and b == 0:  # the mean of the row itself
        return v
    expand = torch.cat([intra_r[:, :a], inter_r[:, :b]], 1)  # [N, a + b], repeats allowed
    qe = torch.sparse_coo_tensor(torch.stack([torch.arange(n, device=dev).repeat_interleave(a + b), expand.reshape(-1)]),
                                 torch.full((n * (a + b),), 1.0 / (a + b), dtype=torch.float64, device=dev),
                                 (n, n), check_invariants=False).coalesce()  # a repeated row sums its weights: it counts twice
    with warnings.catch_warnings():  # the product goes through torch's sparse CSR, a beta feature
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(qe, v).coalesce()


def camera_aware_v(x: torch.Tensor, cameras, choice: KnnChoice, k1_intra: int = K1_INTRA, k1_inter: int = K1_INTER,
                   k2_intra: int = K2_INTRA, k2_inter: int = K2_INTER) -> tuple[sp.csr_matrix, list[tuple[str, float, str]]]:
    """The camera-aware ``V`` of unit features ``x`` [N, D] as a scipy CSR matrix, and the steps' times.

    ``choice``: the resolved kNN backend; ``approx`` has no search against a base set and is replaced by
    the exact ``torch`` backend (logged).
    """
    check_camera_params(k1_intra=k1_intra, k1_inter=k1_inter, k2_intra=k2_intra, k2_inter=k2_inter)
    n = x.shape[0]
    cams = camera_tensor(cameras, n, x.device)
    if choice.backend == "approx":
        choice = resolve_backend("torch", n, x.shape[1], x.device.type)
    width = max(k1_intra + 1, k1_inter + 1, k2_intra, k2_inter)
    start = time.perf_counter()
    with torch.no_grad():
        intra_s, intra_r, inter_s, inter_r = camera_rankings(x, cams, width, choice)
    _sync(x.device)
    steps = [("kNN per camera", time.perf_counter() - start, choice.device)]
    t0 = time.perf_counter()
    with torch.no_grad(), single_threaded_on_host(x.device):
        v = _to_scipy(camera_aware_encoding(x, (intra_s, intra_r), (inter_s, inter_r), k1_intra, k1_inter,
                                            k2_intra, k2_inter))
    steps.append(("camera-aware encoding", time.perf_counter() - t0, x.device.type))
    return v, steps
