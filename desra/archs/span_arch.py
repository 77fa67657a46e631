"""SPAN, the Swift Parameter-free Attention Network (Wan et al., NTIRE 2024 efficient SR), in deploy form.

This is the *inference* form only: every ``Conv3XC`` of the paper is represented by the single 3x3 conv it
folds into after re-parameterisation, held in a small wrapper as ``eval_conv`` so that parameter names match
the released deploy checkpoints exactly and they load with ``strict=True``:

``conv_1.eval_conv``, ``block_{1..6}.c{1,2,3}_r.eval_conv``, ``conv_2.eval_conv``, ``conv_cat`` (1x1),
``upsampler.0`` (3x3 conv before the pixel shuffle), each with ``.weight`` and ``.bias``.

Why the training form is not included: during training a ``Conv3XC`` is a 1x1 skip conv (``sk``) in parallel
with a 1x1 -> 3x3 -> 1x1 chain (``conv.0/1/2``) with expanded hidden channels. All of it is linear, so after
training it is folded into one 3x3 kernel and bias (``eval_conv``). The folding is a many-to-one map: the
deploy checkpoints (e.g. ``shared/weights/spanx4_ch48.safetensors``) only hold the folded kernels, and
infinitely many training-form weight sets give the same folded kernel, so the ``sk`` / ``conv.*`` tensors
cannot be recovered from them. Fine-tuning the deploy form directly is possible (it is an ordinary conv net),
but it is not the over-parameterised training recipe of the paper.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from desra.registry import ARCH_REGISTRY


class FoldedConv3XC(nn.Module):
    """A re-parameterised ``Conv3XC``: one 3x3 conv, stride 1, padding 1, stored as ``eval_conv``.

    The wrapper exists only so the parameter path is ``<name>.eval_conv.weight`` as in the official
    deploy checkpoints. Shapes: ``B x c_in x H x W`` -> ``B x c_out x H x W``.
    """

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__()
        self.eval_conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block.

    ``o1 = SiLU(c1_r(u))``, ``o2 = SiLU(c2_r(o1))``, ``o3 = c3_r(o2)``,
    ``out = (o3 + u) * (sigmoid(o3) - 0.5)``: the attention map is computed from the features themselves,
    with no extra parameters (the "parameter-free" of the name).

    Returns ``(out, o1)``. ``o1`` is taken *after* the SiLU: the official code applies the activation in
    place, so the tensor it later concatenates is post-activation, and the released weights rely on that.
    Shapes: ``B x C x H x W`` in, both outputs ``B x C x H x W``.
    """

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.c1_r = FoldedConv3XC(channels, channels, bias=bias)
        self.c2_r = FoldedConv3XC(channels, channels, bias=bias)
        self.c3_r = FoldedConv3XC(channels, channels, bias=bias)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1 = F.silu(self.c1_r(u))
        o2 = F.silu(self.c2_r(o1))
        o3 = self.c3_r(o2)
        # sigmoid - 0.5 is an odd gate in (-0.5, 0.5): small responses are suppressed symmetrically.
        out = (o3 + u) * (torch.sigmoid(o3) - 0.5)
        return out, o1


@ARCH_REGISTRY.register()
class SPAN(nn.Module):
    """SPAN generator (deploy / re-parameterised form), upscaling by ``upscale``.

    Forward: ``x' = (x - rgb_mean) * img_range``; ``f0 = conv_1(x')``; ``b1..b6`` = six chained
    :class:`SPAB` blocks; ``y = PixelShuffle(upscale)(upsampler.0(conv_cat(cat[f0, conv_2(b6), b1, o1_6])))``
    where ``o1_6`` is block_6's post-SiLU first activation. The mean is *not* added back at the end (as in the
    official code; the released weights were trained that way), so the output is directly the image.

    Shapes: input ``B x num_in_ch x H x W``, output ``B x num_out_ch x H*upscale x W*upscale``; any H, W.
    Values: images in [0, 1] (RGB for the released checkpoints); the output is not clamped.

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        feature_channels: trunk width C (48 for ``spanx4_ch48``, 52 for ``spanx4_ch52``).
        upscale: integer upscaling factor (the pixel shuffle factor); ``upsampler.0`` has
            ``num_out_ch * upscale**2`` output channels.
        img_range: the centred input is multiplied by this (255 for the released models).
        rgb_mean: per-channel mean subtracted from the input, ``num_in_ch`` values (or one value for all
            channels); ``None`` means zero mean. Kept as a non-persistent buffer, so it is not part of the
            state dict (the checkpoints do not store it either).
        bias: whether the SPAB convs have a bias (True in the released models). ``conv_1``, ``conv_2``,
            ``conv_cat`` and ``upsampler.0`` always have one, as in the official code.

    ``SPAN(3, 3, 48, 4)`` has 426,288 parameters; ``SPAN(3, 3, 52, 4)`` 498,208.
    """

    def __init__(self, num_in_ch: int, num_out_ch: int, feature_channels: int = 48, upscale: int = 4,
                 img_range: float = 255.0, rgb_mean: Sequence[float] | None = (0.4488, 0.4371, 0.4040),
                 bias: bool = True):
        super().__init__()
        for name, val in (('num_in_ch', num_in_ch), ('num_out_ch', num_out_ch),
                          ('feature_channels', feature_channels), ('upscale', upscale)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"SPAN: {name} must be a positive integer, got {val!r}")
        if rgb_mean is None:
            mean = torch.zeros(1, num_in_ch, 1, 1)
        else:
            values = [float(v) for v in rgb_mean]
            if len(values) == 1:
                values = values * num_in_ch
            if len(values) != num_in_ch:
                raise ValueError(f"SPAN: rgb_mean has {len(values)} values but num_in_ch is {num_in_ch}; give "
                                 f"{num_in_ch} values, one value, or None (zero mean)")
            mean = torch.tensor(values, dtype=torch.float32).view(1, num_in_ch, 1, 1)
        self.img_range = float(img_range)
        self.upscale = upscale
        # Not persistent: the deploy checkpoints hold only conv tensors, and strict loading must not ask for it.
        self.register_buffer('mean', mean, persistent=False)

        c = feature_channels
        self.conv_1 = FoldedConv3XC(num_in_ch, c)
        self.block_1 = SPAB(c, bias=bias)
        self.block_2 = SPAB(c, bias=bias)
        self.block_3 = SPAB(c, bias=bias)
        self.block_4 = SPAB(c, bias=bias)
        self.block_5 = SPAB(c, bias=bias)
        self.block_6 = SPAB(c, bias=bias)
        self.conv_2 = FoldedConv3XC(c, c)
        self.conv_cat = nn.Conv2d(4 * c, c, kernel_size=1, bias=True)
        self.upsampler = nn.Sequential(nn.Conv2d(c, num_out_ch * upscale ** 2, kernel_size=3, padding=1),
                                       nn.PixelShuffle(upscale))

    @property
    def scale(self) -> int:
        """The upscaling factor (alias of ``upscale``, the name other generators use)."""
        return self.upscale

    @property
    def mod_pad(self) -> int:
        """Any input size works (no pixel-unshuffle): always 1."""
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) * self.img_range
        f0 = self.conv_1(x)
        b1, _ = self.block_1(f0)
        b, _ = self.block_2(b1)
        b, _ = self.block_3(b)
        b, _ = self.block_4(b)
        b, _ = self.block_5(b)
        b6, o1_6 = self.block_6(b)
        feat = self.conv_cat(torch.cat([f0, self.conv_2(b6), b1, o1_6], dim=1))
        return self.upsampler(feat)
