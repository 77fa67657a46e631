"""DeepLabV3+ with segmentation-models-pytorch 0.6.0's constructor, defaults and state-dict layout.

:class:`DeepLabV3Plus` is smp's ``DeepLabV3Plus`` on the ResNet encoders of :mod:`desra.archs.resnet_arch`
(``resnet18`` / ``34`` / ``50`` / ``101``), written without smp, timm or torchvision: its submodule names and
state-dict keys are smp's, so a checkpoint trained with smp loads strictly (and the other way round).

Structure (``BN`` = BatchNorm2d, ``sep(k, d)`` = ``SeparableConv2d``: a bias-free depthwise ``k x k`` conv with
dilation ``d`` (keys ``.0``) then a bias-free pointwise 1 x 1 conv (keys ``.1``); ``C`` = ``decoder_channels``,
``E`` = channels of the last encoder feature, ``L`` = channels of the stride-4 ``layer1`` feature (64 for
resnet18/34, 256 for resnet50/101); default ``encoder_depth`` 5, output stride 16)::

    encoder                         ResNetEncoder, features [x, H/2, H/4 (L ch), H/8, H/16, H/16 (E ch)]
    decoder.aspp.0                  ASPP on the last feature (E -> C):
        convs.0                     1x1 conv, BN, ReLU                         (keys convs.0.0 / .0.1)
        convs.1..3                  3x3 at atrous rates r1, r2, r3 (padding = rate), BN, ReLU:
                                    sep(3, r) when separable (convs.N.0.0 / .0.1, BN convs.N.1),
                                    else one conv (convs.N.0, BN convs.N.1)
        convs.4                     global average pool, 1x1 conv, BN, ReLU (convs.4.1 / .4.2), then
                                    bilinear (align_corners=False) back to the feature size
        project                     concat of the 5 branches (5C) -> 1x1 conv, BN, ReLU, Dropout(p)
    decoder.aspp.1, .2, .3          sep(3, 1) C -> C (always separable), BN, ReLU
    decoder.up                      bilinear x4 (x2 when output stride 8 or encoder_depth 3), align_corners=True
    decoder.block1                  1x1 conv L -> 48, BN, ReLU on the layer1 feature (H/4)
    decoder.block2                  concat [ASPP (C), block1 (48)] -> sep(3, 1) to C, BN, ReLU    (H/4)
    segmentation_head.0             1x1 conv C -> classes, with bias
    segmentation_head.1             bilinear x upsampling (align_corners=True; Identity when upsampling is 1)
    segmentation_head.2             activation (None / 'identity', 'sigmoid', 'softmax2d', 'softmax',
                                    'logsoftmax', 'tanh', 'argmax', 'argmax2d', 'clamp' or a callable, smp's set)
    classification_head             only with ``aux_params``: pool, flatten, dropout, Linear (keys .3), activation

``encoder_depth`` 3 or 4 stops the encoder after ``layer2`` / ``layer3`` (the ASPP then reads 128/512 or
256/1024 channels), but ``layer3`` / ``layer4`` stay in the state dict, as in smp.

Input / output: ``B x in_channels x H x W`` -> ``B x classes x H x W`` logits (activation None), or
``(masks, labels)`` with ``aux_params``. ``H`` and ``W`` must be multiples of the encoder's output stride
(``min(encoder_output_stride, 2 ** encoder_depth)``), otherwise a one-line ``RuntimeError`` (smp's message) names
the size, the divisor and the padded size; the check is skipped under tracing, scripting and ``torch.compile``,
like smp's.

Initialisation as in smp 0.6.0, whose DeepLabV3Plus does not call its ``initialize()``: the encoder has
torchvision's ResNet initialisation (or the given weights), the decoder and heads PyTorch's default init.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from desra.archs.resnet_arch import ResNetEncoder
from desra.registry import ARCH_REGISTRY

__all__ = ['DeepLabV3Plus', 'DeepLabV3PlusDecoder', 'ASPP', 'SeparableConv2d', 'SegmentationHead',
           'ClassificationHead', 'Activation']

HIGHRES_OUT_CHANNELS = 48  # the layer1 projection of DeepLabV3+ (the paper's choice, smp's constant)


class SeparableConv2d(nn.Sequential):
    """Depthwise ``k x k`` conv (``groups=in_channels``, no bias) followed by a pointwise 1 x 1 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias))


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


class ASPPConv(nn.Sequential):
    """3 x 3 conv at dilation ``rate`` (padding ``rate``, no bias), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__(*_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                                  bias=False), out_channels))


class ASPPSeparableConv(nn.Sequential):
    """Separable 3 x 3 conv at dilation ``rate`` (padding ``rate``, no bias), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__(*_conv_bn_relu(SeparableConv2d(in_channels, out_channels, 3, padding=dilation,
                                                        dilation=dilation, bias=False), out_channels))


