"""ResNet encoders of segmentation-models-pytorch (smp 0.6.0's ``ResNetEncoder``), without torchvision.

:class:`ResNetEncoder` is torchvision's ResNet (v1.5: the stride of a bottleneck is on its 3 x 3 conv) without
``avgpool`` and ``fc``, so its submodule names and state-dict keys are those of torchvision's ResNet minus
``fc.*``, and of smp's ``encoder.*`` once put in a model. ``BN`` = BatchNorm2d (eps 1e-5), every conv without
bias; ``k`` kernel, ``s`` stride, ``p`` padding; sizes for an ``H x W`` input::

    conv1 k7 s2 p3 (in_channels -> 64), bn1, relu    -> feature 1, 64 ch,            H/2
    maxpool k3 s2 p1, layer1 (64 planes, stride 1)   -> feature 2, 64 / 256 ch,      H/4
    layer2 (128 planes, stride 2)                    -> feature 3, 128 / 512 ch,     H/8
    layer3 (256 planes, stride 2)                    -> feature 4, 256 / 1024 ch,    H/16
    layer4 (512 planes, stride 2)                    -> feature 5, 512 / 2048 ch,    H/32

    resnet18 BasicBlock [2, 2, 2, 2]   resnet34 BasicBlock [3, 4, 6, 3]   (x / 64 channels: BasicBlock)
    resnet50 Bottleneck [3, 4, 6, 3]   resnet101 Bottleneck [3, 4, 23, 3] (x / 256 channels: Bottleneck)

A ``BasicBlock`` is ``conv1`` 3 x 3 (stride), ``bn1``, relu, ``conv2`` 3 x 3, ``bn2``; a ``Bottleneck`` is
``conv1`` 1 x 1, ``bn1``, ``conv2`` 3 x 3 (stride), ``bn2``, ``conv3`` 1 x 1 to 4 x planes, ``bn3``; both add
``downsample(x)`` = ``Sequential(conv 1 x 1 (stride), BN)`` (keys ``downsample.0`` / ``downsample.1``) when the
stride or the channel count changes (the first block of every layer but resnet18/34's layer1), then relu.

``forward`` returns smp's feature list ``[x, f1, ..., f_depth]`` (``depth`` 1..5 stages; feature 0 is the input
itself). All four layers are always built (and in the state dict), also when ``depth`` < 5 leaves some unused.

Output stride (smp's ``make_dilated``, applied to unused layers too): 16 turns every conv of ``layer4`` -- the
first block's strided conv, its downsample and the 1 x 1 convs included -- into stride 1, dilation 2, padding
``(k // 2) * 2``; 8 does the same with dilation 2 on ``layer3`` and dilation 4 on ``layer4``. Unlike torchvision's
``replace_stride_with_dilation``, the first block of a dilated layer is dilated too.

Input channels (smp's ``patch_first_conv``, after the weights are loaded): for ``in_channels`` != 3, ``conv1``
gets a freshly initialised ``64 x in_channels x 7 x 7`` weight (``nn.Conv2d.reset_parameters``) when no weights
were loaded; with loaded weights, 1 channel takes the sum of the 3 RGB filters, any other count repeats them
cyclically (channel ``i`` <- RGB channel ``i % 3``) scaled by ``3 / in_channels``.

Weights: torchvision-layout ImageNet files (``resnet18-f37072fd.pth``, ``resnet34-b627a593.pth``,
``resnet50-0676ba61.pth``, ``resnet101-63fe2227.pth`` from ``https://download.pytorch.org/models/``; torchvision's
``*_V2`` files have the same layout) given by path or as a state dict; ``fc.*`` is ignored. Nothing is downloaded:
smp's hub names (``'imagenet'``, ``'ssl'``, ``'swsl'``) raise a one-line error naming the file to fetch.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from desra.registry import ARCH_REGISTRY
from desra.weights.locate import PretrainedFile, load_backbone_weights

__all__ = ['ResNetEncoder', 'BasicBlock', 'Bottleneck', 'RESNET_ENCODERS', 'replace_strides_with_dilation',
           'patch_first_conv']

_URL = 'https://download.pytorch.org/models/'


class BasicBlock(nn.Module):
    """Two 3 x 3 convs with a residual: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1 x 1 reduce, 3 x 3 (carrying the stride), 1 x 1 expand to ``4 * planes``, with a residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


