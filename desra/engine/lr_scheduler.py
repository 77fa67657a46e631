"""Learning-rate schedules as pure functions of the iteration (BasicSR semantics).

Because the learning rate is a function of the iteration alone, resuming needs no scheduler state: the
iteration restores it exactly. ``update_learning_rate(t)`` is called once per iteration with ``t`` = 1, 2, ...
"""
from __future__ import annotations

import math
from bisect import bisect_right

import torch

from desra.errors import ConfigError


def multistep_restart_factor(t: int, milestones, gamma: float = 0.1, restarts=(0,), restart_weights=(1,)) -> float:
    """BasicSR ``MultiStepRestartLR``: lr(t) / initial_lr.

    After the last restart r <= t (weight w), the factor is w * gamma ** #{m in milestones : r < m <= t}.
    """
    restarts, restart_weights = list(restarts), list(restart_weights)
    k = bisect_right(restarts, t) - 1
    r, w = (restarts[k], restart_weights[k]) if k >= 0 else (0, 1.0)
    passed = sum(1 for m in milestones if r < m <= t)
    return w * gamma ** passed


def cosine_restart_lr(t: int, base_lr: float, periods, restart_weights=(1,), eta_min: float = 0.0) -> float:
    """BasicSR ``CosineAnnealingRestartLR``: cosine from ``w * base_lr`` to ``eta_min`` within each period.

    Past the last period the rate stays at the end of the last cosine.
    """
    cumulative = [sum(periods[:i + 1]) for i in range(len(periods))]
    idx = next((i for i, c in enumerate(cumulative) if t <= c), len(periods) - 1)
    start = 0 if idx == 0 else cumulative[idx - 1]
    w = restart_weights[idx]
    progress = min((t - start) / periods[idx], 1.0)
    return eta_min + w * 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets ``lr = initial_lr * factor(t)`` (times a linear warm-up ramp for ``t < warmup_iter``)."""

    TYPES = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR', 'ConstantLR')

    def __init__(self, optimizer: torch.optim.Optimizer, opt: dict | None, key_path: str = 'train.scheduler'):
        opt = dict(opt or {'type': 'ConstantLR'})
        self.type = opt.pop('type')
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        if self.type in ('MultiStepLR', 'MultiStepRestartLR'):
            allowed = {'milestones', 'gamma', 'restarts', 'restart_weights'}
            if 'milestones' not in opt:
                raise ConfigError(f"{key_path}.milestones: missing required key (a list of iterations)")
        elif self.type == 'CosineAnnealingRestartLR':
            allowed = {'periods', 'restart_weights', 'eta_min'}
            if 'periods' not in opt:
                raise ConfigError(f"{key_path}.periods: missing required key (a list of iteration counts)")
            if len(opt.get('restart_weights', [1])) != len(opt['periods']):
                raise ConfigError(f"{key_path}.restart_weights: needs one weight per period "
                                  f"({len(opt['periods'])}), got {opt.get('restart_weights')}")
        elif self.type == 'ConstantLR':
            allowed = set()
        else:
            import difflib
            close = difflib.get_close_matches(self.type, self.TYPES, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise ConfigError(f"{key_path}.type: unknown scheduler '{self.type}'.{hint} "
                              f"Available: {', '.join(self.TYPES)}")
        unknown = set(opt) - allowed
        if unknown:
            raise ConfigError(f"{key_path}.{sorted(unknown)[0]}: unknown option for {self.type}; "
                              f"accepted: {', '.join(sorted(allowed)) or '(none)'}")
        self.kwargs = opt

    def lr_at(self, t: int, base_lr: float) -> float:
        """Scheduled rate at iteration ``t`` before warm-up."""
        if self.type in ('MultiStepLR', 'MultiStepRestartLR'):
            return base_lr * multistep_restart_factor(t, **self.kwargs)
        if self.type == 'CosineAnnealingRestartLR':
            return cosine_restart_lr(t, base_lr, **self.kwargs)
        return base_lr

    def update(self, t: int, warmup_iter: int = -1) -> None:
        for group in self.optimizer.param_groups:
            lr = self.lr_at(t, group['initial_lr'])
            if warmup_iter > 0 and t < warmup_iter:
                lr = lr * t / warmup_iter
            group['lr'] = lr

    def get_lr(self) -> list[float]:
        return [g['lr'] for g in self.optimizer.param_groups]
