"""PK sampler: batches of P identities x K instances, preferring different cameras within an identity."""

from __future__ import annotations

import warnings
from collections import defaultdict, deque
from typing import Iterator, Sequence

import numpy as np
import torch


class PKSampler(torch.utils.data.Sampler[int]):
    """Yield dataset indices in global batches of P = batch_size // num_instances identity blocks of K.

    Identities are drawn without replacement in cycles through all identities (reshuffled every cycle,
    never twice in one batch when there are at least P identities). The K instances of an identity are
    taken round-robin over its cameras in random order, so a block spans as many cameras as possible
    (the intent of Cluster Contrast's RandomMultipleGallerySampler); instances repeat only when the
    identity has fewer than K images.

    With ``world_size`` > 1 every rank builds the same global sequence and keeps its contiguous slice
    of batch_size // world_size indices of each global batch, i.e. whole identity blocks.

    Args:
        pids: [N] label of each dataset item (>= 0; leave outliers out).
        camids: [N] camera of each item.
        batch_size: global batch size B (a multiple of num_instances * world_size).
        num_instances: K, images per identity in a batch.
        iters: number of global batches per epoch.
        seed: base seed (>= 0); the stream of an epoch depends on (seed, epoch) only.
    """

    def __init__(
        self,
        pids: Sequence[int],
        camids: Sequence[int],
        batch_size: int,
        num_instances: int,
        iters: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        pids_arr = np.asarray(pids, dtype=np.int64).reshape(-1)
        cams_arr = np.asarray(camids, dtype=np.int64).reshape(-1)
        if len(pids_arr) != len(cams_arr) or len(pids_arr) == 0:
            raise ValueError(
                f"pids and camids must be non-empty and of equal length, got {len(pids_arr)} and {len(cams_arr)}"
            )
        if (pids_arr < 0).any():
            raise ValueError("pids must be >= 0: remove outliers (label -1) before building the PKSampler")
        if num_instances <= 0 or world_size <= 0 or batch_size <= 0 or batch_size % (num_instances * world_size):
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances}) x "
                f"world size ({world_size})"
            )
        if iters <= 0:
            raise ValueError(f"iters must be positive, got {iters}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world size {world_size}), got {rank}")
        self.batch_size, self.num_instances, self.iters = batch_size, num_instances, iters
        self.num_ids_per_batch = batch_size // num_instances
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        # identity -> list of index arrays, one per camera
        by_id: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, (pid, cam) in enumerate(zip(pids_arr.tolist(), cams_arr.tolist())):
            by_id[pid][cam].append(index)
        self.pids = sorted(by_id)
        self.cam_groups = [[np.asarray(v) for v in by_id[pid].values()] for pid in self.pids]
        if len(self.pids) < self.num_ids_per_batch:
            warnings.warn(
                f"PKSampler: only {len(self.pids)} identities for P = {self.num_ids_per_batch} per batch; "
                "identities will repeat within a batch",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (a deterministic function of (seed, epoch))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iters * self.batch_size // self.world_size

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
        """The ``iters`` global batches of this epoch, each [batch_size] indices in P blocks of K."""
        rng = np.random.default_rng([self.seed, self.epoch])
        stream = self._identity_stream(rng)
        for _ in range(self.iters):
            yield np.concatenate([self._instances(rng, self.cam_groups[i]) for i in next(stream)])

    def __iter__(self) -> Iterator[int]:
        per_rank = self.batch_size // self.world_size
        start = self.rank * per_rank
        for batch in self.global_batches():
            yield from batch[start:start + per_rank].tolist()
