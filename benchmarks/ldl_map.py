"""Time and peak extra memory of ``ldl_artifact_map`` against unfold-based references.

    python benchmarks/ldl_map.py                       # B=16, 3x256x256, float32, CPU
    python benchmarks/ldl_map.py --device cuda --batch 16 --size 256 --repeats 20

Variants:
  ours        desra.losses.ldl_artifact_map (separable window sums, analytic backward)
  ref_unfold  windows materialised by F.unfold (im2col, k^2 values per pixel), torch.var over them
  ref_view    windows as a strided view (Tensor.unfold twice), torch.var over the two window dims

Modes:
  map    the map alone under torch.no_grad()
  train  map with gradients + L1(W * sr, W * gt) + backward to sr (the LDL loss step). The same
         step with a map precomputed before the measurement (``loss_only``) is the part common to
         all variants; 'map part' columns subtract it, leaving what the map itself costs.

Peak extra memory is the peak over the inputs already allocated. On CPU each (variant, mode) runs in
a fresh subprocess with a fixed glibc mmap threshold, so that freed buffers leave the resident set;
the growth of the resident-set high-water mark (Linux VmHWM, reset after allocating the inputs and
warming the kernels up on a tiny batch) is then the peak of the variant's own buffers. On CUDA
``torch.cuda.max_memory_allocated`` is used. Time is the median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desra.losses.ldl_loss import ldl_artifact_map  # noqa: E402

K = 7


def ref_unfold(gt, sr, ema, k=K):
    """Windows via F.unfold (B x k^2 x HW copy), unbiased torch.var over each window."""
    b, _, h, w = gt.shape
    r_sr = torch.sum(torch.abs(gt - sr), 1, keepdim=True)
    r_ema = torch.sum(torch.abs(gt - ema), 1, keepdim=True)
    pad = F.pad(r_sr, [k // 2] * 4, mode='reflect')
    local = torch.var(F.unfold(pad, k), dim=1, unbiased=True).view(b, 1, h, w)
    sigma = torch.var(r_sr, dim=(1, 2, 3), unbiased=True, keepdim=True) ** (1 / 5)
    weight = sigma * local
    weight[r_sr < r_ema] = 0
    return weight


def ref_view(gt, sr, ema, k=K):
    """Windows via a strided view (Tensor.unfold on H and W), torch.var over the two window dims."""
    r_sr = torch.sum(torch.abs(gt - sr), 1, keepdim=True)
    r_ema = torch.sum(torch.abs(gt - ema), 1, keepdim=True)
    pad = F.pad(r_sr, [k // 2] * 4, mode='reflect')
    local = torch.var(pad.unfold(2, k, 1).unfold(3, k, 1), dim=(-1, -2), unbiased=True)
    sigma = torch.var(r_sr, dim=(1, 2, 3), unbiased=True, keepdim=True) ** (1 / 5)
    weight = sigma * local
    weight[r_sr < r_ema] = 0
    return weight


def ours(gt, sr, ema, k=K):
    return ldl_artifact_map(gt, sr, ema, k)


VARIANTS = {'ours': ours, 'ref_unfold': ref_unfold, 'ref_view': ref_view}


def make_inputs(batch, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=g)
    # SR and EMA outputs close to GT, so that the mask keeps about half the pixels. In-place ops:
    # temporaries here would raise the memory baseline above the inputs themselves.
    sr = torch.randn(gt.shape, generator=g).mul_(0.05).add_(gt).clamp_(0, 1)
    ema = torch.randn(gt.shape, generator=g).mul_(0.05).add_(gt).clamp_(0, 1)
    return gt.to(device), sr.to(device), ema.to(device)


def step(fn, mode, gt, sr, ema):
    if mode == 'map':
        with torch.no_grad():
            return fn(gt, sr, ema)
    sr = sr.detach().requires_grad_(True)
    w = fn(gt, sr, ema)
    F.l1_loss(w * sr, w * gt).backward()
    return sr.grad


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def rss_baseline():
    """Start a peak-RSS measurement; returns a token for :func:`rss_peak_extra`.

    Linux: reset the process's resident-set high-water mark (``clear_refs`` 5), then VmHWM - VmRSS is
    the peak growth. ``ru_maxrss`` is no good here: it survives ``execve``, so a child starts with its
    parent's peak. Elsewhere: ``ru_maxrss`` growth (a lower bound).
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return ('hwm', _status_kib('VmRSS'))
    except OSError:
        return ('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_peak_extra(token):
    kind, base = token
    now = _status_kib('VmHWM') if kind == 'hwm' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (now - base) * 1024  # both in KiB on Linux


def measure(variant, mode, batch, size, device, repeats):
    """Peak extra bytes of one call, then the median time of ``repeats`` calls."""
    device = torch.device(device)
    tiny = make_inputs(1, 16, device, seed=1)
    gt, sr, ema = make_inputs(batch, size, device)
    if variant == 'loss_only':
        with torch.no_grad():
            const = {tiny[0].shape: ours(*tiny), gt.shape: ours(gt, sr, ema)}

        def fn(gt, sr, ema):
            return const[gt.shape]
    else:
        fn = VARIANTS[variant]
    step(fn, mode, *tiny)  # load kernels / thread pools without touching the peak
    _sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = step(fn, mode, gt, sr, ema)
        _sync(device)
        extra = torch.cuda.max_memory_allocated(device) - base
    else:
        token = rss_baseline()
        out = step(fn, mode, gt, sr, ema)
        extra = rss_peak_extra(token)
    del out
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step(fn, mode, gt, sr, ema)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {'extra_bytes': int(extra), 'time_s': statistics.median(times)}


def run_child(variant, mode, args):
    if torch.device(args.device).type == 'cuda':
        return measure(variant, mode, args.batch, args.size, args.device, args.repeats)
    cmd = [sys.executable, os.path.abspath(__file__), '--child', variant, '--mode', mode, '--batch', str(args.batch),
           '--size', str(args.size), '--device', args.device, '--repeats', str(args.repeats),
           '--threads', str(args.threads)]
    # A fixed mmap threshold makes every large buffer its own mapping, unmapped when freed, so the
    # resident set follows the live buffers instead of glibc's heap high-water mark.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def check_agreement(args):
    gt, sr, ema = make_inputs(min(args.batch, 4), args.size, torch.device(args.device))
    with torch.no_grad():
        a, b = ours(gt, sr, ema), ref_unfold(gt, sr, ema)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    ga = step(ours, 'train', gt, sr, ema)
    gb = step(ref_unfold, 'train', gt, sr, ema)
    grel = ((ga - gb).abs().max() / gb.abs().max()).item()
    return rel, grel


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--mode', choices=['map', 'train', 'both'], default='both')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch\'s choice)')
    p.add_argument('--child', choices=[*VARIANTS, 'loss_only'], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.mode, args.batch, args.size, args.device, args.repeats)))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ['map', 'train'] if args.mode == 'both' else [args.mode]
    unit = args.batch * args.size * args.size * 4  # one B x 1 x H x W float32 buffer
    print(f'LDL artifact map: B={args.batch}, 3x{args.size}x{args.size}, float32, k={K}, device={args.device}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'one B x 1 x H x W buffer = {unit / 2**20:.1f} MiB')
    rel, grel = check_agreement(args)
    print(f'agreement with ref_unfold: map max rel diff {rel:.2e}, grad wrt sr max rel diff {grel:.2e}')
    ok = rel < 1e-4 and grel < 1e-4
    for mode in modes:
        res = {v: run_child(v, mode, args) for v in VARIANTS}
        o = res['ours']
        print(f'\nmode={mode}')
        head = f'{"variant":<11} {"time ms":>9} {"extra MiB":>10} {"buffers":>8} {"time ratio":>11} {"mem ratio":>10}'
        if mode == 'train':
            base = run_child('loss_only', mode, args)
            head += f' {"map part: ms":>13} {"MiB":>7} {"time ratio":>11} {"mem ratio":>10}'
        print(head)
        for v, r in res.items():
            line = (f'{v:<11} {r["time_s"] * 1e3:9.1f} {r["extra_bytes"] / 2**20:10.1f} {r["extra_bytes"] / unit:8.1f} '
                    f'{r["time_s"] / o["time_s"]:10.1f}x {r["extra_bytes"] / max(o["extra_bytes"], 1):9.1f}x')
            if mode == 'train':
                dt, do = r['time_s'] - base['time_s'], o['time_s'] - base['time_s']
                dm, dmo = r['extra_bytes'] - base['extra_bytes'], o['extra_bytes'] - base['extra_bytes']
                line += (f' {dt * 1e3:13.1f} {dm / 2**20:7.1f} {dt / max(do, 1e-9):10.1f}x '
                         f'{dm / max(dmo, 1):9.1f}x')
            print(line)
        if mode == 'train':
            print(f'{"loss_only":<11} {base["time_s"] * 1e3:9.1f} {base["extra_bytes"] / 2**20:10.1f} '
                  f'{base["extra_bytes"] / unit:8.1f}   (same step, map precomputed: the common part)')
    print('\nratios: reference / ours (time ratio > 1: ours faster; mem ratio > 1: ours uses less extra memory);'
          '\n"buffers": extra memory in units of one B x 1 x H x W float32 buffer')
    if not ok:
        print('WARNING: the maps or gradients disagree')
        sys.exit(1)


if __name__ == '__main__':
    main()