class ASPPPooling(nn.Sequential):
    """Image pooling branch: global average, 1 x 1 conv, BN, ReLU, bilinear back (``align_corners=False``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                                                 out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for m in self:
            x = m(x)
        return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1 x 1, three atrous 3 x 3 and image pooling branches, then a projection."""

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Iterable[int], separable: bool,
                 dropout: float):
        super().__init__()
        rates = tuple(atrous_rates)
        if len(rates) != 3:
            raise ValueError(f'decoder_atrous_rates: expected 3 dilation rates, got {list(rates)}')
        branch = ASPPSeparableConv if separable else ASPPConv
        self.convs = nn.ModuleList(
            [nn.Sequential(*_conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels))]
            + [branch(in_channels, out_channels, int(r)) for r in rates]
            + [ASPPPooling(in_channels, out_channels)])
        self.project = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False), out_channels),
            nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + separable conv on the last feature, upsampled and fused with the projected ``layer1`` feature.

    ``forward(features)`` takes the encoder's list and returns ``B x out_channels x H/4 x W/4``.
    """

    def __init__(self, encoder_channels: list[int], encoder_depth: int, out_channels: int,
                 atrous_rates: Iterable[int], output_stride: int, aspp_separable: bool, aspp_dropout: float):
        super().__init__()
        if encoder_depth < 3:
            raise ValueError(f'Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got {encoder_depth}.')
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], out_channels, atrous_rates, separable=aspp_separable, dropout=aspp_dropout),
            *_conv_bn_relu(SeparableConv2d(out_channels, out_channels, 3, padding=1, bias=False), out_channels))
        scale = 4 if output_stride == 16 and encoder_depth > 3 else 2
        self.up = nn.Upsample(scale_factor=scale, mode='bilinear', align_corners=True)
        self.block1 = nn.Sequential(*_conv_bn_relu(
            nn.Conv2d(encoder_channels[2], HIGHRES_OUT_CHANNELS, 1, bias=False), HIGHRES_OUT_CHANNELS))
        self.block2 = nn.Sequential(*_conv_bn_relu(
            SeparableConv2d(out_channels + HIGHRES_OUT_CHANNELS, out_channels, 3, padding=1, bias=False),
            out_channels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        aspp = self.up(self.aspp(features[-1]))
        return self.block2(torch.cat([aspp, self.block1(features[2])], dim=1))


class _ArgMax(nn.Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(x, dim=self.dim)


class _Clamp(nn.Module):
    def __init__(self, min=0, max=1):
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min, self.max)


class Activation(nn.Module):
    """smp's activation by name: None / 'identity', 'sigmoid', 'softmax2d' (over channels), 'softmax',
    'logsoftmax', 'tanh', 'argmax', 'argmax2d', 'clamp' (to [0, 1]), or a callable building a module."""

    def __init__(self, name, **params):
        super().__init__()
        if name is None or name == 'identity':
            self.activation = nn.Identity(**params)
        elif name == 'sigmoid':
            self.activation = nn.Sigmoid()
        elif name == 'softmax2d':
            self.activation = nn.Softmax(dim=1, **params)
        elif name == 'softmax':
            self.activation = nn.Softmax(**params)
        elif name == 'logsoftmax':
            self.activation = nn.LogSoftmax(**params)
        elif name == 'tanh':
            self.activation = nn.Tanh()
        elif name == 'argmax':
            self.activation = _ArgMax(**params)
        elif name == 'argmax2d':
            self.activation = _ArgMax(dim=1, **params)
        elif name == 'clamp':
            self.activation = _Clamp(**params)
        elif callable(name):
            self.activation = name(**params)
        else:
            raise ValueError(f'Activation should be callable/sigmoid/softmax/logsoftmax/tanh/argmax/argmax2d/clamp/'
                             f'None; got {name}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)


class SegmentationHead(nn.Sequential):
    """Conv (with bias, padding ``k // 2``) to the classes, bilinear x ``upsampling`` (align_corners), activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation=None,
                 upsampling: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.Upsample(scale_factor=upsampling, mode='bilinear', align_corners=True) if upsampling > 1
            else nn.Identity(),
            Activation(activation))


class ClassificationHead(nn.Sequential):
    """Auxiliary image-level head: global avg/max pool, flatten, dropout, Linear (key ``.3``), activation."""

    def __init__(self, in_channels: int, classes: int, pooling: str = 'avg', dropout: float = 0.2, activation=None):
        if pooling not in ('max', 'avg'):
            raise ValueError(f"Pooling should be one of ('max', 'avg'), got {pooling}.")
        super().__init__(
            nn.AdaptiveAvgPool2d(1) if pooling == 'avg' else nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Dropout(p=dropout, inplace=True) if dropout else nn.Identity(),
            nn.Linear(in_channels, classes, bias=True),
            Activation(activation))


