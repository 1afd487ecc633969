"""Identity samplers for the pseudo-labelled training set.

Both samplers build one *global* index stream per (seed, epoch), cut it into global batches of
``batch_size``, and give rank r of ``world_size`` the contiguous slice r of every global batch. Each
yielded element is ``(index, key)``: ``key`` is a per-sample seed derived from (seed, epoch, position of
the sample in the global stream), which :class:`~mqreid.data.loader.ImageDataset` uses to seed the
augmentation of that sample. So the batches and every random draw of the input pipeline are the same
whatever the number of processes or loader workers.

- :class:`RandomMultipleGallerySampler`: the sampler of Cluster Contrast and of the original multi-queue
  code, rule for rule (the default of every preset).
- :class:`CameraRoundRobinSampler`: P identities x K instances per batch, the K instances spread
  round-robin over the identity's cameras.
- :class:`ProxyBalancedSampler`: CAP's proxy-balanced sampling, K instances of each (identity, camera) pair.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from typing import Iterator, Sequence

import numpy as np
import torch


log = logging.getLogger(__name__)


_said: set[str] = set()  # messages worth saying once per process, not every epoch


def sample_key(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of the (seed, epoch) stream."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _GlobalBatchSampler(torch.utils.data.Sampler):
    """Shared part: argument checks, epochs, rank slicing and sample keys. Subclasses define ``global_batches``.

    Args:
        pids: [N] pseudo label of each item (>= 0; leave outliers out).
        camids: [N] camera of each item.
        batch_size: global batch size B (a multiple of num_instances * world_size).
        num_instances: K, images per identity.
        iters: number of global batches per epoch.
        seed: base seed (>= 0); the stream of an epoch depends on (seed, epoch) only.
        rank, world_size: this process's slice of every global batch.
    """

    def __init__(self, pids: Sequence[int], camids: Sequence[int], batch_size: int, num_instances: int,
                 iters: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.pid_array = np.asarray(pids, dtype=np.int64).reshape(-1)
        self.cam_array = np.asarray(camids, dtype=np.int64).reshape(-1)
        if len(self.pid_array) != len(self.cam_array) or len(self.pid_array) == 0:
            raise ValueError(f"pids and camids must be non-empty and of equal length, got {len(self.pid_array)} "
                             f"and {len(self.cam_array)}")
        if (self.pid_array < 0).any():
            raise ValueError("pids must be >= 0: remove outliers (label -1) before building the sampler")
        if num_instances <= 0 or world_size <= 0 or batch_size <= 0 or batch_size % (num_instances * world_size):
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of num_instances "
                             f"({num_instances}) x world size ({world_size})")
        if iters <= 0:
            raise ValueError(f"iters must be positive, got {iters}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world size {world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.batch_size, self.num_instances, self.iters = batch_size, num_instances, iters
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.pids = np.unique(self.pid_array)  # sorted identity labels
        self.members = [np.flatnonzero(self.pid_array == pid) for pid in self.pids]  # item indices per identity

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (a deterministic function of (seed, epoch))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iters * self.batch_size // self.world_size

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def global_batches(self) -> Iterator[np.ndarray]:
        """The ``iters`` global batches of this epoch, each [batch_size] item indices."""
        raise NotImplementedError

    def max_per_cluster(self) -> int:
        """The most images one identity has in any global batch of this epoch, computed on the host from the
        epoch's stream (the same on every rank). The centroid memory's update makes one pass per position
        within a cluster over the whole global batch: this bounds the passes without reading the device, and
        without multiplying a per-rank maximum by the number of processes."""
        return max(int(np.bincount(np.unique(self.pid_array[batch], return_inverse=True)[1]).max())
                   for batch in self.global_batches())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = self.batch_size // self.world_size
        start = self.rank * per_rank
        for b, batch in enumerate(self.global_batches()):
            for j in range(start, start + per_rank):
                yield int(batch[j]), sample_key(self.seed, self.epoch, b * self.batch_size + j)


class RandomMultipleGallerySampler(_GlobalBatchSampler):
    """Cluster Contrast's sampler (used unchanged by the original multi-queue code).

    One pass visits every identity once, in random order, and appends to a flat list:

    1. an anchor: one random image of the identity;
    2. K - 1 images drawn from the identity's images taken by *other* cameras than the anchor's, without
       replacement when there are at least K of them, with replacement otherwise;
    3. when the identity has only the anchor's camera: K - 1 images drawn the same way from its other
       images; an identity with a single image contributes the anchor alone.

    Batches are cut from the flat list without regard to identity boundaries; the incomplete last batch
    of a pass is dropped (``drop_last``) and the next pass starts, until ``iters`` batches are made. One
    addition: when a whole pass is shorter than one batch (e.g. very few clusters early in training),
    passes are joined until a batch is full; the original would stop there with an error.
    """

    def one_pass(self, rng: np.random.Generator) -> list[int]:
        k, out = self.num_instances, []
        for i in rng.permutation(len(self.pids)):
            members = self.members[i]
            a = int(rng.integers(len(members)))
            anchor = members[a]
            out.append(int(anchor))
            pool = members[self.cam_array[members] != self.cam_array[anchor]]
            if len(pool) == 0:
                pool = np.delete(members, a)
                if len(pool) == 0:
                    continue
            out.extend(rng.choice(pool, size=k - 1, replace=len(pool) < k).tolist())
        return out

    def global_batches(self) -> Iterator[np.ndarray]:
        rng, b, made = self.rng(), self.batch_size, 0
        buffer: list[int] = []
        while made < self.iters:
            buffer += self.one_pass(rng)
            if len(buffer) < b:
                continue  # a pass shorter than a batch: join the next one
            for n in range(len(buffer) // b):
                if made == self.iters:
                    return
                yield np.asarray(buffer[n * b:(n + 1) * b])
                made += 1
            buffer = []  # drop_last


class CameraRoundRobinSampler(_GlobalBatchSampler):
    """P = batch_size // num_instances identity blocks of K per batch, cameras visited round-robin.

    Identities are drawn without replacement in cycles through all identities (reshuffled every cycle,
    never twice in one batch when there are at least P identities). The K instances of an identity are
    taken round-robin over its cameras in random order, so a block spans as many cameras as possible;
    instances repeat only when the identity has fewer than K images. Every batch is aligned to identity
    blocks, unlike :class:`RandomMultipleGallerySampler`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_ids_per_batch = self.batch_size // self.num_instances
        self.cam_groups = []
        for members in self.members:
            by_cam: dict[int, list[int]] = defaultdict(list)
            for index in members.tolist():
                by_cam[int(self.cam_array[index])].append(index)
            self.cam_groups.append([np.asarray(v) for v in by_cam.values()])
        if len(self.pids) < self.num_ids_per_batch and "few ids" not in _said:  # common in short debug runs
            _said.add("few ids")
            log.info("camera_round_robin sampler: only %d identities for P = %d per batch; identities repeat within "
                     "a batch", len(self.pids), self.num_ids_per_batch)

    def _instances(self, rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
        """K indices of one identity: round-robin over its cameras (random order), repeats only if too few."""
        k = self.num_instances
        shuffled = [rng.permutation(g) for g in groups]
        order = rng.permutation(len(shuffled))
        depth = max(len(g) for g in shuffled)
        # Round-robin by hand: the first K entries then cover as many cameras as the identity has.
        interleaved = [shuffled[c][d] for d in range(min(depth, k)) for c in order if d < len(shuffled[c])]
        chosen = np.asarray(interleaved[:k])
        if len(chosen) < k:
            chosen = np.concatenate([chosen, rng.choice(chosen, size=k - len(chosen), replace=True)])
        return chosen

    def _identity_stream(self, rng: np.random.Generator) -> Iterator[list[int]]:
        """Per batch, P identity positions, cycling through reshuffled permutations of all identities."""
        num_ids, p = len(self.pids), self.num_ids_per_batch
        queue: deque[int] = deque()
        while True:
            batch: list[int] = []
            while len(batch) < p:
                if not queue:
                    perm = rng.permutation(num_ids).tolist()
                    # Identities already in this batch go last, so a batch holds distinct ones when possible.
                    queue = deque([i for i in perm if i not in batch] + [i for i in perm if i in batch])
                batch.append(queue.popleft())
            yield batch

    def global_batches(self) -> Iterator[np.ndarray]:
        rng = self.rng()
        stream = self._identity_stream(rng)
        for _ in range(self.iters):
            yield np.concatenate([self._instances(rng, self.cam_groups[i]) for i in next(stream)])


class ProxyBalancedSampler(_GlobalBatchSampler):
    """CAP's proxy-balanced sampler (``ClassUniformlySampler`` over the (cluster, camera) labels of
    Terminator8758/CAP-master, ``k=4`` there): every (identity, camera) pair, i.e. every camera-aware proxy,
    contributes K images per pass.

    One pass visits the pairs once, in random order, and appends K of the pair's images: drawn without
    replacement when it has at least K, otherwise from its images repeated K times (each image at most
    ceil(K / n) times). Batches are cut from the flat list as in :class:`RandomMultipleGallerySampler`
    (incomplete last batch dropped, passes joined when one is shorter than a batch).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        low = int(self.cam_array.min())
        pair = self.pid_array * (int(self.cam_array.max()) - low + 1) + self.cam_array - low
        order = np.argsort(pair, kind="stable")
        starts = np.flatnonzero(np.r_[True, pair[order][1:] != pair[order][:-1]])
        self.proxies = np.split(order, starts[1:])  # item indices per (identity, camera) pair

    def one_pass(self, rng: np.random.Generator) -> list[int]:
        k, out = self.num_instances, []
        for i in rng.permutation(len(self.proxies)):
            members = self.proxies[i]
            pool = members if len(members) >= k else np.tile(members, k)
            out.extend(rng.permutation(pool)[:k].tolist())
        return out

    global_batches = RandomMultipleGallerySampler.global_batches


SAMPLERS = {"random_multiple_gallery": RandomMultipleGallerySampler, "camera_round_robin": CameraRoundRobinSampler,
            "proxy_balanced": ProxyBalancedSampler}
