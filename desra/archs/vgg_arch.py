"""VGG networks with torchvision's parameter layout, and the feature extractor of perceptual losses.

Nothing here imports torchvision. The modules are laid out so that their state-dict keys are exactly
torchvision's (``features.0.weight`` ... ``features.34.bias``, ``classifier.{0,3,6}.*`` for VGG19),
so the usual ImageNet file ``vgg19-dcbb9e9d.pth`` loads strictly.

Layer names (``conv1_1``, ``relu1_1``, ..., ``pool5``) follow BasicSR's ``VGGFeatureExtractor``;
the i-th name is the i-th module of torchvision's ``features`` Sequential.

Pretrained weights are never downloaded here and never silently replaced by random ones: see
:func:`find_vgg_weights` for where they are looked for.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from desra.archs.checkpoint_io import read_checkpoint
from desra.errors import CheckpointError
from desra.registry import ARCH_REGISTRY

# Number of 3x3 convolutions in each of the five blocks (every block ends with a 2x2 max-pool).
_BLOCKS = {
    'vgg11': (1, 1, 2, 2, 2),
    'vgg13': (2, 2, 2, 2, 2),
    'vgg16': (2, 2, 3, 3, 3),
    'vgg19': (2, 2, 4, 4, 4),
}
_WIDTHS = (64, 128, 256, 512, 512)

# torchvision's file names for the ImageNet weights (the hash is part of the name).
WEIGHT_FILES = {
    'vgg11': 'vgg11-8a719046.pth',
    'vgg13': 'vgg13-19584684.pth',
    'vgg16': 'vgg16-397923af.pth',
    'vgg19': 'vgg19-dcbb9e9d.pth',
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Parent of the ``desra`` package; a module attribute so that tests can point it elsewhere.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _check_vgg_type(vgg_type: str) -> None:
    if vgg_type not in _BLOCKS:
        raise ValueError(f"vgg_type: unsupported '{vgg_type}'; accepted: {', '.join(sorted(_BLOCKS))}")


def vgg_layer_names(vgg_type: str = 'vgg19') -> list[str]:
    """BasicSR's layer names for ``vgg_type``; entry i names module i of torchvision's ``features``."""
    _check_vgg_type(vgg_type)
    names = []
    for b, n_conv in enumerate(_BLOCKS[vgg_type], start=1):
        for i in range(1, n_conv + 1):
            names += [f'conv{b}_{i}', f'relu{b}_{i}']
        names.append(f'pool{b}')
    return names


def _make_features(vgg_type: str, last: int | None = None, inplace_relu: Sequence[bool] | None = None,
                   remove_pooling: bool = False, pooling_stride: int = 2) -> nn.Sequential:
    """torchvision's ``features`` Sequential, truncated after module index ``last``.

    Removed pooling layers become ``nn.Identity`` so that later indices (and state-dict keys) keep their
    torchvision numbering.
    """
    names = vgg_layer_names(vgg_type)
    last = len(names) - 1 if last is None else last
    layers: list[nn.Module] = []
    in_ch = 3
    for idx, name in enumerate(names[:last + 1]):
        if name.startswith('conv'):
            out_ch = _WIDTHS[int(name[4]) - 1]
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
            in_ch = out_ch
        elif name.startswith('relu'):
            layers.append(nn.ReLU(inplace=True if inplace_relu is None else inplace_relu[idx]))
        elif remove_pooling:
            layers.append(nn.Identity())
        else:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=pooling_stride))
    return nn.Sequential(*layers)


def vgg_features(vgg_type: str = 'vgg16', last: int | None = None) -> nn.Sequential:
    """torchvision's ``features`` Sequential of ``vgg_type`` (state-dict keys ``N.weight`` / ``N.bias`` with N the
    torchvision index), truncated after module ``last`` (default: all of it, ending with ``pool5``)."""
    _check_vgg_type(vgg_type)
    return _make_features(vgg_type, last)


@ARCH_REGISTRY.register()
class VGG19(nn.Module):
    """VGG19 classifier (Simonyan & Zisserman 2015, configuration E) with torchvision's module layout.

    Input: B x 3 x H x W ImageNet-normalised images. Output: B x ``num_classes`` logits.
    State-dict keys: ``features.{0,2,5,7,10,12,14,16,19,21,23,25,28,30,32,34}.{weight,bias}`` and
    ``classifier.{0,3,6}.{weight,bias}``; torchvision's ``vgg19-dcbb9e9d.pth`` loads with ``strict=True``.
    Only the convolutional ``features`` are used by the perceptual loss (:class:`VGGFeatureExtractor`).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, init_weights: bool = True):
        super().__init__()
        self.features = _make_features('vgg19')
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------- weights

