"""GAN discriminators: BasicSR's ``VGGStyleDiscriminator`` (ESRGAN) and Real-ESRGAN's ``UNetDiscriminatorSN``.

Parameter names match the originals so their checkpoints (e.g. ``RealESRGAN_x4plus_netD.pth``,
ESRGAN ``net_d`` files) load with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from desra.errors import ConfigError
from desra.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator (BasicSR ``VGGStyleDiscriminator``), one realness logit per image.

    Layout (BasicSR key names): ``conv0_0`` (3x3, bias) and ``conv0_1`` (4x4 stride 2, no bias) + ``bn0_1``;
    then for k = 1..4 (and 5 when ``input_size`` is 256) ``convk_0`` (3x3) + ``bnk_0`` and ``convk_1``
    (4x4 stride 2) + ``bnk_1``, all without bias; channels num_feat -> 2x -> 4x -> 8x -> 8x (-> 8x);
    then ``linear1`` (``num_feat*8*4*4 -> 100``) and ``linear2`` (``100 -> 1``). LeakyReLU 0.2 throughout.

    Shapes: input ``B x num_in_ch x input_size x input_size`` (exactly), output ``B x 1`` (raw logits).

    Args:
        num_in_ch: input channels (3 for RGB).
        num_feat: channels of the first stage (64 in ESRGAN).
        input_size: 128 or 256; the spatial size the discriminator accepts.
    """

    def __init__(self, num_in_ch: int, num_feat: int, input_size: int = 128):
        super().__init__()
        if input_size not in (128, 256):
            raise ConfigError(f"VGGStyleDiscriminator: input_size must be 128 or 256, got {input_size!r}")
        self.input_size = input_size

        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(num_feat, affine=True)

        # (in, out) channels of stages 1..5; stage 5 only exists for 256x256 inputs.
        stages = [(num_feat, num_feat * 2), (num_feat * 2, num_feat * 4), (num_feat * 4, num_feat * 8),
                  (num_feat * 8, num_feat * 8)]
        if input_size == 256:
            stages.append((num_feat * 8, num_feat * 8))
        self.num_stages = len(stages)
        for k, (c_in, c_out) in enumerate(stages, start=1):
            setattr(self, f'conv{k}_0', nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))
            setattr(self, f'bn{k}_0', nn.BatchNorm2d(c_out, affine=True))
            setattr(self, f'conv{k}_1', nn.Conv2d(c_out, c_out, 4, 2, 1, bias=False))
            setattr(self, f'bn{k}_1', nn.BatchNorm2d(c_out, affine=True))

        # Every stage halves the size, so the last feature map is always 4x4.
        self.linear1 = nn.Linear(num_feat * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"VGGStyleDiscriminator(input_size={self.input_size}) expects input of shape "
                             f"B x C x {self.input_size} x {self.input_size}, got {tuple(x.shape)}; "
                             f"crop patches to gt_size {self.input_size} or change input_size")
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))
        for k in range(1, self.num_stages + 1):
            feat = self.lrelu(getattr(self, f'bn{k}_0')(getattr(self, f'conv{k}_0')(feat)))
            feat = self.lrelu(getattr(self, f'bn{k}_1')(getattr(self, f'conv{k}_1')(feat)))
        feat = feat.flatten(1)
        feat = self.lrelu(self.linear1(feat))
        return self.linear2(feat)


@ARCH_REGISTRY.register()
class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation; one realness logit per pixel.

    Layout (Real-ESRGAN key names): ``conv0`` plain 3x3 (with bias); ``conv1..conv3`` 4x4 stride 2 downsampling
    (channels x2 each); ``conv4..conv6`` 3x3 after bilinear x2 upsampling (skip-added to the encoder features
    when ``skip_connection``); ``conv7``, ``conv8`` 3x3; ``conv9`` plain 3x3 to 1 channel. ``conv1..conv8`` have
    no bias and use the hook form of :func:`torch.nn.utils.spectral_norm`, so their state-dict keys are
    ``convN.weight_orig``, ``convN.weight_u``, ``convN.weight_v`` as in ``RealESRGAN_x4plus_netD.pth``.

    Shapes: input ``B x num_in_ch x H x W`` with H and W multiples of 8, output ``B x 1 x H x W`` (logits).

    Args:
        num_in_ch: input channels (3 for RGB).
        num_feat: channels of the first level (64 in Real-ESRGAN).
        skip_connection: add encoder features to the decoder features (True in Real-ESRGAN).
    """

    def __init__(self, num_in_ch: int, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        sn = spectral_norm
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            # Three stride-2 levels: other sizes would make the skip additions fail with an opaque error.
            raise ValueError(f"UNetDiscriminatorSN expects input height and width divisible by 8, got {h}x{w}")
        act = lambda t: F.leaky_relu(t, negative_slope=0.2)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode='bilinear', align_corners=False)  # noqa: E731

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))

        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0

        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)


@ARCH_REGISTRY.register()
class VGGStyleDiscriminator128(VGGStyleDiscriminator):
    """LDL's / older BasicSR's name: :class:`VGGStyleDiscriminator` for 128 x 128 inputs (same parameter names)."""

    def __init__(self, num_in_ch: int, num_feat: int):
        super().__init__(num_in_ch, num_feat, input_size=128)


@ARCH_REGISTRY.register()
class VGGStyleDiscriminator256(VGGStyleDiscriminator):
    """:class:`VGGStyleDiscriminator` for 256 x 256 inputs (an extra stride-2 stage ``conv5_*``)."""

    def __init__(self, num_in_ch: int, num_feat: int):
        super().__init__(num_in_ch, num_feat, input_size=256)
