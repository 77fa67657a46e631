"""Real-ESRGAN's second-order degradation of a training batch, the training-pair pool, and the synthesis part a
model is given (``high_order_degradation: true``).

One batch, in Real-ESRGAN's order (``B x 3 x H x W`` RGB in [0, 1], on the training device):

1. blur with each image's first kernel (``kernel1``, from the data set);
2. resize by a factor drawn per batch: up ~ U(1, ``resize_range[1]``), down ~ U(``resize_range[0]``, 1) or keep,
   with probabilities ``resize_prob``, in a mode drawn from ``area`` / ``bilinear`` / ``bicubic``;
3. noise, per batch Gaussian (probability ``gaussian_noise_prob``; sigma ~ U(``noise_range``) per image) or
   Poisson (scale ~ U(``poisson_scale_range``) per image), gray with probability ``gray_noise_prob`` per image;
4. clamp to [0, 1], JPEG with a quality ~ U(``jpeg_range``) per image;
5. with probability ``second_blur_prob`` blur with ``kernel2``; resize (``resize_prob2``, ``resize_range2``) to
   ``int(H / scale * factor)``; noise (the ``*2`` keys); then, in random order (p = 1/2), either [resize to
   ``H / scale`` + sinc filter] then JPEG (``jpeg_range2``), or JPEG then [resize + sinc]; the sinc kernel is the
   data set's ``sinc_kernel`` (a pulse when no sinc was drawn);
6. ``lq = round(clamp(out, 0, 1) * 255) / 255``.

Then the GT and LQ are cropped together (``gt_size``) and go through the training-pair pool (``queue_size``
pairs): once full, each batch is swapped with ``B`` random pairs of the shuffled pool, so a batch mixes
degradations drawn in different iterations.

Randomness: every draw of an iteration comes from generators seeded by ``(manual_seed, iteration, rank)``
(:func:`iteration_generators`), so a resumed run repeats the draws; the pool is saved in the training state.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from desra.data.degradations.filtering import RESIZE_MODES, USMSharp, filter2D, resize_pt
from desra.data.degradations.jpeg import DiffJPEG
from desra.data.degradations.noise import add_gaussian_noise_pt, add_poisson_noise_pt
from desra.errors import ConfigError

__all__ = ['DEGRADATION_DEFAULTS', 'IterationDraws', 'iteration_generators', 'RealESRGANDegradation',
           'TrainingPairPool', 'SyntheticPairs', 'check_degradation_options']

#: Real-ESRGAN x4plus's published values of the model-side keys (used for keys an option file leaves out).
DEGRADATION_DEFAULTS = {
    'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5, 'noise_range': [1, 30],
    'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
    'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.3, 1.2],
    'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5],
    'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95],
}

_SEED_TAG = 0x5EED_DE6  # separates these streams from the data side's per-sample seeds


class IterationDraws:
    """The random draws of one iteration: a numpy ``Generator`` for scalars and a ``torch.Generator`` for tensors."""

    def __init__(self, np_rng: np.random.Generator, torch_gen: torch.Generator):
        self.np, self.torch = np_rng, torch_gen

    def uniform(self, low=0.0, high=1.0) -> float:
        return float(self.np.uniform(low, high))

    def choices(self, population, weights):
        p = np.asarray(weights, np.float64)
        return population[int(self.np.choice(len(population), p=p / p.sum()))]

    def choice(self, population):
        return population[int(self.np.integers(0, len(population)))]


def iteration_generators(seed: int, iteration: int, rank: int, device) -> IterationDraws:
    """Fresh generators for ``(seed, iteration, rank)``: nothing to save, and a resumed run draws the same."""
    ss = np.random.SeedSequence([int(seed) % (2 ** 32), int(iteration), int(rank), _SEED_TAG])
    np_seed, torch_seed = ss.generate_state(2, dtype=np.uint64)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(torch_seed) & ((1 << 63) - 1))
    return IterationDraws(np.random.default_rng(int(np_seed)), gen)


# ------------------------------------------------------------------------------------------------ options
def _range(opt, key, kp, low=None):
    v = opt[key]
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and
                                                                 not isinstance(x, bool) for x in v)):
        raise ConfigError(f'{kp}{key}: expected [low, high], got {v!r}')
    if v[0] > v[1] or (low is not None and v[0] < low):
        bound = f' with low >= {low}' if low is not None else ''
        raise ConfigError(f'{kp}{key}: expected [low, high] with low <= high{bound}, got {list(v)}')
    return [float(v[0]), float(v[1])]


def _prob(opt, key, kp):
    v = opt[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ConfigError(f'{kp}{key}: expected a probability in [0, 1], got {v!r}')
    return float(v)


def _probs(opt, key, kp, n):
    v = opt[key]
    if not (isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  and x >= 0 for x in v)):
        raise ConfigError(f'{kp}{key}: expected {n} probabilities (up, down, keep), got {v!r}')
    if not math.isclose(sum(v), 1.0, abs_tol=1e-6):
        raise ConfigError(f'{kp}{key}: the probabilities sum to {sum(v):g}, expected 1')
    return [float(x) for x in v]


def check_degradation_options(opt: dict, key_path: str = '') -> dict:
    """The model-side keys, checked and completed with Real-ESRGAN's published values; returns a new dict."""
    kp = f'{key_path}.' if key_path else ''
    full = {**DEGRADATION_DEFAULTS, **{k: opt[k] for k in DEGRADATION_DEFAULTS if opt.get(k) is not None}}
    out = {}
    for stage in ('', '2'):
        out[f'resize_prob{stage}'] = _probs(full, f'resize_prob{stage}', kp, 3)
        out[f'resize_range{stage}'] = _range(full, f'resize_range{stage}', kp, low=1e-6)
        out[f'gaussian_noise_prob{stage}'] = _prob(full, f'gaussian_noise_prob{stage}', kp)
        out[f'noise_range{stage}'] = _range(full, f'noise_range{stage}', kp, low=0)
        out[f'poisson_scale_range{stage}'] = _range(full, f'poisson_scale_range{stage}', kp, low=0)
        out[f'gray_noise_prob{stage}'] = _prob(full, f'gray_noise_prob{stage}', kp)
        jr = _range(full, f'jpeg_range{stage}', kp, low=1)
        if jr[1] > 100:
            raise ConfigError(f'{kp}jpeg_range{stage}: JPEG qualities are in [1, 100], got {jr}')
        out[f'jpeg_range{stage}'] = jr
    out['second_blur_prob'] = _prob(full, 'second_blur_prob', kp)
    return out


