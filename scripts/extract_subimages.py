"""Crop large training images into overlapping sub-images (BasicSR's DF2K / DIV2K preparation step).

    python scripts/extract_subimages.py --input datasets/DF2K/DF2K_HR --output datasets/DF2K/DF2K_HR_sub
    python scripts/extract_subimages.py --input datasets/DF2K/DF2K_bicLRx4 --output datasets/DF2K/DF2K_bicLRx4_sub \
        --crop-size 120 --step 60

Each image is cut into ``--crop-size`` squares every ``--step`` pixels (BasicSR: 480 / 240 for HR, divided by the
scale for LR), plus a last row / column flush with the border when more than ``--thresh-size`` pixels (0) would
be left over. Sub-images are named ``<name>_s001<ext>``, ``_s002``, ... row by row; ``x2``/``x3``/``x4``/``x8`` are
removed from DIV2K LR names so HR and LR sub-images pair up. PNGs are written with compression
``--compression-level`` (3). Every file is written atomically; images smaller than the crop are skipped and
listed.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import DataError  # noqa: E402


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('--input', required=True, help='folder of images')
    parser.add_argument('--output', required=True, help='folder for the sub-images')
    parser.add_argument('--crop-size', type=int, default=480, help='side of a sub-image (default 480)')
    parser.add_argument('--step', type=int, default=240, help='stride between sub-images (default 240)')
    parser.add_argument('--thresh-size', type=int, default=0,
                        help='add a border-flush row/column when more than this many pixels remain (default 0)')
    parser.add_argument('--compression-level', type=int, default=3, help='PNG compression 0-9 (default 3)')
    args = parser.parse_args(argv)
    for key in ('crop_size', 'step'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be >= 1, got {getattr(args, key)}')
    return args


def sub_image_starts(size: int, crop: int, step: int, thresh: int) -> list[int]:
    """Top (or left) coordinates of the crops along one axis, BasicSR's rule."""
    starts = list(range(0, size - crop + 1, step))
    if starts and size - (starts[-1] + crop) > thresh:
        starts.append(size - crop)
    return starts


def main(argv=None) -> dict:
    import cv2
    import numpy as np

    from desra.data.io import imwrite_atomic, is_image_file, scandir
    from desra.engine.logger import get_root_logger
    from desra.utils.progress import Progress

    args = parse_args(argv)
    get_root_logger()
    names = [f for f in scandir(args.input) if is_image_file(f)]
    if not names:
        raise DataError(f'--input: no images in {os.path.abspath(args.input)}')
    written, skipped = 0, []
    progress = Progress(len(names), 'extract', unit='img')
    for name in names:
        path = os.path.join(args.input, name)
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f'cannot read image {os.path.abspath(path)}')
        stem, ext = os.path.splitext(name)
        for tag in ('x2', 'x3', 'x4', 'x8'):
            stem = stem.replace(tag, '')
        h, w = img.shape[:2]
        rows = sub_image_starts(h, args.crop_size, args.step, args.thresh_size)
        cols = sub_image_starts(w, args.crop_size, args.step, args.thresh_size)
        if not rows or not cols:
            skipped.append(name)
        index = 0
        for y in rows:
            for x in cols:
                index += 1
                crop = np.ascontiguousarray(img[y:y + args.crop_size, x:x + args.crop_size, ...])
                imwrite_atomic(crop, os.path.join(args.output, f'{stem}_s{index:03d}{ext}'),
                               [cv2.IMWRITE_PNG_COMPRESSION, args.compression_level] if ext.lower() == '.png' else None)
                written += 1
        progress.update()
    progress.close()
    if skipped:
        print(f'extract_subimages: {len(skipped)} image(s) smaller than {args.crop_size} px skipped: '
              f'{", ".join(skipped[:5])}', file=sys.stderr)
    print(f'extract_subimages: {written} sub-image(s) from {len(names)} image(s) -> {args.output}')
    return {'written': written, 'skipped': skipped}


if __name__ == '__main__':
    run_cli(main)
