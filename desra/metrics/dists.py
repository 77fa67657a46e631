"""DISTS (Ding et al., "Image Quality Assessment: Unifying Structure and Texture Similarity", TPAMI 2020), on a
VGG16 defined here with torchvision's key names (no torchvision import).

Definition (``DISTS_pytorch.DISTS()`` of the ``DISTS_pytorch`` 0.1 package)::

    x in [0, 1] (RGB);  the VGG16 features of (x - ImageNet mean) / ImageNet std with every max-pool replaced by
    an L2 pool (sqrt(g * x^2 + 1e-12), g the 3 x 3 normalised Hann window outer(.5, 1, .5) / 4, stride 2, pad 1)
    f_0 = x itself (3 channels), f_1..f_5 = relu1_2, relu2_2, relu3_3, relu4_3, relu5_3     (1475 channels in all)
    per channel j of stage k, over the spatial positions:
        S1 = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)                 texture (mean) similarity
        S2 = (2 cov_xy + c2) / (var_x + var_y + c2)                      structure similarity, c1 = c2 = 1e-6
    DISTS(x, y) = 1 - sum_{k,j} (alpha_kj S1_kj + beta_kj S2_kj) / (sum alpha + sum beta)

(variances and covariance are population moments, the means over H x W). Files: the backbone is torchvision's
``vgg16-397923af.pth``; ``alpha`` / ``beta`` (1 x 1475 x 1 x 1) are the ``weights.pt`` of the ``DISTS_pytorch``
0.1 wheel, stored by ``scripts/download_pretrained.py --source pypi`` as ``pretrained/dists_alpha_beta.safetensors``
(the wheel's ``weights.pt`` loads too).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from desra.archs.checkpoint_io import read_checkpoint
from desra.archs.vgg_arch import IMAGENET_MEAN, IMAGENET_STD, vgg_features
from desra.errors import CheckpointError
from desra.metrics.deep_util import (bgr_pair_to_tensors, check_pair_pt, check_weight_arg, crop_pt, file_key,
                                     metric_device)
from desra.registry import METRIC_REGISTRY
from desra.weights import locate

__all__ = ['DISTS', 'DISTS_CHANNELS', 'L2Pool', 'calculate_dists', 'calculate_dists_pt', 'dists_network',
           'load_dists_weights']

#: Channels of f_0 ... f_5.
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
#: torchvision VGG16 ``features`` indices of the max-pools DISTS replaces, and the stage ranges (after f_0).
_POOLS = (4, 9, 16, 23)
_STAGES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_C1 = _C2 = 1e-6


class L2Pool(nn.Module):
    """DISTS's L2 pooling: ``sqrt(conv(x^2, g) + 1e-12)`` per channel, g = outer(.5, 1, .5) / 4, stride 2, pad 1."""

    def __init__(self, channels: int):
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(np.outer(a, a) / np.outer(a, a).sum(), dtype=torch.float32)
        self.register_buffer('filter', g.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1]) + 1e-12)