# ------------------------------------------------------------------------------------------------ degradation
class RealESRGANDegradation:
    """The batch degradation of the module notes. ``record`` (a dict) receives the values drawn, for pictures."""

    def __init__(self, opt: dict, scale: int, device, key_path: str = ''):
        self.opt = check_degradation_options(opt, key_path)
        self.scale = int(scale)
        self.jpeger = DiffJPEG(differentiable=False).to(device)

    def _resize(self, out, draws, stage, size_base, record):
        o = self.opt
        kind = draws.choices(['up', 'down', 'keep'], o[f'resize_prob{stage}'])
        lo, hi = o[f'resize_range{stage}']
        factor = draws.uniform(1, hi) if kind == 'up' else draws.uniform(lo, 1) if kind == 'down' else 1
        mode = draws.choice(list(RESIZE_MODES))
        if size_base is None:
            out = resize_pt(out, scale_factor=factor, mode=mode)
        else:
            h, w = size_base
            out = resize_pt(out, size=(int(h / self.scale * factor), int(w / self.scale * factor)), mode=mode)
        record[f'resize{stage}'] = (kind, round(float(factor), 3), mode)
        return out

    def _noise(self, out, draws, stage, record):
        o = self.opt
        b = out.size(0)
        gray_prob = o[f'gray_noise_prob{stage}']
        gen = draws.torch
        if draws.uniform() < o[f'gaussian_noise_prob{stage}']:
            lo, hi = o[f'noise_range{stage}']
            sigma = torch.rand(b, dtype=out.dtype, device=out.device, generator=gen) * (hi - lo) + lo
            gray = (torch.rand(b, dtype=out.dtype, device=out.device, generator=gen) < gray_prob).float()
            out = add_gaussian_noise_pt(out, sigma, gray, clip=True, rounds=False, generator=gen)
            record[f'noise{stage}'] = [('gaussian', round(float(s), 2), bool(g)) for s, g in zip(sigma, gray)]
        else:
            lo, hi = o[f'poisson_scale_range{stage}']
            scale = torch.rand(b, dtype=out.dtype, device=out.device, generator=gen) * (hi - lo) + lo
            gray = (torch.rand(b, dtype=out.dtype, device=out.device, generator=gen) < gray_prob).float()
            out = add_poisson_noise_pt(out, scale, clip=True, rounds=False, gray_noise=gray, generator=gen)
            record[f'noise{stage}'] = [('poisson', round(float(s), 2), bool(g)) for s, g in zip(scale, gray)]
        return out

    def _jpeg(self, out, draws, stage, record):
        lo, hi = self.opt[f'jpeg_range{stage}']
        quality = out.new_zeros(out.size(0)).uniform_(lo, hi, generator=draws.torch)
        record[f'jpeg{stage}'] = [round(float(q), 1) for q in quality]
        return self.jpeger(torch.clamp(out, 0, 1), quality=quality)

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, kernel1: torch.Tensor, kernel2: torch.Tensor, sinc_kernel: torch.Tensor,
                 draws: IterationDraws, record: dict | None = None) -> torch.Tensor:
        """Degrade ``img`` (``B x 3 x H x W``) to ``B x 3 x H/scale x W/scale``; ``record`` gets what was drawn."""
        record = {} if record is None else record
        ori_h, ori_w = img.size()[2:4]
        # first stage
        out = filter2D(img, kernel1)
        out = self._resize(out, draws, '', None, record)
        out = self._noise(out, draws, '', record)
        out = self._jpeg(out, draws, '', record)
        # second stage
        blur2 = draws.uniform() < self.opt['second_blur_prob']
        record['blur2'] = bool(blur2)
        if blur2:
            out = filter2D(out, kernel2)
        out = self._resize(out, draws, '2', (ori_h, ori_w), record)
        out = self._noise(out, draws, '2', record)
        target = (ori_h // self.scale, ori_w // self.scale)
        if draws.uniform() < 0.5:
            record['final'] = 'resize+sinc, jpeg'
            out = resize_pt(out, size=target, mode=draws.choice(list(RESIZE_MODES)))
            out = filter2D(out, sinc_kernel)
            out = self._jpeg(out, draws, '2', record)
        else:
            record['final'] = 'jpeg, resize+sinc'
            out = self._jpeg(out, draws, '2', record)
            out = resize_pt(out, size=target, mode=draws.choice(list(RESIZE_MODES)))
            out = filter2D(out, sinc_kernel)
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.


# ------------------------------------------------------------------------------------------------ pool
def _pack(t: torch.Tensor) -> dict:
    """A CPU copy for the training state: uint8 when the values are exactly k / 255 (lossless), else float."""
    t = t.detach().cpu()
    q = torch.round(t * 255).clamp_(0, 255).to(torch.uint8)
    if torch.equal(q.float() / 255., t.float()):
        return {'uint8': q}
    return {'float': t.clone()}


def _unpack(d: dict, device) -> torch.Tensor:
    if 'uint8' in d:
        return (d['uint8'].float() / 255.).to(device)
    return d['float'].to(device)


class TrainingPairPool:
    """Real-ESRGAN's pool of ``queue_size`` (LQ, GT) pairs (see the module notes)."""

    def __init__(self, queue_size: int = 180):
        self.queue_size = int(queue_size)
        self.lq = self.gt = None
        self.ptr = 0

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None):
        b = lq.size(0)
        if self.lq is None:
            if self.queue_size % b:
                raise ConfigError(f'queue_size: {self.queue_size} should be a multiple of the batch size {b}')
            self.lq = lq.new_zeros((self.queue_size, *lq.shape[1:]))
            self.gt = gt.new_zeros((self.queue_size, *gt.shape[1:]))
            self.ptr = 0
        if self.ptr == self.queue_size:  # full: swap the batch with B random pairs of the shuffled pool
            gen_device = generator.device if generator is not None else torch.device('cpu')
            idx = torch.randperm(self.queue_size, generator=generator, device=gen_device).to(self.lq.device)
            self.lq, self.gt = self.lq[idx], self.gt[idx]
            lq_out, gt_out = self.lq[0:b].clone(), self.gt[0:b].clone()
            self.lq[0:b], self.gt[0:b] = lq.clone(), gt.clone()
            return lq_out, gt_out
        self.lq[self.ptr:self.ptr + b] = lq.clone()
        self.gt[self.ptr:self.ptr + b] = gt.clone()
        self.ptr += b
        return lq, gt

    def state_dict(self) -> dict:
        if self.lq is None:
            return {'queue_size': self.queue_size, 'ptr': 0}
        return {'queue_size': self.queue_size, 'ptr': self.ptr, 'lq': _pack(self.lq), 'gt': _pack(self.gt)}

    def load_state_dict(self, state: dict, device) -> None:
        if int(state.get('queue_size', self.queue_size)) != self.queue_size:
            raise ConfigError(f"queue_size: {self.queue_size}, but the training state holds a pool of "
                              f"{state.get('queue_size')} pairs; resume with the queue_size it was saved with")
        self.ptr = int(state.get('ptr', 0))
        if 'lq' in state:
            self.lq, self.gt = _unpack(state['lq'], device), _unpack(state['gt'], device)
        else:
            self.lq = self.gt = None


