"""Small building blocks shared by the architectures: weight initialisation and layer stacking."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def default_init_weights(module_list: nn.Module | Iterable[nn.Module], scale: float = 1.0,
                         bias_fill: float = 0.0, **kwargs) -> None:
    """Initialise every Conv2d / Linear / BatchNorm found inside ``module_list`` in place.

    Conv2d and Linear weights get Kaiming-normal init (``kwargs`` go to
    :func:`torch.nn.init.kaiming_normal_`, e.g. ``a`` or ``mode``) multiplied by ``scale``; their biases
    are set to ``bias_fill``. BatchNorm weights are set to 1 and biases to ``bias_fill``.

    A ``scale`` below 1 (ESRGAN uses 0.1 for the dense-block convs) keeps deep residual stacks close to
    the identity at the start of training, which is what makes 23-block RRDBNets trainable without BN.

    Args:
        module_list: one module or an iterable of modules; their sub-modules are visited recursively.
        scale: factor applied to the Kaiming-initialised weights.
        bias_fill: constant written into the biases.
    """
    if isinstance(module_list, nn.Module):
        module_list = [module_list]
    for module in module_list:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, **kwargs)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)
            elif isinstance(m, _BatchNorm):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)


def make_layer(basic_block: Callable[..., nn.Module], num_basic_block: int, **kwargs) -> nn.Sequential:
    """Stack ``num_basic_block`` fresh instances of ``basic_block(**kwargs)`` in an ``nn.Sequential``.

    The children are named ``0``, ``1``, ... so the state-dict keys read ``<attr>.<i>.<...>``, the
    layout used by BasicSR checkpoints (e.g. ``body.0.rdb1.conv1.weight``).
    """
    return nn.Sequential(*[basic_block(**kwargs) for _ in range(num_basic_block)])