def vgg_weight_candidates(vgg_type: str = 'vgg19') -> list[tuple[str, Path | None]]:
    """Places searched for ``vgg_type``'s ImageNet weights when ``weights=None``, in order.

    Returns ``(description, path)`` pairs; ``path`` is None for an environment variable that is not set.
    1. ``$DESRA_VGG19_WEIGHTS`` (``DESRA_VGG16_WEIGHTS`` etc. for other types);
    2. ``<cwd>/pretrained/<file>``;  3. ``<repo root>/pretrained/<file>``;
    4. ``<cwd or repo root>/experiments/pretrained_models/<file>`` (BasicSR's place);
    5. torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (default ``~/.cache/torch/...``).
    """
    from desra.weights.locate import weight_candidates

    return weight_candidates(_weight_spec(vgg_type), repo_root=_REPO_ROOT)


def _weight_spec(vgg_type: str):
    from desra.weights.locate import PretrainedFile

    _check_vgg_type(vgg_type)
    return PretrainedFile(WEIGHT_FILES[vgg_type], f'DESRA_{vgg_type.upper()}_WEIGHTS',
                          f"torchvision's {vgg_type.upper()} ImageNet weights",
                          f'python scripts/download_pretrained.py --only {vgg_type}')


def find_vgg_weights(vgg_type: str = 'vgg19') -> Path:
    """First existing file among :func:`vgg_weight_candidates`; :class:`CheckpointError` if none."""
    cands = vgg_weight_candidates(vgg_type)
    env_desc, env_path = cands[0]
    if env_path is not None:
        # An explicitly set variable that points nowhere is a mistake, not a reason to look elsewhere.
        if not env_path.is_file():
            raise CheckpointError(f'{env_desc[1:]}={env_path}: file not found (expected torchvision\'s '
                                  f'{vgg_type.upper()} ImageNet weights, {WEIGHT_FILES[vgg_type]})')
        return env_path
    for _, p in cands[1:]:
        if p is not None and p.is_file():
            return p
    fname = WEIGHT_FILES[vgg_type]
    searched = '\n'.join(f'  - {p if p is not None else desc + " (not set)"}' for desc, p in cands)
    raise CheckpointError(
        f"{vgg_type.upper()} ImageNet weights not found (needed by the perceptual loss). Searched:\n"
        f"{searched}\n"
        f"Put {fname} (torchvision's {vgg_type.upper()} ImageNet weights) in pretrained/ "
        f"(pretrained/{fname}), or set {env_desc[1:]}=/path/to/{fname}, "
        f"or run `python scripts/download_pretrained.py`. Random weights are never used silently; "
        f"pass weights='random' only for tests.")


