"""Re-ID ranking metrics: mAP and CMC under the Market-1501 protocol, and pairwise distances.

Protocol (Market-1501, also used for DukeMTMC-reID, MSMT17 and VeRi-776): for each query the
gallery items with the query's id *and* camera are removed from its ranking; the remaining items
with the query's id are its correct matches. A query with no correct match left is skipped (it
counts in neither mAP nor CMC). AP is the mean precision at each correct match of the filtered
ranking; Rank-k is the fraction of valid queries with a correct match among the first k items.

Everything runs on the device of the input tensors, chunked over queries so memory is bounded by
``chunk_size x G`` elements whatever the number of queries. :func:`evaluate_rows` ranks distances
that are produced a chunk of queries at a time (e.g. re-ranked ones) without a [Q, G] matrix.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["METRICS", "evaluate_features", "evaluate_ranking", "evaluate_rows", "pairwise_distance"]

METRICS = ("euclidean", "cosine")

# Queries ranked at once. Memory per chunk is about 30 bytes x chunk_size x G (distances, their
# float32 copy, int64 sort keys, id masks and labels): ~0.3 GB for MSMT17's 82,161 gallery images.
# On 2 CPU cores, chunks of 64, 128 and 256 queries ranked rows of that size equally fast.
DEFAULT_CHUNK_SIZE = 128
# evaluate_features computes distances for blocks of whole chunks, up to this many queries and
# elements (64M float32 = 256 MB): at D = 2048 on 2 CPU cores, products of 128 query rows ran 1.3x
# slower than products of 512.
DISTANCE_BLOCK_ROWS = 512
DISTANCE_BLOCK_ELEMENTS = 1 << 26


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")


def pairwise_distance(a: Tensor, b: Tensor, metric: str = "euclidean") -> Tensor:
    """Distances between the rows of ``a`` [M, D] and the rows of ``b`` [N, D] -> [M, N].

    ``euclidean`` is the *squared* Euclidean distance ``||a||^2 + ||b||^2 - 2 a.b`` (clamped at 0),
    which equals ``2 - 2 cos(a, b)`` for L2-normalised features and ranks like the plain distance.
    Features need not be normalised: the general formula is used for both metrics (``cosine``
    divides by the row norms). Inputs are torch tensors or numpy arrays; the result is float32
    (float64 if an input is float64) on the device of ``a``.
    """
    _check_metric(metric)
    a, b = _feature_pair(a, b, "a", "b")
    if metric == "cosine":
        return _cosine(a, b, _inv_norm(b))
    return _sq_euclidean(a, b, _sq_norm(b))


def _as_tensor(x: Any) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)


def _feature_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[Tensor, Tensor]:
    """Two feature matrices [M, D], [N, D] as float tensors of one dtype on ``a``'s device."""
    a, b = _as_tensor(a), _as_tensor(b)
    for x, name in ((a, name_a), (b, name_b)):
        if x.ndim != 2 or 0 in x.shape:
            raise ValueError(f"{name} must be a non-empty 2-D feature matrix [N, D]; got shape {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} is [M, {a.shape[1]}] but {name_b} is [N, {b.shape[1]}]; feature sizes differ")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32  # float16 -> float32
    return a.to(dtype), b.to(a.device, dtype)


# Row norms without an [N, D] temporary (b.square() would copy the whole gallery).
def _sq_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=1).square_()


def _inv_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=1).clamp_(min=1e-12).reciprocal_()


