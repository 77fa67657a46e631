"""Pack a folder of images into BasicSR's LMDB layout (``io_backend: {type: lmdb}``).

    python scripts/create_lmdb.py --input datasets/DF2K/DF2K_HR_sub --output datasets/DF2K/DF2K_HR_sub.lmdb
    python scripts/create_lmdb.py --input datasets/DF2K/DF2K_bicLRx4_sub --output datasets/DF2K/DF2K_bicLRx4_sub.lmdb

Layout (BasicSR's ``make_lmdb_from_imgs``): ``<output>.lmdb/data.mdb`` holds each image as a PNG file (OpenCV,
compression ``--compress-level``, default 1) under the key ``<relative path without suffix>``;
``meta_info.txt`` lists ``<key>.png (h,w,c) <level>`` per image, sorted by key. Images are read unchanged (grey,
alpha and 16-bit stay as they are). The database is written to ``<output>.part`` and renamed when complete; an
existing ``--output`` is refused. Needs the ``lmdb`` package (``pip install lmdb``).
"""
from __future__ import annotations

import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import ConfigError, DataError  # noqa: E402


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('--input', required=True, help='folder of images (sub-folders included with --recursive)')
    parser.add_argument('--output', required=True, help='the LMDB folder to create; must end with .lmdb')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression 0-9 (default 1, as BasicSR)')
    parser.add_argument('--recursive', action='store_true', help='also pack images in sub-folders')
    parser.add_argument('--batch', type=int, default=5000, help='images per LMDB transaction (default 5000)')
    args = parser.parse_args(argv)
    if not args.output.endswith('.lmdb'):
        parser.error(f"--output must end with '.lmdb', got {args.output}")
    if not 0 <= args.compress_level <= 9:
        parser.error(f'--compress-level must be in 0..9, got {args.compress_level}')
    return args


def main(argv=None) -> dict:
    import cv2
    import numpy as np

    from desra.data.file_client import require_lmdb
    from desra.data.io import is_image_file, scandir
    from desra.engine.logger import get_root_logger
    from desra.utils.progress import Progress

    args = parse_args(argv)
    get_root_logger()
    lmdb = require_lmdb('--output')
    if os.path.exists(args.output):
        raise ConfigError(f'--output: {args.output} already exists; remove it or choose another name')
    names = [f for f in scandir(args.input, recursive=args.recursive) if is_image_file(f)]
    if not names:
        raise DataError(f'--input: no images in {os.path.abspath(args.input)}')
    keys = [os.path.splitext(n)[0].replace(os.sep, '/') for n in names]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[0]
        raise DataError(f"--input: two images share the key '{dup}' (same name, another suffix)")
    params = [cv2.IMWRITE_PNG_COMPRESSION, args.compress_level]

    def encode(name):
        path = os.path.join(args.input, name)
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(f'cannot read image {os.path.abspath(path)}')
        ok, buf = cv2.imencode('.png', img, params)
        if not ok:
            raise DataError(f'cannot encode {os.path.abspath(path)} as PNG')
        c = 1 if img.ndim == 2 else img.shape[2]
        return buf.tobytes(), (img.shape[0], img.shape[1], c)

    first, _ = encode(names[0])
    map_size = max(len(first) * len(names) * 10, 1 << 24)  # BasicSR's estimate, grown below when exceeded
    part = args.output + '.part'
    if os.path.exists(part):
        shutil.rmtree(part)
    os.makedirs(part)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    bad = [keys[i] for i in order if not keys[i].isascii()]
    if bad:
        raise DataError(f"--input: LMDB keys must be ASCII (BasicSR encodes them so); rename {bad[0]}")
    env = lmdb.open(part, map_size=map_size)
    lines, progress = [], Progress(len(order), 'lmdb', unit='img')
    try:
        for start in range(0, len(order), args.batch):
            batch = order[start:start + args.batch]
            encoded = [(i, *encode(names[i])) for i in batch]
            while True:  # one transaction per batch; a full map grows and the batch is written again
                txn = env.begin(write=True)
                try:
                    for i, data, _ in encoded:
                        txn.put(keys[i].encode('ascii'), data)
                    txn.commit()
                    break
                except lmdb.MapFullError:
                    txn.abort()
                    map_size *= 2
                    env.set_mapsize(map_size)
            for i, _, (h, w, c) in encoded:
                lines.append(f'{keys[i]}.png ({h},{w},{c}) {args.compress_level}\n')
                progress.update()
    finally:
        env.close()
        progress.close()
    with open(os.path.join(part, 'meta_info.txt'), 'w', encoding='utf-8') as f:
        f.writelines(lines)
    os.replace(part, args.output)
    print(f'create_lmdb: {len(lines)} image(s) -> {args.output}')
    return {'count': len(lines), 'output': args.output}


if __name__ == '__main__':
    run_cli(main)
