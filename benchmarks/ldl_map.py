"""Time and peak extra memory of ``ldl_artifact_map`` against unfold-based references.

    python benchmarks/ldl_map.py                # B=4 and 16, 3x256x256, float32, CPU: one table of
                                                # map / train x 1, 2 threads x no load / one core busy
    python benchmarks/ldl_map.py --batches 16 --modes train --threads 2 --load busy   # one cell again
    python benchmarks/ldl_map.py --device cuda --batches 16 --repeats 20

Variants:
  ours        desra.losses.ldl_artifact_map (window sums as two strided reductions, analytic backward)
  ref_unfold  windows materialised by F.unfold (im2col, k^2 values per pixel), torch.var over them
  ref_view    windows as a strided view (Tensor.unfold twice), torch.var over the two window dims

Modes:
  map    the map alone under torch.no_grad()
  train  map with gradients + L1(W * sr, W * gt) + backward to sr (the LDL loss step). The same
         step with a map precomputed before the measurement (``loss_only``) is the part common to
         all variants; 'map part' columns subtract it, leaving what the map itself costs.

Peak extra memory is the peak over the inputs already allocated. On CPU each (variant, mode, batch)
runs once in a fresh subprocess with a fixed glibc mmap threshold, so that freed buffers leave the
resident set; the growth of the resident-set high-water mark (Linux VmHWM, reset after allocating the
inputs and warming the kernels up on a tiny batch) is then the peak of the variant's own buffers. On
CUDA ``torch.cuda.max_memory_allocated`` is used. Time is the median of ``--repeats`` runs after one
warm-up call at full size, on CPU in other subprocesses with the default allocator, as in training
(with the fixed threshold every buffer is a fresh mapping whose page faults would add to the time).

Threads and load (CPU): each measurement runs with ``torch.set_num_threads`` from ``--threads``, pinned to
the first two CPUs (more with more threads). With ``--load busy`` a second process, pinned to the last of
them, keeps that core busy with single-threaded matmuls while the cells are measured, and is killed after:
the situation of a machine whose cores are shared with other jobs, where every kernel that splits its work
over the threads waits for the thread whose core is taken.
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


def measure(variant, mode, batch, size, device, repeats, what='both'):
    """``what``: 'memory' (peak extra bytes of one call), 'time' (median of ``repeats`` calls after one
    warm-up call at full size) or 'both' (the peak, then the times, the peak's call as warm-up)."""
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
    res = {}
    if what != 'time':
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
        res['extra_bytes'] = int(extra)
    else:
        step(fn, mode, gt, sr, ema)
    if what != 'memory':
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            step(fn, mode, gt, sr, ema)
            _sync(device)
            times.append(time.perf_counter() - t0)
        res['time_s'] = statistics.median(times)
    return res


def run_child(variant, mode, batch, threads, args, cpus=None, what='time'):
    """One measurement (see :func:`measure`) with ``threads`` torch threads; on CPU in a fresh process
    pinned to ``cpus``. Memory is measured with a fixed glibc mmap threshold, so that freed buffers leave
    the resident set; time with the default allocator, as in training (with the fixed threshold every
    buffer would be a fresh mapping, and page faults would add to the time)."""
    if torch.device(args.device).type == 'cuda':
        if threads:
            torch.set_num_threads(threads)
        return measure(variant, mode, batch, args.size, args.device, args.repeats, what)
    cmd = [sys.executable, os.path.abspath(__file__), '--child', variant, '--measure', what, '--modes', mode,
           '--batches', str(batch), '--size', str(args.size), '--device', args.device, '--repeats', str(args.repeats),
           '--threads', str(threads)]
    if cpus:
        cmd += ['--pin', ','.join(map(str, cpus))]
    env = dict(os.environ)
    if what != 'time':
        env['MALLOC_MMAP_THRESHOLD_'] = '131072'
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


# A second process that keeps one core busy with single-threaded float32 matmuls until it is killed.
LOADER = '''
import os, sys
if len(sys.argv) > 1 and hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {int(sys.argv[1])})
import torch
torch.set_num_threads(1)
a = torch.rand(384, 384)
b = torch.rand(384, 384) / 384
print('ready', flush=True)
while True:
    a = torch.mm(a, b).add_(0.5)
'''


class BusyCore:
    """Context manager: runs :data:`LOADER` (pinned to ``cpu`` where the OS allows) and kills it on exit."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.proc = None

    def __enter__(self):
        cmd = [sys.executable, '-c', LOADER] + ([] if self.cpu is None else [str(self.cpu)])
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        if self.proc.stdout.readline().strip() != 'ready':
            raise RuntimeError('the busy-loop process did not start')
        time.sleep(0.5)  # let it reach its steady state
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        return False


def check_agreement(args, batch):
    gt, sr, ema = make_inputs(min(batch, 4), args.size, torch.device(args.device))
    with torch.no_grad():
        a, b = ours(gt, sr, ema), ref_unfold(gt, sr, ema)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    ga = step(ours, 'train', gt, sr, ema)
    gb = step(ref_unfold, 'train', gt, sr, ema)
    grel = ((ga - gb).abs().max() / gb.abs().max()).item()
    return rel, grel


def _ints(text):
    return [int(v) for v in text.split(',') if v.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--batches', type=_ints, default=[4, 16], help='comma-separated batch sizes (default 4,16)')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--modes', default='map,train', help='comma-separated: map (forward), train (forward+backward)')
    p.add_argument('--threads', type=_ints, default=None,
                   help='comma-separated torch thread counts (default 1,2 on CPU; 0 = torch\'s choice)')
    p.add_argument('--load', default=None,
                   help='comma-separated: none, busy (a second process keeps a core busy; default none,busy on CPU)')
    p.add_argument('--reference', choices=['ref_unfold', 'ref_view'], default='ref_unfold',
                   help='what "ours" is compared with (default: the released unfold code)')
    p.add_argument('--child', choices=[*VARIANTS, 'loss_only'], help=argparse.SUPPRESS)
    p.add_argument('--pin', type=_ints, default=None, help=argparse.SUPPRESS)
    p.add_argument('--measure', choices=['memory', 'time', 'both'], default='both', help=argparse.SUPPRESS)
    args = p.parse_args()
    modes = [m for m in args.modes.split(',') if m]
    cuda = torch.device(args.device).type == 'cuda'

    if args.child:
        if args.pin and hasattr(os, 'sched_setaffinity'):
            os.sched_setaffinity(0, set(args.pin))
        if args.threads and args.threads[0]:
            torch.set_num_threads(args.threads[0])
        print(json.dumps(measure(args.child, modes[0], args.batches[0], args.size, args.device, args.repeats,
                                 args.measure)))
        return

    threads = args.threads if args.threads is not None else ([0] if cuda else [1, 2])
    loads = args.load.split(',') if args.load else (['none'] if cuda else ['none', 'busy'])
    if not set(modes) <= {'map', 'train'} or not set(loads) <= {'none', 'busy'} or not modes or not loads:
        p.error(f'--modes takes map,train and --load none,busy; got {args.modes!r}, {args.load!r}')
    # Children (and the busy process) on the first max(threads) CPUs: "2 threads, one core also busy"
    # then means the same on a 2-core machine and on a larger one.
    cpus = None
    if not cuda and hasattr(os, 'sched_getaffinity'):
        avail = sorted(os.sched_getaffinity(0))
        cpus = avail[:max(2, max(threads))] if len(avail) > 1 else avail
    busy_cpu = cpus[-1] if cpus else None

    print(f'LDL artifact map, ours vs {args.reference}: 3x{args.size}x{args.size}, float32, k={K}, '
          f'device={args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs'
          + (f', measured on CPUs {cpus}' if cpus else '') + f', median of {args.repeats} runs')
    rel, grel = check_agreement(args, max(args.batches))
    print(f'agreement with ref_unfold: map max rel diff {rel:.2e}, grad wrt sr max rel diff {grel:.2e}\n')
    ok = rel < 1e-4 and grel < 1e-4

    head = (f'{"B":>3} {"mode":<6} {"thr":>3} {"load":<5} | {"ours ms":>8} {"ref ms":>8} {"time x":>7} | '
            f'{"map-part x":>10} | {"ours MiB":>8} {"ref MiB":>8} {"mem x":>7}')
    # Peak memory does not depend on threads or load: once per (batch, mode, variant).
    mem = {}
    for batch in args.batches:
        for mode in modes:
            for v in ('ours', args.reference):
                mem[batch, mode, v] = run_child(v, mode, batch, threads[0], args, cpus, 'memory')['extra_bytes']
    print('measured peak memory', file=sys.stderr, flush=True)
    rows = []
    for load in loads:
        busy = BusyCore(busy_cpu) if load == 'busy' else None
        if busy:
            busy.__enter__()
        try:
            for batch in args.batches:
                for mode in modes:
                    for thr in threads:
                        o = run_child('ours', mode, batch, thr, args, cpus)
                        r = run_child(args.reference, mode, batch, thr, args, cpus)
                        # train: the same step with the map precomputed is what every variant shares
                        base = run_child('loss_only', mode, batch, thr, args, cpus) if mode == 'train' else None
                        o['extra_bytes'], r['extra_bytes'] = mem[batch, mode, 'ours'], mem[batch, mode, args.reference]
                        rows.append((batch, mode, load, thr, o, r, base))
                        print(f'measured B={batch} {mode} threads={thr or "default"} {load}', file=sys.stderr,
                              flush=True)
        finally:
            if busy:
                busy.__exit__(None, None, None)

    print(head)
    print('-' * len(head))
    ratios = []
    rows.sort(key=lambda t: (t[0], modes.index(t[1]), t[3], loads.index(t[2])))
    for batch, mode, load, thr, o, r, base in rows:
        tx, mx = r['time_s'] / o['time_s'], r['extra_bytes'] / max(o['extra_bytes'], 1)
        part = ''
        if base is not None:
            part = f'{(r["time_s"] - base["time_s"]) / max(o["time_s"] - base["time_s"], 1e-9):9.1f}x'
        ratios.append((tx, mx, batch, mode, thr, load))
        print(f'{batch:>3} {mode:<6} {thr or "def":>3} {load:<5} | {o["time_s"] * 1e3:8.1f} {r["time_s"] * 1e3:8.1f} '
              f'{tx:6.1f}x | {part:>10} | {o["extra_bytes"] / 2**20:8.1f} {r["extra_bytes"] / 2**20:8.1f} {mx:6.1f}x')
    print('\nmode: map = the map under torch.no_grad(); train = map with gradients + L1(W * sr, W * gt) + backward.'
          '\nthr: torch threads; load: busy = a second process keeps one of the measured CPUs busy, none = no such'
          '\n     process (other jobs on the machine are not controlled).'
          '\ntime x, mem x: reference / ours for the whole step (> 1: ours faster / uses less extra memory);'
          '\nmap-part x: the same time ratio after subtracting the step with the map precomputed (train only).')
    worst = min(ratios)
    print(f'lowest time ratio: {worst[0]:.1f}x (B={worst[2]}, {worst[3]}, {worst[4] or "default"} threads, '
          f'{worst[5]}); lowest memory ratio: {min(t[1] for t in ratios):.1f}x')
    if not ok:
        print('WARNING: the maps or gradients disagree')
        sys.exit(1)


if __name__ == '__main__':
    main()
