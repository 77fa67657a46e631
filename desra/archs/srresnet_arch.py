"""MSRResNet: BasicSR's modified SRResNet (SRResNet without batch norm), the SRResNet / SRGAN / MSRGAN generator.

Layout and parameter names are BasicSR's, so its ``net_g`` checkpoints load with ``strict=True``:
``conv_first`` (3x3, ``num_in_ch -> num_feat``), ``body.{i}.conv1`` / ``body.{i}.conv2`` (``num_block`` residual
blocks ``x + conv2(relu(conv1(x)))`` without BN), then upsampling by pixel shuffle: ``upconv1`` (``num_feat ->
num_feat * s^2`` with s = 2 or 3 for x2 / x3) or ``upconv1`` + ``upconv2`` (each ``num_feat -> 4 num_feat``, x2
twice for x4), ``conv_hr``, ``conv_last``. LeakyReLU 0.1 after ``conv_first``, each upsampling and ``conv_hr``;
the output adds the bilinearly upsampled input (``align_corners=False``), so the network learns a residual.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from desra.archs.arch_util import default_init_weights, make_layer
from desra.registry import ARCH_REGISTRY


class ResidualBlockNoBN(nn.Module):
    """``x + res_scale * conv2(relu(conv1(x)))``, 3x3 convs with bias; init scaled by 0.1 unless ``pytorch_init``."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1, pytorch_init: bool = False):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        if not pytorch_init:
            default_init_weights([self.conv1, self.conv2], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


@ARCH_REGISTRY.register()
class MSRResNet(nn.Module):
    """Modified SRResNet (see the module notes). Input ``B x num_in_ch x h x w``, output ``B x num_out_ch x sh x sw``.

    Args:
        num_in_ch, num_out_ch: image channels (3).
        num_feat: feature channels (64).
        num_block: residual blocks (16).
        upscale: 2, 3 or 4.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4):
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f'upscale: MSRResNet supports 2, 3 or 4, got {upscale!r}')
        self.upscale = upscale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat)
        if upscale in (2, 3):
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)
        default_init_weights([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if upscale == 4:
            default_init_weights(self.upconv2, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=self.upscale, mode='bilinear', align_corners=False)
