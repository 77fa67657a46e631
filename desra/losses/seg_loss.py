"""Losses of the artifact localiser: binary cross-entropy on logits, soft Dice, and their weighted sum.

All take ``logits`` and ``target`` of shape B x 1 x H x W (any shape with the batch first): ``target`` in {0, 1}
(soft targets in [0, 1] are accepted), ``logits`` unbounded; p = sigmoid(logits).

* BCE: ``mean(-(t log p + (1 - t) log(1 - p)))``, computed stably from the logits.
* soft Dice (per image, then the mean over the batch): ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``, with the
  smoothing ``s`` (1 by default) so that an image with an empty target and an empty prediction has loss 0.
* ``BCEDiceLoss``: ``bce_weight * BCE + dice_weight * Dice``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from desra.registry import LOSS_REGISTRY

__all__ = ['BCEDiceLoss', 'BCEWithLogitsLoss', 'SoftDiceLoss', 'soft_dice_loss']


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``, p = sigmoid(logits);
    sums over every axis but the first. Returns a scalar in [0, 1)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def _check_shapes(logits, target):
    if logits.shape != target.shape:
        raise ValueError(f'logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape')


@LOSS_REGISTRY.register()
class BCEWithLogitsLoss(nn.Module):
    """``loss_weight * mean(BCE(sigmoid(logits), target))``; ``pos_weight`` weighs the artifact pixels."""

    def __init__(self, loss_weight: float = 1.0, pos_weight: float | None = None):
        super().__init__()
        self.loss_weight = loss_weight
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        pw = None if self.pos_weight is None else torch.tensor(float(self.pos_weight), device=logits.device)
        return self.loss_weight * F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw)


@LOSS_REGISTRY.register()
class SoftDiceLoss(nn.Module):
    """``loss_weight * soft_dice_loss(logits, target, smooth)``."""

    def __init__(self, loss_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.loss_weight, self.smooth = loss_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        return self.loss_weight * soft_dice_loss(logits, target, self.smooth)


@LOSS_REGISTRY.register()
class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * soft Dice`` (the localiser's default: 1 and 1).

    ``forward`` returns the total; :meth:`terms` returns ``{'l_bce': ..., 'l_dice': ...}`` (weighted) for logging.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 pos_weight: float | None = None):
        super().__init__()
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight <= 0:
            raise ValueError(f'bce_weight and dice_weight must be >= 0 and not both 0, got {bce_weight}, '
                             f'{dice_weight}')
        self.bce = BCEWithLogitsLoss(bce_weight, pos_weight)
        self.dice = SoftDiceLoss(dice_weight, smooth)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> OrderedDict:
        out = OrderedDict()
        if self.bce.loss_weight:
            out['l_bce'] = self.bce(logits, target)
        if self.dice.loss_weight:
            out['l_dice'] = self.dice(logits, target)
        return out

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(logits, target).values())
