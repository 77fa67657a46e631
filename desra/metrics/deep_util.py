"""Shared plumbing of the network-based metrics (LPIPS, DISTS, FID): image conversion, cropping, devices, caching.

numpy inputs follow :func:`desra.metrics.calculate_psnr`: H x W x C (or C x H x W) BGR images with values in
[0, 255] (uint8 as ``cv2.imread`` gives, or float), ``crop_border`` pixels removed from every side. Tensor
inputs (the ``*_pt`` functions) are RGB batches B x 3 x H x W in [0, 1] on any device.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ['bgr_pair_to_tensors', 'check_pair_pt', 'crop_pt', 'file_key', 'metric_device']


def metric_device(device=None) -> torch.device:
    """``device`` as a :class:`torch.device`; None: CUDA when available, else the CPU."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def _to_hwc3(img: np.ndarray, input_order: str, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f'{what}: expected a numpy array, got {type(img).__name__}; use the *_pt version for tensors')
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"{what}: input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if img.ndim == 2:
        img = img[..., None]
    elif img.ndim == 3 and input_order == 'CHW':
        img = img.transpose(1, 2, 0)
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f'{what}: expected an H x W x 3 (or gray) image, got shape {img.shape}')
    return img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)


def bgr_pair_to_tensors(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str, what: str,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two BGR [0, 255] images -> two 1 x 3 x H x W float32 RGB tensors in [0, 1] on ``device`` (cropped)."""
    if getattr(img, 'shape', None) != getattr(img2, 'shape', None):
        raise ValueError(f'{what}: image shapes differ: {getattr(img, "shape", None)} vs '
                         f'{getattr(img2, "shape", None)}')
    out = []
    for im in (img, img2):
        im = _to_hwc3(im, input_order, what)
        if crop_border:
            if 2 * crop_border >= min(im.shape[:2]):
                raise ValueError(f'{what}: crop_border {crop_border} leaves nothing of a '
                                 f'{im.shape[0]}x{im.shape[1]} image')
            im = im[crop_border:-crop_border, crop_border:-crop_border]
        rgb = np.ascontiguousarray(im[..., ::-1], dtype=np.float32) / np.float32(255.0)
        out.append(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(device))
    return out[0], out[1]


def check_pair_pt(img: torch.Tensor, img2: torch.Tensor, what: str) -> None:
    if not (torch.is_tensor(img) and torch.is_tensor(img2)):
        raise TypeError(f'{what}: expected tensors; use the numpy version for images')
    if img.shape != img2.shape:
        raise ValueError(f'{what}: image shapes differ: {tuple(img.shape)} vs {tuple(img2.shape)}')
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f'{what}: expected RGB batches B x 3 x H x W, got shape {tuple(img.shape)}')


def crop_pt(x: torch.Tensor, crop_border: int) -> torch.Tensor:
    if not crop_border:
        return x
    if 2 * crop_border >= min(x.shape[-2:]):
        raise ValueError(f'crop_border {crop_border} leaves nothing of a {x.shape[-2]}x{x.shape[-1]} image')
    return x[..., crop_border:-crop_border, crop_border:-crop_border]


def file_key(path: str | os.PathLike | None) -> tuple[str, float] | None:
    """A cache key for a weight file: its resolved path and modification time (a replaced file is reloaded)."""
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    return str(p), p.stat().st_mtime if p.exists() else 0.0


def check_weight_arg(arg, spec, needed_by: str) -> None:
    """Fail early, with the one-line message of :func:`desra.weights.locate.find_weight_file`, when a weight
    argument (None = search, a path, a state dict, ``'random'``) cannot be satisfied; reads nothing."""
    from collections.abc import Mapping

    from desra.errors import CheckpointError
    from desra.weights.locate import find_weight_file

    if arg is None:
        find_weight_file(spec, needed_by)
    elif not isinstance(arg, Mapping) and os.fspath(arg) != 'random' and not Path(arg).expanduser().is_file():
        raise CheckpointError(f'{needed_by}: {arg}: file not found (expected {spec.what}, {spec.filename})')
