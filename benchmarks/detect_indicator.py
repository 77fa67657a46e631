"""Time DeSRA detection against the released-style float64 reference: the algorithm alone, and end to end.

    python benchmarks/detect_indicator.py                 # both parts
    python benchmarks/detect_indicator.py --part indicator --size 1024 --repeats 5
    python benchmarks/detect_indicator.py --part e2e --runs 5

Part ``indicator``: one 2048 x 2048 RGB pair (CPU), built from real photos: the 16 MSE-SR / GAN-SR images of
``../shared/data/photos`` (or, if absent, skimage sample photos with a GAN-like sharpened twin), each resized to
a tile and tiled to the size.

  reference  what DESRA.md describes: float64 images, per channel ``cv2.filter2D`` with the 11 x 11 window
             (outer product of ``cv2.getGaussianKernel(11, 1.5)``) on x and x*x, crop [5:-5, 5:-5], Eq. 7,
             mean over channels, ``D < 0.7``, ``cv2.erode`` 5x5, ``cv2.dilate`` 5x5 x3,
             ``scipy.ndimage.binary_fill_holes`` (3x3), ``connectedComponentsWithStats`` area > 4000.
  ours       ``texture_similarity`` + ``D < 0.7`` + ``clean_mask`` with the same settings.

No semantic weights here (the same elementwise product in both). Times are the median of ``--repeats``
runs, the two variants interleaved so that load from other processes hits both alike.

Part ``e2e``: whole processes, start-up included, on the 16 shared photos at their own sizes (skipped when they
are absent):

  released   this file run as a script in the released loop's manner (``--released``): import cv2, numpy and
             scipy, then per image ``cv2.imread`` both, the reference above (threshold 0.7, area 4000) and
             ``cv2.imwrite`` of the (H-10) x (W-10) mask. Its SegFormer step (torch + mmseg) is left out, which
             favours it.
  detect.py  ``detect.py`` mode (b), ``segmenter: {type: none}``, the same constants, default outputs (masks,
             vis/D, overlays, records, summary.csv, index.html; no .npy), a fresh output root per run.

Both run after one untimed warm-up each, with bytecode caching on (in a temporary ``PYTHONPYCACHEPREFIX``) as
for an installed package, whatever ``PYTHONDONTWRITEBYTECODE`` says here.

Printed: the wall-time ratio (target >= 3x), the per-image work of detect.py from its ``Timing:`` log line
(target <= 30 ms) and of the released loop, and whether the masks agree (ours cropped by 5 px). ``--runs``
runs of each, interleaved; medians.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # desra is imported by the indicator part only
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
    from desra.detection import clean_mask, texture_similarity

    D = texture_similarity(mse, gan)
    return D, clean_mask(D < threshold, min_area=min_area)


def ours_on(device: str):
    """``ours`` with the indicator on ``device`` (torch backend; the images go up and D comes back each call)."""
    import torch

    def run(mse: np.ndarray, gan: np.ndarray, threshold=0.7, min_area=4000):
        from desra.detection import clean_mask, texture_similarity

        t = [torch.from_numpy(a).permute(2, 0, 1)[None].to(device) for a in (mse, gan)]
        D = texture_similarity(*t, backend='torch')[0, 0].cpu().numpy()
        return D, clean_mask(D < threshold, min_area=min_area)
    return run


def indicator_part(args) -> None:
    import torch

    mse, gan, source = make_pair(args.size)
    print(f'pair: {mse.shape[0]}x{mse.shape[1]}x3 uint8 built from {source}')
    print(f'CPU threads: torch {torch.get_num_threads()}, cv2 {cv2.getNumThreads()}, cores {os.cpu_count()}')
    times = {'reference': [], 'ours': []}
    results = {}
    fns = {'reference': reference, 'ours': ours if args.device == 'cpu' else ours_on(args.device)}
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
    print(f"ours      (texture_similarity on {args.device} + clean_mask): median {t_ours * 1000:8.1f} ms  "
          f"(min {min(times['ours']) * 1000:.1f})")
    print(f'speed-up: {t_ref / t_ours:.2f}x (target >= 4x)')
    print(f'max |D_ours - D_ref| = {np.abs(d_ours.astype(np.float64) - d_ref).max():.2e}; '
          f'masks identical: {bool(np.array_equal(m_ours, m_ref))} '
          f'({int((m_ref > 0).sum())} artifact pixels, {float((m_ref > 0).mean()) * 100:.2f} %)')


# ------------------------------------------------------------------------------------------------ end to end
def released_loop(mse_dir: str, gan_dir: str, out_dir: str) -> None:
    """The released detection loop without its segmentation: read, reference D + morphology, write the mask."""
    t0 = time.perf_counter()
    names = sorted(os.listdir(gan_dir))
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        mse = cv2.imread(os.path.join(mse_dir, name))
        gan = cv2.imread(os.path.join(gan_dir, name))
        _, mask = reference(mse, gan, threshold=0.7, min_area=4000)
        cv2.imwrite(os.path.join(out_dir, name), mask)
    print(f'released loop: {len(names)} image(s), {(time.perf_counter() - t0) / len(names) * 1000:.1f} ms per image')


DETECT_OPTIONS = """name: bench_e2e
input: {{mse_sr: {mse}, gan_sr: {gan}}}
segmenter: {{type: none}}
detector: {{type: desra, threshold: 0.7, min_area: 4000}}
output: {{root: {root}}}
"""


def _run(cmd: list[str], cwd: str, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f'{" ".join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}')
    return wall, out.stdout + out.stderr


def e2e_part(args) -> None:
    mse_dir, gan_dir = PHOTOS / 'MSE-SR', PHOTOS / 'GAN-SR'
    if not gan_dir.is_dir() or not mse_dir.is_dir():
        print(f'end to end: skipped, the shared photos are not in {PHOTOS} (MSE-SR/ and GAN-SR/)')
        return
    names = sorted(os.listdir(gan_dir))
    detect = os.path.abspath(args.detect)
    print(f'end to end: {len(names)} photos of {PHOTOS}, {args.runs} run(s) each, interleaved; detect.py = {detect}')
    walls = {'released': [], 'detect.py': []}
    work = {'released': [], 'detect.py': []}
    same = None
    with tempfile.TemporaryDirectory(prefix='desra_e2e_') as tmp:
        opt = os.path.join(tmp, 'det.yml')
        # bytecode cached as an installed package has it (in the temporary folder, not the checkout)
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONDONTWRITEBYTECODE'}
        env['PYTHONPYCACHEPREFIX'] = os.path.join(tmp, 'pycache')
        for r in range(-1, args.runs):  # run -1: untimed warm-up of both (bytecode, page cache)
            ref_out, our_root = os.path.join(tmp, f'released_{r}'), os.path.join(tmp, f'detect_{r}')
            with open(opt, 'w') as f:
                f.write(DETECT_OPTIONS.format(mse=mse_dir, gan=gan_dir, root=our_root))
            wall, log = _run([sys.executable, os.path.abspath(__file__), '--released', str(mse_dir), str(gan_dir),
                              ref_out], tmp, env)
            ref_work = float(re.search(r'([\d.]+) ms per image', log).group(1))
            our_wall, log = _run([sys.executable, detect, '-opt', opt], tmp, env)
            if r < 0:
                shutil.rmtree(ref_out)
                shutil.rmtree(our_root)
                continue
            walls['released'].append(wall)
            work['released'].append(ref_work)
            walls['detect.py'].append(our_wall)
            m = re.search(r'Timing: .*?([\d.]+) ms per image \(([^)]*)\)', log)
            if m:
                work['detect.py'].append(float(m.group(1)))
                detail = m.group(2)
            else:
                detail = 'no Timing line in the log (an older detect.py)'
            if same is None:
                same = all(np.array_equal(cv2.imread(os.path.join(ref_out, n), cv2.IMREAD_UNCHANGED),
                                          cv2.imread(os.path.join(our_root, 'masks', n),
                                                     cv2.IMREAD_UNCHANGED)[5:-5, 5:-5]) for n in names)
            if r + 1 < args.runs:
                shutil.rmtree(ref_out)
                shutil.rmtree(our_root)
    t_ref, t_ours = statistics.median(walls['released']), statistics.median(walls['detect.py'])
    print(f"released loop (cv2 + numpy + scipy): median {t_ref:6.2f} s  (min {min(walls['released']):.2f}); "
          f"{statistics.median(work['released']):.1f} ms per image of work")
    ours_work = f"{statistics.median(work['detect.py']):.1f} ms per image of work" if work['detect.py'] else 'n/a'
    print(f"detect.py (whole process):           median {t_ours:6.2f} s  (min {min(walls['detect.py']):.2f}); "
          f"{ours_work} (target <= 30 ms; last run: {detail})")
    print(f'end-to-end speed-up: {t_ref / t_ours:.2f}x (target >= 3x); masks identical: {same}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--part', choices=('indicator', 'e2e', 'both'), default='both')
    p.add_argument('--size', type=int, default=2048, help='indicator part: side of the pair')
    p.add_argument('--repeats', type=int, default=7, help='indicator part: timed repeats')
    p.add_argument('--device', default='cpu', help='indicator part: where texture_similarity runs (cpu, cuda)')
    p.add_argument('--runs', type=int, default=3, help='e2e part: process runs of each side')
    p.add_argument('--detect', default=str(REPO / 'detect.py'), help='e2e part: the detect.py to time')
    p.add_argument('--released', nargs=3, metavar=('MSE_DIR', 'GAN_DIR', 'OUT_DIR'), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.released:
        return released_loop(*args.released)
    if args.part in ('indicator', 'both'):
        indicator_part(args)
    if args.part in ('e2e', 'both'):
        e2e_part(args)


if __name__ == '__main__':
    main()