@torch.jit.unused
def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except Exception:  # very old torch
        return False


_AUX_KEYS = ('classes', 'pooling', 'dropout', 'activation')


@ARCH_REGISTRY.register()
class DeepLabV3Plus(nn.Module):
    """smp 0.6.0's ``DeepLabV3Plus`` (see the module docstring for the structure and the key layout).

    Args:
        encoder_name: ``'resnet18'``, ``'resnet34'`` (default), ``'resnet50'`` or ``'resnet101'``.
        encoder_depth: encoder stages used, 3, 4 or 5.
        encoder_weights: None (random; smp's default ``'imagenet'`` cannot be downloaded here), or the path of a
            torchvision-layout ResNet file (e.g. ``resnet34-b627a593.pth``; ``fc.*`` ignored) or such a state dict.
        encoder_output_stride: 16 (``layer4`` dilated by 2) or 8 (``layer3`` by 2, ``layer4`` by 4).
        decoder_channels: channels of the ASPP and the decoder (256).
        decoder_atrous_rates: the three ASPP dilation rates ((12, 24, 36)).
        decoder_aspp_separable: separable (depthwise + pointwise) atrous convs in the ASPP (True).
        decoder_aspp_dropout: dropout after the ASPP projection (0.5).
        in_channels: input channels (3); other counts change ``encoder.conv1`` as smp does.
        classes: output channels (1).
        activation: applied to the output (None: logits); see :class:`Activation`.
        upsampling: final bilinear upsampling of the stride-4 decoder output (4).
        aux_params: None, or a dict with ``classes`` and optionally ``pooling`` ('avg'), ``dropout`` (0.2),
            ``activation``: adds smp's classification head on the last encoder feature.

    Wrong values raise a one-line ``ValueError`` (reported with its YAML key path when built from options).
    """

    requires_divisible_input_shape = True

    def __init__(self, encoder_name: str = 'resnet34', encoder_depth: int = 5, encoder_weights=None,
                 encoder_output_stride: int = 16, decoder_channels: int = 256,
                 decoder_atrous_rates: Iterable[int] = (12, 24, 36), decoder_aspp_separable: bool = True,
                 decoder_aspp_dropout: float = 0.5, in_channels: int = 3, classes: int = 1, activation=None,
                 upsampling: int = 4, aux_params: dict | None = None):
        super().__init__()
        if encoder_output_stride not in (8, 16):
            raise ValueError(f'DeeplabV3Plus support output stride 8 or 16, got {encoder_output_stride}.')
        self.encoder = ResNetEncoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                     weights=encoder_weights, output_stride=encoder_output_stride)
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=self.encoder.out_channels, encoder_depth=encoder_depth, out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates, output_stride=encoder_output_stride,
            aspp_separable=decoder_aspp_separable, aspp_dropout=decoder_aspp_dropout)
        self.segmentation_head = SegmentationHead(decoder_channels, classes, kernel_size=1, activation=activation,
                                                  upsampling=upsampling)
        if aux_params is not None:
            if not isinstance(aux_params, Mapping) or 'classes' not in aux_params:
                raise ValueError(f'aux_params: a mapping with classes (and optionally pooling, dropout, activation), '
                                 f'got {aux_params!r}')
            unknown = [k for k in aux_params if k not in _AUX_KEYS]
            if unknown:
                raise ValueError(f'aux_params.{unknown[0]}: unknown key; accepted: {", ".join(_AUX_KEYS)}')
            self.classification_head = ClassificationHead(self.encoder.out_channels[-1], **aux_params)
        else:
            self.classification_head = None
        self.name = f'deeplabv3plus-{encoder_name}'
        # below depth 5, layer3 / layer4 exist (smp's state dict) but take no part in the forward: DDP must know
        self.has_unused_parameters = encoder_depth < 5

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise smp's one-line ``RuntimeError`` unless H and W are multiples of ``encoder.output_stride``."""
        h, w = x.shape[-2:]
        s = self.encoder.output_stride
        if h % s or w % s:
            new_h, new_w = -(-h // s) * s, -(-w // s) * s
            raise RuntimeError(f'Wrong input shape height={h}, width={w}. Expected image height and width '
                               f'divisible by {s}. Consider pad your images to shape ({new_h}, {new_w}).')

    def forward(self, x: torch.Tensor):
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or _is_compiling()):
            self.check_input_shape(x)
        features = self.encoder(x)
        masks = self.segmentation_head(self.decoder(features))
        if self.classification_head is not None:
            return masks, self.classification_head(features[-1])
        return masks
