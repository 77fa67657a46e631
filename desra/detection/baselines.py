"""Baseline artifact maps of the DeSRA paper's Table 1: LDL* and the sliding-window NIQE map.

- **LDL*** ("the modified detection method in LDL"): the LDL artifact map (Liang et al., CVPR 2022,
  Eq. 2-6; :func:`desra.losses.ldl_loss.ldl_artifact_map`) with the MSE-SR result standing in for the
  ground truth that real-world LR inputs lack: R = sum_c |MSE-SR - GAN-SR|, M = its 7 x 7 local variance,
  W = var(R)^(1/5) * M. There is no EMA model at detection time, so the GAN-SR image is also passed as the
  EMA output: with R_EMA = R_SR the mask ``R_SR < R_EMA`` of Eq. 6 never triggers and nothing is zeroed.
  Images are scaled to [0, 1] first (as in LDL training), so the paper's thresholds 0.01 / 0.005 / 0.001 apply.
- **NIQE**: :func:`desra.metrics.niqe.niqe_map` of the GAN-SR image (larger = worse); the paper reports it at
  its best threshold, which has to be chosen on data (the NIQE scale depends on the pristine parameters).

Both give a raw map and a boolean mask (map > threshold); morphology and full-size handling are added by the
detectors (:mod:`desra.detection.detectors`).

Input conventions (as the DeSRA detector): a torch tensor ``B x C x H x W`` (RGB) with values in the uint8
range [0, 255], any dtype, or a numpy ``H x W x C`` (BGR) / ``H x W`` array in [0, 255] (uint8 or float).
Torch inputs give ``B x 1 x H x W`` outputs, numpy inputs ``H x W`` outputs.
"""
from __future__ import annotations

import numpy as np
import torch

from desra.losses.ldl_loss import ldl_artifact_map

__all__ = ['ldl_star_map', 'ldl_star_mask', 'niqe_mask', 'niqe_sr_map']


def _to_unit_tensor(img, name: str) -> tuple[torch.Tensor, bool]:
    """[0, 255] image -> (B x C x H x W float tensor in [0, 1], input was numpy)."""
    if isinstance(img, torch.Tensor):
        if img.dim() != 4:
            raise ValueError(f'{name}: expected a B x C x H x W tensor, got shape {tuple(img.shape)}')
        t = img if img.dtype == torch.float64 else img.to(torch.float32)
        return t / 255.0, False
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f'{name}: expected an H x W x C or H x W array, got shape {arr.shape}')
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=dtype))[None]
    return t / 255.0, True


def ldl_star_map(mse_sr, gan_sr, kernel_size: int = 7):
    """LDL* artifact map: LDL's map with MSE-SR as the ground truth and no EMA mask (see the module docstring).

    Args:
        mse_sr, gan_sr: the MSE-SR and GAN-SR images of one shape, torch ``B x C x H x W`` or numpy
            ``H x W x C`` / ``H x W``, values in [0, 255] (scaled to [0, 1] here).
        kernel_size: the local-variance window (7 in LDL).

    Returns:
        The map W (non-negative, no gradient): torch ``B x 1 x H x W`` float (float64 for float64 inputs,
        else float32) or numpy ``H x W`` of the same dtypes.
    """
    if isinstance(mse_sr, torch.Tensor) != isinstance(gan_sr, torch.Tensor):
        raise TypeError('ldl_star_map: mse_sr and gan_sr must both be tensors or both be numpy arrays')
    mse, is_np = _to_unit_tensor(mse_sr, 'mse_sr')
    gan, _ = _to_unit_tensor(gan_sr, 'gan_sr')
    if mse.shape != gan.shape:
        raise ValueError(f'ldl_star_map: image shapes differ: {tuple(mse.shape)} vs {tuple(gan.shape)}')
    if mse.dtype != gan.dtype:
        mse, gan = mse.double(), gan.double()
    with torch.no_grad():
        w = ldl_artifact_map(img_gt=mse, img_sr=gan, img_ema=gan, kernel_size=kernel_size, detach=True)
    return w[0, 0].numpy() if is_np else w


def ldl_star_mask(mse_sr, gan_sr, threshold: float = 0.005, kernel_size: int = 7):
    """Boolean LDL* mask ``ldl_star_map(...) > threshold`` (torch ``B x 1 x H x W`` or numpy ``H x W``).

    The DeSRA paper evaluates thresholds 0.01, 0.005 and 0.001.
    """
    return ldl_star_map(mse_sr, gan_sr, kernel_size) > threshold


def niqe_sr_map(gan_sr, window: int = 96, stride: int = 32, params=None):
    """Sliding-window NIQE map (:func:`desra.metrics.niqe.niqe_map`, Y channel) of a GAN-SR image.

    Torch input ``B x 3 x H x W`` RGB (or ``B x 1``) in [0, 255] -> float64 ``B x 1 x H x W``; numpy
    ``H x W x 3`` BGR or ``H x W`` -> ``H x W``.
    """
    from desra.metrics.niqe import niqe_map

    if isinstance(gan_sr, torch.Tensor):
        if gan_sr.dim() != 4:
            raise ValueError(f'niqe_sr_map: expected a B x C x H x W tensor, got shape {tuple(gan_sr.shape)}')
        arr = gan_sr.detach().to('cpu', torch.float64).numpy()
        maps = []
        for img in arr:
            hwc = img.transpose(1, 2, 0)
            if hwc.shape[2] == 3:
                hwc = hwc[..., ::-1]  # RGB tensor -> BGR, the numpy convention of niqe_map
            maps.append(niqe_map(hwc, window=window, stride=stride, params=params))
        return torch.from_numpy(np.stack(maps)[:, None])
    return niqe_map(gan_sr, window=window, stride=stride, params=params)


def niqe_mask(gan_sr, threshold: float, window: int = 96, stride: int = 32, params=None):
    """Boolean NIQE-baseline mask ``niqe_sr_map(gan_sr, ...) > threshold``; choose ``threshold`` on data."""
    return niqe_sr_map(gan_sr, window=window, stride=stride, params=params) > threshold
