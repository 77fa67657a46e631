"""RRDBNet, the ESRGAN / Real-ESRGAN / LDL generator.

Parameter names follow BasicSR's ``RRDBNet`` exactly, so official ESRGAN, Real-ESRGAN (``RealESRGAN_x4plus``,
``RealESRGAN_x2plus``, ...) and LDL checkpoints load with ``strict=True``:

``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
``conv_last`` (each with ``.weight`` and ``.bias``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from desra.archs.arch_util import default_init_weights, make_layer
from desra.errors import ConfigError
from desra.registry import ARCH_REGISTRY


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; returns ``x + 0.2 * conv5(...)``.

    Args:
        num_feat: channels of the input and output.
        num_grow_ch: channels added by each of conv1..conv4 (the "growth" of the dense concatenation).
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        # Small init keeps each block near identity, so the 69 stacked dense blocks start stable.
        default_init_weights([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        # Residual scaling 0.2 is part of the trained function; pretrained weights rely on it.
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock` (``rdb1..rdb3``), ``x + 0.2 * out``."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * 0.2 + x


@ARCH_REGISTRY.register()
class RRDBNet(nn.Module):
    """ESRGAN generator (BasicSR ``RRDBNet``), upscaling by 1, 2 or 4.

    The trunk always upsamples x4 (two nearest-neighbour x2 steps, each followed by ``conv_up{1,2}`` and
    LeakyReLU 0.2). For ``scale`` 2 and 1 the input is first ``pixel_unshuffle``-d by 2 / 4, so
    ``conv_first`` takes ``num_in_ch * 4`` / ``num_in_ch * 16`` channels, as in BasicSR and the official
    ``RealESRGAN_x2plus`` checkpoint. Consequently the input height and width must be multiples of 2
    (scale 2) or 4 (scale 1); :func:`desra.inference.tiled_forward` can pad for you (``mod_pad``).

    Shapes: input ``B x num_in_ch x H x W``, output ``B x num_out_ch x H*scale x W*scale``.
    Values: images in [0, 1] (RGB for the released checkpoints); the output is not clamped.

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        scale: upscaling factor, 1, 2 or 4.
        num_feat: trunk width (64 in ESRGAN).
        num_block: number of RRDB blocks in ``body`` (23 in ESRGAN).
        num_grow_ch: growth channels of the dense blocks (32 in ESRGAN).

    ``RRDBNet(3, 3, 4, 64, 23, 32)`` has 16,697,987 parameters.
    """

    def __init__(self, num_in_ch: int, num_out_ch: int, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ConfigError(f"RRDBNet: scale must be 1, 2 or 4, got {scale!r}")
        self.scale = scale
        self.in_channels = num_in_ch  # of the image, before the pixel-unshuffle of scales 1 and 2
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(RRDB, num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def mod_pad(self) -> int:
        """Input height/width must be a multiple of this (1 for scale 4, 2 for scale 2, 4 for scale 1)."""
        return {4: 1, 2: 2, 1: 4}[self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 4:
            factor = self.mod_pad
            h, w = x.shape[-2:]
            if h % factor or w % factor:
                raise ValueError(f"RRDBNet(scale={self.scale}) needs input height and width divisible by "
                                 f"{factor}, got {h}x{w}; pad the input (tiled_forward(..., mod_pad={factor}))")
            feat = F.pixel_unshuffle(x, factor)
        else:
            feat = x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode='nearest')))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode='nearest')))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