def _sq_euclidean(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """``||a||^2 + ||b||^2 - 2 a.b`` [M, N], with ``b_sq`` = ``||b||^2`` [N] precomputed by the caller."""
    dist = torch.addmm(b_sq.unsqueeze(0), a, b.T, alpha=-2.0)
    dist += _sq_norm(a).unsqueeze(1)
    return dist.clamp_(min=0.0)


def _cosine(a: Tensor, b: Tensor, b_inv_norm: Tensor) -> Tensor:
    """``1 - cos(a, b)`` [M, N], with ``b_inv_norm`` = ``1 / ||b||`` [N] precomputed by the caller."""
    sim = a @ b.T
    sim *= _inv_norm(a).unsqueeze(1)
    sim *= b_inv_norm.unsqueeze(0)
    return sim.neg_().add_(1.0)


def _as_id_arrays(
    ids: tuple[Any, Any, Any, Any], num_q: int, num_g: int, q_source: str, g_source: str, device: torch.device
) -> tuple[Tensor, ...]:
    """(q_pids, q_camids, g_pids, g_camids) as int64 tensors on ``device``, checked against Q and G
    (``q_source``/``g_source`` name where those sizes come from, for the error message)."""
    q_pids, q_camids, g_pids, g_camids = ids
    return (
        _as_ids(q_pids, "q_pids", num_q, f"Q = {q_source}", device),
        _as_ids(q_camids, "q_camids", num_q, f"Q = {q_source}", device),
        _as_ids(g_pids, "g_pids", num_g, f"G = {g_source}", device),
        _as_ids(g_camids, "g_camids", num_g, f"G = {g_source}", device),
    )


def _as_ids(x: Any, name: str, length: int, length_name: str, device: torch.device) -> Tensor:
    ids = _as_tensor(x)
    if ids.ndim != 1 or ids.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D array of {length} ids ({length_name}); got shape {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids; got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.int64)


def _check_chunk(chunk_size: int, max_rank: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive int; got {max_rank!r}")


def _stable_order(dist: Tensor) -> Tensor:
    """Column indices sorting each row of ``dist`` [C, G] ascending, ties in column (gallery) order.

    The order is that of ``torch.sort(dist, dim=1, stable=True)`` (NaN last, ``-0.0 == 0.0``). On CUDA
    that sort is fast; on the CPU it is the slowest option. Rows of 82,161 float32 distances (MSMT17's
    gallery) on the 2-core development CPU took 4.5 ms each with torch's stable sort, 2.5 ms with numpy's
    (unstable) ``argsort`` and 1.4 ms with numpy sorting int64 keys on one thread, keys built included
    (0.8 ms with the rows split over 2 threads); so rows of up to 32-bit floats on the CPU go through
    :func:`_stable_order_by_keys`.
    """
    if dist.device.type == "cpu" and dist.dtype in (torch.float32, torch.float16, torch.bfloat16) \
            and dist.shape[1] <= 1 << 31:
        return _stable_order_by_keys(dist)
    return torch.sort(dist, dim=1, stable=True).indices


def _stable_order_by_keys(dist: Tensor) -> Tensor:
    """:func:`_stable_order` of a CPU float tensor of at most 32 bits, by sorting distinct int64 keys.

    The key of entry (r, c) is ``s * 2**b + c``, with ``s`` an int32 that orders like the float32 value
    and ``2**b`` > G: keys are distinct, so numpy's (unstable, SIMD) sort of the keys gives the stable
    order, read from their low ``b`` bits. Equal floats get equal ``s`` (``-0.0`` is made ``+0.0``, every
    NaN the largest int32). numpy sorts on one core, so the rows are split among
    ``torch.get_num_threads()`` threads (numpy releases the GIL while it works).
    """
    x = dist.detach().to(torch.float32).numpy()
    order = np.empty(x.shape, np.int64)
    bits = max(1, (x.shape[1] - 1).bit_length())
    parts = max(1, min(torch.get_num_threads(), x.shape[0]))
    bounds = [x.shape[0] * i // parts for i in range(parts + 1)]
    if parts == 1:
        _sort_keys(x, order, bits)
    else:
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(lambda a, b: _sort_keys(x[a:b], order[a:b], bits), bounds[:-1], bounds[1:]))
    return torch.from_numpy(order)


def _sort_keys(x: np.ndarray, out: np.ndarray, bits: int) -> None:
    """Write into ``out`` the column order of each row of the float32 ``x`` (see :func:`_stable_order_by_keys`)."""
    y = x + np.float32(0.0)  # a copy, with -0.0 turned into +0.0
    nan = np.isnan(y)
    s = y.view(np.int32)
    s ^= (s >> 31) & 0x7FFFFFFF  # negative floats: reverse the order of their magnitude bits
    if nan.any():
        s[nan] = np.iinfo(np.int32).max  # all NaN equal and after +inf, as in torch.sort
    del nan
    out[...] = s  # int64 keys
    del y, s
    out <<= bits
    out |= np.arange(x.shape[1], dtype=np.int64)
    out.sort(axis=1)
    out &= (1 << bits) - 1


def _rank_chunk(
    dist: Tensor, q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor
) -> tuple[Tensor, Tensor]:
    """AP and first-match rank of the valid queries of one chunk.

    Args:
        dist: [C, G] distances of C queries to the gallery.
        q_pids, q_camids: [C]; g_pids, g_camids: [G] (int64, same device as ``dist``).

    Returns:
        ap: [V] float64 average precision of the V valid queries of the chunk.
        first: [V] int64 1-based position of the first correct match in the filtered ranking.
    """
    num_q = dist.shape[0]
    # Label of each gallery item for each query: 1 correct match, 2 removed (same id seen by the same
    # camera: the Market-1501 rule), 0 other. Only labelled items matter, and they are few per row.
    same_pid = g_pids == q_pids.unsqueeze(1)  # [C, G] in gallery order
    label = same_pid.to(torch.int8)
    label += same_pid & (g_camids == q_camids.unsqueeze(1))
    del same_pid
    label = label.gather(1, _stable_order(dist))  # in ranked order; ties keep gallery order
    row, col = label.nonzero(as_tuple=True)  # row-major, so each row's items come in rank order
    removed = (label[row, col] == 2).to(torch.int64)
    del label
    per_row = torch.bincount(row, minlength=num_q)
    removed_so_far = removed.cumsum(0) - removed  # removed items before each entry, over all rows
    row_first_entry = per_row.cumsum(0) - per_row
    removed_before = removed_so_far - removed_so_far[row_first_entry[row]]  # ... in the entry's row
    match = removed == 0
    row, pos = row[match], (col + 1 - removed_before)[match]  # 1-based position in the filtered ranking
    num_matches = torch.bincount(row, minlength=num_q)
    row_start = num_matches.cumsum(0) - num_matches  # index of each row's first match in row/pos
    # Precision at each correct match: (matches so far) / (filtered position), in float64.
    hits = torch.arange(1, row.numel() + 1, device=row.device) - row_start[row]
    ap = torch.zeros(num_q, dtype=torch.float64, device=dist.device)
    ap.index_add_(0, row, hits.double() / pos.double())
    valid = num_matches > 0
    ap = ap[valid] / num_matches[valid]
    first = pos[row_start[valid]]
    return ap, first.to(torch.int64)


def _evaluate(
    dist_rows: Callable[[slice], Tensor],
    ids: tuple[Tensor, ...],
    num_q: int,
    num_g: int,
    max_rank: int,
    chunk_size: int,
) -> dict:
    """Rank the distances ``dist_rows(rows)`` [C, G] of each chunk of queries and summarise.

    ``ids`` = (q_pids [Q], q_camids [Q], g_pids [G], g_camids [G]), int64 on the distances' device.
    """
    q_pids, q_camids, g_pids, g_camids = ids
    aps, firsts = [], []
    for start in range(0, num_q, chunk_size):
        rows = slice(start, min(start + chunk_size, num_q))
        ap, first = _rank_chunk(dist_rows(rows), q_pids[rows], q_camids[rows], g_pids, g_camids)
        aps.append(ap)
        firsts.append(first)
    ap = torch.cat(aps).cpu()
    if ap.numel() == 0:
        raise ValueError(
            f"no query has a correct match in the gallery on another camera ({num_q} queries, "
            f"{num_g} gallery items): every query id is missing from the gallery or seen there "
            "only by the query's own camera; check the query/gallery split and the camera ids"
        )
    first = torch.cat(firsts).cpu().numpy()  # [V] 1-based rank of each valid query's first match
    cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(axis=0, dtype=np.float64)
    return {"mAP": float(ap.mean()), "cmc": cmc, "num_valid_queries": int(ap.numel())}


def evaluate_ranking(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict:
    """mAP and CMC of a query-gallery distance matrix under the Market-1501 protocol.

    Args:
        distmat: [Q, G] distances (numpy array or torch tensor on any device; smaller = closer).
        q_pids, q_camids: [Q] integer ids and cameras of the queries (numpy or torch).
        g_pids, g_camids: [G] integer ids and cameras of the gallery.
        max_rank: length of the returned CMC curve.
        chunk_size: queries ranked at once; memory is O(chunk_size x G).

    Returns:
        ``{"mAP": float, "cmc": float64 ndarray [max_rank], "num_valid_queries": int}`` where
        ``cmc[k-1]`` is the Rank-k accuracy (constant past G, the last possible rank).

    Raises:
        ValueError: on mismatched shapes, or when no query has a correct match on another camera.
    """
    _check_chunk(chunk_size, max_rank)
    dist = _as_tensor(distmat)
    if dist.ndim != 2 or 0 in dist.shape:
        raise ValueError(f"distmat must be a non-empty [Q, G] matrix; got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    ids = _as_id_arrays(
        (q_pids, q_camids, g_pids, g_camids), num_q, num_g, "distmat.shape[0]", "distmat.shape[1]", dist.device
    )
    return _evaluate(dist.__getitem__, ids, num_q, num_g, max_rank, chunk_size)


def evaluate_rows(
    dist_rows: Callable[[slice], Any],
    shape: tuple[int, int],
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str = "cpu",
) -> dict:
    """mAP and CMC of a [Q, G] distance matrix given a chunk of queries at a time, never whole.

    Args:
        dist_rows: ``dist_rows(rows)`` returns the [C, G] distances (numpy or torch) of the queries
            ``rows``, a slice ``start:stop`` of ``range(Q)`` with C = ``chunk_size`` (fewer for the last).
            Each chunk is moved to ``device``, ranked and dropped: memory is O(chunk_size x G).
        shape: (Q, G).
        q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size: as in :func:`evaluate_ranking`.
        device: where the chunks are ranked.

    Returns:
        The same dict as :func:`evaluate_ranking`, equal to it on the assembled matrix.
    """
    _check_chunk(chunk_size, max_rank)
    num_q, num_g = (int(n) for n in shape)
    if num_q < 1 or num_g < 1:
        raise ValueError(f"shape must be a non-empty (Q, G); got {tuple(shape)}")
    device = torch.device(device)
    ids = _as_id_arrays((q_pids, q_camids, g_pids, g_camids), num_q, num_g, "shape[0]", "shape[1]", device)

    def chunk(rows: slice) -> Tensor:
        dist = _as_tensor(dist_rows(rows)).to(device)
        expected = (rows.stop - rows.start, num_g)
        if tuple(dist.shape) != expected:
            raise ValueError(f"dist_rows({rows.start}:{rows.stop}) returned shape {tuple(dist.shape)}; "
                             f"expected {expected}")
        return dist

    return _evaluate(chunk, ids, num_q, num_g, max_rank, chunk_size)


def evaluate_features(
    q_feats: Tensor,
    g_feats: Tensor,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    metric: str = "euclidean",
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict:
    """mAP and CMC of query features against gallery features, without a full [Q, G] matrix.

    Distances (see :func:`pairwise_distance`) are computed for a block of whole chunks of queries at
    a time (up to ``DISTANCE_BLOCK_ROWS`` queries and ``DISTANCE_BLOCK_ELEMENTS`` distances) and ranked
    ``chunk_size`` queries at once, on the device of ``q_feats``; ``g_feats`` is moved there if needed.

    Args:
        q_feats: [Q, D] query features; g_feats: [G, D] gallery features (torch or numpy).
        q_pids, q_camids: [Q] integer ids and cameras; g_pids, g_camids: [G].
        metric: ``"euclidean"`` (squared; ``2 - 2 cos`` for L2-normalised features, computed with
            the general formula so unnormalised features are fine too) or ``"cosine"``.
        max_rank, chunk_size: as in :func:`evaluate_ranking`.

    Returns:
        The same dict as :func:`evaluate_ranking`.
    """
    _check_metric(metric)
    _check_chunk(chunk_size, max_rank)
    q, g = _feature_pair(q_feats, g_feats, "q_feats", "g_feats")
    num_q, num_g = q.shape[0], g.shape[0]
    ids = _as_id_arrays(
        (q_pids, q_camids, g_pids, g_camids), num_q, num_g, "q_feats.shape[0]", "g_feats.shape[0]", q.device
    )
    if metric == "cosine":
        g_inv_norm = _inv_norm(g)  # gallery terms once for all chunks

        def distances(rows: slice) -> Tensor:
            return _cosine(q[rows], g, g_inv_norm)
    else:
        g_sq = _sq_norm(g)

        def distances(rows: slice) -> Tensor:
            return _sq_euclidean(q[rows], g, g_sq)

    block_rows = chunk_size * max(1, min(DISTANCE_BLOCK_ROWS, DISTANCE_BLOCK_ELEMENTS // num_g) // chunk_size)
    block: dict[str, Any] = {"start": -1, "dist": None}

    def dist_rows(rows: slice) -> Tensor:
        start = rows.start - rows.start % block_rows
        if block["start"] != start:
            block["dist"] = None  # freed before the next block is computed
            block["dist"], block["start"] = distances(slice(start, start + block_rows)), start
        return block["dist"][rows.start - start:rows.stop - start]

    return _evaluate(dist_rows, ids, num_q, num_g, max_rank, chunk_size)


def summarise_percent(result: dict) -> dict[str, float]:
    """mAP and Rank-1/5/10 of an :func:`evaluate_ranking` result, in percent (the unit of the logs)."""
    cmc = result["cmc"]
    return {"mAP": 100 * result["mAP"], "rank1": 100 * float(cmc[0]), "rank5": 100 * float(cmc[4]),
            "rank10": 100 * float(cmc[9])}
