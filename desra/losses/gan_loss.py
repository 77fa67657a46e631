"""Adversarial losses, BasicSR's ``GANLoss`` interface, and the relativistic (ESRGAN) formulation."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from desra.registry import LOSS_REGISTRY

GAN_TYPES = ('vanilla', 'lsgan', 'wgan', 'wgan_softplus', 'hinge')


@LOSS_REGISTRY.register()
class GANLoss(nn.Module):
    """Adversarial loss on discriminator outputs ``x`` (logits, any shape), averaged over elements.

    ``gan_type`` and the loss for a target that is real (fake):

    - ``vanilla``: binary cross-entropy with logits against ``real_label_val`` (``fake_label_val``);
    - ``lsgan``: mean squared error against the same labels;
    - ``wgan``: ``-mean(x)`` (``mean(x)``);
    - ``wgan_softplus``: ``mean(softplus(-x))`` (``mean(softplus(x))``);
    - ``hinge``: for the discriminator ``mean(relu(1 - x))`` (``mean(relu(1 + x))``); for the generator
      ``-mean(x)`` whatever the target.

    ``loss_weight`` multiplies the generator loss only (``is_disc=False``); the discriminator loss is
    returned unweighted, as in BasicSR.
    """

    def __init__(self, gan_type: str, real_label_val: float = 1.0, fake_label_val: float = 0.0,
                 loss_weight: float = 1.0):
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"gan_type: unsupported '{gan_type}'; accepted: {', '.join(GAN_TYPES)}")
        self.gan_type = gan_type
        self.real_label_val = real_label_val
        self.fake_label_val = fake_label_val
        self.loss_weight = loss_weight

    def _labelled(self, x: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        label = torch.full_like(x, self.real_label_val if target_is_real else self.fake_label_val)
        if self.gan_type == 'vanilla':
            return F.binary_cross_entropy_with_logits(x, label)
        return F.mse_loss(x, label)

    def forward(self, input: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:  # noqa: A002
        x = input
        t = self.gan_type
        if t in ('vanilla', 'lsgan'):
            loss = self._labelled(x, target_is_real)
        elif t == 'wgan':
            loss = -x.mean() if target_is_real else x.mean()
        elif t == 'wgan_softplus':
            loss = F.softplus(-x).mean() if target_is_real else F.softplus(x).mean()
        elif is_disc:  # hinge, discriminator: push real logits above +1 and fake ones below -1
            loss = F.relu(1 - x).mean() if target_is_real else F.relu(1 + x).mean()
        else:  # hinge, generator
            loss = -x.mean()
        return loss if is_disc else loss * self.loss_weight


class RelativisticTerms(NamedTuple):
    """The two halves of a relativistic average GAN loss; ``total`` is their sum."""
    real: torch.Tensor
    fake: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.real + self.fake


def relativistic_gan_terms(gan_loss: GANLoss, real_pred: torch.Tensor, fake_pred: torch.Tensor,
                           is_disc: bool = False) -> RelativisticTerms:
    """Relativistic average GAN loss (RaGAN, Jolicoeur-Martineau 2019) as used by ESRGAN / LDL.

    With D(x) the raw discriminator outputs, l = ``gan_loss`` and E the batch mean:

    - generator (``is_disc=False``):
      ``real = l(D(real) - E[D(fake)], False) / 2``,  ``fake = l(D(fake) - E[D(real)], True) / 2``;
      ``real_pred`` is detached (the discriminator's view of real images is a constant for G), and
      ``gan_loss.loss_weight`` applies.
    - discriminator (``is_disc=True``):
      ``real = l(D(real) - E[D(fake)].detach(), True) / 2``,
      ``fake = l(D(fake) - E[D(real)].detach(), False) / 2``; unweighted.
      Pass ``fake_pred`` computed from the detached SR output.

    Returns :class:`RelativisticTerms` ``(real, fake)``; ``.total`` is the loss to back-propagate,
    identical to BasicSR ESRGANModel's ``l_g_gan`` (G) and ``l_d_real + l_d_fake`` (D).
    """
    if is_disc:
        real = gan_loss(real_pred - fake_pred.detach().mean(), True, is_disc=True) * 0.5
        fake = gan_loss(fake_pred - real_pred.detach().mean(), False, is_disc=True) * 0.5
    else:
        real_pred = real_pred.detach()
        real = gan_loss(real_pred - fake_pred.mean(), False, is_disc=False) * 0.5
        fake = gan_loss(fake_pred - real_pred.mean(), True, is_disc=False) * 0.5
    return RelativisticTerms(real, fake)