@dataclass(frozen=True)
class _ResNetSpec:
    block: type
    layers: tuple[int, int, int, int]
    out_channels: tuple[int, ...]    # smp's ``_out_channels``: input, then stages 1..5
    weights: PretrainedFile          # torchvision's ImageNet file, for messages


def _spec(name: str, block: type, layers, filename: str) -> _ResNetSpec:
    depth = name[len('resnet'):]
    c = block.expansion
    return _ResNetSpec(block, tuple(layers), (3, 64, 64 * c, 128 * c, 256 * c, 512 * c),
                       PretrainedFile(filename, f'DESRA_{name.upper()}_WEIGHTS',
                                      f"torchvision's ResNet-{depth} ImageNet weights",
                                      f'download {_URL}{filename}'))


#: The accepted encoder names (smp's names), with torchvision's block types, layer counts and ImageNet files.
RESNET_ENCODERS: dict[str, _ResNetSpec] = {
    'resnet18': _spec('resnet18', BasicBlock, (2, 2, 2, 2), 'resnet18-f37072fd.pth'),
    'resnet34': _spec('resnet34', BasicBlock, (3, 4, 6, 3), 'resnet34-b627a593.pth'),
    'resnet50': _spec('resnet50', Bottleneck, (3, 4, 6, 3), 'resnet50-0676ba61.pth'),
    'resnet101': _spec('resnet101', Bottleneck, (3, 4, 23, 3), 'resnet101-63fe2227.pth'),
}

#: smp's names for its hub weights, which cannot be downloaded here.
_HUB_WEIGHT_NAMES = ('imagenet', 'ssl', 'swsl')


