"""Time DeSRA detection (indicator D + threshold + morphology) against the released-style float64 reference.

    python benchmarks/detect_indicator.py                 # 2048 x 2048 RGB pair, CPU
    python benchmarks/detect_indicator.py --size 1024 --repeats 5

The pair is built from real photos: the 16 MSE-SR / GAN-SR images of ``../shared/data/photos`` (or, if
absent, skimage sample photos with a GAN-like sharpened twin), each resized to a tile and tiled to the size.

Variants:
  reference  what DESRA.md describes: float64 images, per channel ``cv2.filter2D`` with the 11 x 11 window
             (outer product of ``cv2.getGaussianKernel(11, 1.5)``) on x and x*x, crop [5:-5, 5:-5], Eq. 7,
             mean over channels, ``D < 0.7``, ``cv2.erode`` 5x5, ``cv2.dilate`` 5x5 x3,
             ``scipy.ndimage.binary_fill_holes`` (3x3), ``connectedComponentsWithStats`` area > 4000.
  ours       ``texture_similarity`` + ``D < 0.7`` + ``clean_mask`` with the same settings.

No semantic weights here (the same elementwise product in both). Times are the median of ``--repeats``
runs, the two variants interleaved so that load from other processes hits both alike.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from desra.detection import clean_mask, texture_similarity  # noqa: E402

PHOTOS = REPO.parent / 'shared' / 'data' / 'photos'


def make_pair(size: int) -> tuple[np.ndarray, np.ndarray, str]:
    gan_paths = sorted(glob.glob(str(PHOTOS / 'GAN-SR' / '*.png')))
    if gan_paths:
        pairs = [(cv2.imread(p.replace(os.sep + 'GAN-SR' + os.sep, os.sep + 'MSE-SR' + os.sep)), cv2.imread(p))
                 for p in gan_paths]
        source = f'{len(pairs)} MSE-SR/GAN-SR photos from {PHOTOS}'
    else:
        import skimage.data

        pairs = []
        for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
            rgb = np.ascontiguousarray(getattr(skimage.data, name)()[..., ::-1])
            mse = cv2.GaussianBlur(rgb, (0, 0), 1.2)
            gan = np.clip(rgb.astype(np.float32) * 1.6 - mse * 0.6, 0, 255).astype(np.uint8)
            pairs.append((mse, gan))
        source = 'skimage photos (blurred vs sharpened)'
    n = int(np.ceil(np.sqrt(len(pairs))))
    tile = -(-size // n)
    rows_m, rows_g = [], []
    for r in range(n):
        row = [pairs[(r * n + c) % len(pairs)] for c in range(n)]
        rows_m.append(np.concatenate([cv2.resize(m, (tile, tile), interpolation=cv2.INTER_AREA) for m, _ in row], 1))
        rows_g.append(np.concatenate([cv2.resize(g, (tile, tile), interpolation=cv2.INTER_AREA) for _, g in row], 1))
    return np.concatenate(rows_m, 0)[:size, :size], np.concatenate(rows_g, 0)[:size, :size], source


def reference(mse: np.ndarray, gan: np.ndarray, threshold=0.7, min_area=4000):
    win = cv2.getGaussianKernel(11, 1.5)
    win = win @ win.T
    img1, img2 = mse.astype(np.float64), gan.astype(np.float64)
    cs = []
    for ch in range(img1.shape[2]):
        x, y = img1[..., ch], img2[..., ch]
        mu1 = cv2.filter2D(x, -1, win)[5:-5, 5:-5]
        mu2 = cv2.filter2D(y, -1, win)[5:-5, 5:-5]
        var1 = cv2.filter2D(x * x, -1, win)[5:-5, 5:-5] - mu1 ** 2
        var2 = cv2.filter2D(y * y, -1, win)[5:-5, 5:-5] - mu2 ** 2
        cs.append((2 * np.sqrt(var1 + 1e-8) * np.sqrt(var2 + 1e-8) + 58.5225) / (var1 + var2 + 58.5225))
    D = np.mean(cs, axis=0)
    mask = (D < threshold).astype(np.uint8) * 255
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    mask = cv2.dilate(mask, np.ones((5, 5), np.uint8), iterations=3)
    mask = ndimage.binary_fill_holes(mask, structure=np.ones((3, 3))).astype(np.uint8)
    _, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] > min_area
    keep[0] = False
    return D, keep[lab].astype(np.uint8) * 255


def ours(mse: np.ndarray, gan: np.ndarray, threshold=0.7, min_area=4000):
    D = texture_similarity(mse, gan)
    return D, clean_mask(D < threshold, min_area=min_area)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=2048)
    p.add_argument('--repeats', type=int, default=7)
    args = p.parse_args(argv)
    mse, gan, source = make_pair(args.size)
    print(f'pair: {mse.shape[0]}x{mse.shape[1]}x3 uint8 built from {source}')
    print(f'CPU threads: torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}, cores {os.cpu_count()}')
    times = {'reference': [], 'ours': []}
    results = {}
    fns = {'reference': reference, 'ours': ours}
    for name, fn in fns.items():  # warm-up
        results[name] = fn(mse, gan)
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(mse, gan)
            times[name].append(time.perf_counter() - t0)
    (d_ref, m_ref), (d_ours, m_ours) = results['reference'], results['ours']
    t_ref, t_ours = statistics.median(times['reference']), statistics.median(times['ours'])
    print(f"reference (float64 filter2D + scipy fill): median {t_ref * 1000:8.1f} ms  "
          f"(min {min(times['reference']) * 1000:.1f})")
    print(f"ours      (texture_similarity + clean_mask): median {t_ours * 1000:8.1f} ms  "
          f"(min {min(times['ours']) * 1000:.1f})")
    print(f'speed-up: {t_ref / t_ours:.2f}x (target >= 4x)')
    print(f'max |D_ours - D_ref| = {np.abs(d_ours.astype(np.float64) - d_ref).max():.2e}; '
          f'masks identical: {bool(np.array_equal(m_ours, m_ref))} '
          f'({int((m_ref > 0).sum())} artifact pixels, {float((m_ref > 0).mean()) * 100:.2f} %)')


if __name__ == '__main__':
    main()
