"""Pseudo ground truth for DeSRA fine-tuning (paper Sec. 3.3): ``y~ = M * y_MSE + (1 - M) * y_GAN``.

``M`` is the artifact mask at SR size (1 where the GAN-SR output has an artifact). Inside the mask the
pseudo-GT takes the MSE-SR pixels, elsewhere it keeps the GAN-SR pixels; the model is then fine-tuned on the
pairs (real LR image, pseudo-GT).

Inputs
------
Images (``mse_sr``, ``gan_sr``), both numpy or both torch, of the same shape:

* numpy: ``H x W x C`` or ``H x W``, any dtype (uint8 in [0, 255], float in [0, 1] or [0, 255], ...);
* torch: ``B x C x H x W`` or ``C x H x W``, any dtype and device.

The pair is combined in ``np.result_type`` / ``torch.promote_types`` of the two dtypes (normally they are
the same, and that dtype is returned). Channel order does not matter.

Mask (numpy or torch, whatever the images are):

* numpy images: ``H x W`` (or ``H x W x 1``);
* torch images: ``H x W``, ``B x H x W`` or ``B x 1 x H x W`` for ``B x C x H x W`` images (``B`` may be 1
  to share one mask), ``H x W`` or ``1 x H x W`` for ``C x H x W`` images;
* values: bool; integers 0/1; integers 0..255 (divided by 255 when the maximum is above 1, so 0/255
  detection masks work); floats in [0, 1]. The mask is binarised at 0.5 (``M = value >= 0.5``), as the
  paper's ``M`` is binary. Values outside these ranges (or NaN) raise ``ValueError``.

Feathering
----------
``feather = 0`` (the paper): exact selection. Every output pixel is exactly the MSE-SR or the GAN-SR
pixel, in the output dtype (uint8 in, uint8 out, no rounding change).

``feather = sigma > 0``: the binary mask is smoothed with a separable Gaussian of standard deviation
``sigma`` pixels (radius ``ceil(4 sigma)``, border replicated), clipped to [0, 1]; values within rounding
noise of 0 or 1 are snapped to 0 or 1. The result is a continuous blend without a step at the mask edge;
farther than the kernel radius from any edge it equals the exact selection, and everywhere it lies within
``[min, max]`` of the two inputs per pixel. Integer outputs are rounded to the nearest value.
"""
from __future__ import annotations

import math
import numbers
import sys

import cv2
import numpy as np

__all__ = ['feather_mask', 'pseudo_gt']


def _torch():
    """The torch module if it was imported already (a tensor can only exist then), else None."""
    return sys.modules.get('torch')


def _is_tensor(x) -> bool:
    torch = _torch()
    return torch is not None and torch.is_tensor(x)


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, 'shape') else tuple(np.shape(x))


def _check_feather(feather) -> float:
    if isinstance(feather, bool) or not isinstance(feather, numbers.Real) or not math.isfinite(feather) \
            or feather < 0:
        raise ValueError(f'feather: expected a finite number >= 0 (Gaussian sigma in pixels), got {feather!r}')
    return float(feather)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(4.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


# ------------------------------------------------------------------------------------------------ masks
def _binary_numpy(mask: np.ndarray) -> np.ndarray:
    """Validate a numpy mask's values and binarise it at 0.5 -> bool array of the same shape."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if mask.size == 0:
        return mask.astype(bool)
    if np.issubdtype(mask.dtype, np.integer):
        lo, hi = int(mask.min()), int(mask.max())
        if lo < 0 or hi > 255:
            raise ValueError(f'mask: integer values must be 0/1 or in 0..255, got the range [{lo}, {hi}]')
        return mask >= (1 if hi <= 1 else 128)  # v / 255 >= 0.5  <=>  v >= 127.5
    if np.issubdtype(mask.dtype, np.floating):
        _check_float_mask(bool(np.all(np.isfinite(mask))), float(mask.min()), float(mask.max()))
        return mask >= 0.5
    raise ValueError(f'mask: unsupported dtype {mask.dtype} (expected bool, integer or float)')


def _check_float_mask(finite: bool, lo: float, hi: float) -> None:
    if not finite:
        raise ValueError('mask: contains NaN or Inf values')
    if lo < 0 or hi > 1:
        raise ValueError(f'mask: float values must be in [0, 1], got the range [{lo:g}, {hi:g}] '
                         f'(divide a 0..255 mask by 255)')


def _binary_torch(mask):
    """Validate a torch mask's values and binarise it at 0.5 -> bool tensor of the same shape."""
    torch = _torch()
    if mask.dtype == torch.bool:
        return mask
    if mask.numel() == 0:
        return mask.bool()
    if mask.dtype.is_floating_point:
        _check_float_mask(bool(torch.isfinite(mask).all()), float(mask.min()), float(mask.max()))
        return mask >= 0.5
    if mask.dtype.is_complex:
        raise ValueError(f'mask: unsupported dtype {mask.dtype} (expected bool, integer or float)')
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > 255:
        raise ValueError(f'mask: integer values must be 0/1 or in 0..255, got the range [{lo}, {hi}]')
    return mask >= (1 if hi <= 1 else 128)


def _feather_numpy(binary: np.ndarray, sigma: float) -> np.ndarray:
    """bool H x W -> float64 H x W in [0, 1] (Gaussian-smoothed when sigma > 0)."""
    m = binary.astype(np.float64)
    if sigma <= 0 or m.size == 0:
        return m
    k = _gaussian_kernel(sigma)
    m = cv2.sepFilter2D(m, cv2.CV_64F, k, k, borderType=cv2.BORDER_REPLICATE)
    return _snap(np.clip(m, 0.0, 1.0), 1e-9)


def _feather_torch(binary, sigma: float, dtype):
    """bool ``... x H x W`` tensor -> ``dtype`` tensor of the same shape in [0, 1]."""
    torch = _torch()
    import torch.nn.functional as F

    m = binary.to(dtype)
    if sigma <= 0 or m.numel() == 0:
        return m
    shape = m.shape
    h, w = shape[-2:]
    x = m.reshape(-1, 1, h, w)
    k = torch.from_numpy(_gaussian_kernel(sigma)).to(device=m.device, dtype=dtype)
    r = (k.numel() - 1) // 2
    x = F.pad(x, (r, r, 0, 0), mode='replicate')
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode='replicate')
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x.clamp(0.0, 1.0).reshape(shape)
    return _snap(x, 1e-9 if dtype == torch.float64 else 1e-5)