def load_vgg_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a VGG state dict from ``.pth`` (``weights_only`` unpickling, on CPU) or ``.safetensors``.

    Accepts a plain state dict (torchvision's files), a dict wrapping one under ``params`` /
    ``state_dict`` / ``model``, and keys prefixed with ``module.``.
    """
    sd = read_checkpoint(path)
    if isinstance(sd, Mapping) and not any(str(k).startswith(('features.', 'module.')) for k in sd):
        for wrap in ('params', 'state_dict', 'model'):
            if isinstance(sd.get(wrap), Mapping):
                sd = sd[wrap]
                break
    if not isinstance(sd, Mapping):
        raise CheckpointError(f'{path}: expected a state dict (name -> tensor), got {type(sd).__name__}')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------- extractor

@ARCH_REGISTRY.register()
class VGGFeatureExtractor(nn.Module):
    """Intermediate VGG features, BasicSR's ``VGGFeatureExtractor`` interface.

    Args:
        layer_name_list: layers to return, BasicSR names (``'conv1_2'``, ``'relu5_4'``, ``'pool4'``...).
        vgg_type: ``'vgg19'`` (also ``'vgg16'``, ``'vgg13'``, ``'vgg11'``).
        use_input_norm: normalise the input with ImageNet mean/std (input expected in [0, 1]).
        range_norm: map the input from [-1, 1] to [0, 1] first.
        requires_grad: train the VGG weights; by default they are frozen and the module is in eval mode.
        remove_pooling: replace the max-pools by identities.
        pooling_stride: stride of the 2x2 max-pools.
        weights: None (search the usual places, see :func:`vgg_weight_candidates`), a path to a
            ``.pth`` / ``.safetensors`` file, a state dict, or ``'random'`` (random init; tests only).

    Input: B x 3 x H x W. Output: dict ``layer name -> B x C_l x H_l x W_l`` tensor, in network order.
    Only the layers up to the deepest requested one are built; the own state-dict keys are
    ``features.<torchvision index>.{weight,bias}``, a subset of torchvision's.
    """

    def __init__(self, layer_name_list: Sequence[str], vgg_type: str = 'vgg19', use_input_norm: bool = True,
                 range_norm: bool = False, requires_grad: bool = False, remove_pooling: bool = False,
                 pooling_stride: int = 2, weights: str | os.PathLike | Mapping | None = None):
        super().__init__()
        names = vgg_layer_names(vgg_type)
        layer_name_list = list(layer_name_list)
        if not layer_name_list:
            raise ValueError('layer_name_list: give at least one VGG layer name')
        bad = [n for n in layer_name_list if n not in names]
        if bad:
            raise ValueError(f"layer_name_list: unknown {vgg_type} layer '{bad[0]}'; accepted: {', '.join(names)}")
        self.layer_name_list = layer_name_list
        self.vgg_type = vgg_type
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        self.layer_names = names[:max(names.index(n) for n in layer_name_list) + 1]
        # A ReLU may overwrite its input only if nobody asked for that input (the conv before it).
        wanted = set(layer_name_list)
        inplace = [not (i > 0 and names[i - 1] in wanted) for i in range(len(self.layer_names))]
        self.features = _make_features(vgg_type, len(self.layer_names) - 1, inplace, remove_pooling, pooling_stride)
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.weights_path: Path | None = None
        if isinstance(weights, str) and weights == 'random':
            pass
        elif isinstance(weights, Mapping):
            self._load(dict(weights), '<state dict>')
        else:
            path = find_vgg_weights(vgg_type) if weights is None else Path(weights).expanduser()
            self._load(load_vgg_state_dict(path), str(path))
            self.weights_path = path

        if not requires_grad:
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    @property
    def vgg_net(self) -> nn.Sequential:
        """BasicSR's attribute name for the truncated network."""
        return self.features

    def _load(self, sd: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise CheckpointError(
                f'{source}: not {self.vgg_type.upper()} weights in torchvision layout; missing {len(missing)} '
                f'key(s), e.g. {missing[:3]} (expected {WEIGHT_FILES[self.vgg_type]})')
        for k, v in own.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise CheckpointError(f'{source}: {k} has shape {tuple(sd[k].shape)}, '
                                      f'{self.vgg_type} expects {tuple(v.shape)}')
        self.load_state_dict({k: sd[k] for k in own}, strict=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        wanted = set(self.layer_name_list)
        for name, layer in zip(self.layer_names, self.features):
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out
