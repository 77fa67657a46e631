"""Exponential moving average of a generator (ESRGAN / Real-ESRGAN / LDL ``net_g_ema``)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * live`` over the parameters, after every optimisation step.

    Buffers are copied, not averaged (RRDBNet has none; for BatchNorm generators this keeps the EMA's
    running statistics current instead of frozen at initialisation as in BasicSR). The EMA network is
    always in eval mode and never requires gradients. LDL uses ``decay = 0.999``.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'train.ema_decay must be in [0, 1), got {decay}')
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        ema_params = dict(self.module.named_parameters())
        live = [(ema_params[name], p.detach()) for name, p in model.named_parameters()]
        if live:
            # two multi-tensor kernels instead of two per parameter; the same arithmetic as mul_(d).add_(p, 1 - d)
            ema, src = [e for e, _ in live], [p for _, p in live]
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, src, alpha=1 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)
