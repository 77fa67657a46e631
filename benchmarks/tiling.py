"""How far tiled inference is from the whole-image forward, old algorithm against the new one.

    python benchmarks/tiling.py                       # Real-ESRGAN x4plus (+ SPAN if present), 256 px, CPU
    python benchmarks/tiling.py --device cuda --size 512
    python benchmarks/tiling.py --quick               # fewer settings (defaults only)

Input: a ``--size`` x ``--size`` centre crop of a real photo (``--image``; default the first of
``../shared/data/photos/HR/{aloe,raccoon}.png`` or ``LR/*.png`` that is large enough; the LR photos are at
most 128 px). Weights: ``--weights`` (default ``pretrained/RealESRGAN_x4plus.safetensors``, else
``../shared/weights/``); SPAN x4 ch48 is added when ``spanx4_ch48.safetensors`` is found. A missing image or
weight file skips the benchmark (or that model) with a message and exit status 0.

For every setting: max and 99.9th percentile of |tiled - whole| over all output values (RGB, clamped to
[0, 1], float), the share of 8-bit values (rounded as saved) that differ, the input pixels run relative to
the whole image (FLOPs ratio), and the wall time of the run. ``old`` is the previous ``tiled_forward``
(tiles partitioning the image, ``tile_pad`` context each, hard cuts), reproduced below as the baseline.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desra import inference  # noqa: E402
from desra.inference import DEFAULT_BLEND, DEFAULT_TILE_PAD, tiled_forward  # noqa: E402


# --------------------------------------------------------------------------- the previous algorithm (baseline)
def _old_tile_starts(size, tile, window, pad, mod):
    out = []
    for i in range(math.ceil(size / tile)):
        a = i * tile
        b = min(a + tile, size)
        s = ((a - pad) // mod) * mod
        s = min(max(s, 0), size - window)
        out.append((a, b, s))
    return out


@torch.no_grad()
def old_tiled_forward(net, lq, scale, tile_size, tile_pad=10, batch_tiles=1, mod_pad=1, stats=None):
    """``desra.inference.tiled_forward`` before the seamless tiles (mod_pad = 1 inputs only here)."""
    _, _, hp, wp = lq.shape
    tile_size = -(-tile_size // mod_pad) * mod_pad
    win_h = min(hp, -(-(tile_size + 2 * tile_pad + mod_pad - 1) // mod_pad) * mod_pad)
    win_w = min(wp, -(-(tile_size + 2 * tile_pad + mod_pad - 1) // mod_pad) * mod_pad)
    tiles = [(ya, yb, ys, xa, xb, xs)
             for ya, yb, ys in _old_tile_starts(hp, tile_size, win_h, tile_pad, mod_pad)
             for xa, xb, xs in _old_tile_starts(wp, tile_size, win_w, tile_pad, mod_pad)]
    out, s = None, scale
    for i in range(0, len(tiles), batch_tiles):
        group = tiles[i:i + batch_tiles]
        inp = torch.cat([lq[:, :, ys:ys + win_h, xs:xs + win_w] for _, _, ys, _, _, xs in group], dim=0)
        y = net(inp)
        if stats is not None:
            stats['pixels'] += inp.shape[0] * inp.shape[-2] * inp.shape[-1]
        if out is None:
            out = torch.empty((lq.shape[0], y.shape[1], hp * s, wp * s), dtype=y.dtype, device=y.device)
        for j, (ya, yb, ys, xa, xb, xs) in enumerate(group):
            out[:, :, ya * s:yb * s, xa * s:xb * s] = \
                y[j:j + 1, :, (ya - ys) * s:(yb - ys) * s, (xa - xs) * s:(xb - xs) * s]
    return out


class Counting(torch.nn.Module):
    """Counts the input pixels the wrapped net is run on."""

    def __init__(self, net, stats):
        super().__init__()
        self.net, self.stats = net, stats

    def forward(self, x):
        self.stats['pixels'] += x.shape[0] * x.shape[-2] * x.shape[-1]
        return self.net(x)


# --------------------------------------------------------------------------------------------------- inputs
def find_file(candidates):
    for c in candidates:
        if c is not None and Path(c).is_file():
            return Path(c)
    return None


def load_crop(path: Path, size: int) -> torch.Tensor:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    crop = np.ascontiguousarray(img[y0:y0 + size, x0:x0 + size, ::-1])
    return torch.from_numpy(crop).permute(2, 0, 1).float().div(255).unsqueeze(0)


def default_image(size: int):
    import cv2

    photos = ROOT.parent / 'shared' / 'data' / 'photos'
    for p in [photos / 'HR' / 'aloe.png', photos / 'HR' / 'raccoon.png', *sorted((photos / 'LR').glob('*.png'))]:
        if p.is_file():
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if img is not None and min(img.shape[:2]) >= size:
                return p
    return None


def build(arch: str, weights: Path, device):
    from desra.archs.checkpoint_io import load_network_weights

    if arch == 'rrdb':
        from desra.archs.rrdbnet_arch import RRDBNet
        net = RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)
    else:
        from desra.archs.span_arch import SPAN
        net = SPAN(3, 3, 48, 4)
    load_network_weights(net, str(weights))
    return net.eval().to(device)


# -------------------------------------------------------------------------------------------------- measure
def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    a, r = out.float().clamp(0, 1), ref.float().clamp(0, 1)
    d = (a - r).abs().flatten().cpu().numpy()
    q8 = ((a * 255).round() != (r * 255).round()).float().mean().item()
    return {'max': float(d.max()), 'p999': float(np.quantile(d, 0.999)), 'u8': q8}


def settings(quick: bool, size: int):
    """(kind, label, kwargs) rows. "tight": two windows per axis overlapping by exactly 2 * pad + blend."""
    p, b = DEFAULT_TILE_PAD, DEFAULT_BLEND
    rows = [('old', 'old: tile 128, pad 10 (hard cuts)', dict(tile_size=128, tile_pad=10)),
            ('new', f'new: tile 128, defaults (pad {p}, blend {b})', dict(tile_size=128)),
            ('new', "new: tile 'auto' (fits: whole image)", dict(tile_size='auto'))]
    if not quick:
        rows[1:1] = [('new', 'new: tile 128, pad 10', dict(tile_size=128, tile_pad=10)),
                     ('new', 'new: tile 128, pad 16', dict(tile_size=128, tile_pad=16))]
        for pad in sorted({24, 32, p, 40}):
            tile = (size - 2 * pad + b) // 2
            rows.insert(-1, ('new', f'new: tile {tile}, pad {pad} (tight: overlap {2 * pad + b})',
                             dict(tile_size=tile, tile_pad=pad)))
        tile = (size - 2 * p + b) // 2
        rows.insert(-1, ('new', f'new: tile {tile}, pad {p}, blend 0 (hard cut)',
                         dict(tile_size=tile, tile_pad=p, blend=0)))
    return rows


def bench_model(name, net, x, scale, rows, device):
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    stats = {'pixels': 0}
    counted = Counting(net, stats)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        ref = net(x)
        sync()
        t_ref = time.perf_counter() - t0
    whole_px = x.shape[-2] * x.shape[-1]
    print(f"\n{name}: input {tuple(x.shape)}, whole-image forward {t_ref:.1f} s", flush=True)
    header = f"{'setting':48s} {'max':>9s} {'p99.9':>9s} {'p99.9*255':>9s} {'8-bit diff':>10s} {'FLOPs':>6s} " \
             f"{'time s':>7s}"
    print(header + '\n' + '-' * len(header), flush=True)
    print(f"{'whole image (reference)':48s} {0:9.2e} {0:9.2e} {0:9.2f} {0:10.3%} {1:6.2f} {t_ref:7.1f}", flush=True)
    results = []
    for kind, label, kw in rows:
        stats['pixels'] = 0
        sync()
        t0 = time.perf_counter()
        if kind == 'old':
            out = old_tiled_forward(net, x, scale, stats=stats, **kw)
        else:
            inference._PROBES.pop(counted, None)  # 'auto' measures the net each time, as a first call would
            out = tiled_forward(counted, x, scale, **kw)
        sync()
        t = time.perf_counter() - t0
        c = compare(out, ref)
        ratio = stats['pixels'] / whole_px
        print(f"{label:48s} {c['max']:9.2e} {c['p999']:9.2e} {c['p999'] * 255:9.2f} {c['u8']:10.3%} {ratio:6.2f} "
              f"{t:7.1f}", flush=True)
        results.append((label, c, ratio, t))
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--size', type=int, default=256, help='input crop size (default 256)')
    p.add_argument('--image', default=None, help='photo to crop (default: see above)')
    p.add_argument('--weights', default=None, help='Real-ESRGAN x4plus weights (.safetensors / .pth)')
    p.add_argument('--span', default=None, help='SPAN x4 ch48 weights (default: found next to the RRDB ones)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads on CPU')
    p.add_argument('--quick', action='store_true', help='only old / new defaults / auto')
    p.add_argument('--models', default='span,rrdb', help='comma-separated: span, rrdb (default both)')
    p.add_argument('--only', default=None, help="comma-separated substrings: run only the settings whose label "
                                                "contains one (e.g. 'old,defaults')")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = Path(args.image) if args.image else default_image(args.size)
    if image is None or not image.is_file():
        print(f"skipped: {image} not found" if args.image else
              f"skipped: no photo of at least {args.size} px found (give --image)")
        return 0
    x = load_crop(image, args.size).to(device)
    if min(x.shape[-2:]) < args.size:
        print(f"skipped: {image} is smaller than {args.size} px")
        return 0
    print(f"input: {args.size} x {args.size} centre crop of {image}; device {device}, "
          f"{torch.get_num_threads()} CPU threads; errors on outputs clamped to [0, 1]")
    shared = ROOT.parent / 'shared' / 'weights'
    rrdb = find_file([args.weights] if args.weights else [
        ROOT / 'pretrained' / 'RealESRGAN_x4plus.safetensors', ROOT / 'pretrained' / 'RealESRGAN_x4plus.pth',
        shared / 'RealESRGAN_x4plus.safetensors'])
    span = find_file([args.span] if args.span else [ROOT / 'pretrained' / 'spanx4_ch48.safetensors',
                                                    shared / 'spanx4_ch48.safetensors'])
    rows = settings(args.quick, args.size)
    if args.only:
        rows = [r for r in rows if any(k in r[1] for k in args.only.split(','))]
    models = set(args.models.split(','))
    if 'span' in models:
        if span is not None:
            bench_model(f'SPAN x4 ch48 ({span})', build('span', span, device), x, 4, rows, device)
        else:
            print('SPAN: skipped (spanx4_ch48.safetensors not found)')
    if 'rrdb' not in models:
        return 0
    if rrdb is None:
        print('Real-ESRGAN x4plus: skipped (weights not found; give --weights or see pretrained/README.md)')
        return 0
    bench_model(f'Real-ESRGAN x4plus ({rrdb})', build('rrdb', rrdb, device), x, 4, rows, device)
    return 0


if __name__ == '__main__':
    sys.exit(main())