# ------------------------------------------------------------------------------------------------ the model part
class SyntheticPairs:
    """What ``high_order_degradation: true`` gives a model: GT batch + kernels in, (LQ, GT) training pairs out.

    Args:
        opt: the top-level options (the degradation keys, ``scale``, ``gt_size``, ``queue_size``).
        device: the training device.
        source: ``'usm'`` degrades the USM-sharpened GT (Real-ESRGAN's GAN models), ``'gt'`` the GT itself.
        sharpen_gt: USM-sharpen the GT first, also as the target (RealESRNet's ``gt_usm``).
    """

    def __init__(self, opt: dict, device, source: str = 'usm', sharpen_gt: bool = False):
        if opt.get('gt_size') is None:
            raise ConfigError('gt_size: missing required key for high_order_degradation (the GT patch cropped '
                              'after the degradation, e.g. 256)')
        self.scale = int(opt['scale'])
        self.gt_size = int(opt['gt_size'])
        if self.gt_size % self.scale:
            raise ConfigError(f'gt_size: {self.gt_size} is not a multiple of scale {self.scale}')
        queue_size = opt.get('queue_size', 180)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f'queue_size: expected a positive integer, got {queue_size!r}')
        batch = ((opt.get('datasets') or {}).get('train') or {}).get('batch_size_per_gpu')
        if isinstance(batch, int) and queue_size % batch:
            raise ConfigError(f'queue_size: {queue_size} is not a multiple of datasets.train.batch_size_per_gpu '
                              f'{batch} (Real-ESRGAN: 180 with batch 12)')
        self.device = device
        self.degradation = RealESRGANDegradation(opt, self.scale, device)
        self.pool = TrainingPairPool(queue_size)
        # the fast (separable) blur on CPU: the pairs are random draws anyway, and it is 9x cheaper there
        self.usm = USMSharp(fast=True).to(device)
        self.source, self.sharpen_gt = source, sharpen_gt
        self.seed = int(opt.get('manual_seed') or 0)

    @torch.no_grad()
    def __call__(self, data: dict, iteration: int, rank: int = 0, record: dict | None = None, use_pool: bool = True):
        from desra.data.transforms import paired_random_crop

        draws = iteration_generators(self.seed, iteration, rank, self.device)
        gt = data['gt'].to(self.device)
        if self.sharpen_gt:
            gt = self.usm(gt)
        src = self.usm(gt) if self.source == 'usm' else gt
        lq = self.degradation(src, data['kernel1'].to(self.device), data['kernel2'].to(self.device),
                              data['sinc_kernel'].to(self.device), draws, record)
        gt, lq = paired_random_crop(gt, lq, self.gt_size, self.scale, rng=draws.np)
        if use_pool:
            lq, gt = self.pool(lq, gt, draws.torch)
        return lq.contiguous(), gt
