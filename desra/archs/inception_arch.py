"""The InceptionV3 of FID (pytorch-fid's port of the TensorFlow FID network), without torchvision.

:class:`FIDInceptionV3` is the network of pytorch-fid's ``FIDInceptionA`` ... ``FIDInceptionE_2`` blocks, laid
out so that its submodule names and state-dict keys are exactly those of torchvision's
``Inception3(num_classes=1008, aux_logits=False)``: pytorch-fid's weights file loads strictly.

Structure (``BasicConv2d`` = Conv2d without bias -> BatchNorm2d(eps=0.001) -> ReLU; ``k`` kernel, ``s`` stride,
``p`` padding; feature maps for a 299 x 299 input)::

    Conv2d_1a_3x3  3->32 k3 s2                    149 x 149
    Conv2d_2a_3x3  32->32 k3                      147 x 147
    Conv2d_2b_3x3  32->64 k3 p1                   147 x 147
    maxpool1       3/2                             73 x 73
    Conv2d_3b_1x1  64->80 k1                       73 x 73
    Conv2d_4a_3x3  80->192 k3                      71 x 71
    maxpool2       3/2                             35 x 35
    Mixed_5b/5c/5d InceptionA(192/256/288, pool_features 32/64/64) -> 256/288/288 channels, 35 x 35
    Mixed_6a       InceptionB(288) -> 768, 17 x 17
    Mixed_6b..6e   InceptionC(768, channels_7x7 128/160/160/192) -> 768, 17 x 17
    Mixed_7a       InceptionD(768) -> 1280, 8 x 8
    Mixed_7b       InceptionE(1280, pool 'avg') -> 2048, 8 x 8
    Mixed_7c       InceptionE(2048, pool 'max') -> 2048, 8 x 8
    avgpool        adaptive average to 1 x 1 -> 2048 features ("pool3", the FID features)
    fc             Linear(2048, 1008): in the state dict only, not used for the features

The FID variant differs from torchvision's ImageNet network in two places: every 3 x 3 average pool in front of a
``branch_pool`` conv (InceptionA, InceptionC, Mixed_7b) excludes the zero padding from the average
(``count_include_pad=False``), and Mixed_7c pools that branch with a 3 x 3 *max* pool (stride 1, padding 1).

Input / output convention (pytorch-fid's ``InceptionV3`` wrapper with ``resize_input`` and ``normalize_input``):
``x`` is an RGB ``B x 3 x H x W`` tensor with values in [0, 1]; it is always resized to 299 x 299 with
``F.interpolate(mode='bilinear', align_corners=False)`` (also when it already is 299 x 299), mapped to [-1, 1] as
``2 x - 1``, and ``forward`` returns ``B x 2048`` float32 pool3 features. The module is frozen and stays in eval
mode (``.train()`` does not switch it, so BatchNorm always uses its running statistics).

Weights: ``pt_inception-2015-12-05-6726825d.pth`` from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(``python scripts/download_pretrained.py --source official --only fid_inception``); :func:`load_fid_inception`
finds it like every other pretrained file (:mod:`desra.weights.locate`) and never falls back to random weights.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from desra.errors import CheckpointError
from desra.registry import ARCH_REGISTRY
from desra.weights.locate import FID_INCEPTION, find_weight_file, load_backbone_weights

__all__ = ['FIDInceptionV3', 'load_fid_inception', 'FID_FEATURE_DIM', 'FID_INPUT_SIZE']

FID_FEATURE_DIM = 2048
FID_INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """``relu(bn(conv(x)))``: Conv2d without bias, BatchNorm2d with eps 0.001 (torchvision's ``BasicConv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 mean over the valid (unpadded) neighbours, stride 1: the FID network's ``count_include_pad=False``."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: cat[1x1 (64), 5x5 (64), double 3x3 (96), avg-pool + 1x1 (pool_features)]."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: cat[3x3 s2 (384), double 3x3 s2 (96), max-pool 3/2 (in_channels)]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7 x 7 convs: cat[1x1, 7x7, double 7x7, avg-pool + 1x1], 192 channels each."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: cat[1x1 + 3x3 s2 (320), 1x1 + 1x7 + 7x1 + 3x3 s2 (192), max-pool 3/2 (in_channels)]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8 x 8 block: cat[1x1 (320), 3x3 split into 1x3 | 3x1 (2 x 384), double 3x3 split (2 x 384), pool + 1x1 (192)].

    ``pool='avg'`` (Mixed_7b): 3 x 3 average pool with ``count_include_pad=False``; ``pool='max'`` (Mixed_7c):
    3 x 3 max pool, stride 1, padding 1 (the TF graph's quirk that pytorch-fid reproduces).
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ('avg', 'max'):
            raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(y), self.branch3x3_2b(y)], 1)
        z = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(z), self.branch3x3dbl_3b(z)], 1)
        if self.pool == 'avg':
            pooled = _avg_pool_3x3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


@ARCH_REGISTRY.register()
class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 with torchvision's ``Inception3`` state-dict layout (see the module docstring).

    ``forward(x)``: RGB ``B x 3 x H x W`` in [0, 1] (any size) -> ``B x 2048`` float32 pool3 features.

    The parameters are initialised (He-normal convolutions, identity BatchNorm) so that a *random* network, as the
    tests use, gives O(1) features; real use loads pytorch-fid's file with :func:`load_fid_inception`.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool='avg')
        self.Mixed_7c = InceptionE(2048, pool='max')
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(FID_FEATURE_DIM, 1008)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'FIDInceptionV3':
        """Always eval mode: the FID network is a fixed measuring instrument."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'FIDInceptionV3 expects an RGB B x 3 x H x W tensor in [0, 1], got shape '
                             f'{tuple(x.shape)}')
        x = x.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode='bilinear', align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool1(x)
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(self.avgpool(x), 1)


def _build(weights, device: torch.device) -> FIDInceptionV3:
    net = FIDInceptionV3()
    load_backbone_weights(net, weights, FID_INCEPTION, 'FID', prefix='')
    return net.to(device).eval()


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, device: str) -> FIDInceptionV3:
    return _build(Path(path), torch.device(device))


def load_fid_inception(weights=None, device=None) -> FIDInceptionV3:
    """The frozen FID network with pytorch-fid's weights, built once per (file, device) and then reused.

    Args:
        weights: None (search ``pt_inception-2015-12-05-6726825d.pth`` in ``$DESRA_FID_INCEPTION_WEIGHTS``,
            ``pretrained/``, ``experiments/pretrained_models/``, torch hub's cache), a path, a state dict, or
            ``'random'`` (the random initialisation; tests only).
        device: where the network lives (default CPU).

    Returns:
        The cached :class:`FIDInceptionV3` for a file (keyed by resolved path, mtime, size and device; callers must
        not modify it); a new one for a state dict or ``'random'``.

    Raises:
        CheckpointError: the file is missing (one line naming the file and the ``pretrained`` folder) or is not
            that network's state dict (one line listing the missing keys / wrong shapes).
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    if isinstance(weights, Mapping) or (isinstance(weights, str) and weights == 'random'):
        return _build(weights, device)
    path = find_weight_file(FID_INCEPTION, needed_by='FID') if weights is None else Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f'{path}: file not found (expected {FID_INCEPTION.what}, {FID_INCEPTION.filename}; '
                              f'get it with `{FID_INCEPTION.how}`)')
    resolved = path.resolve()
    st = resolved.stat()
    return _load_cached(str(resolved), st.st_mtime_ns, st.st_size, str(device))
