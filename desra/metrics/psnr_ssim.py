"""PSNR and SSIM with the MATLAB-style definitions used in SR papers (numbers match BasicSR).

numpy versions take images with values in [0, 255] (uint8 or float, BGR for ``test_y_channel``);
torch versions take RGB batches ``B x C x H x W`` in [0, 1] and return one value per image.
SSIM: per channel, 11 x 11 Gaussian window (sigma 1.5), only the "valid" region where the window
fits, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255, mean of the map then mean over channels, float64.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from desra.metrics.color import rgb2ycbcr_pt, to_y_channel
from desra.registry import METRIC_REGISTRY

__all__ = ['calculate_psnr', 'calculate_ssim', 'calculate_psnr_pt', 'calculate_ssim_pt', 'reorder_image']

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _gaussian_window() -> np.ndarray:
    k = cv2.getGaussianKernel(11, 1.5)
    return np.outer(k, k.transpose())


def reorder_image(img: np.ndarray, input_order: str = 'HWC') -> np.ndarray:
    """Return ``img`` as H x W x C (a 2-D image gets a trailing channel axis)."""
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if img.ndim == 2:
        return img[..., None]
    if input_order == 'CHW':
        return img.transpose(1, 2, 0)
    return img


def _prepare(img, img2, crop_border, input_order, test_y_channel):
    if not isinstance(img, np.ndarray) or not isinstance(img2, np.ndarray):
        raise TypeError('expected numpy arrays; use calculate_psnr_pt/calculate_ssim_pt for tensors')
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {img.shape} vs {img2.shape}')
    img = reorder_image(img, input_order)
    img2 = reorder_image(img2, input_order)
    if crop_border:
        if 2 * crop_border >= min(img.shape[:2]):
            raise ValueError(f'crop_border {crop_border} leaves nothing of a {img.shape[0]}x{img.shape[1]} image')
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:
        img = to_y_channel(img)
        img2 = to_y_channel(img2)
    return img.astype(np.float64), img2.astype(np.float64)


@METRIC_REGISTRY.register()
def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC',
                   test_y_channel: bool = False, **kwargs) -> float:
    """PSNR in dB between two images with values in [0, 255].

    Args:
        img, img2: same-shaped H x W x C (or C x H x W, see ``input_order``) or H x W arrays.
        crop_border: pixels removed from each side before comparing (usually the SR scale).
        input_order: ``'HWC'`` or ``'CHW'``.
        test_y_channel: compare the BT.601 Y channel of BGR images (see :mod:`desra.metrics.color`).

    Returns:
        ``10 log10(255^2 / MSE)``; ``inf`` for identical images.
    """
    img, img2 = _prepare(img, img2, crop_border, input_order, test_y_channel)
    mse = np.mean((img - img2) ** 2)
    if mse == 0:
        return float('inf')
    return float(10. * np.log10(255. * 255. / mse))


def _ssim_channel(img: np.ndarray, img2: np.ndarray) -> float:
    """Mean SSIM of two float64 H x W channels on the 0..255 scale, valid region only."""
    window = _gaussian_window()

    def blur(x):
        # filter2D keeps the size; the [5:-5] slice keeps only positions where the window fits.
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu1, mu2 = blur(img), blur(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = blur(img ** 2) - mu1_sq
    sigma2_sq = blur(img2 ** 2) - mu2_sq
    sigma12 = blur(img * img2) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return float(ssim_map.mean())


@METRIC_REGISTRY.register()
def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC',
                   test_y_channel: bool = False, **kwargs) -> float:
    """SSIM between two images with values in [0, 255] (arguments as :func:`calculate_psnr`).

    Images must be at least 11 x 11 after ``crop_border``. Returns a value in [-1, 1]; 1 when identical.
    """
    img, img2 = _prepare(img, img2, crop_border, input_order, test_y_channel)
    if min(img.shape[:2]) < 11:
        raise ValueError(f'SSIM needs images of at least 11x11 after cropping, got {img.shape[0]}x{img.shape[1]}')
    return float(np.mean([_ssim_channel(img[..., c], img2[..., c]) for c in range(img.shape[2])]))


def _prepare_pt(img, img2, crop_border, test_y_channel):
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {tuple(img.shape)} vs {tuple(img2.shape)}')
    if img.dim() != 4:
        raise ValueError(f'expected B x C x H x W tensors, got shape {tuple(img.shape)}')
    if crop_border:
        img = img[:, :, crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[:, :, crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        img = rgb2ycbcr_pt(img, y_only=True)
        img2 = rgb2ycbcr_pt(img2, y_only=True)
    return img.to(torch.float64), img2.to(torch.float64)


@METRIC_REGISTRY.register()
def calculate_psnr_pt(img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False,
                      **kwargs) -> torch.Tensor:
    """PSNR in dB per image of two RGB batches B x C x H x W in [0, 1]; returns a float64 tensor (B,).

    As in BasicSR, 1e-8 is added to the MSE, so identical images give 80 dB rather than inf.
    """
    img, img2 = _prepare_pt(img, img2, crop_border, test_y_channel)
    mse = torch.mean((img - img2) ** 2, dim=[1, 2, 3])
    return 10. * torch.log10(1. / (mse + 1e-8))


@METRIC_REGISTRY.register()
def calculate_ssim_pt(img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False,
                      **kwargs) -> torch.Tensor:
    """SSIM per image of two RGB batches B x C x H x W in [0, 1]; returns a float64 tensor (B,)."""
    img, img2 = _prepare_pt(img, img2, crop_border, test_y_channel)
    img, img2 = img * 255., img2 * 255.
    c = img.shape[1]
    window = torch.as_tensor(_gaussian_window(), dtype=torch.float64, device=img.device)
    window = window.expand(c, 1, 11, 11)

    def blur(x):
        return F.conv2d(x, window, groups=c)

    mu1, mu2 = blur(img), blur(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = blur(img * img) - mu1_sq
    sigma2_sq = blur(img2 * img2) - mu2_sq
    sigma12 = blur(img * img2) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return ssim_map.mean(dim=[1, 2, 3])
