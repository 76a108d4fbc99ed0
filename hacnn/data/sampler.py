"""Identity-balanced batches: P identities x K images each.

The "PK" sampling of Hermans, Beyer & Leibe, "In Defense of the Triplet Loss
for Person Re-Identification" (arXiv 2017), as torchreid's
``RandomIdentitySampler``, with three guarantees torchreid's lacks: every
identity appears in every epoch, every batch holds exactly P distinct
identities with K images each, and the order is a function of
``(seed, epoch)`` alone.

In a multi-process run (:mod:`hacnn.distributed`) the epoch plan is the
same global plan for every world size; process ``rank`` of ``world_size``
takes its slice of every global batch, so the processes' images in a step
never overlap and together are the single-process batch.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..distributed import shard_size
from .base import Item


class RandomIdentitySampler(Sampler[int]):
    """Yields dataset indices, ``batch_size`` at a time, as P ids x K images.

    Per epoch: each identity's images are shuffled and cut into groups of K
    (the last group topped up with other images of the same identity; an
    identity with fewer than K images gives all of them plus random repeats). Groups are
    dealt round-robin into ``ceil(#groups / P)`` batches so no batch holds an
    identity twice; batches left short are filled with groups of other
    identities, and the batch order is shuffled. An identity with more groups
    than there are batches keeps a random subset of them.

    Use with ``DataLoader(..., batch_size=batch_size, sampler=sampler)``.
    Each pass uses ``self.epoch`` and then advances it; ``set_epoch(e)`` pins
    the next pass (e.g. after resuming), so calling it every epoch or never
    gives the same sequence.

    Args:
        items: ``(path, pid, camid)`` items (only the pids are used).
        batch_size: P x K; must be a multiple of ``num_instances``.
        num_instances: K, images per identity in a batch.
        seed: base seed; epoch ``e`` draws from ``(seed, e)``.
        world_size, rank: this process's share of every global batch of
            ``batch_size`` images: images ``rank * b .. (rank + 1) * b - 1``
            with ``b = batch_size / world_size`` (the local batch size); the
            world size must divide ``batch_size``.
    """

    def __init__(self, items: Sequence[Item], batch_size: int = 32, num_instances: int = 2,
                 seed: int = 0, *, world_size: int = 1, rank: int = 0) -> None:
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of "
                             f"num_instances ({num_instances})")
        index_of: dict[int, list[int]] = defaultdict(list)
        for index, (_, pid, _) in enumerate(items):
            index_of[pid].append(index)
        self.pids = sorted(index_of)
        self.indices = [np.asarray(index_of[pid]) for pid in self.pids]
        self.batch_size, self.num_instances = batch_size, num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"{len(self.pids)} identities cannot fill a batch of "
                             f"{self.num_pids_per_batch} distinct identities (batch_size {batch_size} / "
                             f"num_instances {num_instances}): train on at least {self.num_pids_per_batch} "
                             "identities, or lower batch_size or raise num_instances (--batch-size, "
                             "--num-instances)")
        self.local_batch_size = shard_size(batch_size, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.world_size, self.rank = world_size, rank
        self.seed, self.epoch = seed, 0
        groups = sum(-(-len(ix) // num_instances) for ix in self.indices)
        self.num_batches = -(-groups // self.num_pids_per_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.local_batch_size

    def _draw(self, rng: np.random.Generator, pid_index: int) -> np.ndarray:
        """K distinct images of one identity; all of them, plus repeats, if it has fewer."""
        pool, k = self.indices[pid_index], self.num_instances
        if len(pool) >= k:
            return rng.choice(pool, k, replace=False)
        return rng.permutation(np.concatenate([pool, rng.choice(pool, k - len(pool))]))

    def _groups(self, rng: np.random.Generator, pid_index: int) -> list[np.ndarray]:
        """One epoch of an identity's images, shuffled, in groups of K."""
        k, pool = self.num_instances, self.indices[pid_index]
        if len(pool) < k:
            return [self._draw(rng, pid_index)]
        order = rng.permutation(pool)
        short = -len(order) % k
        if short:  # top up the last group with other images of this identity
            order = np.concatenate([order, rng.choice(order[:len(order) - (k - short)], short,
                                                      replace=False)])
        return list(order.reshape(-1, k))

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of ``epoch`` (default: ``self.epoch``) as index lists."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        num_batches, p = self.num_batches, self.num_pids_per_batch
        slots: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(num_batches)]
        position = 0
        for pid_index in rng.permutation(len(self.pids)):
            groups = self._groups(rng, pid_index)
            if len(groups) > num_batches:
                keep = rng.choice(len(groups), num_batches, replace=False)
                groups = [groups[i] for i in sorted(keep)]
            for group in groups:  # consecutive groups land in distinct batches
                slots[position % num_batches].append((pid_index, group))
                position += 1
        out = []
        for batch in slots:
            present = {pid_index for pid_index, _ in batch}
            if len(batch) < p:
                others = np.setdiff1d(np.arange(len(self.pids)), list(present))
                for pid_index in rng.choice(others, p - len(batch), replace=False):
                    batch.append((int(pid_index), self._draw(rng, pid_index)))
            out.append([int(i) for _, group in batch for i in group])
        return [out[i] for i in rng.permutation(num_batches)]

    def _shard(self) -> Iterator[tuple[int, int]]:
        """This epoch's ``(position in the global epoch, index)`` draws of this rank; advances the epoch."""
        batches = self.batches()
        self.epoch += 1
        size, start = self.local_batch_size, self.rank * self.local_batch_size
        return ((b * self.batch_size + j, batch[j]) for b, batch in enumerate(batches)
                for j in range(start, start + size))

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in self._shard())
