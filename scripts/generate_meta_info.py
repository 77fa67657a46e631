"""Write a ``meta_info`` file in Real-ESRGAN's formats.

    python scripts/generate_meta_info.py --input datasets/DF2K/DF2K_HR_sub datasets/DF2K/OST \
        --root datasets/DF2K datasets/DF2K --meta-info datasets/DF2K/meta_info/meta_info_DF2K_OST.txt
    python scripts/generate_meta_info.py --pair --input datasets/X/HR datasets/X/LR --root datasets/X datasets/X \
        --meta-info datasets/X/meta_info_pair.txt

Without ``--pair`` (``RealESRGANDataset``): one line per image of every ``--input`` folder (sorted), the path
relative to the matching ``--root`` (the data set's ``dataroot_gt``). With ``--pair``
(``RealESRGANPairedDataset``): two folders, GT then LQ, paired by sorted order; lines ``gt_path, lq_path``, each
relative to its root. ``--check`` decodes every image first and leaves out (and lists) the unreadable ones.
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
    parser.add_argument('--input', nargs='+', required=True, help='image folder(s)')
    parser.add_argument('--root', nargs='+', default=None,
                        help='the folder each path is written relative to, one per --input (default: each --input)')
    parser.add_argument('--meta-info', '--meta_info', dest='meta_info', required=True, help='the file to write')
    parser.add_argument('--pair', action='store_true', help='GT and LQ folders: write "gt, lq" lines')
    parser.add_argument('--check', action='store_true', help='decode every image and leave out unreadable ones')
    args = parser.parse_args(argv)
    args.root = args.root or list(args.input)
    if len(args.root) != len(args.input):
        parser.error(f'--root: {len(args.root)} root(s) for {len(args.input)} --input folder(s); give one each')
    if args.pair and len(args.input) != 2:
        parser.error(f'--pair needs exactly two --input folders (GT, LQ), got {len(args.input)}')
    return args


def main(argv=None) -> list[str]:
    from desra.atomic import atomic_open
    from desra.data.io import imread, is_image_file, scandir

    args = parse_args(argv)
    listed, bad = [], []
    for folder, root in zip(args.input, args.root):
        rels = []
        for name in scandir(folder):
            path = os.path.join(folder, name)
            if not is_image_file(name):
                continue
            if args.check:
                try:
                    imread(path)
                except DataError as e:
                    bad.append(str(e))
                    continue
            rels.append(os.path.relpath(path, root).replace(os.sep, '/'))
        if not rels:
            raise DataError(f'--input: no images in {os.path.abspath(folder)}')
        listed.append(rels)
    if args.pair:
        gt, lq = listed
        if len(gt) != len(lq):
            raise DataError(f'--pair: {len(gt)} GT image(s) in {args.input[0]} but {len(lq)} LQ image(s) in '
                            f'{args.input[1]}; pairing is by sorted order, so the counts must match')
        lines = [f'{g}, {q}' for g, q in zip(gt, lq)]
    else:
        lines = [rel for rels in listed for rel in rels]
    with atomic_open(args.meta_info, 'w') as f:
        f.write(''.join(line + '\n' for line in lines))
    for msg in bad:
        print(f'left out: {msg}', file=sys.stderr)
    print(f'generate_meta_info: {len(lines)} line(s) -> {args.meta_info}')
    return lines


if __name__ == '__main__':
    run_cli(main)
