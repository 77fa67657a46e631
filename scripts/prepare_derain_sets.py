r"""Convert a released deraining test set to the layout this project reads: ``OUTPUT/{rainy,clean}/<name>.png``.

    python scripts/prepare_derain_sets.py --set Rain100L --input ~/Downloads/Rain100L --output datasets/derain/Rain100L
    python scripts/prepare_derain_sets.py --set Rain800 --input ~/Downloads/Rain800/test_syn \
        --output datasets/derain/Rain800 [--order gt-rainy|rainy-gt]
    python scripts/prepare_derain_sets.py --set SPA-Data --input ~/Downloads/real_test_1000 \
        --output datasets/derain/SPA-Data

Two layouts of the releases (``--layout``; the default depends on ``--set``):

* ``names`` (Rain100L, Rain12, SPA-Data): separate rainy and clean files anywhere under ``--input``. A file is
  clean or rainy by the nearest folder above it that says so (clean: ``norain``, ``clean``, ``gt``,
  ``groundtruth``, ``ground_truth``, ``label``, ``target``, ``background``; rainy: ``rain``, ``rainy``, ``input``,
  ``data``), else by its name: a ``norain``/``gt``/``clean``/``groundtruth`` prefix or suffix is clean
  (``norain-001``, ``001_GT``, ``0001gt``), a ``rain``/``rainy``/``in``/``input`` prefix or suffix is rainy
  (``rain-001``, ``001_in``, ``0001rain``). The rest of the name, without a trailing ``x2``/``x3``/``x4`` (Rain100L's
  ``norain-001x2`` inputs), is the key that pairs them.
* ``side-by-side`` (Rain800): each image holds both halves, split at the middle; ``--order gt-rainy`` (default:
  the clean image on the left) or ``rainy-gt``. Check one image: copies of Rain800 differ.

Output names (``--names``): ``rainy`` (default: the stem of the rainy file, so a model's outputs named after its
inputs match the GT), ``clean``, or ``key``. Images are decoded (8-bit BGR, EXIF orientation applied) and
written as PNG, atomically; everything is paired and size-checked before the first file is written. A pair
count different from the released test set's (Rain100L 100, Rain12 12, Rain800 100, SPA-Data 1000) is
reported, not refused.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import DataError  # noqa: E402

SETS = ('Rain100L', 'Rain12', 'Rain800', 'SPA-Data')
DEFAULT_LAYOUT = {'Rain100L': 'names', 'Rain12': 'names', 'Rain800': 'side-by-side', 'SPA-Data': 'names'}
CLEAN_DIRS = {'norain', 'clean', 'gt', 'groundtruth', 'ground_truth', 'label', 'labels', 'target', 'background'}
RAINY_DIRS = {'rain', 'rainy', 'input', 'inputs', 'data'}
_CLEAN_NAME = (re.compile(r'^(?:no[-_]?rain|groundtruth|gt|clean)[-_]?(?P<key>.+)$'),
               re.compile(r'^(?P<key>.+?)[-_]?(?:no[-_]?rain|groundtruth|gt|clean)$'))
_RAINY_NAME = (re.compile(r'^(?:rainy|rain|input|in)[-_]?(?P<key>.+)$'),
               re.compile(r'^(?P<key>.+?)[-_]?(?:rainy|rain|input|in)$'))
_SCALE_TAG = re.compile(r'(?<=\d)x[234]$')


def build_parser() -> argparse.ArgumentParser:
    p = script_parser(__doc__)
    p.add_argument('--set', required=True, choices=SETS, help='which data set the release is')
    p.add_argument('--input', required=True, help='the released folder (searched recursively)')
    p.add_argument('--output', required=True, help='datasets/derain/<set>')
    p.add_argument('--layout', choices=['names', 'side-by-side'], default=None,
                   help='how the release stores the pairs (default: side-by-side for Rain800, else names)')
    p.add_argument('--order', choices=['gt-rainy', 'rainy-gt'], default='gt-rainy',
                   help='side-by-side: which half is which (default gt-rainy: clean on the left)')
    p.add_argument('--names', choices=['rainy', 'clean', 'key'], default='rainy',
                   help='output file names: the rainy stem (default), the clean stem or the pairing key')
    p.add_argument('--overwrite', action='store_true', help='write into an output folder that holds images')
    return p


def _key(stem: str, rules) -> str | None:
    low = stem.lower()
    for rule in rules:
        m = rule.match(low)
        if m:
            return _SCALE_TAG.sub('', m.group('key').strip('-_')) or None
    return None


def classify(rel_path: str) -> tuple[str, str] | None:
    """``('clean' | 'rainy', key)`` of a file of a ``names`` release (path relative to the release root), or None."""
    parts = rel_path.replace('\\', '/').split('/')
    stem = os.path.splitext(parts[-1])[0]
    kind = None
    for folder in reversed(parts[:-1]):
        f = folder.lower()
        if f in CLEAN_DIRS or f in RAINY_DIRS:
            kind = 'clean' if f in CLEAN_DIRS else 'rainy'
            break
    clean_key, rainy_key = _key(stem, _CLEAN_NAME), _key(stem, _RAINY_NAME)
    if kind is None:
        kind = 'clean' if clean_key else 'rainy' if rainy_key else None
        if kind is None:
            return None
    key = clean_key or rainy_key or _SCALE_TAG.sub('', stem.lower())
    return kind, key


def _pairs_by_names(src: str) -> list[dict]:
    from desra.data.io import is_image_file, scandir

    files = [f for f in scandir(src, recursive=True) if is_image_file(f)]
    if not files:
        raise DataError(f'--input {src}: no images in it (searched recursively)')
    found: dict[str, dict[str, str]] = {}
    unknown = []
    for f in files:
        c = classify(f)
        if c is None:
            unknown.append(f)
            continue
        kind, key = c
        slot = found.setdefault(key, {})
        if kind in slot:
            raise DataError(f'--input {src}: two {kind} images for the pair {key!r}: {slot[kind]} and {f}')
        slot[kind] = f
    if unknown:
        raise DataError(f'--input {src}: {unknown[0]} is neither a clean nor a rainy image by its folder or name '
                        f'({len(unknown)} such file(s)); see --help for the rules')
    lone = sorted((k, v) for k, v in found.items() if len(v) == 1)
    if lone:
        key, slot = lone[0]
        kind = next(iter(slot))
        raise DataError(f'--input {src}: {slot[kind]} has no {"rainy" if kind == "clean" else "clean"} partner '
                        f'({len(lone)} unpaired file(s))')
    return [{'key': k, 'clean': os.path.join(src, v['clean']), 'rainy': os.path.join(src, v['rainy'])}
            for k, v in sorted(found.items())]


def _pairs_side_by_side(src: str) -> list[dict]:
    from desra.data.io import is_image_file, scandir

    files = [f for f in scandir(src, recursive=True) if is_image_file(f)]
    if not files:
        raise DataError(f'--input {src}: no images in it (searched recursively)')
    return [{'key': os.path.splitext(f)[0].replace(os.sep, '_'), 'both': os.path.join(src, f)} for f in files]


def _name(pair: dict, names: str) -> str:
    if names == 'key' or 'both' in pair:
        return pair['key'].replace(os.sep, '_')
    return os.path.splitext(os.path.basename(pair[names]))[0]


def _load(pair: dict, order: str):
    """(rainy, clean) images of one pair."""
    from desra.data.io import imread

    if 'both' in pair:
        img = imread(pair['both'])
        h, w = img.shape[:2]
        if w % 2:
            raise DataError(f'{pair["both"]}: {w}x{h} (WxH), an odd width cannot be split into two halves')
        left, right = img[:, :w // 2], img[:, w // 2:]
        return (right, left) if order == 'gt-rainy' else (left, right)
    rainy, clean = imread(pair['rainy']), imread(pair['clean'])
    if rainy.shape != clean.shape:
        raise DataError(f'{pair["rainy"]}: {rainy.shape[1]}x{rainy.shape[0]} (WxH), but its clean partner '
                        f'{pair["clean"]} is {clean.shape[1]}x{clean.shape[0]}')
    return rainy, clean


def main(argv=None) -> dict:
    import numpy as np

    from desra.data.io import imwrite_atomic, is_image_file, scandir

    args = build_parser().parse_args(argv)
    src, root = os.path.abspath(args.input), os.path.abspath(args.output)
    if not os.path.isdir(src):
        raise DataError(f'--input {src}: {"is a file, not a folder" if os.path.exists(src) else "no such folder"}')
    layout = args.layout or DEFAULT_LAYOUT[args.set]
    pairs = _pairs_by_names(src) if layout == 'names' else _pairs_side_by_side(src)
    names = {}
    for p in pairs:
        n = _name(p, args.names) + '.png'
        if n in names:
            raise DataError(f'--input {src}: two pairs would both be written as {n} ({names[n]} and {p["key"]}); '
                            'try --names key')
        names[n] = p['key']
    for sub in ('rainy', 'clean'):
        folder = os.path.join(root, sub)
        if os.path.isdir(folder) and not args.overwrite and any(is_image_file(f) for f in scandir(folder)):
            raise DataError(f'--output {root}: {sub}/ already holds images; choose another folder or pass '
                            '--overwrite')
    for p in pairs:  # every pair decodes, splits and matches in size before anything is written
        _load(p, args.order)
    for p, n in zip(pairs, names):
        rainy, clean = _load(p, args.order)
        imwrite_atomic(np.ascontiguousarray(rainy), os.path.join(root, 'rainy', n))
        imwrite_atomic(np.ascontiguousarray(clean), os.path.join(root, 'clean', n))
    expected = {'Rain100L': 100, 'Rain12': 12, 'Rain800': 100, 'SPA-Data': 1000}[args.set]
    note = '' if len(pairs) == expected else f' (the released {args.set} test set has {expected})'
    print(f'prepare_derain_sets: {len(pairs)} pair(s){note} -> {os.path.join(root, "rainy")} and '
          f'{os.path.join(root, "clean")}')
    return {'pairs': len(pairs), 'names': list(names), 'layout': layout}


if __name__ == '__main__':
    run_cli(main)
