"""Batch-index sampling: per-epoch shuffles and per-rank shards, without per-sample collation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, SequentialSampler

from vae_lightning.errors import CheckpointError


def derive_seed(*keys: int) -> int:
    """Mix non-negative integers (e.g. seed, epoch) into one 63-bit seed for torch generators."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


class TensorBatchDataset(Dataset):
    """A split held as whole tensors; ``ds[idx]`` takes an index tensor and returns the batch,
    or a list of index tensors and returns the list of their batches."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, idx: torch.Tensor | list[torch.Tensor]):
        if isinstance(idx, list):
            return [self[i] for i in idx]
        idx = idx.to(self.tensors[0].device)
        # index_select copies whole rows: the rows t[idx] holds, without advanced indexing's
        # per-element gather.
        return tuple(t.index_select(0, idx) for t in self.tensors)


class GaussianDraws:
    """A split's points drawn afresh each time they are taken: ``index_select(0, idx)`` gives
    ``mean[idx] + std[idx] * eps``, eps ~ N(0, I) from a generator seeded by (``seed``, the
    indices in their order), so that a resumed run draws what an uninterrupted one does, and
    no draw moves the global random state. Stands in for the split's tensor where the training
    datasets take their rows (``TensorBatchDataset``, ``SemiSupervised``)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, seed: int) -> None:
        self.mean, self.std, self.seed = mean, std, seed

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, *idx.tolist()))
        eps = torch.randn(len(idx), *self.mean.shape[1:], generator=generator)
        return torch.addcmul(self.mean.index_select(dim, idx), self.std.index_select(dim, idx),
                             eps.to(self.mean.device))


class ShardedBatchSampler(Sampler[torch.Tensor]):
    """Yield one index tensor per batch of this rank's shard of ``n`` examples.

    ``shuffle=True`` (training): a fresh permutation per epoch, drawn from ``(seed, epoch)``;
    rank ``r`` takes every ``world_size``-th index from position ``r``, truncated to
    ``n // world_size`` so that every rank has the same number of batches (at most
    ``world_size - 1`` examples sit out each epoch, a different few every epoch).
    ``shuffle=False`` (val/test): rank ``r`` takes the ``r``-th contiguous block; the blocks
    cover every example exactly once and may differ in size by one.
    ``group > 1`` yields lists of ``group`` consecutive index tensors instead (the last list of
    an epoch may be shorter): the minibatches of one training batch that takes ``group``
    optimizer steps (``data.steps_per_batch``), in the same order as with ``group=1``.
    The indices are served on ``device``, the data's (moved there once per epoch).
    Lightning calls ``set_epoch`` at the start of each epoch; given ``current_epoch`` (e.g. the
    trainer's), the epoch is read from it when iteration starts instead, which stays right when
    a run resumes from an end-of-epoch checkpoint (Lightning's ``set_epoch`` then lags by one).
    ``done`` (e.g. the trainer's count of this epoch's batches already trained, read when
    iteration starts) skips those batches of the epoch's order: a run continued from a
    checkpoint taken mid-epoch (one that ended by its ``max_steps``) takes the rest of the
    epoch, as an uninterrupted run does, not the epoch again from its start. ``left`` (the
    model's count of the last batch's minibatches that a stop part-way through a batch of
    ``group`` left untrained, read with ``done``) puts those minibatches before the next batch's,
    in the first batch served: the run goes on with the minibatches an uninterrupted run takes,
    in its order (Lightning had counted the cut batch as trained, and they were skipped). Those
    past the epoch's batches already trained are the previous epoch's last ones: a stop inside
    an epoch's last batch, where Lightning went on with the next epoch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] | None = None,
        group: int = 1,
        device: torch.device | str = "cpu",
        done: Callable[[], int] | None = None,
        left: Callable[[], int] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is invalid: expected 0 <= rank < {world_size}.")
        self.n, self.batch_size, self.shuffle, self.group = n, batch_size, shuffle, group
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.current_epoch, self.done, self.left = current_epoch, done, left
        self.device = torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, epoch: int | None = None) -> torch.Tensor:
        """Return this rank's indices for the current epoch (or ``epoch``), in serving order."""
        if self.shuffle:
            epoch = self.epoch if epoch is None else epoch
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            perm = torch.randperm(self.n, generator=gen)
            stop = (self.n // self.world_size) * self.world_size
            return perm[self.rank : stop : self.world_size]
        return torch.tensor_split(torch.arange(self.n), self.world_size)[self.rank]

    def __iter__(self):
        # A generator: the epoch is read when the first batch is fetched, not when the
        # iterator is created (on resume, Lightning creates it before advancing the epoch).
        if self.current_epoch is not None:
            self.epoch = self.current_epoch()
        skip = self.done() if self.done is not None else 0
        skip = skip if 0 < skip < len(self) else 0  # none, or a whole epoch: from its start
        # Moved to the data's device once per epoch: no host-to-device copy per batch.
        batches = self.shard().to(self.device).split(self.batch_size)
        if self.group == 1:
            yield from batches[skip:]
            return
        first = skip * self.group
        carried = self._carried(batches, first)
        for start in range(first, len(batches), self.group):
            yield [*(carried if start == first else ()), *batches[start:start + self.group]]

    def _carried(self, batches: tuple[torch.Tensor, ...], first: int) -> list[torch.Tensor]:
        """The minibatches a stop left untrained (``left``), served before minibatch ``first``
        of this epoch's ``batches``: this epoch's last ones before it, and where they are more,
        the previous epoch's last ones before those."""
        left = self.left() if self.left is not None else 0
        if not left:
            return []
        spill = left - first
        earlier = (self.shard(self.epoch - 1).to(self.device).split(self.batch_size)
                   if spill > 0 and self.epoch > 0 else ())
        carried = [*earlier[max(len(earlier) - spill, 0):], *batches[max(first - left, 0):first]]
        if len(carried) != left:
            raise CheckpointError(
                f"The checkpoint says {left} minibatches of the batch its run stopped in were "
                f"left untrained (steps_per_batch_left), more than the {len(carried)} before "
                "this point of the epoch's order and the previous epoch's: the file was "
                "altered; resume from another checkpoint.")
        return carried

    def __len__(self) -> int:
        if self.shuffle:
            size = self.n // self.world_size
        else:
            size = self.n // self.world_size + (self.rank < self.n % self.world_size)
        batches = -(-size // self.batch_size)
        return -(-batches // self.group)


class OrderedBatchSampler(ShardedBatchSampler, SequentialSampler):
    """``ShardedBatchSampler`` in order (``shuffle=False``), and an instance of
    ``SequentialSampler``: Lightning's ``overfit_batches`` replaces a shuffling training sampler
    with a sequential one, and keeps this one, so the same first batches are served every
    epoch."""
