"""Atomic checkpoint files, training-state discovery and RNG-state capture for exact resume.

Layout (BasicSR's): ``experiments/<name>/models/net_g_<iter>.pth`` holding ``{'params': ..., 'params_ema': ...}``,
``net_d_<iter>.pth`` holding ``{'params': ...}`` and ``training_states/<iter>.state``. The state file is
written last, so a state file on disk always has complete network files beside it.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import random

import numpy as np
import torch

from desra.atomic import atomic_write_bytes


def atomic_torch_save(obj, path: str) -> dict:
    """``torch.save`` to memory, then :func:`desra.atomic.atomic_write_bytes`: an interrupted write never replaces
    ``path``, and a full disk is one :class:`~desra.errors.OutputError` line naming the file and its size.

    Returns ``{'size': bytes, 'sha256': hex}`` of the written file (recorded in training states).
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    view = buf.getbuffer()
    digest = hashlib.sha256(view).hexdigest()
    atomic_write_bytes(path, view)
    return {'size': view.nbytes, 'sha256': digest}


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
