"""Atomic checkpoint files, training-state discovery and RNG-state capture for exact resume.

Layout (BasicSR's): ``experiments/<name>/models/net_g_<iter>.pth`` holding ``{'params': ..., 'params_ema': ...}``,
``net_d_<iter>.pth`` holding ``{'params': ...}`` and ``training_states/<iter>.state``. The state file is
written last, so a state file on disk always has complete network files beside it.
"""
from __future__ import annotations

import glob
import os
import random
import tempfile

import numpy as np
import torch

from desra.errors import CheckpointError


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or exception mid-write leaves any previous ``path`` untouched (and removes the
    temporary file when it can).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_torch_file(path: str, what: str = 'checkpoint') -> dict:
    """``torch.load(weights_only=True)`` on CPU with a :class:`CheckpointError` naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (corrupt, truncated or unsafe pickle)
        raise CheckpointError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from None


def list_training_states(state_dir: str) -> list[int]:
    """Iterations that have a ``<iter>.state`` file, ascending (temporary files are ignored)."""
    iters = []
    for p in glob.glob(os.path.join(state_dir, '*.state')):
        stem = os.path.basename(p)[:-len('.state')]
        if stem.isdigit():
            iters.append(int(stem))
    return sorted(iters)


def find_latest_state(state_dir: str) -> str | None:
    iters = list_training_states(state_dir)
    return os.path.join(state_dir, f'{iters[-1]}.state') if iters else None


# ------------------------------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as tensors/ints (``weights_only``-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python': (py_version, list(py_state), py_gauss),
        'numpy': {'name': np_name, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    py_version, py_state, py_gauss = state['python']
    random.setstate((py_version, tuple(py_state), py_gauss))
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
