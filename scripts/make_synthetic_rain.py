r"""Make a paired deraining set from clean images with the additive rain model of desra/data/synthetic_rain.py.

    python scripts/make_synthetic_rain.py --input CLEAN_FOLDER --output datasets/derain/Synthetic [--seed 0] \
        [--angle 10 --angle-jitter 5 --length 20 40 --density 1500 --intensity 0.5 --intensity-jitter 0.4 \
         --width 1 --blur 0.6] [--light-layer] [--haze 0] [--overwrite]

Writes, for every image ``<name>.<ext>`` of CLEAN_FOLDER (not its sub-folders):

* ``ROOT/rainy/<name>.png``: ``I = clip(B + R, 0, 255)`` rounded to 8 bits;
* ``ROOT/clean/<name>.png``: the GT ``B`` (the clean image as decoded, 8-bit BGR with its EXIF orientation applied,
  re-encoded as PNG: exactly the pixels the rain was added to);
* ``ROOT/rain_params.json``: the model, the parameters and the seed of every image (written last: a folder
  without it is incomplete).

This is the paired layout test.py reads at scale 1 (``dataroot_lq: ROOT/rainy``, ``dataroot_gt: ROOT/clean``,
options/test_derain_x1.yml) and scripts/reproduce_derain_table.py evaluates.

The flags set one streak layer (``--light-layer`` adds a second, lighter one: 3x the density, 0.4x the length
and intensity, 1.5x the angle jitter, width 1); each image's generator is
``numpy.random.default_rng([seed, zlib.crc32(name)])`` (name = the output file name), so an image's rain
depends only on the seed, its name and the parameters. Ranges: density 0..100000 streaks per megapixel,
1 <= L_MIN <= L_MAX <= 1000 px, angle -80..80 degrees from vertical (positive: lower end to the right), jitter
0..45, 0 < intensity <= 1 (peak, fraction of 255), intensity jitter 0..1, width 1..10 px, blur 0..10 px, haze
0..0.5. All inputs are decoded and all options checked before anything is written; every file is written
atomically. An output folder that already holds images is refused unless ``--overwrite`` (which replaces files
of the same names, and refuses images there that this run would not write).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import ConfigError, DataError  # noqa: E402

#: RainLayer field -> its flag, for the messages of check_layer.
FLAGS = {'density': '--density', 'length': '--length', 'angle': '--angle', 'angle_jitter': '--angle-jitter',
         'intensity': '--intensity', 'intensity_jitter': '--intensity-jitter', 'width': '--width', 'blur': '--blur'}


def build_parser() -> argparse.ArgumentParser:
    from desra.data.synthetic_rain import DEFAULT_LAYER as d

    p = script_parser(__doc__)
    p.add_argument('--input', required=True, help='folder of clean images')
    p.add_argument('--output', required=True, help='root of the paired set (rainy/, clean/, rain_params.json)')
    p.add_argument('--seed', type=int, default=0, help='base seed (>= 0; default 0)')
    p.add_argument('--angle', type=float, default=d.angle, help=f'mean angle, degrees from vertical ({d.angle:g})')
    p.add_argument('--angle-jitter', type=float, default=d.angle_jitter,
                   help=f'uniform spread of the angle, +- degrees ({d.angle_jitter:g})')
    p.add_argument('--length', type=float, nargs=2, default=list(d.length), metavar=('L_MIN', 'L_MAX'),
                   help=f'streak length range in pixels ({d.length[0]:g} {d.length[1]:g})')
    p.add_argument('--density', type=float, default=d.density, help=f'streaks per megapixel ({d.density:g})')
    p.add_argument('--intensity', type=float, default=d.intensity,
                   help=f'peak streak brightness, a fraction of 255 ({d.intensity:g})')
    p.add_argument('--intensity-jitter', type=float, default=d.intensity_jitter,
                   help=f'brightness spread: each streak in [1 - j, 1] x the peak ({d.intensity_jitter:g})')
    p.add_argument('--width', type=float, default=d.width, help=f'streak thickness in pixels ({d.width:g})')
    p.add_argument('--blur', type=float, default=d.blur, help=f'Gaussian sigma in pixels ({d.blur:g})')
    p.add_argument('--light-layer', action='store_true', help='add a light layer (short, faint, dense streaks)')
    p.add_argument('--haze', type=float, default=0.0, help='uniform additive veil, a fraction of 255 (0)')
    p.add_argument('--overwrite', action='store_true', help='replace the files of an existing set of the same names')
    return p


def _plan(args) -> tuple[list[tuple[str, str]], str]:
    """``[(input file name, output .png name)]`` and the absolute output root; every check that reads no pixels."""
    from desra.data.io import is_image_file, scandir

    src = os.path.abspath(args.input)
    if not os.path.isdir(src):
        what = 'is a file, not a folder' if os.path.exists(src) else 'no such folder'
        raise DataError(f'--input {src}: {what}')
    names = [f for f in scandir(src) if is_image_file(f)]
    if not names:
        raise DataError(f'--input {src}: no images in it (.png, .jpg, ...; sub-folders are not searched)')
    plan, seen = [], {}
    for f in names:
        out = os.path.splitext(f)[0] + '.png'
        if out in seen:
            raise DataError(f'--input {src}: {seen[out]} and {f} would both be written as {out}')
        seen[out] = f
        plan.append((f, out))
    root = os.path.abspath(args.output)
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f'--output {root}: is a file, not a folder')
    existing = []
    for sub in ('rainy', 'clean'):
        folder = os.path.join(root, sub)
        if os.path.isdir(folder):
            existing += [os.path.join(sub, f) for f in scandir(folder) if is_image_file(f)]
    if os.path.exists(os.path.join(root, 'rain_params.json')):
        existing.append('rain_params.json')
    if existing and not args.overwrite:
        raise DataError(f'--output {root}: already holds a set ({existing[0]}, {len(existing)} file(s) in all); '
                        'choose another folder or pass --overwrite')
    ours = {os.path.join(sub, out) for _, out in plan for sub in ('rainy', 'clean')} | {'rain_params.json'}
    stray = [e for e in existing if e not in ours]
    if stray:
        raise DataError(f'--output {root}: {stray[0]} is not an image of --input ({len(stray)} such file(s)); it '
                        'would be left unpaired, remove it or choose another folder')
    return plan, root


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from desra.data.synthetic_rain import (RainLayer, check_haze, check_layer, image_rng, image_seed, light_layer,
                                          rain_layer)

    if args.seed < 0:
        raise ConfigError(f'--seed {args.seed}: expected an integer >= 0')
    main_layer = check_layer(RainLayer(density=args.density, length=tuple(args.length), angle=args.angle,
                                       angle_jitter=args.angle_jitter, intensity=args.intensity,
                                       intensity_jitter=args.intensity_jitter, width=args.width, blur=args.blur),
                             names=FLAGS)
    haze = check_haze(args.haze, '--haze')
    layers = (main_layer, light_layer(main_layer)) if args.light_layer else (main_layer,)
    plan, root = _plan(args)

    import numpy as np

    from desra.atomic import atomic_open
    from desra.data.io import imread, imwrite_atomic
    from desra.engine.logger import get_root_logger
    from desra.utils.progress import Progress

    get_root_logger()
    src = os.path.abspath(args.input)
    for f, _ in plan:  # every input decodes before the first file is written
        imread(os.path.join(src, f))
    layer_dicts = [layer.to_dict() for layer in layers]
    images = {}
    progress = Progress(len(plan), 'rain', unit='img')
    for f, out in plan:
        clean = imread(os.path.join(src, f))
        rng = image_rng(args.seed, out)
        r, streaks = rain_layer(clean.shape, layers, haze, rng, return_streaks=True)
        rainy = np.round(np.clip(clean.astype(np.float32) + r[..., None], 0, 255)).astype(np.uint8)
        imwrite_atomic(clean, os.path.join(root, 'clean', out))
        imwrite_atomic(rainy, os.path.join(root, 'rainy', out))
        images[out] = {'source': f, 'height': int(clean.shape[0]), 'width': int(clean.shape[1]),
                       'seed': image_seed(args.seed, out), 'layers': layer_dicts, 'haze': haze,
                       'streaks': [len(s) for s in streaks], 'rain_mean': round(float(r.mean()), 4)}
        progress.update()
    progress.close()
    record = {'model': 'I = clip(B + R, 0, 255), R = sum_k S_k + 255 * haze (desra/data/synthetic_rain.py)',
              'rng': 'numpy.random.default_rng([seed, zlib.crc32(name)]) per image, name = output file name',
              'input': src, 'seed': args.seed, 'layers': layer_dicts, 'haze': haze, 'images': images}
    with atomic_open(os.path.join(root, 'rain_params.json'), 'w') as fh:
        json.dump(record, fh, indent=2)
    print(f'make_synthetic_rain: {len(plan)} pair(s) -> {os.path.join(root, "rainy")} and '
          f'{os.path.join(root, "clean")}; parameters in {os.path.join(root, "rain_params.json")}')
    return record


if __name__ == '__main__':
    run_cli(main)