def replace_strides_with_dilation(module: nn.Module, dilation_rate: int) -> None:
    """smp's rule: every ``nn.Conv2d`` inside ``module`` gets stride 1, dilation ``dilation_rate`` and padding
    ``(k // 2) * dilation_rate`` (1 x 1 convs included; their padding stays 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            m.stride = (1, 1)
            m.dilation = (dilation_rate, dilation_rate)
            m.padding = ((kh // 2) * dilation_rate, (kh // 2) * dilation_rate)


def patch_first_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool, default_in_channels: int = 3) -> None:
    """Give ``conv`` (the stem conv, built for ``default_in_channels``) ``in_channels`` inputs, smp's way.

    Not ``pretrained``: a new weight initialised by ``nn.Conv2d.reset_parameters``. ``pretrained`` and 1 channel:
    the sum of the old filters over their input channels. Otherwise: channel ``i`` copies old channel
    ``i % default_in_channels``, and the whole weight is scaled by ``default_in_channels / in_channels``.
    """
    weight = conv.weight.detach()
    conv.in_channels = in_channels
    shape = (conv.out_channels, in_channels // conv.groups, *conv.kernel_size)
    if not pretrained:
        conv.weight = nn.Parameter(torch.empty(shape, dtype=weight.dtype, device=weight.device))
        conv.reset_parameters()
    elif in_channels == 1:
        conv.weight = nn.Parameter(weight.sum(1, keepdim=True))
    else:
        idx = torch.arange(in_channels, device=weight.device) % default_in_channels
        conv.weight = nn.Parameter(weight[:, idx] * (default_in_channels / in_channels))


def _hub_weights_error(name: str, weights: str) -> ValueError:
    f = RESNET_ENCODERS[name].weights.filename
    return ValueError(f"encoder_weights '{weights}': smp's hub weights cannot be downloaded here; download "
                      f"torchvision's {f} ({_URL}{f}) and pass its path as encoder_weights")


@ARCH_REGISTRY.register()
class ResNetEncoder(nn.Module):
    """smp's ResNet encoder: torchvision's ResNet without ``avgpool`` / ``fc``, returning a feature list.

    Args:
        name: ``'resnet18'``, ``'resnet34'``, ``'resnet50'`` or ``'resnet101'``.
        in_channels: input channels (see the module docstring for how ``conv1`` changes when not 3).
        depth: number of stages run, 1..5; ``forward`` returns ``depth + 1`` tensors.
        weights: None (torchvision's initialisation: Kaiming-normal fan-out convs, BN weight 1 / bias 0), or a
            torchvision-layout ResNet file (path) / state dict with the keys of this module (``fc.*`` ignored).
        output_stride: 32 (plain ResNet), 16 or 8 (dilated, smp's ``make_dilated``).

    Attributes ``out_channels`` (channels of each returned tensor) and ``output_stride`` (``min(output_stride,
    2 ** depth)``) are smp's.
    """

    def __init__(self, name: str = 'resnet34', in_channels: int = 3, depth: int = 5, weights=None,
                 output_stride: int = 32):
        super().__init__()
        if name not in RESNET_ENCODERS:
            raise ValueError(f"encoder_name '{name}': unknown encoder; accepted: {', '.join(RESNET_ENCODERS)}")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 5:
            raise ValueError(f'ResNetEncoder depth should be in range [1, 5], got {depth}')
        if output_stride not in (8, 16, 32):
            raise ValueError(f'Output stride should be 16 or 8, got {output_stride}.')
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f'in_channels should be a positive integer, got {in_channels!r}')
        if isinstance(weights, str) and weights in _HUB_WEIGHT_NAMES:
            raise _hub_weights_error(name, weights)
        if weights is not None and not isinstance(weights, (str, os.PathLike, Mapping)):
            raise ValueError(f'encoder_weights: None or the path of a torchvision-layout ResNet file, got '
                             f'{weights!r}')
        spec = RESNET_ENCODERS[name]
        self.name = name
        self._depth = depth
        self._output_stride = output_stride
        self._out_channels = list(spec.out_channels)

        block = spec.block
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, spec.layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, spec.layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, spec.layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        # smp's order: load the (3-channel) weights, then patch the first conv, then dilate
        if weights is not None:
            load_backbone_weights(self, weights, spec.weights, needed_by=f'encoder {name}')
        if in_channels != 3:
            patch_first_conv(self.conv1, in_channels, pretrained=weights is not None)
            self._out_channels[0] = in_channels
        self._in_channels = in_channels
        if output_stride != 32:
            self.make_dilated(output_stride)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride,
                                                 bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def out_channels(self) -> list[int]:
        """Channels of the ``depth + 1`` tensors ``forward`` returns (the first is ``in_channels``)."""
        return self._out_channels[:self._depth + 1]

    @property
    def output_stride(self) -> int:
        """Downsampling of the last returned feature: ``min(output_stride, 2 ** depth)``."""
        return min(self._output_stride, 2 ** self._depth)

    def get_stages(self) -> dict[int, list[nn.Module]]:
        """The stages that ``make_dilated`` may dilate, keyed by their nominal output stride."""
        return {16: [self.layer3], 32: [self.layer4]}

    def make_dilated(self, output_stride: int) -> None:
        """Dilate the stages whose nominal stride exceeds ``output_stride`` (8 or 16) by ``stride // output_stride``."""
        if output_stride not in (8, 16):
            raise ValueError(f'Output stride should be 16 or 8, got {output_stride}.')
        for stage_stride, modules in self.get_stages().items():
            if stage_stride > output_stride:
                for m in modules:
                    replace_strides_with_dilation(m, stage_stride // output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        if self._depth >= 1:
            x = self.relu(self.bn1(self.conv1(x)))
            features.append(x)
        if self._depth >= 2:
            x = self.layer1(self.maxpool(x))
            features.append(x)
        for i, layer in enumerate((self.layer2, self.layer3, self.layer4), start=3):
            if self._depth >= i:
                x = layer(x)
                features.append(x)
        return features
