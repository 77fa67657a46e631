"""The on-the-fly degradation's share of a Real-ESRGAN training step, and its throughput against a per-sample
implementation, measured in one run.

    python benchmarks/degradation.py                              # CPU, the configuration below
    python benchmarks/degradation.py --device cuda --batch 12 --crop-pad 400 --gt-size 256 --blocks 23

Configuration (Real-ESRGAN x4plus shrunk to a 2-core CPU; every size is printed): batch ``--batch`` (4),
GT ``--crop-pad`` (256; Real-ESRGAN 400) cropped to ``--gt-size`` (128; Real-ESRGAN 256) after degrading, the
published degradation keys and kernels, RRDBNet 64 features x ``--blocks`` (23, Real-ESRGAN's generator),
UNetDiscriminatorSN 64, L1 + perceptual (VGG19 with random weights: the cost is the same) + GAN 0.1, EMA.

Reported:
  * degradation: ``SyntheticPairs`` on a batch (USM of the GT, the two stages, final sinc + JPEG, crop, pool),
    with its separable USM blur on CPU, and with BasicSR's 2-D 51 x 51 blur (``USMSharp(fast=False)``);
  * step: ``feed_data`` + ``optimize_parameters`` of ``RealESRGANModel`` (degradation included);
  * share = degradation / step (target: at most 15 %);
  * pairs/s of the batched torch degradation against a straightforward per-sample implementation written below
    (OpenCV / numpy on one image at a time: ``cv2.filter2D``, ``cv2.resize``, numpy noise, OpenCV JPEG).
Times are medians of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desra.config import finalize_options  # noqa: E402
from desra.data.degradations.pipeline import DEGRADATION_DEFAULTS, SyntheticPairs  # noqa: E402
from desra.data.degradations import usm_sharp  # noqa: E402

KERNELS = {'kernel_list': ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso'],
           'kernel_prob': [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]}


def make_batch(n, size, seed=0):
    """GT crops of a real-looking texture and the data set's kernels (RealESRGANDataset's draws)."""
    from desra.data.realesrgan_dataset import RealESRGANDataset

    rng = np.random.default_rng(seed)
    ds = RealESRGANDataset.__new__(RealESRGANDataset)
    ds.stages = [{'blur_kernel_size': 21, **KERNELS, 'sinc_prob': 0.1, 'blur_sigma': [0.2, 3], 'betag_range': [0.5, 4],
                  'betap_range': [1, 2]},
                 {'blur_kernel_size': 21, **KERNELS, 'sinc_prob': 0.1, 'blur_sigma': [0.2, 1.5],
                  'betag_range': [0.5, 4], 'betap_range': [1, 2]}]
    ds.max_kernel, ds.final_sinc_prob = 21, 0.8
    from desra.data.degradations.kernels import Draws, circular_lowpass_kernel

    items = []
    for i in range(n):
        base = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
        gt = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.
        draw = Draws(np.random.default_rng(seed * 1000 + i))
        k1, _ = ds._kernel(ds.stages[0], draw)
        k2, _ = ds._kernel(ds.stages[1], draw)
        sinc = circular_lowpass_kernel(draw.uniform(np.pi / 3, np.pi), 13, pad_to=21)
        items.append((gt, k1, k2, sinc))
    return items


def to_batch(items, device):
    gt = torch.from_numpy(np.stack([it[0][..., ::-1].transpose(2, 0, 1) for it in items]).copy())
    return {'gt': gt.to(device), 'kernel1': torch.tensor(np.stack([it[1] for it in items])).float().to(device),
            'kernel2': torch.tensor(np.stack([it[2] for it in items])).float().to(device),
            'sinc_kernel': torch.tensor(np.stack([it[3] for it in items])).float().to(device)}


def per_sample(items, scale, gt_size, rng):
    """A straightforward per-image implementation of the same two-stage degradation (OpenCV / numpy)."""
    o = DEGRADATION_DEFAULTS
    out = []
    modes = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC]
    for gt, k1, k2, sinc in items:
        h, w = gt.shape[:2]
        img = usm_sharp(gt)
        for stage in ('', '2'):
            if stage == '' or rng.random() < o['second_blur_prob']:
                img = cv2.filter2D(img, -1, (k1 if stage == '' else k2).astype(np.float32),
                                   borderType=cv2.BORDER_REFLECT_101)
            kind = rng.choice(3, p=o[f'resize_prob{stage}'])
            lo, hi = o[f'resize_range{stage}']
            f = rng.uniform(1, hi) if kind == 0 else rng.uniform(lo, 1) if kind == 1 else 1
            size = (max(1, int(w * f)), max(1, int(h * f))) if stage == '' else (int(w / scale * f), int(h / scale * f))
            img = cv2.resize(img, size, interpolation=modes[rng.integers(3)])
            if rng.random() < o[f'gaussian_noise_prob{stage}']:
                sigma = rng.uniform(*o[f'noise_range{stage}'])
                img = img + rng.standard_normal(img.shape).astype(np.float32) * sigma / 255
            else:
                q = np.clip(np.round(img * 255), 0, 255) / 255
                vals = 2 ** math.ceil(math.log2(len(np.unique(q))))
                scale_p = rng.uniform(*o[f'poisson_scale_range{stage}'])
                img = img + (rng.poisson(q * vals) / vals - q).astype(np.float32) * scale_p
            img = np.clip(img, 0, 1)
            ok, enc = cv2.imencode('.jpg', np.rint(img * 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(*o[f'jpeg_range{stage}']))])
            img = cv2.imdecode(enc, 1).astype(np.float32) / 255
        img = cv2.resize(img, (w // scale, h // scale), interpolation=modes[rng.integers(3)])
        img = cv2.filter2D(img, -1, sinc.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        lq = np.clip(np.round(img * 255), 0, 255) / 255
        lq_size = gt_size // scale
        top, left = rng.integers(0, lq.shape[0] - lq_size + 1), rng.integers(0, lq.shape[1] - lq_size + 1)
        out.append((gt[top * scale:top * scale + gt_size, left * scale:left * scale + gt_size],
                    lq[top:top + gt_size // scale, left:left + gt_size // scale]))
    return out


def median_time(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--crop-pad', type=int, default=256)
    ap.add_argument('--gt-size', type=int, default=128)
    ap.add_argument('--blocks', type=int, default=23)
    ap.add_argument('--repeats', type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda: None)
    opt = {'name': 'bench', 'model_type': 'RealESRGANModel', 'scale': 4, 'manual_seed': 0, 'is_train': True,
           'l1_gt_usm': True, 'percep_gt_usm': True, 'gan_gt_usm': False, **DEGRADATION_DEFAULTS,
           'gt_size': args.gt_size, 'queue_size': args.batch * 2,
           'datasets': {'train': {'type': 'RealESRGANDataset', 'batch_size_per_gpu': args.batch}},
           'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': args.blocks,
                         'num_grow_ch': 32},
           'network_d': {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 64, 'skip_connection': True},
           'train': {'ema_decay': 0.999, 'total_iter': 10,
                     'optim_g': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.99]},
                     'optim_d': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.99]},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                     'perceptual_opt': {'type': 'PerceptualLoss', 'layer_weights': {'conv1_2': 0.1, 'conv2_2': 0.1,
                                                                                    'conv3_4': 1, 'conv4_4': 1,
                                                                                    'conv5_4': 1},
                                        'weights': 'random', 'criterion': 'l1'},
                     'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1}}}
    finalize_options(opt)
    from desra.models import build_model

    items = make_batch(args.batch, args.crop_pad)
    batch = to_batch(items, device)
    synth = SyntheticPairs(opt, device)
    it = [0]

    def degrade():
        it[0] += 1
        synth(batch, it[0])

    t_deg = median_time(degrade, args.repeats, sync)
    synth_default = synth
    synth = SyntheticPairs(opt, device)
    synth.usm.fast = False  # BasicSR's 2-D 51 x 51 blur for the USM of the GT, bit-equal to BasicSR's USMSharp
    t_exact = median_time(degrade, args.repeats, sync)
    synth = synth_default
    model = build_model(opt, device)

    def step():
        it[0] += 1
        model.current_iter = it[0]
        model.feed_data(batch)
        model.optimize_parameters(it[0])

    t_step = median_time(step, max(2, args.repeats // 2), sync)
    rng = np.random.default_rng(0)
    t_loop = median_time(lambda: per_sample(items, 4, args.gt_size, rng), args.repeats, sync)
    print(f'device {device}, torch threads {torch.get_num_threads()}; batch {args.batch}, GT {args.crop_pad}x'
          f'{args.crop_pad} -> crop {args.gt_size}, RRDBNet 64x{args.blocks} + UNetDiscriminatorSN 64, '
          f'L1 + perceptual (VGG19) + GAN, EMA')
    print(f'degradation (batched, torch):   {1000 * t_deg:9.1f} ms per batch  = {args.batch / t_deg:7.1f} pairs/s')
    print(f'  with the 2-D USM blur:       {1000 * t_exact:9.1f} ms per batch  = {args.batch / t_exact:7.1f} pairs/s')
    print(f'training step (with it):       {1000 * t_step:9.1f} ms per batch')
    print(f'share of the step:             {100 * t_deg / t_step:9.2f} %   (target <= 15 %; '
          f'{100 * t_exact / t_step:.2f} % with the 2-D USM blur)')
    print(f'per-sample OpenCV/numpy loop:  {1000 * t_loop:9.1f} ms per batch  = {args.batch / t_loop:7.1f} pairs/s')
    print(f'batched / per-sample speed:    {t_loop / t_deg:9.2f}x   ({t_loop / t_exact:.2f}x with the 2-D USM blur)')


if __name__ == '__main__':
    main()
