"""Process-group set-up for torchrun (``--launcher pytorch``) and slurm, on CUDA (NCCL) or CPU (gloo)."""
from __future__ import annotations

import functools
import os
import subprocess

import torch
import torch.distributed as dist

from desra.errors import ConfigError


def init_dist(launcher: str, dist_params: dict | None = None) -> tuple[int, int]:
    """Initialise the default process group and return ``(rank, world_size)``.

    ``launcher='none'`` returns ``(0, 1)`` without touching ``torch.distributed``. The backend is
    ``dist_params.backend`` if given, else NCCL when CUDA is available and gloo otherwise.
    """
    dist_params = dist_params or {}
    if launcher == 'none':
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launcher == 'pytorch':
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
        if missing:
            raise ConfigError(f"--launcher pytorch needs the torchrun environment ({', '.join(missing)} unset); "
                              "start with: torchrun --nproc_per_node=N train.py -opt X.yml --launcher pytorch")
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
    elif launcher == 'slurm':
        proc_id = int(os.environ['SLURM_PROCID'])
        ntasks = int(os.environ['SLURM_NTASKS'])
        node_list = os.environ['SLURM_NODELIST']
        num_gpus = max(torch.cuda.device_count(), 1)
        addr = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
        os.environ.setdefault('MASTER_PORT', str(dist_params.get('port', 29500)))
        os.environ.setdefault('MASTER_ADDR', addr)
        os.environ['WORLD_SIZE'] = str(ntasks)
        os.environ['LOCAL_RANK'] = str(proc_id % num_gpus)
        os.environ['RANK'] = str(proc_id)
        local_rank = proc_id % num_gpus
    else:
        raise ConfigError(f"--launcher: expected none, pytorch or slurm, got '{launcher}'")
    backend = dist_params.get('backend') or ('nccl' if torch.cuda.is_available() else 'gloo')
    if backend == 'nccl':
        if not torch.cuda.is_available():
            raise ConfigError("dist_params.backend: nccl needs CUDA, which is not available; use gloo")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def get_dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return get_dist_info()[0] == 0


def master_only(func):
    """Run ``func`` on rank 0 only (returns None elsewhere)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if is_main_process():
            return func(*args, **kwargs)
        return None

    return wrapper


def barrier() -> None:
    if get_dist_info()[1] > 1:
        dist.barrier()


def get_device(num_gpu='auto') -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is usable and wanted, else CPU.

    ``num_gpu: 0`` in the YAML forces the CPU even where CUDA exists.
    """
    if num_gpu != 0 and torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    return torch.device('cpu')


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (identity in a single process)."""
    if get_dist_info()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= get_dist_info()[1]
    return t


def all_gather_object(obj) -> list:
    world = get_dist_info()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def call_on_rank0(fn):
    """Run ``fn()`` on rank 0 only; a :class:`~desra.errors.UserError` it raises is raised on every rank.

    Used for the steps only the first process performs (locking and preparing an output folder), so that a
    refusal stops all processes with the same message instead of leaving the others waiting at a barrier.
    """
    import desra.errors as errors

    rank, world = get_dist_info()
    result, failure = None, None
    if rank == 0:
        try:
            result = fn()
        except errors.UserError as e:
            failure = (type(e).__name__, str(e))
    if world > 1:
        failure = all_gather_object(failure)[0]
    if failure is not None:
        cls = getattr(errors, failure[0], errors.UserError)
        raise cls(failure[1])
    return result
