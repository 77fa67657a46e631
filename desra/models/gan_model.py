"""GAN model: G + D with pixel, perceptual, adversarial and (optional) LDL artifact losses, and an EMA of G.

One training step, in order (BasicSR's SRGAN/ESRGAN step plus LDL):

1. G step (every ``net_d_iters`` iterations, after ``net_d_init_iters``), D frozen:
   pixel loss, LDL artifact loss (map from G's output, the GT and the EMA generator's output, LDL Eq. 2-7),
   perceptual (+style) loss, adversarial loss (vanilla or relativistic). One backward, one Adam step.
2. D step: real then fake (G output detached), each with its own backward, one step.
3. EMA update of G (decay ``train.ema_decay``, 0.999 in LDL).

The EMA network drives the LDL map, is saved as ``params_ema`` and is the one validated.
The DeSRA fine-tune is this model fed a pseudo-GT paired dataset; there is no separate class.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch

from desra.errors import ConfigError
from desra.losses.gan_loss import relativistic_gan_terms
from desra.losses.ldl_loss import LDLArtifactLoss
from desra.models.base_model import (BaseModel, _cpu_state, build_loss, build_network, build_optimizer,
                                     load_pretrained, unwrap)
from desra.engine.checkpoint import atomic_torch_save
from desra.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class GANModel(BaseModel):
    """Options: ``network_d``; ``train.{pixel,perceptual,gan,artifacts}_opt``; ``train.optim_d``;
    ``train.net_d_iters`` (1), ``train.net_d_init_iters`` (0); ``train.relativistic_gan`` (False;
    True gives ESRGAN's RaGAN); ``train.ema_decay``.
    """

    relativistic_default = False
    degradation_source = 'usm'  # with high_order_degradation: true, as Real-ESRGAN's GAN models

    def __init__(self, opt: dict, device: torch.device):
        super().__init__(opt, device)
        if 'network_d' not in opt:
            raise ConfigError(f"network_d: missing required key for model_type {opt.get('model_type')} "
                              "(e.g. type: UNetDiscriminatorSN)")
        self.net_d = self._prepare_network(build_network(opt['network_d'], 'network_d').to(device))
        path = opt.get('path') or {}
        if path.get('pretrain_network_d'):
            load_pretrained(self.net_d, path['pretrain_network_d'], path.get('param_key_d', 'params'),
                            path.get('strict_load_d', True), 'path.pretrain_network_d')
        if self.is_train:
            self._init_training()

    def _trained_network_names(self) -> list[str]:
        return ['net_g', 'net_d']

    def _init_training(self) -> None:
        train_opt = self.opt['train']
        self.net_g.train()
        self.net_d.train()

        def maybe(key):
            return build_loss(train_opt[key], f'train.{key}').to(self.device) if train_opt.get(key) else None

        self.cri_pix = maybe('pixel_opt')
        self.cri_perceptual = maybe('perceptual_opt')
        self.cri_gan = maybe('gan_opt')
        if self.cri_gan is None:
            raise ConfigError(f"train.gan_opt: missing required key for model_type {self.opt.get('model_type')} "
                              "(e.g. {type: GANLoss, gan_type: vanilla, loss_weight: 0.1})")
        if train_opt.get('artifacts_opt') and train_opt.get('ldl_opt'):
            raise ConfigError('train.ldl_opt: the same LDL artifact loss as train.artifacts_opt; give only one')
        # LDL's files name it artifacts_opt (logged l_g_artifacts), BasicSR's newer ones ldl_opt (logged l_g_ldl)
        self.artifacts_key = 'ldl_opt' if train_opt.get('ldl_opt') else 'artifacts_opt'
        self.artifacts_log = 'l_g_ldl' if self.artifacts_key == 'ldl_opt' else 'l_g_artifacts'
        self.cri_artifacts = self._build_artifacts_loss(train_opt.get(self.artifacts_key),
                                                        f'train.{self.artifacts_key}')
        if self.cri_artifacts is not None and self.ema is None:
            raise ConfigError(f'train.ema_decay: the LDL artifact loss (train.{self.artifacts_key}) needs the EMA '
                              'generator; set train.ema_decay (0.999 in LDL)')
        self.relativistic = train_opt.get('relativistic_gan', self.relativistic_default)
        self.net_d_iters = train_opt.get('net_d_iters', 1)
        self.net_d_init_iters = train_opt.get('net_d_init_iters', 0)

        self.optimizer_g = build_optimizer([p for p in self.net_g.parameters() if p.requires_grad],
                                           train_opt['optim_g'], 'train.optim_g', self.speed)
        if 'optim_d' not in train_opt:
            raise ConfigError(f"train.optim_d: missing required key for model_type {self.opt.get('model_type')}")
        self.optimizer_d = build_optimizer(self.net_d.parameters(), train_opt['optim_d'], 'train.optim_d',
                                           self.speed)
        self.optimizers = [self.optimizer_g, self.optimizer_d]
        self.scaler_g = self._make_scaler()
        self.scaler_d = self._make_scaler()
        self._setup_schedules()

    def _build_artifacts_loss(self, art_opt: dict | None, key_path: str = 'train.artifacts_opt'):
        if not art_opt:
            return None
        if art_opt.get('type') == 'L1Loss':
            # LDL's own option files say `artifacts_opt: {type: L1Loss, loss_weight: 1.0}` and let the model build
            # the map; read that as the LDL artifact loss with the same weight and reduction.
            extra = set(art_opt) - {'type', 'loss_weight', 'reduction'}
            if extra:
                raise ConfigError(f"{key_path}.{sorted(extra)[0]}: not an L1Loss option; use "
                                  "type: LDLArtifactLoss for kernel_size / detach_map")
            return LDLArtifactLoss(loss_weight=art_opt.get('loss_weight', 1.0),
                                   reduction=art_opt.get('reduction', 'mean'))
        loss = build_loss(art_opt, key_path)
        if not isinstance(loss, LDLArtifactLoss):
            raise ConfigError(f"{key_path}.type: expected LDLArtifactLoss (or L1Loss as in LDL's files), "
                              f"got {art_opt['type']}")
        return loss

    # ------------------------------------------------------------------------------------------ one step
    def optimize_parameters(self, current_iter: int) -> OrderedDict:
        net_d_raw = unwrap(self.net_d)
        loss_dict = OrderedDict()
        gan_gt = self.targets['gan'] if getattr(self, 'targets', None) else self.gt
        train_g = current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters

        # ---- generator
        for p in self.net_d.parameters():
            p.requires_grad_(False)
        self.optimizer_g.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train_g), self.autocast():
            # without a G step, G's forward must not build a graph: DDP would wait for its backward
            self.output = self.net_g(self.lq)
        if train_g:
            output = self.output.float()
            l_g_total, fidelity = self._fidelity_losses(output, prefix='g_')
            loss_dict.update(fidelity)
            if self.cri_artifacts is not None:
                with torch.no_grad(), self.autocast():
                    output_ema = self.ema.module(self.lq)
                loss_dict[self.artifacts_log] = l = self.cri_artifacts(output, self.gt, output_ema.float())
                l_g_total = l_g_total + l
            with self.autocast():
                fake_g_pred = net_d_raw(self.output).float()
            if self.relativistic:
                with torch.no_grad(), self.autocast():
                    real_d_pred = net_d_raw(gan_gt).float()
                loss_dict['l_g_gan'] = l = relativistic_gan_terms(self.cri_gan, real_d_pred, fake_g_pred).total
            else:
                loss_dict['l_g_gan'] = l = self.cri_gan(fake_g_pred, True, is_disc=False)
            l_g_total = l_g_total + l
            self._step(l_g_total, self.optimizer_g, self.scaler_g)

        # ---- discriminator
        for p in self.net_d.parameters():
            p.requires_grad_(True)
        self.optimizer_d.zero_grad(set_to_none=True)
        fake_input = self.output.detach().clone()
        if self.relativistic:
            # BasicSR's order: one backward per forward (DDP cannot take two forwards into one backward);
            # the terms are those of relativistic_gan_terms(..., is_disc=True)
            with torch.no_grad(), self.autocast():
                fake_d_pred = net_d_raw(fake_input).float()
            with self.autocast():
                real_d_pred = self.net_d(gan_gt).float()
            l_d_real = self.cri_gan(real_d_pred - fake_d_pred.mean(), True, is_disc=True) * 0.5
            self.scaler_d.scale(l_d_real).backward()
            with self.autocast():
                fake_d_pred = self.net_d(fake_input).float()
            l_d_fake = self.cri_gan(fake_d_pred - real_d_pred.detach().mean(), False, is_disc=True) * 0.5
        else:
            with self.autocast():
                real_d_pred = self.net_d(gan_gt).float()
            l_d_real = self.cri_gan(real_d_pred, True, is_disc=True)
            self.scaler_d.scale(l_d_real).backward()
            with self.autocast():
                fake_d_pred = self.net_d(fake_input).float()
            l_d_fake = self.cri_gan(fake_d_pred, False, is_disc=True)
        self.scaler_d.scale(l_d_fake).backward()
        self.scaler_d.step(self.optimizer_d)
        self.scaler_d.update()
        loss_dict['l_d_real'] = l_d_real
        loss_dict['l_d_fake'] = l_d_fake
        loss_dict['out_d_real'] = real_d_pred.detach().mean()
        loss_dict['out_d_fake'] = fake_d_pred.detach().mean()

        if self.ema is not None:
            self.ema.update(unwrap(self.net_g))
        return OrderedDict((k, v.detach()) for k, v in loss_dict.items())

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_networks(self, models_dir: str, current_iter) -> dict:
        files = super().save_networks(models_dir, current_iter)
        name = f'net_d_{current_iter}.pth'
        files[name] = atomic_torch_save({'params': _cpu_state(unwrap(self.net_d))}, os.path.join(models_dir, name))
        return files

    def load_networks(self, models_dir: str, current_iter: int) -> None:
        super().load_networks(models_dir, current_iter)
        load_pretrained(self.net_d, os.path.join(models_dir, f'net_d_{current_iter}.pth'), 'params', True,
                        'resume net_d')


@MODEL_REGISTRY.register()
class SRGANModel(GANModel):
    """BasicSR name for the plain (non-relativistic) GAN model."""


@MODEL_REGISTRY.register()
class ESRGANModel(GANModel):
    """ESRGAN: the GAN model with the relativistic average GAN (RaGAN) loss by default."""

    relativistic_default = True


@MODEL_REGISTRY.register()
class ESRGANArtifactsDisModel(ESRGANModel):
    """The ``model_type`` of LDL's synthetic option files: ESRGAN + the LDL artifact loss (``artifacts_opt``)."""


@MODEL_REGISTRY.register()
class RealESRGANModel(GANModel):
    """Real-ESRGAN's GAN model: the GAN model with the second-order degradation on by default
    (``high_order_degradation``, which the paired fine-tune sets false), degrading the USM-sharpened GT, with the
    ``*_gt_usm`` switches and BasicSR's ``ldl_opt``."""

    degrade_by_default = True


@MODEL_REGISTRY.register()
class RealESRGANArtifactsDisModel(RealESRGANModel):
    """The ``model_type`` of LDL's real-world option file: Real-ESRGAN's GAN model + the LDL artifact loss
    (``artifacts_opt``, on the plain GT with the EMA generator's output)."""
