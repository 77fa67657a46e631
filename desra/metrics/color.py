"""YCbCr conversions with MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, "studio swing") coefficients.

Y lies in [16, 235] and Cb/Cr in [16, 240] on the 8-bit scale. These are the conversions the SR
literature uses for "PSNR/SSIM on the Y channel"; OpenCV's ``COLOR_BGR2YCrCb`` (full swing) gives
different numbers.

numpy functions accept uint8 images (values 0..255, result rounded to uint8) or float images with
values in [0, 1] (result float of the same dtype, in [16/255, 235/255] for Y).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ['rgb2ycbcr', 'bgr2ycbcr', 'ycbcr2rgb', 'ycbcr2bgr', 'rgb2ycbcr_pt', 'to_y_channel']

# Rows: input R, G, B (8-bit scale, inputs in [0, 1]); columns: output Y, Cb, Cr.
_RGB2YCBCR = np.array([[65.481, -37.797, 112.0],
                       [128.553, -74.203, -93.786],
                       [24.966, 112.0, -18.214]])
_YCBCR_OFFSET = np.array([16., 128., 128.])
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)


def _to_float01(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.
    if img.dtype in (np.float32, np.float64):
        return img
    raise TypeError(f'expected a uint8 image or a float image in [0, 1], got dtype {img.dtype}')


def _from_8bit_scale(out: np.ndarray, in_dtype) -> np.ndarray:
    """``out`` is on the 0..255 scale; return it in the input's convention."""
    if in_dtype == np.uint8:
        return np.clip(out.round(), 0, 255).astype(np.uint8)
    return (out / 255.).astype(in_dtype)


def _convert(img: np.ndarray, bgr: bool, y_only: bool) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected an H x W x 3 image, got shape {img.shape}')
    x = _to_float01(img)
    m = _RGB2YCBCR[::-1] if bgr else _RGB2YCBCR
    m = m.astype(x.dtype)
    if y_only:
        out = x @ m[:, 0] + 16.0
    else:
        out = x @ m + _YCBCR_OFFSET.astype(x.dtype)
    return _from_8bit_scale(out, img.dtype)


def rgb2ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """RGB H x W x 3 -> YCbCr H x W x 3 (or Y only, H x W). See the module docstring for ranges."""
    return _convert(img, bgr=False, y_only=y_only)


def bgr2ycbcr(img: np.ndarray, y_only: bool = False) -> np.ndarray:
    """BGR H x W x 3 -> YCbCr H x W x 3 (or Y only, H x W). See the module docstring for ranges."""
    return _convert(img, bgr=True, y_only=y_only)


def _inverse(img: np.ndarray, bgr: bool) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected an H x W x 3 image, got shape {img.shape}')
    x = _to_float01(img)
    out = (x * 255. - _YCBCR_OFFSET.astype(x.dtype)) @ _YCBCR2RGB.astype(x.dtype) * 255.
    if bgr:
        out = out[..., ::-1]
    return _from_8bit_scale(np.ascontiguousarray(out), img.dtype)


def ycbcr2rgb(img: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2ycbcr` (full YCbCr input)."""
    return _inverse(img, bgr=False)


def ycbcr2bgr(img: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bgr2ycbcr` (full YCbCr input)."""
    return _inverse(img, bgr=True)


def to_y_channel(img: np.ndarray) -> np.ndarray:
    """BGR image with values in [0, 255] (any dtype) -> H x W x 1 float Y channel in [16, 235].

    Grayscale input (H x W or H x W x 1) is returned as float on the same scale, unchanged.
    """
    img = img.astype(np.float32) / 255.
    if img.ndim == 3 and img.shape[2] == 3:
        img = bgr2ycbcr(img, y_only=True)[..., None]
    elif img.ndim == 2:
        img = img[..., None]
    return img * 255.


def rgb2ycbcr_pt(img: torch.Tensor, y_only: bool = False) -> torch.Tensor:
    """RGB tensor B x 3 x H x W in [0, 1] -> YCbCr B x 3 x H x W (or Y, B x 1 x H x W) in [0, 1]."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f'expected a B x 3 x H x W tensor, got shape {tuple(img.shape)}')
    x = img.permute(0, 2, 3, 1)
    if y_only:
        w = torch.as_tensor(_RGB2YCBCR[:, 0], dtype=img.dtype, device=img.device)
        out = (x @ w).unsqueeze(1) + 16.0
    else:
        w = torch.as_tensor(_RGB2YCBCR, dtype=img.dtype, device=img.device)
        bias = torch.as_tensor(_YCBCR_OFFSET, dtype=img.dtype, device=img.device)
        out = (x @ w + bias).permute(0, 3, 1, 2)
    return out / 255.
