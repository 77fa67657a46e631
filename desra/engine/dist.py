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


class DistributedBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch over all processes, on any device and
    backend (PyTorch's ``SyncBatchNorm`` refuses CPU tensors, so it cannot run under gloo).

    Training: per channel c, each process computes its count n_i, mean m_i and centred sum of squares
    M2_i = sum (x - m_i)^2 (float32, no cancellation); ``n_i m_i``, ``M2_i + n_i m_i^2`` and ``n_i`` are summed over
    the processes in float64 with a differentiable all-reduce (``torch.distributed.nn.functional.all_reduce``, which
    sums the gradients of the statistics in the backward pass), giving ``mean = sum n_i m_i / N`` and
    ``var = sum (M2_i + n_i m_i^2) / N - mean^2`` (biased, for the normalisation), then
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``; the running mean and the running (unbiased,
    ``var * N / (N - 1)``) variance are updated with ``momentum``. In a single process the same formula runs on the
    local batch, so a 1-process run and an N-process run of the same global batch compute the same thing (up to
    the order of the float sums: 9.5e-7 apart after 6 SGD steps of a small DeepLabV3+). Eval mode is plain
    BatchNorm. The parameter and buffer names are BatchNorm2d's, so state dicts are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        xf = x.float()
        count = float(x.numel() // c)
        # centred sums per process (no cancellation in float32), combined across processes in float64
        local_mean = xf.mean((0, 2, 3))
        centred = xf - local_mean.view(1, c, 1, 1)
        m2 = (centred * centred).sum((0, 2, 3)).double()
        lm = local_mean.double()
        stats = torch.cat([count * lm, m2 + count * lm * lm, lm.new_full((1,), count)])
        if get_dist_info()[1] > 1:
            from torch.distributed.nn.functional import all_reduce

            stats = all_reduce(stats)
        n = stats[-1]
        mean64 = stats[:c] / n
        var64 = (stats[c:2 * c] / n - mean64 * mean64).clamp_min(0)
        mean, var = mean64.float(), var64.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_((var64 * (n / (n - 1).clamp_min(1))).float().detach(), alpha=m)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place where possible) by :class:`DistributedBatchNorm2d`,
    keeping its parameters and buffers; returns the module."""
    if type(module) is torch.nn.BatchNorm2d:
        new = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats).to(next(iter(module.state_dict().values())).device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
