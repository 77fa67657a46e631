"""Batch filtering, unsharp masking and resizing (torch, any device; ``usm_sharp`` also for numpy images).

``filter2D(img, kernel)``: ``out[b, c, y, x] = sum_{i, j} K_b[i, j] * img_pad[b, c, y + i, x + j]`` (correlation,
as ``F.conv2d`` and ``cv2.filter2D`` compute it) with ``K_b`` the image's own kernel (``B x k x k``) or a shared
one (``1 x k x k``), ``k`` odd, and the border completed by reflection without repeating the edge pixel
(OpenCV's BORDER_REFLECT_101, ``dcb|abcd|cba``). Unlike ``F.pad(mode='reflect')`` the reflection also works when
``k // 2`` is as large as the image (it is repeated, as OpenCV does), so small images of a batch do not fail.

Unsharp masking (Real-ESRGAN's GT sharpening): with ``blur`` = Gaussian blur of ``radius x radius`` (odd; an even
radius becomes radius + 1) and sigma 0 (OpenCV's rule: ``0.3 ((radius - 1) / 2 - 1) + 0.8``, 8.0 for 51),
``residual = I - blur``, ``mask = |residual| * 255 > threshold`` blurred the same way (a soft mask), and
``out = soft_mask * clip(I + weight * residual, 0, 1) + (1 - soft_mask) * I``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ['filter2D', 'separable_filter', 'reflect101_pad', 'usm_sharp', 'USMSharp', 'resize_pt', 'RESIZE_MODES']

#: The interpolation modes Real-ESRGAN draws for its random resizes.
RESIZE_MODES = ('area', 'bilinear', 'bicubic')


def _reflect101_index(n: int, pad: int, device) -> torch.Tensor:
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def reflect101_pad(img: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dimensions by ``pad`` on every side with OpenCV's BORDER_REFLECT_101, for any image size."""
    if pad == 0:
        return img
    h, w = img.shape[-2:]
    if pad < h and pad < w:
        return F.pad(img, (pad, pad, pad, pad), mode='reflect')
    rows = _reflect101_index(h, pad, img.device)
    cols = _reflect101_index(w, pad, img.device)
    return img.index_select(-2, rows).index_select(-1, cols)


def filter2D(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter a ``B x C x H x W`` batch with per-image kernels ``B x k x k`` or one shared ``1 x k x k`` (odd ``k``).

    Returns a tensor of the input's shape (see the module notes for the formula and the border).
    """
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(0)
    k = kernel.size(-1)
    if k % 2 != 1 or kernel.size(-2) != k:
        raise ValueError(f'filter2D: expected square kernels of odd size, got shape {tuple(kernel.shape)}')
    b, c, h, w = img.size()
    if kernel.size(0) not in (1, b):
        raise ValueError(f'filter2D: {kernel.size(0)} kernels for a batch of {b} images')
    img = reflect101_pad(img, k // 2)
    ph, pw = img.size()[-2:]
    kernel = kernel.to(dtype=img.dtype, device=img.device)
    if kernel.size(0) == 1:
        out = F.conv2d(img.reshape(b * c, 1, ph, pw), kernel.view(1, 1, k, k))
        return out.view(b, c, h, w)
    kernel = kernel.view(b, 1, k, k).repeat(1, c, 1, 1).view(b * c, 1, k, k)
    return F.conv2d(img.reshape(1, b * c, ph, pw), kernel, groups=b * c).view(b, c, h, w)


def usm_sharp(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> np.ndarray:
    """Unsharp-masked copy of an H x W x C float image in [0, 1] (BGR or RGB; see the module notes)."""
    import cv2

    if radius % 2 == 0:
        radius += 1
    blur = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype('float32')
    soft_mask = cv2.GaussianBlur(mask, (radius, radius), 0)
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def separable_filter(img: torch.Tensor, k1d: np.ndarray) -> torch.Tensor:
    """``filter2D(img, outer(k1d, k1d))`` on CPU as two 1-D passes (OpenCV's ``sepFilter2D``, same
    BORDER_REFLECT_101): ``2k`` instead of ``k^2`` multiply-adds per pixel, within float32 rounding of the 2-D
    filter with the outer-product kernel."""
    import cv2

    b, c, h, w = img.shape
    planes = img.detach().reshape(b * c, h, w).float().numpy()
    kern = np.asarray(k1d, np.float32)
    out = np.stack([cv2.sepFilter2D(p, -1, kern, kern, borderType=cv2.BORDER_REFLECT_101) for p in planes])
    return torch.from_numpy(out).to(img.dtype).view(b, c, h, w)


class USMSharp(torch.nn.Module):
    """:func:`usm_sharp` for ``B x C x H x W`` batches on any device: ``USMSharp()(img, weight=0.5, threshold=10)``.

    ``kernel`` (``1 x k x k``) is BasicSR's 2-D Gaussian and the blurs are :func:`filter2D` with it, as in BasicSR,
    so the output equals BasicSR's on the same device. ``fast=True`` runs the CPU blurs as two 1-D passes instead
    (:func:`separable_filter`): 25 times fewer operations for the 51 x 51 kernel, the blur within
    float32 rounding (3e-6) of the 2-D one, but a pixel whose ``|residual| * 255`` sits that close to the threshold
    can flip in the mask, so the output is not bit-equal to BasicSR's.
    """

    def __init__(self, radius: int = 50, sigma: float = 0, fast: bool = False):
        import cv2

        super().__init__()
        if radius % 2 == 0:
            radius += 1
        self.radius = radius
        k1 = cv2.getGaussianKernel(radius, sigma)
        self.register_buffer('kernel', torch.from_numpy(np.dot(k1, k1.transpose())).float().unsqueeze(0))
        self.kernel_1d = k1[:, 0].astype(np.float64)
        self.fast = fast

    def _blur(self, img: torch.Tensor) -> torch.Tensor:
        if self.fast and img.device.type == 'cpu' and not img.requires_grad:
            return separable_filter(img, self.kernel_1d)
        return filter2D(img, self.kernel)

    def forward(self, img: torch.Tensor, weight: float = 0.5, threshold: float = 10) -> torch.Tensor:
        blur = self._blur(img)
        residual = img - blur
        mask = (torch.abs(residual) * 255 > threshold).to(img.dtype)
        soft_mask = self._blur(mask)
        sharp = torch.clip(img + weight * residual, 0, 1)
        return soft_mask * sharp + (1 - soft_mask) * img


def resize_pt(img: torch.Tensor, scale_factor: float | None = None, size=None, mode: str = 'bicubic') -> torch.Tensor:
    """``F.interpolate`` as Real-ESRGAN calls it (``mode`` in :data:`RESIZE_MODES`, no antialiasing, corners not
    aligned); ``scale_factor`` gives ``floor(H * scale)`` outputs, ``size`` exact ones."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if size is not None:
        return F.interpolate(img, size=tuple(int(s) for s in size), mode=mode)
    return F.interpolate(img, scale_factor=float(scale_factor), mode=mode)
