"""Training speed options: memory format, ``torch.compile``, fused optimisers and the CUDA backend flags.

Every option is off-switchable in ``train`` and ``auto`` (absent) picks the default of the device, chosen from
measurements (``benchmarks/train_step.py``; figures in the README, "Benchmarks"):

==================  =========================  =========================================================
key                 auto on CPU / on CUDA      what it does
==================  =========================  =========================================================
``channels_last``   true / true                G, D (and the EMA copy) and the batches in NHWC memory
                                               format: the convolutions' fast path on both devices
``compile``         false / false              ``torch.compile`` of G, D and the EMA's forward (in place:
                                               the state-dict keys do not change); ``true``, a mode
                                               (``default``, ``reduce-overhead``, ``max-autotune``) or
                                               ``{mode, backend, dynamic}``. Off by default because the
                                               first iterations compile for minutes
``fused_optim``     true / true                ``fused=True`` for Adam, AdamW, SGD and Adagrad (one kernel
                                               over all parameters), ``foreach=True`` for the others; an
                                               ``optim_*`` block that sets ``fused`` or ``foreach`` wins
``cudnn_benchmark`` - / true                   ``torch.backends.cudnn.benchmark`` (never when
                                               ``deterministic``)
``tf32``            - / true                   TF32 matmuls and convolutions on Ampere and newer
==================  =========================  =========================================================

The values used are written back into ``opt['train']`` before the option dump, so the log of a run says what
it ran with.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from desra.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the functions that use it: the option checks run before it is loaded
    import torch
    from torch import nn

logger = logging.getLogger('desra')

__all__ = ['SPEED_KEYS', 'COMPILE_MODES', 'FUSED_OPTIMIZERS', 'compile_spec', 'check_speed_option',
           'resolve_speed_options', 'apply_backend_flags',
           'to_channels_last', 'batch_to_channels_last', 'optimizer_speed_kwargs', 'compile_unavailable_reason',
           'compile_network']

SPEED_KEYS = ('channels_last', 'compile', 'fused_optim', 'cudnn_benchmark', 'tf32')
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
#: Optimisers with a fused (single-kernel) implementation on CPU and CUDA in torch >= 2.4.
FUSED_OPTIMIZERS = ('Adam', 'AdamW', 'SGD', 'Adagrad')

_DEFAULTS = {
    'cpu': {'channels_last': True, 'compile': False, 'fused_optim': True, 'cudnn_benchmark': False, 'tf32': False},
    'cuda': {'channels_last': True, 'compile': False, 'fused_optim': True, 'cudnn_benchmark': True, 'tf32': True},
}


def compile_spec(value, key: str = 'train.compile') -> dict | None:
    """``train.compile`` as ``{'mode', 'backend', 'dynamic'}``, or None when off (``'auto'`` is not handled here)."""
    if value is False or value is None:
        return None
    if value is True:
        return {'mode': 'default', 'backend': 'inductor', 'dynamic': None}
    if isinstance(value, str):
        value = {'mode': value}
    if not isinstance(value, dict):
        raise ConfigError(f'{key}: expected true, false, a mode ({", ".join(COMPILE_MODES)}) or '
                          f'{{mode, backend, dynamic}}, got {value!r}')
    extra = set(value) - {'mode', 'backend', 'dynamic'}
    if extra:
        raise ConfigError(f'{key}.{sorted(extra)[0]}: unknown key; known keys here: backend, dynamic, mode')
    mode = value.get('mode', 'default')
    if mode not in COMPILE_MODES:
        raise ConfigError(f'{key}.mode: expected one of {", ".join(COMPILE_MODES)}, got {mode!r}')
    backend = value.get('backend', 'inductor')
    if not isinstance(backend, str):
        raise ConfigError(f'{key}.backend: expected a torch.compile backend name, got {backend!r}')
    dynamic = value.get('dynamic')
    if dynamic is not None and not isinstance(dynamic, bool):
        raise ConfigError(f'{key}.dynamic: expected true, false or null, got {dynamic!r}')
    return {'mode': mode, 'backend': backend, 'dynamic': dynamic}


def check_speed_option(value, path: str):
    """Schema check of one ``train`` speed key (torch-free): ``'auto'``, a boolean, or for ``compile`` also a
    mode or a ``{mode, backend, dynamic}`` mapping."""
    if value == 'auto' or isinstance(value, bool):
        return value
    if path.endswith('.compile'):
        compile_spec(value, path)
        return value
    raise ConfigError(f"{path}: expected true, false or 'auto', got {value!r}")


def resolve_speed_options(train_opt: dict, device: torch.device, deterministic: bool = False) -> dict:
    """The speed options a run uses: the ones ``train_opt`` sets, the device's defaults for the others.

    ``'auto'`` and absent keys take the default; ``cudnn_benchmark`` and ``tf32`` are false off CUDA, and
    ``cudnn_benchmark`` is false with ``deterministic`` (an explicit true is then an error: cuDNN's autotuner
    picks kernels by timing, which is not reproducible). Returns ``{key: value}`` for :data:`SPEED_KEYS`
    (``compile``: None or ``{'mode', 'backend', 'dynamic'}``).
    """
    defaults = _DEFAULTS['cuda' if device.type == 'cuda' else 'cpu']
    out = {}
    for key in SPEED_KEYS:
        value = train_opt.get(key, 'auto')
        if value == 'auto':
            value = defaults[key]
        if key == 'compile':
            out[key] = compile_spec(value, f'train.{key}')
            continue
        if not isinstance(value, bool):
            raise ConfigError(f"train.{key}: expected true, false or 'auto', got {value!r}")
        out[key] = value
    if device.type != 'cuda':
        for key in ('cudnn_benchmark', 'tf32'):
            if train_opt.get(key) is True:
                logger.warning('train.%s is ignored on %s: it is a CUDA setting', key, device.type)
            out[key] = False
    if deterministic:
        if train_opt.get('cudnn_benchmark') is True:
            raise ConfigError('train.cudnn_benchmark: cannot be true with deterministic: true (the autotuner '
                              'chooses kernels by timing)')
        out['cudnn_benchmark'] = False
    return out


def apply_backend_flags(speed: dict, device: torch.device) -> None:
    """cuDNN autotuning and TF32 as ``speed`` says (process-wide flags; CUDA only)."""
    if device.type != 'cuda':
        return
    import torch

    torch.backends.cudnn.benchmark = speed['cudnn_benchmark']
    torch.backends.cuda.matmul.allow_tf32 = speed['tf32']
    torch.backends.cudnn.allow_tf32 = speed['tf32']


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its 4-D parameters and buffers in channels-last memory format (in place; returned)."""
    import torch

    return net.to(memory_format=torch.channels_last)


