"""The plan of a set: which images each identity has, on which cameras, in which split."""

from __future__ import annotations

import numpy as np

from .nuisances import Nuisances
from .rand import _STREAM_COUNTS, _STREAM_PLAN, _rng


def _camera_groups(num_cameras: int, groups: tuple[int, ...]) -> list[int]:
    """The group of each camera (0-based): ``groups`` counts the cameras of each group in camera order;
    empty: one group."""
    if not groups:
        return [0] * num_cameras
    if sum(groups) != num_cameras:
        raise ValueError(f"Synthetic: nuisances.groups must add up to num_cameras ({num_cameras}), got "
                         f"{list(groups)} (sum {sum(groups)})")
    return [g for g, size in enumerate(groups) for _ in range(size)]


def _walk_cameras(rng: np.random.Generator, k: int, group_of: list[int], neighbours: int, cross: float) -> list[int]:
    """``k`` distinct cameras visited by a walk on the camera adjacency graph: within a group the cameras
    stand on a ring, each linked to the ``neighbours`` nearest on either side. The walk starts at a random
    camera of a group with at least ``k`` cameras (any camera when no group has that many); each next camera
    is, with probability ``cross``, an unvisited camera of another group, else an unvisited camera linked to
    the visited cameras of the current group (another group's when the current one is used up)."""
    members: dict[int, list[int]] = {}
    for cam, g in enumerate(group_of):
        members.setdefault(g, []).append(cam)
    linked = {}
    for ring in members.values():
        for i, cam in enumerate(ring):
            linked[cam] = {ring[(i + d) % len(ring)] for d in range(-neighbours, neighbours + 1)} - {cam}
    large = [c for c, g in enumerate(group_of) if len(members[g]) >= k] or list(range(len(group_of)))
    path = [int(rng.choice(large))]
    while len(path) < k:
        here, seen = group_of[path[-1]], set(path)
        near = sorted({c for v in path if group_of[v] == here for c in linked[v]} - seen)
        away = [c for c in range(len(group_of)) if c not in seen and group_of[c] != here]
        if away and (not near or rng.random() < cross):
            path.append(int(rng.choice(away)))
        elif near:
            path.append(int(rng.choice(near)))
        else:  # the current group's cameras not linked to the path (a ring cut by neighbours = 0)
            path.append(int(rng.choice([c for c in range(len(group_of)) if c not in seen])))
    return path


def _plan_identity(rng: np.random.Generator, num_cameras: int, images_per_id: tuple[int, int],
                   walk=None) -> list[int]:
    """Camera (0-based) of each image of one identity: >= 2 cameras, >= 2 images on each."""
    n = int(rng.integers(images_per_id[0], images_per_id[1] + 1))
    return _plan_cameras(rng, num_cameras, n, walk=walk)


def _plan_cameras(rng: np.random.Generator, num_cameras: int, n: int, k: int | None = None, walk=None) -> list[int]:
    """Cameras (0-based, sorted) of ``n`` images on ``k`` cameras (drawn when None), >= 2 images on each.
    ``walk``: None (the cameras are drawn at random) or ``(group_of, neighbours, cross)`` of :func:`_walk_cameras`."""
    if k is None:
        k = min(2 + int(rng.binomial(num_cameras - 2, 0.25)), n // 2)
    if walk is None:
        cams = np.sort(rng.choice(num_cameras, size=k, replace=False))
    else:
        cams = np.sort(_walk_cameras(rng, k, *walk))
    counts = 2 + rng.multinomial(n - 2 * k, np.full(k, 1.0 / k))
    return [int(c) for c, m in zip(cams, counts) for _ in range(m)]


def _allocate(rng: np.random.Generator, total: int, low: np.ndarray,
              high: int | np.ndarray | None = None, spread: float = 0.5) -> np.ndarray:
    """Split ``total`` into one count per entry of ``low`` [n], with ``low <= count <= high`` (an int or [n]).

    The counts above ``low`` are spread by log-normal weights of sigma ``spread`` (some identities are seen
    much more often than others); what a capped entry would exceed goes to the others."""
    counts = np.asarray(low, dtype=np.int64).copy()
    weights = rng.lognormal(0.0, spread, len(counts))
    left = total - int(counts.sum())
    while left > 0:
        p = weights if high is None else np.where(counts < high, weights, 0.0)
        counts += rng.multinomial(left, p / p.sum())
        over = 0 if high is None else np.maximum(counts - high, 0)
        counts -= over
        left = int(np.sum(over))
    return counts


def _plan_set(*, num_train_ids: int, num_test_ids: int, num_cameras: int, images_per_id: tuple[int, int],
              num_train_images: int | None, num_query: int | None, num_gallery: int | None, seed: int,
              nuisances: Nuisances | None = None, **_) -> list[tuple[int, list[tuple[str, int, int]]]]:
    """(pid, [(split, camera, frame), ...]) of every identity, pids 1.. (train first, then test).

    Without split sizes every identity draws its number of images from ``images_per_id``. With them,
    the training images, the queries and the gallery images are first split among the identities
    (stream ``_STREAM_COUNTS``): a test identity with q queries is seen by q cameras, its first image on
    each is the query, so every query has a gallery image on the same camera and on >= 1 other. The
    training identities are seen by as many cameras on average as the test identities."""
    sized = num_train_images is not None
    if sized:
        rng = _rng(seed, _STREAM_COUNTS)
        spread = (nuisances or Nuisances()).count_spread
        train_n = _allocate(rng, num_train_images, np.full(num_train_ids, 4), spread=spread)
        test_k = _allocate(rng, num_query, np.full(num_test_ids, 2), num_cameras)
        test_g = _allocate(rng, num_gallery, test_k, spread=spread)  # >= one gallery image per query camera
        train_high = np.minimum(num_cameras, train_n // 2)  # >= 2 images per camera
        train_cams = round(num_query * num_train_ids / num_test_ids)
        train_k = _allocate(rng, min(train_cams, int(train_high.sum())), np.full(num_train_ids, 2), train_high)
    n = nuisances or Nuisances()
    walk = (_camera_groups(num_cameras, n.groups), n.walk, n.cross_group) if n.walk else None
    plan = []
    for pid in range(1, num_train_ids + num_test_ids + 1):
        rng = _rng(seed, _STREAM_PLAN, pid)
        test = pid - num_train_ids - 1  # index among the test identities when >= 0
        if not sized:
            cams = _plan_identity(rng, num_cameras, images_per_id, walk)
        elif test < 0:
            cams = _plan_cameras(rng, num_cameras, int(train_n[pid - 1]), int(train_k[pid - 1]), walk)
        else:
            cams = _plan_cameras(rng, num_cameras, int(test_k[test] + test_g[test]), int(test_k[test]), walk)
        seen: set[int] = set()
        images = []
        for frame, cam in enumerate(cams):
            if test < 0:
                split = "bounding_box_train"
            else:  # the first image per camera is a query, the rest gallery
                split = "bounding_box_test" if cam in seen else "query"
                seen.add(cam)
            images.append((split, cam, frame))
        plan.append((pid, images))
    return plan

