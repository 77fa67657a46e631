"""Pixel losses (L1, MSE, Charbonnier) and the VGG perceptual / style loss, BasicSR's interfaces.

All take ``pred`` and ``target`` of shape B x C x H x W (any shape for the pixel losses) and return a
scalar for ``reduction='mean'`` / ``'sum'`` or the element-wise loss for ``'none'``, times ``loss_weight``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from desra.archs.vgg_arch import VGGFeatureExtractor
from desra.registry import LOSS_REGISTRY

_REDUCTIONS = ('none', 'mean', 'sum')


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: unsupported '{reduction}'; accepted: {', '.join(_REDUCTIONS)}")
    return reduction


def weighted_reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Apply an optional element weight, then reduce (BasicSR's ``weight_reduce_loss``).

    ``weight`` broadcasts to ``loss`` (e.g. B x 1 x H x W against B x C x H x W). With a weight,
    ``'mean'`` is the weighted mean ``sum(loss * w) / sum(w)``, where ``sum(w)`` counts the weight once
    per element it is broadcast to (so a B x 1 x H x W mask counts C times for C channels, as in
    BasicSR). An all-zero weight gives 0 instead of 0/0.
    """
    if weight is not None:
        loss = loss * weight
    if reduction == 'none':
        return loss
    if reduction == 'sum':
        return loss.sum()
    if weight is None:
        return loss.mean()
    denom = torch.broadcast_to(weight, loss.shape).sum()
    return loss.sum() / denom.clamp_min(torch.finfo(loss.dtype).tiny)


class _PixelLoss(nn.Module):
    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean'):
        super().__init__()
        self.loss_weight = loss_weight
        self.reduction = _check_reduction(reduction)

    def _elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_weight * weighted_reduce(self._elementwise(pred, target), weight, self.reduction)


@LOSS_REGISTRY.register()
class L1Loss(_PixelLoss):
    """``loss_weight * reduce(|pred - target| * weight)``."""

    def _elementwise(self, pred, target):
        return F.l1_loss(pred, target, reduction='none')


@LOSS_REGISTRY.register()
class MSELoss(_PixelLoss):
    """``loss_weight * reduce((pred - target)^2 * weight)``."""

    def _elementwise(self, pred, target):
        return F.mse_loss(pred, target, reduction='none')


@LOSS_REGISTRY.register()
class CharbonnierLoss(_PixelLoss):
    """``loss_weight * reduce(sqrt((pred - target)^2 + eps) * weight)``, a differentiable L1.

    ``eps`` is added under the root (not squared), as in BasicSR; the default 1e-12 puts a floor of
    1e-6 on each element.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean', eps: float = 1e-12):
        super().__init__(loss_weight, reduction)
        self.eps = eps

    def _elementwise(self, pred, target):
        return torch.sqrt((pred - target) ** 2 + self.eps)


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrix of features B x C x H x W: ``F F^T / (C H W)`` with F = B x C x HW."""
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


@LOSS_REGISTRY.register()
class PerceptualLoss(nn.Module):
    """VGG perceptual and style loss (Johnson et al. 2016), BasicSR's ``PerceptualLoss``.

    ``percep = perceptual_weight * sum_l w_l * crit(phi_l(pred), phi_l(target))`` and
    ``style = style_weight * sum_l w_l * crit(G(phi_l(pred)), G(phi_l(target)))`` with ``phi_l`` the
    VGG features of layer l (ImageNet-normalised input in [0, 1]) and G the normalised Gram matrix.

    Args:
        layer_weights: ``{layer name: w_l}``, e.g. LDL's
            ``{'conv1_2': .1, 'conv2_2': .1, 'conv3_4': 1, 'conv4_4': 1, 'conv5_4': 1}``.
        criterion: ``'l1'`` (mean absolute error), ``'l2'`` (mean squared error) or ``'fro'``
            (Frobenius norm of the difference, not averaged).
        weights: VGG weights, see :class:`~desra.archs.vgg_arch.VGGFeatureExtractor`.

    Returns ``(percep_loss, style_loss)``; an entry is None when its weight is 0.
    The target branch runs without autograd (the VGG is frozen and the target needs no gradient).
    """

    def __init__(self, layer_weights: Mapping[str, float], vgg_type: str = 'vgg19', use_input_norm: bool = True,
                 range_norm: bool = False, perceptual_weight: float = 1.0, style_weight: float = 0.,
                 criterion: str = 'l1', weights: str | os.PathLike | Mapping | None = None):
        super().__init__()
        if criterion not in ('l1', 'l2', 'fro'):
            raise ValueError(f"criterion: unsupported '{criterion}'; accepted: l1, l2, fro")
        self.layer_weights = dict(layer_weights)
        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.criterion_type = criterion
        self.vgg = VGGFeatureExtractor(list(self.layer_weights), vgg_type=vgg_type, use_input_norm=use_input_norm,
                                       range_norm=range_norm, weights=weights)

    def _crit(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion_type == 'l1':
            return F.l1_loss(a, b)
        if self.criterion_type == 'l2':
            return F.mse_loss(a, b)
        return torch.linalg.vector_norm(a - b)  # Frobenius norm over all elements, as torch.norm(p='fro')

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x_feats = self.vgg(x)
        with torch.no_grad():
            gt_feats = self.vgg(gt.detach())
        percep = style = None
        if self.perceptual_weight > 0:
            percep = sum(self._crit(x_feats[k], gt_feats[k]) * w for k, w in self.layer_weights.items())
            percep = percep * self.perceptual_weight
        if self.style_weight > 0:
            style = sum(self._crit(gram_matrix(x_feats[k]), gram_matrix(gt_feats[k])) * w
                        for k, w in self.layer_weights.items())
            style = style * self.style_weight
        return percep, style
