"""Tell tensors from numpy arrays without importing torch.

A tensor can only exist once torch has been imported, so code that accepts both (the detection maths, the
morphology) asks :func:`is_tensor` and imports torch only on its tensor branches. Detection on SR folders with
the numpy detectors then never pays torch's import (seconds on a cold start).
"""
from __future__ import annotations

import sys

__all__ = ['loaded_torch', 'is_tensor']


def loaded_torch():
    """The torch module if something imported it already, else None."""
    return sys.modules.get('torch')


def is_tensor(x) -> bool:
    """``torch.is_tensor(x)``, False without importing torch when torch is not loaded."""
    torch = sys.modules.get('torch')
    return torch is not None and torch.is_tensor(x)
