"""SR model: a generator trained with pixel (and optionally perceptual) losses, with an optional EMA."""
from __future__ import annotations

from collections import OrderedDict

import torch

from desra.errors import ConfigError
from desra.models.base_model import BaseModel, build_loss, unwrap
from desra.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class SRModel(BaseModel):
    """BasicSR's ``SRModel``: ``train.pixel_opt`` and/or ``train.perceptual_opt``; ``train.ema_decay`` > 0 adds an EMA.

    Used for PSNR-oriented models (RRDB PSNR / RealESRNet-style MSE-SR).
    """

    def __init__(self, opt: dict, device: torch.device):
        super().__init__(opt, device)
        if self.is_train:
            self._init_training()

    def _init_training(self) -> None:
        train_opt = self.opt['train']
        self.net_g.train()
        self.cri_pix = build_loss(train_opt['pixel_opt'], 'train.pixel_opt') if train_opt.get('pixel_opt') else None
        self.cri_perceptual = (build_loss(train_opt['perceptual_opt'], 'train.perceptual_opt').to(self.device)
                               if train_opt.get('perceptual_opt') else None)
        if self.cri_pix is None and self.cri_perceptual is None:
            raise ConfigError('train: SRModel needs train.pixel_opt or train.perceptual_opt')
        self._init_generator_optimizer()

    def optimize_parameters(self, current_iter: int) -> OrderedDict:
        self.optimizer_g.zero_grad(set_to_none=True)
        with self.autocast():
            self.output = self.net_g(self.lq)
        output = self.output.float()
        l_total, loss_dict = self._fidelity_losses(output, prefix='')
        self._step(l_total, self.optimizer_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update(unwrap(self.net_g))
        return OrderedDict((k, v.detach()) for k, v in loss_dict.items())


@MODEL_REGISTRY.register()
class RealESRNetModel(SRModel):
    """Real-ESRGAN's PSNR-oriented pre-training (RealESRNet): the SR model on pairs made by the second-order
    degradation (``high_order_degradation``, on by default) of the GT, USM-sharpened first with ``gt_usm: true``
    (the sharpened GT is then also the target)."""

    degrade_by_default = True
    degradation_source = 'gt'
