"""LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018),
on AlexNet or VGG16 defined here with torchvision's key names (no torchvision import).

Definition (``lpips.LPIPS(net=..., version='0.1')`` of the ``lpips`` package)::

    x in [-1, 1] (RGB),  x' = (x - shift) / scale,  shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    f_l = backbone stage l of x' (l = 1..5: the ReLU outputs relu1..relu5 of AlexNet, relu1_2 ... relu5_3 of VGG16)
    u_l = f_l / (sqrt(sum_c f_l^2) + 1e-10)                         unit-normalised over channels, per pixel
    LPIPS(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (u_l(x) - u_l(y))^2   learned per-channel weights w_l >= 0

Files (never random, never downloaded here; see :mod:`desra.weights.locate` for where they are looked for):

* backbone: torchvision's ImageNet state dict, ``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth``
  (``features.N.*``; ``classifier.*`` is ignored); ``python scripts/download_pretrained.py --only alexnet vgg16``.
* heads: ``lin0.model.1.weight`` ... ``lin4.model.1.weight`` (1 x C x 1 x 1), the v0.1 heads shipped in the
  ``lpips`` 0.1.4 wheel, stored by ``scripts/download_pretrained.py --source pypi`` as
  ``pretrained/lpips_{alex,vgg}_v0.1.safetensors`` (the wheel's ``.pth`` files load too).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from desra.archs.alexnet_arch import ALEXNET_LPIPS_CHANNELS, ALEXNET_LPIPS_SLICES, alexnet_features
from desra.archs.vgg_arch import vgg_features
from desra.errors import CheckpointError
from desra.metrics.deep_util import (bgr_pair_to_tensors, check_pair_pt, check_weight_arg, crop_pt, file_key,
                                     metric_device)
from desra.registry import METRIC_REGISTRY
from desra.weights import locate

__all__ = ['LPIPS', 'LPIPS_NETS', 'calculate_lpips', 'calculate_lpips_pt', 'load_lpips_heads', 'lpips_network']

#: For each backbone: its file, the ``features`` stage ranges, and the channels of the stage outputs.
LPIPS_NETS = {
    'alex': {'file': locate.ALEXNET, 'slices': ALEXNET_LPIPS_SLICES, 'channels': ALEXNET_LPIPS_CHANNELS},
    'vgg': {'file': locate.VGG16, 'slices': ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
            'channels': (64, 128, 256, 512, 512)},
}
_SHIFT = (-.030, -.088, -.188)
_SCALE = (.458, .448, .450)


def _check_net(net: str) -> dict:
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS: net must be one of {', '.join(repr(n) for n in LPIPS_NETS)}, got {net!r}")
    return LPIPS_NETS[net]


def _read_tensor_file(path: Path) -> Mapping:
    from desra.archs.checkpoint_io import read_checkpoint

    return read_checkpoint(path)


def load_lpips_heads(heads, net: str = 'alex') -> list[torch.Tensor]:
    """The five LPIPS v0.1 heads of ``net`` as 1 x C x 1 x 1 float32 tensors.

    ``heads``: None (search ``pretrained/lpips_<net>_v0.1.safetensors`` etc.), a ``.safetensors`` / ``.pth`` path,
    or a dict with the keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``.
    """
    spec = _check_net(net)
    if isinstance(heads, Mapping):
        sd, source = heads, '<heads dict>'
    else:
        path = (locate.find_weight_file(locate.LPIPS_HEADS[net], f'LPIPS (net={net})') if heads is None
                else Path(heads).expanduser())
        sd, source = _read_tensor_file(path), str(path)
    keys = [f'lin{i}.model.1.weight' for i in range(len(spec['channels']))]
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f'{source}: not LPIPS v0.1 heads for {net}: missing {", ".join(missing)} '
                              f'(found {", ".join(sorted(map(str, sd))[:8]) or "nothing"})')
    out = []
    for k, c in zip(keys, spec['channels']):
        w = torch.as_tensor(sd[k]).detach().to('cpu', torch.float32)
        if tuple(w.shape) != (1, c, 1, 1):
            raise CheckpointError(f'{source}: {k} has shape {tuple(w.shape)}, LPIPS-{net} expects (1, {c}, 1, 1)')
        out.append(w)
    return out


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (see the module docstring). Frozen, eval mode.

    Args:
        net: ``'alex'`` or ``'vgg'``.
        backbone: None (search for torchvision's file), a path, a state dict, or ``'random'`` (tests only).
        heads: None (search), a path or a dict, see :func:`load_lpips_heads`.

    ``forward(x, y, normalize=False)``: RGB batches B x 3 x H x W in [-1, 1] (in [0, 1] with ``normalize``);
    returns the B distances (float32, >= 0, 0 for identical images).
    """

    def __init__(self, net: str = 'alex', backbone=None, heads=None):
        super().__init__()
        spec = _check_net(net)
        self.net = net
        self.slices = spec['slices']
        last = self.slices[-1][1] - 1
        self.features = alexnet_features()[:last + 1] if net == 'alex' else vgg_features('vgg16', last)
        self.backbone_path = locate.load_backbone_weights(self.features, backbone, spec['file'],
                                                          f'LPIPS (net={net})', prefix='features.')
        for i, w in enumerate(load_lpips_heads(heads, net)):
            self.register_buffer(f'lin{i}', w, persistent=False)
        self.register_buffer('shift', torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five stage outputs f_l of an input already scaled by the scaling layer."""
        feats = []
        for start, stop in self.slices:
            for layer in self.features[start:stop]:
                x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        b = x.shape[0]
        both = (torch.cat([x, y]) - self.shift) / self.scale
        total = 0
        for i, f in enumerate(self.stage_features(both)):
            u = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)
            d = (u[:b] - u[b:]) ** 2
            total = total + (d * getattr(self, f'lin{i}')).sum(1).mean((1, 2))
        return total


@functools.lru_cache(maxsize=4)
def _cached_lpips(net: str, backbone: str, backbone_key, heads: str, heads_key, device: str) -> LPIPS:
    return LPIPS(net, backbone, heads).to(device)


def lpips_network(net: str = 'alex', backbone=None, heads=None, device=None) -> LPIPS:
    """The LPIPS network on ``device``, built once per (net, files, device) and cached.

    None arguments are resolved to the files found now (so a file added later is picked up); a file replaced on
    disk is reloaded (its modification time is part of the key); networks from state dicts are not cached.
    """
    _check_net(net)
    device = str(metric_device(device))
    if isinstance(backbone, Mapping) or isinstance(heads, Mapping):
        return LPIPS(net, backbone, heads).to(device)
    if backbone is None:
        backbone = locate.find_weight_file(LPIPS_NETS[net]['file'], f'LPIPS (net={net})')
    if heads is None:
        heads = locate.find_weight_file(locate.LPIPS_HEADS[net], f'LPIPS (net={net})')
    backbone, heads = os.fspath(backbone), os.fspath(heads)
    return _cached_lpips(net, backbone, None if backbone == 'random' else file_key(backbone), heads,
                         file_key(heads), device)


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, input_order: str = 'HWC',
                    net: str = 'alex', backbone=None, heads=None, device=None, **kwargs) -> float:
    """LPIPS v0.1 between a restored image ``img`` and its GT ``img2`` (lower is better; 0 when identical).

    Args:
        img, img2: same-shaped H x W x 3 BGR images (``cv2.imread``), values in [0, 255]; C x H x W with
            ``input_order='CHW'``; H x W gray images are replicated to 3 channels.
        crop_border: pixels removed from every side first.
        net: ``'alex'`` (LDL's choice) or ``'vgg'``.
        backbone, heads: files (see :class:`LPIPS`); None searches ``pretrained/`` and the usual places.
        device: where the network runs (default: CUDA when available, else CPU).

    Returns:
        ``lpips.LPIPS(net=net, version='0.1')(x, x2)`` with x = RGB(img) / 255 mapped to [-1, 1], as a float.
    """
    dev = metric_device(device)
    x, x2 = bgr_pair_to_tensors(img, img2, crop_border, input_order, 'calculate_lpips', dev)
    model = lpips_network(net, backbone, heads, dev)
    with torch.inference_mode():
        return float(model(x * 2 - 1, x2 * 2 - 1)[0])


@METRIC_REGISTRY.register()
def calculate_lpips_pt(img: torch.Tensor, img2: torch.Tensor, crop_border: int = 0, net: str = 'alex',
                       backbone=None, heads=None, **kwargs) -> torch.Tensor:
    """LPIPS v0.1 per image of two RGB batches B x 3 x H x W in [0, 1] (``img`` restored, ``img2`` GT), computed
    on their device; returns a float64 tensor (B,). Arguments as :func:`calculate_lpips`."""
    check_pair_pt(img, img2, 'calculate_lpips_pt')
    model = lpips_network(net, backbone, heads, img.device)
    x, x2 = crop_pt(img, crop_border).float(), crop_pt(img2, crop_border).float()
    with torch.inference_mode():
        return model(x * 2 - 1, x2 * 2 - 1).double()


def _preflight(net: str = 'alex', backbone=None, heads=None, **kwargs) -> None:
    """Check, before a run starts, that the files LPIPS will need are there (reads nothing)."""
    spec = _check_net(net)
    check_weight_arg(backbone, spec['file'], f'LPIPS (net={net})')
    check_weight_arg(heads, locate.LPIPS_HEADS[net], f'LPIPS (net={net})')


for _fn in (calculate_lpips, calculate_lpips_pt):
    _fn.better = 'lower'
    _fn.preflight = _preflight
