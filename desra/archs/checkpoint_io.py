"""Loading network weights from BasicSR-style ``.pth`` files, ``.safetensors`` files or in-memory dicts.

Accepted layouts:

* BasicSR / Real-ESRGAN release format ``{'params_ema': state_dict}`` and/or ``{'params': state_dict}``;
* a flat state dict (``{'conv_first.weight': tensor, ...}``), which is what ``.safetensors`` files hold.

Keys saved from a ``DistributedDataParallel`` / ``DataParallel`` wrapper (``module.`` prefix) are accepted.
Any problem is reported as :class:`desra.errors.CheckpointError`, naming the file and the offending keys.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from desra.errors import CheckpointError

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ('params_ema', 'params')
_MAX_LISTED = 10
_IN_MEMORY = '<in-memory state dict>'


class LoadResult(NamedTuple):
    """What :func:`load_network_weights` could not match. Unpacks as ``missing, unexpected``.

    ``missing`` holds network keys left unloaded, including keys whose shape differed in the checkpoint;
    ``unexpected`` holds checkpoint keys the network does not have.
    """
    missing: list[str]
    unexpected: list[str]


def _fmt_keys(keys: list[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    if len(keys) > _MAX_LISTED:
        shown += f', ... ({len(keys) - _MAX_LISTED} more)'
    return shown


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict of CPU tensors (or of nested dicts, for BasicSR wrappers).

    ``.safetensors`` files are read with :mod:`safetensors`; anything else with
    ``torch.load(map_location='cpu', weights_only=True)``, so no pickled code is ever executed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt files, pickles with custom classes, wrong format, ...
        raise CheckpointError(f"cannot read checkpoint '{path}': {type(e).__name__}: {e}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict of tensors "
                              f"(a state dict, or BasicSR's {{'params_ema': ...}} / {{'params': ...}})")
    return dict(obj)


def select_state_dict(ckpt: Mapping[str, Any], param_key: str | None = 'params_ema',
                      source: str = _IN_MEMORY) -> dict[str, torch.Tensor]:
    """Pick the state dict out of a checkpoint dict and strip a leading ``module.`` from its keys.

    ``param_key`` names the wrapper entry to use (``'params_ema'`` or ``'params'`` in BasicSR files). If it is
    absent but the other BasicSR wrapper key exists, that one is used with a warning. If the dict is flat
    (all values are tensors), it is used directly. ``param_key=None`` means: ``params_ema``, then ``params``,
    then flat, without warning.
    """
    chosen: Any = None
    if param_key is not None and param_key in ckpt and isinstance(ckpt[param_key], Mapping):
        chosen = ckpt[param_key]
    else:
        for other in _WRAPPER_KEYS:
            if other in ckpt and isinstance(ckpt[other], Mapping):
                if param_key is not None:
                    logger.warning("checkpoint %s has no '%s' entry; loading '%s' instead", source, param_key, other)
                chosen = ckpt[other]
                break
        else:
            if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
                chosen = ckpt
            elif param_key is not None and param_key in ckpt:
                raise CheckpointError(f"checkpoint {source}: entry '{param_key}' is a "
                                      f"{type(ckpt[param_key]).__name__}, expected a state dict")
            else:
                top = _fmt_keys([str(k) for k in ckpt])
                raise CheckpointError(f"checkpoint {source}: no state dict found: expected a flat dict of tensors "
                                      f"or a '{param_key or 'params_ema'}' entry; top-level keys: {top or '(none)'}")
    state: dict[str, torch.Tensor] = {}
    for k, v in chosen.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: value of '{k}' is a {type(v).__name__}, expected a tensor")
        if k.startswith('module.'):
            k = k[len('module.'):]
        state[k] = v
    return state


def load_network_weights(net: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Any],
                         param_key: str | None = 'params_ema', strict: bool = True,
                         key_path: str | None = None) -> LoadResult:
    """Load weights into ``net`` in place (on ``net``'s device and dtype).

    Args:
        net: the network; a ``DataParallel`` / ``DistributedDataParallel`` wrapper is unwrapped.
        path_or_state: a ``.pth`` / ``.pt`` file (read with ``weights_only=True``), a ``.safetensors`` file,
            or an already-loaded dict in either layout below.
        param_key: wrapper entry to read in BasicSR files (``'params_ema'`` or ``'params'``); see
            :func:`select_state_dict` for the fallbacks. Flat dicts are used as they are.
        strict: if True, any missing key, unexpected key or shape mismatch raises and nothing is loaded.
            If False, the matching tensors are loaded and the rest is reported in the return value.
        key_path: YAML key that named the file (e.g. ``path.pretrain_network_g``), used in error messages.

    Returns:
        ``LoadResult(missing, unexpected)`` (a 2-tuple); both empty after a successful strict load.
        Shape-mismatched keys count as missing.

    Raises:
        CheckpointError: unreadable file, no state dict inside, or (strict) a key/shape mismatch. The message
            names the file and lists up to 10 missing, unexpected and shape-mismatched keys, with counts.
    """
    if isinstance(path_or_state, Mapping):
        source = _IN_MEMORY
        ckpt = path_or_state
    else:
        source = f"'{os.fspath(path_or_state)}'"
        try:
            ckpt = read_checkpoint(path_or_state)
        except CheckpointError as e:
            raise CheckpointError(f"{key_path}: {e}" if key_path else str(e)) from None
    where = f"{key_path}: " if key_path else ''
    try:
        state = select_state_dict(ckpt, param_key, source)
    except CheckpointError as e:
        raise CheckpointError(f"{where}{e}") from None

    while isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module

    own = net.state_dict()
    # Old BatchNorm checkpoints lack num_batches_tracked; torch fills it in, so it is not a real mismatch.
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]

    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (in the network, not in the file): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (in the file, not in the network): "
                         f"{_fmt_keys(unexpected)}")
        if mismatched:
            shapes = [f"{k} (file {list(state[k].shape)} vs network {list(own[k].shape)})" for k in mismatched]
            parts.append(f"{len(mismatched)} shape mismatch(es): {_fmt_keys(shapes)}")
        raise CheckpointError(f"{where}checkpoint {source} does not match {type(net).__name__}: " + '; '.join(parts)
                              + ". Check the network options (num_feat, num_block, scale, ...) or load "
                              "non-strictly (strict_load: false)")

    to_load = {k: v for k, v in state.items() if k in own and k not in mismatched}
    try:
        net.load_state_dict(to_load, strict=strict)
    except RuntimeError as e:  # hook-level failures (e.g. spectral-norm buffers) not caught above
        raise CheckpointError(f"{where}checkpoint {source} could not be loaded into {type(net).__name__}: {e}") \
            from None

    result = LoadResult(missing=missing + mismatched, unexpected=unexpected)
    if result.missing or result.unexpected:
        logger.warning("non-strict load of %s into %s: %d missing (%s), %d unexpected (%s)%s", source,
                       type(net).__name__, len(result.missing), _fmt_keys(result.missing), len(unexpected),
                       _fmt_keys(unexpected),
                       f"; shape mismatches skipped: {_fmt_keys(mismatched)}" if mismatched else '')
    return result
