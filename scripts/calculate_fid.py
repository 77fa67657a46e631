"""FID between two image folders or statistics files (BasicSR's ``calculate_fid_folder.py``, pytorch-fid's CLI).

    python scripts/calculate_fid.py A B [--weights FILE] [--patch-size N] [--batch-size 8] \
        [--save-stats A.npz] [--save-stats-b B.npz] [--device auto|cpu|cuda] [--method sqrtm|eigh]

A and B are each a folder of images (searched recursively; any size, every image is resized to 299 x 299 by the
network) or a statistics file: an ``.npz`` with ``mu``, ``sigma`` (this script's ``--save-stats`` output,
pytorch-fid's files) or a ``.pth`` with ``mean``, ``cov`` (BasicSR's, e.g. ``inception_FFHQ_512.pth``).
Prints ``FID: <value>`` and the number of samples of each set.

``--weights``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (default: searched in
``$DESRA_FID_INCEPTION_WEIGHTS``, ``pretrained/``, ``experiments/pretrained_models/``, torch hub's cache; get it with
``python scripts/download_pretrained.py --source official --only fid_inception``).
``--patch-size N``: every non-overlapping N x N tile of an image is a sample instead of the whole image.
``--save-stats OUT.npz`` / ``--save-stats-b OUT.npz``: write the statistics of A / B, to reuse as an input later.
With fewer than 2048 samples the covariance is singular and the value is not comparable with published FIDs
(a warning says so). Definitions: ``desra/metrics/fid.py``.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser
from desra.errors import ConfigError, DataError

STATS_SUFFIXES = ('.npz', '.pth', '.pt')


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('a', help='image folder or statistics file (.npz / .pth) of the first set')
    parser.add_argument('b', help='image folder or statistics file (.npz / .pth) of the second set')
    parser.add_argument('--weights', default=None, help='pytorch-fid Inception weights file (default: searched)')
    parser.add_argument('--patch-size', type=int, default=None,
                        help='use non-overlapping N x N tiles as samples (default: whole images)')
    parser.add_argument('--batch-size', type=int, default=8, help='images per forward pass (default 8)')
    parser.add_argument('--save-stats', default=None, metavar='OUT.npz', help='write the statistics of A here')
    parser.add_argument('--save-stats-b', default=None, metavar='OUT.npz', help='write the statistics of B here')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                        help='where the network runs (default: CUDA when available)')
    parser.add_argument('--eps', type=float, default=1e-6, help='diagonal offset when sqrtm fails (default 1e-6)')
    parser.add_argument('--method', choices=['sqrtm', 'eigh'], default='sqrtm',
                        help="sqrtm (pytorch-fid's) or eigh (equal to 1e-7, ~5x faster on CPU)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.patch_size is not None and args.patch_size < 1:
        parser.error(f'--patch-size must be >= 1, got {args.patch_size}')
    if not args.eps > 0:
        parser.error(f'--eps must be > 0, got {args.eps}')
    return args


def describe_input(path: str, name: str) -> tuple[str, list[str]]:
    """``('folder', image files)`` or ``('stats', [])`` for an input; a one-line DataError otherwise."""
    from desra.data.io import IMG_EXTENSIONS, scandir

    if os.path.isdir(path):
        files = [f for f in scandir(path, recursive=True, full_path=True) if f.lower().endswith(IMG_EXTENSIONS)]
        if not files:
            raise DataError(f'{name}: no images in folder {os.path.abspath(path)} (expected '
                            f'{", ".join(IMG_EXTENSIONS)})')
        return 'folder', files
    if os.path.isfile(path):
        if not path.lower().endswith(STATS_SUFFIXES):
            raise DataError(f'{name}: {os.path.abspath(path)} is neither an image folder nor a statistics file '
                            f'({", ".join(STATS_SUFFIXES)})')
        return 'stats', []
    raise DataError(f'{name}: {os.path.abspath(path)} does not exist (expected an image folder or a statistics '
                    f'file {", ".join(STATS_SUFFIXES)})')


def resolve_device(choice: str):
    import torch

    if choice == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if choice == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA device is available (use --device cpu or auto)')
    return torch.device(choice)


def folder_stats(files: list[str], inception, batch_size: int, patch_size: int | None, desc: str):
    """FeatureStats of the images ``files``; consecutive images of equal size are batched together."""
    import numpy as np
    import torch

    from desra.data.io import imread
    from desra.metrics.fid import FeatureStats, extract_inception_features
    from desra.utils.progress import Progress

    stats = FeatureStats()
    pending: list[np.ndarray] = []

    def flush():
        if not pending:
            return
        batch = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2).float().div_(255.0)
        try:
            stats.update(extract_inception_features(batch, inception, patch_size))
        except ValueError as e:
            raise ConfigError(f'--patch-size: {e}') from None
        pending.clear()

    with Progress(len(files), f'FID features {desc}', unit='img') as progress:
        for path in files:
            img = imread(path, flag='color')[:, :, ::-1]  # BGR uint8 -> RGB
            if pending and (img.shape != pending[0].shape or len(pending) >= batch_size):
                flush()
            pending.append(np.ascontiguousarray(img))
            progress.update()
        flush()
    return stats


def main(argv=None):
    args = parse_args(argv)
    inputs = {'A': (args.a, *describe_input(args.a, 'A')), 'B': (args.b, *describe_input(args.b, 'B'))}
    if args.weights is not None and not os.path.isfile(args.weights):
        raise ConfigError(f'--weights: {os.path.abspath(args.weights)} does not exist')

    from desra.metrics.fid import FeatureStats, fid_from_stats

    inception = None
    if any(kind == 'folder' for _, kind, _ in inputs.values()):
        from desra.archs.inception_arch import load_fid_inception

        inception = load_fid_inception(args.weights, resolve_device(args.device))
    stats = {}
    for name, (path, kind, files) in inputs.items():
        if kind == 'stats':
            stats[name] = FeatureStats.load(path)
        else:
            stats[name] = folder_stats(files, inception, args.batch_size, args.patch_size, name)
    for name, out in (('A', args.save_stats), ('B', args.save_stats_b)):
        if out is not None:
            stats[name].save(out, source=os.path.abspath(inputs[name][0]), patch_size=args.patch_size)
            print(f'statistics of {name} saved to {out}')
    fid = fid_from_stats(stats['A'], stats['B'], eps=args.eps, method=args.method)
    unit = f'{args.patch_size}x{args.patch_size} tiles' if args.patch_size else 'images'
    counts = {name: ('?' if s.n is None else s.n) for name, s in stats.items()}
    print(f'FID: {fid:.6f}')
    print(f'samples: A={counts["A"]}, B={counts["B"]} ({unit}); A={args.a}, B={args.b}')
    return {'fid': fid, 'n_a': stats['A'].n, 'n_b': stats['B'].n}


if __name__ == '__main__':
    run_cli(main)
