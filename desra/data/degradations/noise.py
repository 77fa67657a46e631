"""Additive Gaussian and Poisson noise (numpy HWC images and torch ``B x C x H x W`` batches, values in [0, 1]).

* Gaussian: ``out = img + n``, ``n ~ N(0, (sigma / 255)^2)`` per pixel and channel; ``sigma`` is on the 0-255
  scale (Real-ESRGAN draws it from [1, 30]). Gray noise uses one ``N`` per pixel for all channels.
* Poisson: ``out = P(img * v) / v`` with ``v = 2^ceil(log2(#distinct values of the image rounded to 8 bits))``,
  then ``noise = (out - img) * scale`` (Real-ESRGAN: ``scale`` in [0.05, 3]). Gray Poisson noise is drawn on the
  luma ``0.2989 R + 0.587 G + 0.114 B`` and added to every channel.
* ``clip`` clamps the result to [0, 1]; ``rounds`` rounds it to the 8-bit grid.

Batch versions take per-image ``sigma`` / ``scale`` / ``gray_noise`` tensors of shape ``(B,)`` (or numbers). As in
BasicSR, when any image of the batch asks for gray noise one gray pattern of ``H x W`` is drawn and scaled per
image, and the colour noise is always drawn. The ``random_*`` versions draw ``sigma`` (or ``scale``) ~ U(range)
and gray ~ Bernoulli(``gray_prob``) per image.

Randomness: torch functions take ``generator`` (a :class:`torch.Generator` on the images' device; None: the global
torch RNG, in BasicSR's order); numpy functions take ``rng`` (a :class:`numpy.random.Generator`; None: ``np.random``).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ['generate_gaussian_noise', 'add_gaussian_noise', 'random_generate_gaussian_noise',
           'random_add_gaussian_noise', 'generate_poisson_noise', 'add_poisson_noise', 'random_generate_poisson_noise',
           'random_add_poisson_noise', 'generate_gaussian_noise_pt', 'add_gaussian_noise_pt',
           'random_generate_gaussian_noise_pt', 'random_add_gaussian_noise_pt', 'generate_poisson_noise_pt',
           'add_poisson_noise_pt', 'random_generate_poisson_noise_pt', 'random_add_poisson_noise_pt',
           'rgb_to_grayscale_pt']


def _finish(out, clip, rounds):
    lib = torch if torch.is_tensor(out) else np
    if clip and rounds:
        return lib.clip((out * 255.0).round(), 0, 255) / 255.
    if clip:
        return lib.clip(out, 0, 1)
    if rounds:
        return (out * 255.0).round() / 255.
    return out


# --------------------------------------------------------------------------------------------------- numpy
def _randn(rng, shape):
    return np.random.randn(*shape) if rng is None else rng.standard_normal(shape)


def generate_gaussian_noise(img, sigma=10, gray_noise=False, rng=None):
    """Gaussian noise for an H x W x C float image: ``N(0, 1) * sigma / 255`` (float32)."""
    if gray_noise:
        noise = np.float32(_randn(rng, img.shape[0:2])) * sigma / 255.
        return np.expand_dims(noise, axis=2).repeat(3, axis=2)
    return np.float32(_randn(rng, img.shape)) * sigma / 255.


def add_gaussian_noise(img, sigma=10, clip=True, rounds=False, gray_noise=False, rng=None):
    return _finish(img + generate_gaussian_noise(img, sigma, gray_noise, rng), clip, rounds)


def _draw_strength(value_range, gray_prob, rng):
    """The random noise strength in ``value_range`` and whether it is gray, drawn in BasicSR's order."""
    u = np.random.uniform if rng is None else rng.uniform
    value = u(value_range[0], value_range[1])
    return value, u() < gray_prob


def random_generate_gaussian_noise(img, sigma_range=(0, 10), gray_prob=0, rng=None):
    return generate_gaussian_noise(img, *_draw_strength(sigma_range, gray_prob, rng), rng)


def random_add_gaussian_noise(img, sigma_range=(0, 1.0), gray_prob=0, clip=True, rounds=False, rng=None):
    return _finish(img + random_generate_gaussian_noise(img, sigma_range, gray_prob, rng), clip, rounds)


def _levels(img):
    vals = len(np.unique(img))
    return 2 ** np.ceil(np.log2(vals))


def generate_poisson_noise(img, scale=1.0, gray_noise=False, rng=None):
    """Poisson noise for an H x W x 3 BGR float image in [0, 1] (see the module notes)."""
    import cv2

    poisson = np.random.poisson if rng is None else rng.poisson
    if gray_noise:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    img = np.clip((img * 255.0).round(), 0, 255) / 255.
    vals = _levels(img)
    out = np.float32(poisson(img * vals) / float(vals))
    noise = out - img
    if gray_noise:
        noise = np.repeat(noise[:, :, np.newaxis], 3, axis=2)
    return noise * scale


def add_poisson_noise(img, scale=1.0, clip=True, rounds=False, gray_noise=False, rng=None):
    return _finish(img + generate_poisson_noise(img, scale, gray_noise, rng), clip, rounds)


def random_generate_poisson_noise(img, scale_range=(0, 1.0), gray_prob=0, rng=None):
    return generate_poisson_noise(img, *_draw_strength(scale_range, gray_prob, rng), rng)


