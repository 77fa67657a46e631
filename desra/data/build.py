"""Build datasets and data loaders from the ``datasets.<phase>`` options."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from desra.data.sampler import ResumableSampler
from desra.errors import ConfigError
from desra.registry import DATASET_REGISTRY


def build_dataset(dataset_opt: dict, key_path: str):
    """Instantiate ``dataset_opt['type']`` from the dataset registry; BasicSR datasets take the whole dict."""
    from desra.data import register_datasets

    register_datasets()
    cls = DATASET_REGISTRY.get(dataset_opt.get('type'), f'{key_path}.type')
    keys = getattr(cls, 'option_keys', None)
    if keys is not None:  # user datasets without option_keys are not checked
        from desra.config import LOADER_KEYS, unknown_key_error

        known = set(keys) | LOADER_KEYS
        for key in dataset_opt:
            if key not in known:
                raise unknown_key_error(key_path, key, known)
    return cls({**dataset_opt, 'key_path': key_path})


def _seed_worker(worker_id: int, base_seed: int) -> None:
    # datasets that use the global RNG (user code) still get distinct, reproducible streams per worker
    s = base_seed + worker_id
    np.random.seed(s % (2 ** 32))
    random.seed(s)
    torch.manual_seed(s)


class _WorkerInit:
    def __init__(self, base_seed: int):
        self.base_seed = base_seed

    def __call__(self, worker_id: int) -> None:
        _seed_worker(worker_id, self.base_seed)


def build_train_loader(dataset, dataset_opt: dict, key_path: str, *, world_size: int, rank: int, seed: int,
                       pin_memory: bool = False):
    """Training loader: ``batch_size_per_gpu`` per process, drop_last, with a :class:`ResumableSampler`."""
    for key in ('batch_size_per_gpu',):
        if key not in dataset_opt:
            raise ConfigError(f"{key_path}.{key}: missing required key (an integer)")
    batch_size = dataset_opt['batch_size_per_gpu']
    sampler = ResumableSampler(len(dataset), world_size, rank, shuffle=dataset_opt.get('use_shuffle', True),
                               seed=seed, enlarge_ratio=dataset_opt.get('dataset_enlarge_ratio', 1))
    if sampler.num_samples < batch_size:
        raise ConfigError(f"{key_path}.batch_size_per_gpu: {batch_size} is larger than the {sampler.num_samples} "
                          f"samples each process gets per epoch ({len(dataset)} images); lower it or raise "
                          f"{key_path}.dataset_enlarge_ratio")
    num_workers = dataset_opt.get('num_worker_per_gpu', 0)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=pin_memory and dataset_opt.get('pin_memory', True),
                        worker_init_fn=_WorkerInit(seed + rank * max(num_workers, 1)),
                        persistent_workers=False)
    return loader, sampler


def build_eval_loader(dataset, dataset_opt: dict | None = None):
    """Validation / test loader: one image at a time, in order, no workers by default."""
    dataset_opt = dataset_opt or {}
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=dataset_opt.get('num_worker_per_gpu', 0))
