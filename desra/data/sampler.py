"""A seeded, rank-sharded, resumable sampler.

Each yielded item is ``(index, sample_seed)``. Datasets draw every random choice (crop, flip, rotation) for
that sample from ``numpy.random.default_rng(sample_seed)``. ``sample_seed`` depends only on
``(seed, epoch, global position in the epoch)``, so:

* a run with N processes sees exactly the samples, with exactly the augmentations, of a single-process run
  with the same global batch (rank r takes positions r, r+N, r+2N, ...);
* the number of data-loader workers does not matter;
* resuming mid-epoch (``set_epoch(epoch, start=k)``) continues with the very samples an uninterrupted run
  would have drawn.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed % (2 ** 32), epoch, position]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Shuffled (or sequential) sampler over ``ceil(len * enlarge_ratio / world) * world`` positions.

    Args:
        dataset_len: number of items in the dataset.
        num_replicas, rank: process count and this process's rank.
        shuffle: permute positions every epoch (seeded by ``seed + epoch``).
        seed: base seed shared by all ranks.
        enlarge_ratio: BasicSR's ``dataset_enlarge_ratio``: one epoch visits the data this many times.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, enlarge_ratio: int = 1):
        if dataset_len <= 0:
            raise ValueError('ResumableSampler needs a non-empty dataset')
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.num_samples = math.ceil(dataset_len * enlarge_ratio / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip this rank's first ``start`` samples of it (resume mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.total_size, generator=g).tolist()
        else:
            order = list(range(self.total_size))
        positions = range(self.rank, self.total_size, self.num_replicas)[self.start:]
        for pos in positions:
            yield order[pos] % self.dataset_len, sample_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return self.num_samples - self.start
