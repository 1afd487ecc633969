"""How much a set's features follow cameras: the data-level statistics of the v2 benchmark's calibration
(docs/benchmark-v2.md, S2, S3, S5 and the report-only S5-linear), on features with known identities and cameras.

All functions take ``features`` [N, D] (torch or numpy; compared by cosine similarity), ``pids`` [N] and
``cameras`` [N] (integers). Similarities are computed 1,024 rows at a time, so memory stays O(1,024 x N).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["camera_knn_vote", "camera_probe", "camera_recall", "wrong_identity_camera_excess"]

_ROWS = 1024


def _inputs(features, pids, cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    p, c = torch.as_tensor(np.asarray(pids)), torch.as_tensor(np.asarray(cameras))
    if x.ndim != 2 or p.shape != x.shape[:1] or c.shape != x.shape[:1]:
        raise ValueError(f"expected features [N, D], pids [N] and cameras [N], got {tuple(x.shape)}, "
                         f"{tuple(p.shape)} and {tuple(c.shape)}")
    return x, p.to(x.device), c.to(x.device)


def _impostor_rows(x: torch.Tensor, p: torch.Tensor, k: int):
    """For each block of rows: (rows, similarities with the image itself at -inf, same-identity mask, the k
    most similar images of other identities: values [b, k'] and indices [b, k'], k' = min(k, N - 1))."""
    n = x.shape[0]
    for start in range(0, n, _ROWS):
        rows = torch.arange(start, min(start + _ROWS, n), device=x.device)
        sim = x[rows] @ x.T
        sim[torch.arange(len(rows)), rows] = -float("inf")
        same = p[rows, None] == p[None, :]
        impostor = sim.masked_fill(same, -float("inf"))
        top = impostor.topk(min(k, n - 1), dim=1)
        yield rows, sim, same, top.values, top.indices


def wrong_identity_camera_excess(features, pids, cameras, k: int = 15) -> float:
    """S2: for each image, the share of its ``k`` most similar images *of other identities* that come from its
    own camera, minus the share of its camera among all images of other identities; the mean over images
    (images with fewer than ``k`` images of other identities use those they have). 0: the nearest impostors
    ignore cameras; 1 - chance: they all come from the image's own camera."""
    x, p, c = _inputs(features, pids, cameras)
    n = x.shape[0]
    pid_index, cam_index = torch.unique(p, return_inverse=True)[1], torch.unique(c, return_inverse=True)[1]
    per_pid, per_cam = torch.bincount(pid_index), torch.bincount(cam_index)
    pair = pid_index * (int(cam_index.max()) + 1) + cam_index  # (identity, camera) cells
    per_pair = torch.bincount(pair)
    others = n - per_pid[pid_index]
    chance = (per_cam[cam_index] - per_pair[pair]).double() / others.clamp(min=1).double()
    excess = []
    for rows, _, _, values, indices in _impostor_rows(x, p, k):
        valid = torch.isfinite(values)
        own = (c[indices] == c[rows, None]) & valid
        share = own.sum(1).double() / valid.sum(1).clamp(min=1).double()
        keep = valid.any(1)
        excess.append((share - chance[rows])[keep])
    return float(torch.cat(excess).mean())


def camera_recall(features, pids, cameras, k: int = 15) -> dict[str, float]:
    """S3: recall@``k`` of true matches on the image's own camera and on other cameras.

    A true match j of image i (same identity, j not i) is found when fewer than ``k`` images of other
    identities are more similar to i than j is. ``same`` is the share of an image's same-camera matches
    found, ``cross`` the share of its other-camera matches found, each averaged over the images that have at
    least one match of that kind; ``gap`` = same - cross."""
    x, p, c = _inputs(features, pids, cameras)
    same_r, cross_r = [], []
    for rows, sim, same, values, _ in _impostor_rows(x, p, k):
        # the k-th most similar impostor (-inf when there are fewer than k): a match at least as similar is found
        threshold = values[:, -1:] if values.shape[1] == k else torch.full_like(values[:, :1], -float("inf"))
        match = same.clone()
        match[torch.arange(len(rows)), rows] = False
        found = match & (sim >= threshold)
        own_cam = c[rows, None] == c[None, :]
        for kind, out in ((own_cam, same_r), (~own_cam, cross_r)):
            total = (match & kind).sum(1)
            has = total > 0
            out.append((found & kind).sum(1)[has].double() / total[has].double())
    same_v, cross_v = torch.cat(same_r), torch.cat(cross_r)
    r_same = float(same_v.mean()) if len(same_v) else float("nan")
    r_cross = float(cross_v.mean()) if len(cross_v) else float("nan")
    return {"same": r_same, "cross": r_cross, "gap": r_same - r_cross}


def camera_knn_vote(features, pids, cameras, k: int = 15, centre: bool = False) -> dict[str, float]:
    """S5 (as amended): how well the ``k`` most similar images *of other identities* tell an image's camera.

    Each image's camera is predicted by the majority vote of its ``k`` nearest images of other identities
    (cosine; ties: the camera, among the tied ones, of the most similar voter); returns the balanced accuracy
    over all images and ``kappa`` = (accuracy - 1/C) / (1 - 1/C) for C cameras (0: chance, 1: perfect). A vote
    that does not depend on the true camera scores 1/C in expectation whatever the cameras' frequencies.

    ``centre``: camera-centre first, for the images of identity q with each camera's mean over the images of
    the *other* identities (then L2-normalised; a camera that only q visits is left as it is). Means over all
    images include the query and its own identity: every camera's centred images then sum to zero, so the
    query's similarity to its own camera's other images is pushed below that to other cameras (by about
    1/images per camera), which reads as below chance. With these means the voters of each camera sum to zero
    instead, and chance stays chance. The vote is local (non-linear), so on centred features it sees what a
    constant per-camera offset cannot carry: a camera-dependent rotation, scaling or light that interacts with
    the image. The query's own identity is left out of the voters, otherwise the vote would read the cameras
    that identity visits rather than the features' camera; what remains is a slight pull below chance where
    identities keep to few cameras on small sets (their own camera has fewer voters left).

    Written here rather than with scikit-learn's KNeighborsClassifier, which can neither leave out a
    different set of candidates for each query nor centre per query identity. Cost: one similarity row per
    image and one centring of all N features per identity."""
    x, p, c = _inputs(features, pids, cameras)
    cam_values, cam_index = torch.unique(c, return_inverse=True)
    pid_values, pid_index = torch.unique(p, return_inverse=True)
    num_cameras = len(cam_values)
    if num_cameras < 2 or len(pid_values) < 2:
        raise ValueError(f"camera_knn_vote: needs >= 2 cameras and >= 2 identities, got {num_cameras} and "
                         f"{len(pid_values)}")
    x64 = x.double()
    sums = torch.zeros(num_cameras, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, cam_index, x64)
    counts = torch.bincount(cam_index, minlength=num_cameras)
    truth, predicted = [], []
    for q in range(len(pid_values)):
        mine = pid_index == q
        if centre:
            own_sums = torch.zeros_like(sums).index_add_(0, cam_index[mine], x64[mine])
            others = counts - torch.bincount(cam_index[mine], minlength=num_cameras)
            means = (sums - own_sums) / others.clamp(min=1)[:, None]
            y = torch.nn.functional.normalize(x64 - means[cam_index], dim=1).float()
        else:
            y = x
        sim = y[mine] @ y.T
        sim[:, mine] = -float("inf")
        top = sim.topk(min(k, int((~mine).sum())), dim=1)
        voters = cam_index[top.indices]  # [n_q, k'], the most similar first
        votes = torch.zeros(len(voters), num_cameras, dtype=torch.long, device=x.device)
        votes.scatter_add_(1, voters, torch.ones_like(voters))
        tied = (votes == votes.max(1, keepdim=True).values).gather(1, voters)
        first = tied.long().argmax(1)  # the most similar voter whose camera is among the tied ones
        predicted.append(voters[torch.arange(len(voters)), first])
        truth.append(cam_index[mine])
    truth_v, predicted_v = torch.cat(truth), torch.cat(predicted)
    recall = [float((predicted_v[truth_v == cam] == cam).double().mean()) for cam in range(num_cameras)]
    accuracy = sum(recall) / num_cameras  # balanced accuracy: the mean of the per-camera recalls
    return {"balanced_accuracy": accuracy, "kappa": (accuracy - 1 / num_cameras) / (1 - 1 / num_cameras)}


def camera_probe(features, pids, cameras, folds: int = 5, centre: bool = False) -> dict[str, float]:
    """S5-linear (report-only since the pre-registration's Amendment 1): how well a linear probe tells the camera
    from the features.

    Multinomial logistic regression (scikit-learn, standardised features, default regularisation), ``folds``-
    fold cross-validation with the folds grouped by identity (no identity on both sides of a split); returns
    the balanced accuracy over all held-out predictions and ``kappa`` = (accuracy - 1/C) / (1 - 1/C) for C
    cameras (0: chance, 1: perfect). Deterministic (GroupKFold, lbfgs).

    ``centre``: camera-centre the features first, with each camera's mean over the *training fold* (then
    L2-normalised), held-out images included. Means over all images would include a held-out identity's own
    images, which pushes its features away from its cameras' means: on small sets that drives the probe below
    chance. Note that exact centring leaves every camera's mean near zero, so a linear probe can then use only
    what the re-normalisation and the folds' differences leave: near chance is expected."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.as_tensor(features, dtype=torch.float32).cpu().numpy().astype(np.float64)
    pids, cameras = np.asarray(pids), np.asarray(cameras)
    num_cameras = len(np.unique(cameras))
    if num_cameras < 2 or len(np.unique(pids)) < folds:
        raise ValueError(f"camera_probe: needs >= 2 cameras and >= {folds} identities, got {num_cameras} and "
                         f"{len(np.unique(pids))}")
    predicted = np.empty_like(cameras)
    for train, test in GroupKFold(folds).split(x, cameras, groups=pids):
        seen = x
        if centre:
            seen = x.copy()
            for cam in np.unique(cameras):
                mine = cameras == cam
                fold = mine[train]
                if fold.any():
                    seen[mine] -= x[train][fold].mean(0)
            seen /= np.maximum(np.linalg.norm(seen, axis=1, keepdims=True), 1e-12)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        predicted[test] = probe.fit(seen[train], cameras[train]).predict(seen[test])
    accuracy = float(balanced_accuracy_score(cameras, predicted))
    return {"balanced_accuracy": accuracy, "kappa": (accuracy - 1 / num_cameras) / (1 - 1 / num_cameras)}