def batch_to_channels_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """A 4-D batch in channels-last memory format (the values are unchanged); other tensors as they are."""
    import torch

    if t is None or t.dim() != 4:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def optimizer_speed_kwargs(optim_type: str, optim_opt: dict, speed: dict | None, params) -> dict:
    """``{'fused': True}`` or ``{'foreach': True}`` for an optimiser, unless its block decides (``fused`` /
    ``foreach`` given), ``fused_optim`` is off, or the parameters are not all floating-point tensors of one
    device type that the fused kernels support (CPU, CUDA)."""
    if not speed or not speed.get('fused_optim') or 'fused' in optim_opt or 'foreach' in optim_opt:
        return {}
    kinds = {(p.device.type, p.dtype.is_floating_point) for p in params}
    if len(kinds) != 1 or next(iter(kinds)) not in {('cpu', True), ('cuda', True)}:
        return {}
    import inspect

    import torch

    accepted = inspect.signature(getattr(torch.optim, optim_type)).parameters
    if optim_type in FUSED_OPTIMIZERS and 'fused' in accepted:
        return {'fused': True}
    return {'foreach': True} if 'foreach' in accepted else {}


def compile_unavailable_reason(spec: dict, device: torch.device) -> str | None:
    """Why ``torch.compile`` with ``spec`` cannot run here, or None when it can (checked before training)."""
    try:
        import torch._dynamo as dynamo
    except Exception as e:  # noqa: BLE001  (a broken install must not stop training: it falls back)
        return f'torch._dynamo cannot be imported ({type(e).__name__}: {e})'
    if not dynamo.is_dynamo_supported():
        return 'TorchDynamo does not support this Python version / platform'
    if spec['backend'] == 'inductor':
        if device.type == 'cpu':
            cxx = os.environ.get('CXX', 'g++')
            if shutil.which(cxx) is None and shutil.which('c++') is None and shutil.which('clang++') is None:
                return f'the inductor backend on CPU needs a C++ compiler ({cxx} not found; set CXX)'
        elif device.type == 'cuda':
            try:
                import triton  # noqa: F401
            except ImportError:
                return 'the inductor backend on CUDA needs triton (pip install triton)'
    elif spec['backend'] not in dynamo.list_backends(exclude_tags=()):
        return f"unknown torch.compile backend {spec['backend']!r}; available: {', '.join(dynamo.list_backends())}"
    return None


def compile_network(net: nn.Module, spec: dict) -> None:
    """Compile ``net``'s forward in place (``nn.Module.compile``): ``state_dict`` keys, hooks and DDP wrapping
    are those of the plain module."""
    kwargs = {'backend': spec['backend'], 'dynamic': spec['dynamic']}
    if spec['backend'] == 'inductor':
        kwargs['mode'] = spec['mode']
    net.compile(**kwargs)