def random_add_poisson_noise(img, scale_range=(0, 1.0), gray_prob=0, clip=True, rounds=False, rng=None):
    return _finish(img + random_generate_poisson_noise(img, scale_range, gray_prob, rng), clip, rounds)


# --------------------------------------------------------------------------------------------------- torch
def rgb_to_grayscale_pt(img: torch.Tensor) -> torch.Tensor:
    """``B x 3 x H x W`` RGB -> ``B x 1 x H x W`` luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights)."""
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(dim=-3)


def _per_image(value, b):
    return value if isinstance(value, (float, int)) else value.view(b, 1, 1, 1)


def _gray_flags(gray_noise, b):
    if isinstance(gray_noise, (float, int)):
        return gray_noise, gray_noise > 0
    gray_noise = gray_noise.view(b, 1, 1, 1)
    return gray_noise, bool(torch.sum(gray_noise) > 0)


def generate_gaussian_noise_pt(img, sigma=10, gray_noise=0, generator=None):
    """Gaussian noise for a ``B x C x H x W`` batch; ``sigma`` and ``gray_noise`` numbers or ``(B,)`` tensors."""
    b, _, h, w = img.size()
    sigma = _per_image(sigma, b)
    gray_noise, cal_gray_noise = _gray_flags(gray_noise, b)
    if cal_gray_noise:
        noise_gray = torch.randn(*img.size()[2:4], dtype=img.dtype, device=img.device, generator=generator)
        noise_gray = noise_gray * sigma / 255.
        noise_gray = noise_gray.view(b, 1, h, w)
    noise = torch.randn(*img.size(), dtype=img.dtype, device=img.device, generator=generator) * sigma / 255.
    if cal_gray_noise:
        noise = noise * (1 - gray_noise) + noise_gray * gray_noise
    return noise


def add_gaussian_noise_pt(img, sigma=10, gray_noise=0, clip=True, rounds=False, generator=None):
    return _finish(img + generate_gaussian_noise_pt(img, sigma, gray_noise, generator), clip, rounds)


def _uniform_per_image(img, value_range, generator):
    return torch.rand(img.size(0), dtype=img.dtype, device=img.device, generator=generator) * (
        value_range[1] - value_range[0]) + value_range[0]


def random_generate_gaussian_noise_pt(img, sigma_range=(0, 10), gray_prob=0, generator=None):
    sigma = _uniform_per_image(img, sigma_range, generator)
    gray_noise = (torch.rand(img.size(0), dtype=img.dtype, device=img.device, generator=generator) < gray_prob).float()
    return generate_gaussian_noise_pt(img, sigma, gray_noise, generator)


def random_add_gaussian_noise_pt(img, sigma_range=(0, 1.0), gray_prob=0, clip=True, rounds=False, generator=None):
    return _finish(img + random_generate_gaussian_noise_pt(img, sigma_range, gray_prob, generator), clip, rounds)


def _poisson_levels(img):
    """``2^ceil(log2(#distinct values))`` per image of a batch already rounded to the 8-bit grid.

    The values are k / 255, so counting the non-empty bins of ``k`` is ``len(torch.unique(...))``, batched.
    """
    b = img.size(0)
    k = torch.round(img * 255).long().clamp_(0, 255).view(b, -1)
    k = k + 256 * torch.arange(b, device=img.device).view(b, 1)
    distinct = (torch.bincount(k.view(-1), minlength=256 * b).view(b, 256) > 0).sum(1)
    return torch.exp2(torch.ceil(torch.log2(distinct.double()))).to(img.dtype).view(b, 1, 1, 1)


def generate_poisson_noise_pt(img, scale=1.0, gray_noise=0, generator=None):
    """Poisson noise for a ``B x 3 x H x W`` RGB batch in [0, 1]; ``scale`` / ``gray_noise`` numbers or ``(B,)``."""
    b, _, h, w = img.size()
    gray_noise, cal_gray_noise = _gray_flags(gray_noise, b)
    if cal_gray_noise:
        img_gray = torch.clamp((rgb_to_grayscale_pt(img) * 255.0).round(), 0, 255) / 255.
        vals = _poisson_levels(img_gray)
        out = torch.poisson(img_gray * vals, generator=generator) / vals
        noise_gray = (out - img_gray).expand(b, 3, h, w)
    img = torch.clamp((img * 255.0).round(), 0, 255) / 255.
    vals = _poisson_levels(img)
    out = torch.poisson(img * vals, generator=generator) / vals
    noise = out - img
    if cal_gray_noise:
        noise = noise * (1 - gray_noise) + noise_gray * gray_noise
    return noise * _per_image(scale, b)


def add_poisson_noise_pt(img, scale=1.0, clip=True, rounds=False, gray_noise=0, generator=None):
    return _finish(img + generate_poisson_noise_pt(img, scale, gray_noise, generator), clip, rounds)


def random_generate_poisson_noise_pt(img, scale_range=(0, 1.0), gray_prob=0, generator=None):
    scale = _uniform_per_image(img, scale_range, generator)
    gray_noise = (torch.rand(img.size(0), dtype=img.dtype, device=img.device, generator=generator) < gray_prob).float()
    return generate_poisson_noise_pt(img, scale, gray_noise, generator)


def random_add_poisson_noise_pt(img, scale_range=(0, 1.0), gray_prob=0, clip=True, rounds=False, generator=None):
    return _finish(img + random_generate_poisson_noise_pt(img, scale_range, gray_prob, generator), clip, rounds)