def _snap(m, eps: float):
    """Values within ``eps`` of 0 or 1 (kernel-sum rounding) become exactly 0 or 1."""
    if _is_tensor(m):
        torch = _torch()
        m = torch.where(m >= 1.0 - eps, torch.ones_like(m), m)
        return torch.where(m <= eps, torch.zeros_like(m), m)
    m[m >= 1.0 - eps] = 1.0
    m[m <= eps] = 0.0
    return m


def feather_mask(mask, feather: float = 0.0):
    """The blending weight ``M`` that :func:`pseudo_gt` uses, as floats in [0, 1].

    Args:
        mask: numpy or torch mask of shape ``... x H x W`` (numpy ``H x W`` or ``H x W x 1``); bool, 0/1,
            0..255 integers or floats in [0, 1]; binarised at 0.5.
        feather: Gaussian sigma in pixels; 0 returns the binary mask as 0.0/1.0.

    Returns:
        numpy float64 ``H x W`` (a trailing channel of 1 is dropped), or a torch tensor of the input's shape
        and device (float64 if the mask is float64, else float32).
    """
    sigma = _check_feather(feather)
    if _is_tensor(mask):
        torch = _torch()
        if mask.dim() < 2:
            raise ValueError(f'mask: expected at least 2 dimensions (... x H x W), got shape {tuple(mask.shape)}')
        dtype = torch.float64 if mask.dtype == torch.float64 else torch.float32
        return _feather_torch(_binary_torch(mask), sigma, dtype)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f'mask: expected H x W (or H x W x 1), got shape {mask.shape}')
    return _feather_numpy(_binary_numpy(mask), sigma)


# ------------------------------------------------------------------------------------------------ main
def pseudo_gt(mse_sr, gan_sr, mask, feather: float = 0.0):
    """Pseudo-GT of DeSRA Sec. 3.3: ``M * mse_sr + (1 - M) * gan_sr`` (see the module docstring for details).

    Args:
        mse_sr: MSE-SR image, numpy ``H x W x C`` / ``H x W`` or torch ``B x C x H x W`` / ``C x H x W``.
        gan_sr: GAN-SR image of the same kind and shape.
        mask: artifact mask at SR size (``H x W``; torch also ``B x H x W`` / ``B x 1 x H x W``): bool, 0/1,
            0/255 or floats in [0, 1], binarised at 0.5; 1 = artifact = take the MSE-SR pixel.
        feather: 0 for the exact selection of the paper; sigma > 0 (pixels) for a Gaussian-softened edge.

    Returns:
        An image of the inputs' shape, kind, device and (promoted) dtype. With ``feather=0`` every pixel equals
        the MSE-SR or the GAN-SR pixel exactly; otherwise integer dtypes are rounded.

    Raises:
        ValueError: shape mismatch (the message names the shapes), bad mask values or a negative ``feather``.
        TypeError: one image is numpy and the other torch.
    """
    sigma = _check_feather(feather)
    t_mse, t_gan = _is_tensor(mse_sr), _is_tensor(gan_sr)
    if t_mse != t_gan:
        raise TypeError(f'pseudo_gt: mse_sr and gan_sr must both be numpy arrays or both torch tensors, got '
                        f'{type(mse_sr).__name__} and {type(gan_sr).__name__}')
    if t_mse:
        return _pseudo_gt_torch(mse_sr, gan_sr, mask, sigma)
    return _pseudo_gt_numpy(np.asarray(mse_sr), np.asarray(gan_sr), mask, sigma)


