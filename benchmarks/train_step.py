"""Our GAN + LDL training step against a plain loop that mirrors the released LDL step, in one run.

    python benchmarks/train_step.py                                   # CPU: RRDB 23, gt 128, batch 2
    python benchmarks/train_step.py --device cuda --gt-size 256 --batch 12 --variants fp32 bf16 bf16+cl
    python benchmarks/train_step.py --blocks 2 --repeats 2            # a quick look

The configuration is LDL's synthetic x4 recipe (``train_Synthetic_LDL.yml``): RRDBNet 64 features x ``--blocks``
(23), VGGStyleDiscriminator (128 or 256 input), L1 1e-2 + LDL artifact loss 1.0 + perceptual 1.0 (VGG19
conv1_2 .1, conv2_2 .1, conv3_4/4_4/5_4 1; random weights, the cost is the same) + relativistic GAN 5e-3, Adam
1e-4 (0.9, 0.99) for G and D, EMA 0.999.

**Reference** (written here, after the released ``ESRGANArtifactsDisModel.optimize_parameters`` on BasicSR):
fp32, contiguous (NCHW) tensors, ``torch.optim.Adam`` with torch's default implementation, the artifact map by
``F.unfold`` windows (the released function), BasicSR's order of forwards (``net_d(gt).detach()`` with a graph,
``net_d(output).detach()`` before D's real pass) and its EMA loop (``mul_`` / ``add_`` per parameter).

**Ours**: ``ESRGANArtifactsDisModel`` (``feed_data`` + ``optimize_parameters``) with the speed options of each
variant: ``fp32`` (defaults of the device: ``channels_last``, fused Adam, ...), ``plain`` (every speed option
off: what the framework does without them), ``bf16`` / ``fp16`` (AMP on CUDA), ``+cl`` / ``-cl`` (force
``channels_last`` on / off), ``+compile`` (``torch.compile``, its compile time excluded: it is reported apart).

Each measurement is the median of ``--repeats`` steps after ``--warmup`` steps; the reference and the variants
are interleaved step by step so that a busy machine slows all of them alike. Prints a table: ms per step, speed-up
against the reference (target: >= 1.15x on CPU with the defaults; >= 1.5x on CUDA with bf16 + channels_last).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from desra.models import build_model  # noqa: E402
from ldl_map import ref_unfold as released_artifact_map  # noqa: E402  (LDL's released unfold map)
from desra.models.base_model import build_loss, build_network  # noqa: E402

LAYERS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1, 'conv5_4': 1}


def options(args, variant: str) -> dict:
    net_d = 'VGGStyleDiscriminator128' if args.gt_size == 128 else 'VGGStyleDiscriminator256'
    train = {'ema_decay': 0.999,
             'optim_g': {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
             'optim_d': {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
             'total_iter': 1000, 'warmup_iter': -1,
             'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1e-2, 'reduction': 'mean'},
             'artifacts_opt': {'type': 'LDLArtifactLoss', 'loss_weight': 1.0},
             'perceptual_opt': {'type': 'PerceptualLoss', 'layer_weights': LAYERS, 'vgg_type': 'vgg19',
                                'use_input_norm': True, 'perceptual_weight': 1.0, 'style_weight': 0,
                                'range_norm': False, 'criterion': 'l1', 'weights': 'random'},
             'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
                         'loss_weight': 5e-3}}
    parts = variant.split('+')
    base, extra = parts[0], parts[1:]
    if base == 'plain':
        train.update(channels_last=False, fused_optim=False, cudnn_benchmark=False, tf32=False, compile=False)
    elif base in ('bf16', 'fp16'):
        train.update(use_amp=True, amp_dtype=base)
    elif base != 'fp32':
        raise SystemExit(f'error: --variants {variant}: expected fp32, plain, bf16 or fp16, then +cl, -cl, +compile')
    for e in extra:
        if e == 'cl':
            train['channels_last'] = True
        elif e == 'compile':
            train['compile'] = True
        elif e == 'nocl':
            train['channels_last'] = False
        else:
            raise SystemExit(f'error: --variants {variant}: unknown part +{e} (cl, nocl, compile)')
    return {'name': 'bench', 'model_type': 'ESRGANArtifactsDisModel', 'scale': 4, 'is_train': True,
            'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64,
                          'num_block': args.blocks, 'num_grow_ch': 32},
            'network_d': {'type': net_d, 'num_in_ch': 3, 'num_feat': 64}, 'train': train}


class Reference:
    """The released LDL step (see the module notes), on its own copies of the networks."""

    def __init__(self, opt, device):
        self.net_g = build_network(opt['network_g'], 'network_g').to(device)
        self.net_d = build_network(opt['network_d'], 'network_d').to(device)
        self.net_g_ema = copy.deepcopy(self.net_g).eval()
        t = opt['train']
        self.cri_pix = build_loss(t['pixel_opt'], 'pixel_opt').to(device)
        self.cri_perceptual = build_loss(t['perceptual_opt'], 'perceptual_opt').to(device)
        self.cri_gan = build_loss(t['gan_opt'], 'gan_opt').to(device)
        self.opt_g = torch.optim.Adam(self.net_g.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.opt_d = torch.optim.Adam(self.net_d.parameters(), lr=1e-4, betas=(0.9, 0.99))

    def step(self, lq, gt):
        for p in self.net_d.parameters():
            p.requires_grad = False
        self.opt_g.zero_grad()
        output = self.net_g(lq)
        with torch.no_grad():
            output_ema = self.net_g_ema(lq)
        l_total = self.cri_pix(output, gt)
        weight = released_artifact_map(gt, output, output_ema)
        l_total = l_total + F.l1_loss(weight * output, weight * gt)
        l_percep, _ = self.cri_perceptual(output, gt)
        l_total = l_total + l_percep
        real_d_pred = self.net_d(gt).detach()
        fake_g_pred = self.net_d(output)
        l_g_real = self.cri_gan(real_d_pred - torch.mean(fake_g_pred), False, is_disc=False)
        l_g_fake = self.cri_gan(fake_g_pred - torch.mean(real_d_pred), True, is_disc=False)
        l_total = l_total + (l_g_real + l_g_fake) / 2
        l_total.backward()
        self.opt_g.step()

        for p in self.net_d.parameters():
            p.requires_grad = True
        self.opt_d.zero_grad()
        fake_d_pred = self.net_d(output).detach()
        real_d_pred = self.net_d(gt)
        l_d_real = self.cri_gan(real_d_pred - torch.mean(fake_d_pred), True, is_disc=True) * 0.5
        l_d_real.backward()
        fake_d_pred = self.net_d(output.detach())
        l_d_fake = self.cri_gan(fake_d_pred - torch.mean(real_d_pred.detach()), False, is_disc=True) * 0.5
        l_d_fake.backward()
        self.opt_d.step()

        with torch.no_grad():
            ema = dict(self.net_g_ema.named_parameters())
            for k, p in self.net_g.named_parameters():
                ema[k].mul_(0.999).add_(p, alpha=0.001)


def main():
    doc = __doc__
    p = argparse.ArgumentParser(description=doc.split('\n\n')[0], epilog=doc.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--blocks', type=int, default=23)
    p.add_argument('--gt-size', type=int, default=128, choices=[128, 256])
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--variants', nargs='+', default=None,
                   help='our configurations (default: plain fp32 on CPU; plain fp32 bf16 bf16+cl on CUDA)')
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda: no CUDA device here')
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants or (['plain', 'fp32'] if device.type == 'cpu' else ['plain', 'fp32', 'bf16', 'bf16+cl'])

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(args.batch, 3, args.gt_size, args.gt_size, generator=g)
    lq = F.interpolate(gt, scale_factor=0.25, mode='bicubic', align_corners=False).clamp(0, 1)
    gt, lq = gt.to(device), lq.to(device)

    torch.manual_seed(0)
    ref = Reference(options(args, 'plain'), device)
    runners = {'reference (released step)': lambda: ref.step(lq, gt)}
    compile_s = {}
    for v in variants:
        torch.manual_seed(0)
        model = build_model(options(args, v), device)
        model.compile_networks()

        def ours(model=model):
            model.current_iter += 1
            model.feed_data({'lq': lq, 'gt': gt})
            model.optimize_parameters(model.current_iter)
        if model.speed['compile']:
            t0 = time.perf_counter()
            ours()
            sync()
            compile_s[v] = time.perf_counter() - t0
        runners[f'ours: {v} ({describe(model)})'] = ours

    times = {k: [] for k in runners}
    for i in range(args.warmup + args.repeats):
        for k, fn in runners.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    ref_ms = statistics.median(times['reference (released step)']) * 1e3
    print(f'GAN + LDL step, RRDB {args.blocks} blocks, gt {args.gt_size}, batch {args.batch}, {device}'
          + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
             f', {torch.get_num_threads()} threads')
          + f'; median of {args.repeats} after {args.warmup} warm-up, interleaved')
    print(f'| {"configuration":<78} | ms / step | speed-up |')
    print(f'|{"-" * 80}|-----------|----------|')
    for k, ts in times.items():
        ms = statistics.median(ts) * 1e3
        print(f'| {k:<78} | {ms:9.0f} | {ref_ms / ms:7.2f}x |')
    for v, s in compile_s.items():
        print(f'compile time of {v} (first step): {s:.1f} s')


def describe(model) -> str:
    s = model.speed
    parts = ['channels_last' if s['channels_last'] else 'NCHW', 'fused Adam' if s['fused_optim'] else 'Adam']
    if model.amp_dtype is not None:
        parts.append(str(model.amp_dtype).replace('torch.', ''))
    if s['compile']:
        parts.append(f"compile {s['compile']['mode']}")
    if s['tf32']:
        parts.append('tf32')
    return ', '.join(parts)


if __name__ == '__main__':
    main()