def load_dists_weights(weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """DISTS's ``(alpha, beta)``, each 1 x 1475 x 1 x 1 float32 (not yet normalised).

    ``weights``: None (search ``pretrained/dists_alpha_beta.safetensors`` etc.), a ``.safetensors`` / ``.pt`` path,
    or a dict with ``alpha`` and ``beta``.
    """
    if isinstance(weights, Mapping):
        sd, source = weights, '<weights dict>'
    else:
        path = locate.find_weight_file(locate.DISTS_WEIGHTS, 'DISTS') if weights is None else Path(weights).expanduser()
        sd, source = read_checkpoint(path), str(path)
    missing = [k for k in ('alpha', 'beta') if k not in sd]
    if missing:
        raise CheckpointError(f'{source}: not DISTS weights: missing {", ".join(missing)} '
                              f'(found {", ".join(sorted(map(str, sd))[:8]) or "nothing"})')
    out = []
    shape = (1, sum(DISTS_CHANNELS), 1, 1)
    for k in ('alpha', 'beta'):
        w = torch.as_tensor(sd[k]).detach().to('cpu', torch.float32)
        if tuple(w.shape) != shape:
            raise CheckpointError(f'{source}: {k} has shape {tuple(w.shape)}, DISTS expects {shape}')
        out.append(w)
    return out[0], out[1]


class DISTS(nn.Module):
    """DISTS distance (see the module docstring). Frozen, eval mode.

    Args:
        backbone: None (search for ``vgg16-397923af.pth``), a path, a state dict, or ``'random'`` (tests only).
        weights: None (search), a path or a dict, see :func:`load_dists_weights`.

    ``forward(x, y)``: RGB batches B x 3 x H x W in [0, 1]; returns the B distances (float32; 0 for identical
    images up to the constants; lower is better).
    """

    def __init__(self, backbone=None, weights=None):
        super().__init__()
        features = vgg_features('vgg16', _STAGES[-1][1] - 1)
        for i in _POOLS:
            features[i] = L2Pool(features[i - 2].out_channels)
        self.features = features
        self.backbone_path = locate.load_backbone_weights(self.features, backbone, locate.VGG16, 'DISTS',
                                                          prefix='features.')
        alpha, beta = load_dists_weights(weights)
        total = alpha.sum() + beta.sum()
        self.register_buffer('alpha', alpha / total, persistent=False)
        self.register_buffer('beta', beta / total, persistent=False)
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """f_0 ... f_5 of a batch in [0, 1]."""
        feats, h = [x], (x - self.mean) / self.std
        for start, stop in _STAGES:
            for layer in self.features[start:stop]:
                h = layer(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        alphas = torch.split(self.alpha, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta, DISTS_CHANNELS, dim=1)
        texture = structure = 0
        for f, a, w in zip(self.stage_features(torch.cat([x, y])), alphas, betas):
            fx, fy = f[:b], f[b:]
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            vx = ((fx - mx) ** 2).mean((2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cxy = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + _C1) / (mx ** 2 + my ** 2 + _C1)
            s2 = (2 * cxy + _C2) / (vx + vy + _C2)
            texture = texture + (a * s1).sum(1)
            structure = structure + (w * s2).sum(1)
        return (1 - (texture + structure)).view(b)


@functools.lru_cache(maxsize=4)
def _cached_dists(backbone: str, backbone_key, weights: str, weights_key, device: str) -> DISTS:
    return DISTS(backbone, weights).to(device)


def dists_network(backbone=None, weights=None, device=None) -> DISTS:
    """The DISTS network on ``device``, built once per (files, device) and cached (as :func:`lpips_network`)."""
    device = str(metric_device(device))
    if isinstance(backbone, Mapping) or isinstance(weights, Mapping):
        return DISTS(backbone, weights).to(device)
    if backbone is None:
        backbone = locate.find_weight_file(locate.VGG16, 'DISTS')
    if weights is None:
        weights = locate.find_weight_file(locate.DISTS_WEIGHTS, 'DISTS')
    backbone, weights = os.fspath(backbone), os.fspath(weights)
    return _cached_dists(backbone, None if backbone == 'random' else file_key(backbone), weights,
                         file_key(weights), device)


@METRIC_REGISTRY.register()
def calculate_dists(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, input_order: str = 'HWC',
                    backbone=None, weights=None, device=None, **kwargs) -> float:
    """DISTS between a restored image ``img`` and its GT ``img2`` (lower is better).

    Args:
        img, img2: same-shaped H x W x 3 BGR images (``cv2.imread``), values in [0, 255] (see
            :func:`desra.metrics.calculate_lpips` for the accepted layouts).
        crop_border: pixels removed from every side first.
        backbone, weights: files (see :class:`DISTS`); None searches ``pretrained/`` and the usual places.
        device: where the network runs (default: CUDA when available, else CPU).

    Returns:
        ``DISTS_pytorch.DISTS()(x, x2)`` with x = RGB(img) / 255 in [0, 1], as a float.
    """
    dev = metric_device(device)
    x, x2 = bgr_pair_to_tensors(img, img2, crop_border, input_order, 'calculate_dists', dev)
    model = dists_network(backbone, weights, dev)
    with torch.inference_mode():
        return float(model(x, x2)[0])


@METRIC_REGISTRY.register()
def calculate_dists_pt(img: torch.Tensor, img2: torch.Tensor, crop_border: int = 0, backbone=None, weights=None,
                       **kwargs) -> torch.Tensor:
    """DISTS per image of two RGB batches B x 3 x H x W in [0, 1], on their device; a float64 tensor (B,)."""
    check_pair_pt(img, img2, 'calculate_dists_pt')
    model = dists_network(backbone, weights, img.device)
    with torch.inference_mode():
        return model(crop_pt(img, crop_border).float(), crop_pt(img2, crop_border).float()).double()


def _preflight(backbone=None, weights=None, **kwargs) -> None:
    """Check, before a run starts, that the files DISTS will need are there (reads nothing)."""
    check_weight_arg(backbone, locate.VGG16, 'DISTS')
    check_weight_arg(weights, locate.DISTS_WEIGHTS, 'DISTS')


for _fn in (calculate_dists, calculate_dists_pt):
    _fn.better = 'lower'
    _fn.preflight = _preflight