def _pseudo_gt_numpy(mse: np.ndarray, gan: np.ndarray, mask, sigma: float) -> np.ndarray:
    if mse.shape != gan.shape:
        raise ValueError(f'pseudo_gt: mse_sr has shape {mse.shape} but gan_sr has shape {gan.shape}; '
                         f'they must be the same')
    if mse.ndim not in (2, 3):
        raise ValueError(f'pseudo_gt: numpy images must be H x W x C or H x W, got shape {mse.shape}')
    if _is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != mse.shape[:2]:
        raise ValueError(f'pseudo_gt: mask has shape {mask.shape} but the images have shape {mse.shape}; '
                         f'the mask must be H x W = {mse.shape[:2]} (the SR size)')
    out_dtype = np.result_type(mse, gan)
    binary = _binary_numpy(mask)
    if mse.ndim == 3:
        binary = binary[..., None]
    if sigma <= 0:
        return np.where(binary, mse, gan).astype(out_dtype, copy=False)
    w = _feather_numpy(binary[..., 0] if mse.ndim == 3 else binary, sigma)
    if mse.ndim == 3:
        w = w[..., None]
    a, b = mse.astype(np.float64), gan.astype(np.float64)
    blend = np.clip(w * a + (1.0 - w) * b, np.minimum(a, b), np.maximum(a, b))
    if np.issubdtype(out_dtype, np.integer) or out_dtype == np.bool_:
        blend = np.rint(blend)
    # the inputs themselves where the weight is exactly 0 or 1
    return np.where(w >= 1.0, mse, np.where(w <= 0.0, gan, blend.astype(out_dtype))).astype(out_dtype, copy=False)


def _torch_mask_layout(mask, img_shape: tuple):
    """Reshape a mask so it broadcasts over ``img_shape`` (channels shared); ValueError naming the shapes."""
    hw = tuple(img_shape[-2:])
    mshape = tuple(mask.shape)
    bad = ValueError(f'pseudo_gt: mask has shape {mshape} but the images have shape {tuple(img_shape)}; '
                     f'expected ' + ('H x W, B x H x W or B x 1 x H x W' if len(img_shape) == 4 else
                                     'H x W or 1 x H x W') + f' with H x W = {hw} (the SR size)')
    if len(mshape) < 2 or mshape[-2:] != hw:
        raise bad
    if len(img_shape) == 4:
        b = img_shape[0]
        if len(mshape) == 2:
            return mask.reshape(1, 1, *hw)
        if len(mshape) == 3 and mshape[0] in (1, b):
            return mask.unsqueeze(1)
        if len(mshape) == 4 and mshape[0] in (1, b) and mshape[1] == 1:
            return mask
        raise bad
    if len(mshape) == 2:
        return mask.unsqueeze(0)
    if len(mshape) == 3 and mshape[0] == 1:
        return mask
    raise bad


def _pseudo_gt_torch(mse, gan, mask, sigma: float):
    torch = _torch()
    if mse.shape != gan.shape:
        raise ValueError(f'pseudo_gt: mse_sr has shape {tuple(mse.shape)} but gan_sr has shape '
                         f'{tuple(gan.shape)}; they must be the same')
    if mse.dim() not in (3, 4):
        raise ValueError(f'pseudo_gt: torch images must be B x C x H x W or C x H x W, got shape {tuple(mse.shape)}')
    if mse.device != gan.device:
        raise ValueError(f'pseudo_gt: mse_sr is on {mse.device} but gan_sr is on {gan.device}')
    if not torch.is_tensor(mask):
        mask = torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
    mask = _torch_mask_layout(mask.to(mse.device), tuple(mse.shape))
    out_dtype = torch.promote_types(mse.dtype, gan.dtype)
    binary = _binary_torch(mask)
    a, b = mse.to(out_dtype), gan.to(out_dtype)
    if sigma <= 0:
        return torch.where(binary, a, b)
    cdtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    w = _feather_torch(binary, sigma, cdtype)
    af, bf = a.to(cdtype), b.to(cdtype)
    blend = w * af + (1.0 - w) * bf
    blend = torch.minimum(torch.maximum(blend, torch.minimum(af, bf)), torch.maximum(af, bf))
    blend = torch.where(w >= 1.0, af, torch.where(w <= 0.0, bf, blend))
    if not out_dtype.is_floating_point:
        blend = blend.round()
    out = blend.to(out_dtype)
    # exact inputs where the weight is 0 or 1 (also for dtypes the compute dtype cannot hold exactly)
    return torch.where(w >= 1.0, a, torch.where(w <= 0.0, b, out))
