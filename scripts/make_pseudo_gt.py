"""Build the paired DeSRA fine-tuning set (real LR, pseudo-GT) from a detection run (paper Sec. 3.3 / 4.1).

    python scripts/make_pseudo_gt.py --detections results/detect_RealESRGAN --out datasets/desra_ft \
        [--train 50 | --train-fraction 0.25] [--seed 0] [--feather 0] [--val-all]
    python scripts/make_pseudo_gt.py --lr LR --mse MSE-SR --gan GAN-SR --masks DeSRA-Mask --out datasets/desra_ft

Pseudo-GT: ``y~ = M * MSE-SR + (1 - M) * GAN-SR`` with ``M`` the artifact mask at SR size (``--feather S``
softens its edge with a Gaussian of sigma S pixels; see ``desra/finetune/pseudo_gt.py``).

Inputs:
  --detections ROOT   a ``detect.py`` output folder: names and LR paths from ``ROOT/records/<name>.json``;
                      MSE-SR / GAN-SR from ``ROOT/MSE-SR`` and ``ROOT/GAN-SR`` when present (mode a), else
                      from the record's paths (mode b); masks from ``ROOT/masks``. A mode (b) run has no LR
                      paths in its records: add ``--lr DIR``.
  --lr --mse --gan --masks DIR   four folders paired by relative name without suffix (flat, or the released
                      ``root/<sub>/<img>`` layout); every name must be present in all four.

Masks are 0/255 (or 0/1) grayscale images at SR size; a ``(H-2c) x (W-2c)`` mask (the released detector's
valid-mode crop) is padded back with ``c`` non-artifact pixels on every side.

Output (every file written atomically; nested names keep their sub-folders; all images PNG):
  OUT/train/LR/<name>.png, OUT/train/GT/<name>.png (pseudo-GT), OUT/train/meta_info.txt
  OUT/val/LR, OUT/val/GT (pseudo-GT), OUT/val/GAN-SR (the original output), OUT/val/masks (the binary mask
  used, 0/255 at SR size), OUT/val/meta_info.txt
  OUT/split.json (names per split, seed, scale, feather, source)
Meta files list one GT path relative to GT/ per line with its shape, as BasicSR does: ``sub/img.png (h,w,c)``.
Use them as ``dataroot_gt: OUT/train/GT``, ``dataroot_lq: OUT/train/LR``, ``meta_info_file:
OUT/train/meta_info.txt`` in a ``PairedImageDataset`` block.

The split is a seeded random permutation of the sorted names: the first N are train, the rest val (the
paper: 50 train / 150 val). ``--val-all`` puts every image in val as well.

Rerunning into the same ``--out``: the files an earlier run wrote (listed in its ``split.json``, or in
``.pseudo_gt_writing.json`` when it was interrupted) are removed first, so an image is never left in both
splits. A ``--out`` that holds other files is refused (nothing is deleted or written). ``--out`` is locked while
the script writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np

from desra.atomic import atomic_open, remove_stale_temp_files
from desra.cli import run_cli
from desra.data.io import imread, imwrite_atomic, scandir
from desra.errors import ConfigError, DataError
from desra.finetune.pseudo_gt import pseudo_gt
from desra.utils.images import display_name, image_header
from desra.utils.lock import LOCK_NAME, FolderLock
from desra.utils.progress import Progress

SPLIT_FILE = 'split.json'
WRITING_FILE = '.pseudo_gt_writing.json'

_MAX_LISTED = 5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=None)
    src = parser.add_argument_group('input (either --detections, or --lr --mse --gan --masks)')
    src.add_argument('--detections', default=None, help='detect.py output folder (records/, masks/, MSE-SR/, GAN-SR/)')
    src.add_argument('--lr', default=None, help='folder of real LR images (overrides the records\' LR paths)')
    src.add_argument('--mse', default=None, help='folder of MSE-SR images')
    src.add_argument('--gan', default=None, help='folder of GAN-SR images')
    src.add_argument('--masks', default=None, help='folder of artifact masks (0/255 at SR size)')
    parser.add_argument('--out', required=True, help='output folder')
    split = parser.add_mutually_exclusive_group()
    split.add_argument('--train', type=int, default=None, help='number of training pairs (default 50)')
    split.add_argument('--train-fraction', type=float, default=None,
                       help='fraction of the images used for training, in (0, 1]')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random split (default 0)')
    parser.add_argument('--feather', type=float, default=0.0,
                        help='Gaussian sigma (pixels) softening the mask edge; 0 = exact selection (default)')
    parser.add_argument('--scale', type=int, default=None,
                        help='expected SR scale (default: inferred, the same integer for every image)')
    parser.add_argument('--val-all', action='store_true', help='put every image in val (train images too)')
    parser.add_argument('--fingerprint', default=None, help=argparse.SUPPRESS)  # stage id, set by desra_pipeline
    args = parser.parse_args(argv)
    explicit = [k for k in ('mse', 'gan', 'masks') if getattr(args, k)]
    if args.detections:
        if explicit:
            parser.error('--mse/--gan/--masks cannot be combined with --detections (only --lr can)')
    else:
        missing = [f'--{k}' for k in ('lr', 'mse', 'gan', 'masks') if not getattr(args, k)]
        if missing:
            parser.error('give --detections ROOT, or all of --lr --mse --gan --masks (missing: '
                         + ' '.join(missing) + ')')
    if args.train is not None and args.train < 1:
        parser.error(f'--train must be >= 1, got {args.train}')
    if args.train_fraction is not None and not 0.0 < args.train_fraction <= 1.0:
        parser.error(f'--train-fraction must be in (0, 1], got {args.train_fraction}')
    if not args.feather >= 0.0 or args.feather != args.feather or args.feather == float('inf'):
        parser.error(f'--feather must be a finite number >= 0, got {args.feather}')
    if args.scale is not None and args.scale < 1:
        parser.error(f'--scale must be >= 1, got {args.scale}')
    return args


def _format_list(items) -> str:
    items = list(items)
    shown = ', '.join(items[:_MAX_LISTED])
    return shown + (f', ... ({len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else '')


# ------------------------------------------------------------------------------------------------ sources
def _list_images(root: str, key: str) -> dict[str, str]:
    from desra.detection.pipeline import list_images

    images, _ignored = list_images(root, key)
    return {name.replace(os.sep, '/'): path for name, path in images.items()}


def collect_explicit(args) -> tuple[list[str], dict[str, dict[str, str]], dict]:
    """Names and ``{name: {'lr', 'mse', 'gan', 'mask'}}`` paths from four folders paired by name."""
    folders = {'lr': args.lr, 'mse': args.mse, 'gan': args.gan, 'mask': args.masks}
    flags = {'lr': '--lr', 'mse': '--mse', 'gan': '--gan', 'mask': '--masks'}
    listed = {k: _list_images(v, flags[k]) for k, v in folders.items()}
    all_names = set().union(*listed.values())
    problems = []
    for k, imgs in listed.items():
        missing = sorted(all_names - set(imgs))
        if missing:
            problems.append(f'  {len(missing)} name(s) missing from {flags[k]} {folders[k]}: {_format_list(missing)}')
    if problems:
        raise DataError('images do not pair up by name across --lr/--mse/--gan/--masks (each name needs all '
                        'four files):\n' + '\n'.join(problems))
    names = sorted(all_names)
    paths = {n: {k: listed[k][n] for k in folders} for n in names}
    source = {'mode': 'folders', **{k: os.path.abspath(v) for k, v in folders.items()}}
    return names, paths, source


def _first_existing(*candidates) -> str | None:
    for c in candidates:
        if c and os.path.isfile(c):
            return c
    return None


def collect_detections(args) -> tuple[list[str], dict[str, dict[str, str]], dict]:
    """Names and paths from a detect.py output folder (records, masks, MSE-SR/GAN-SR or recorded paths)."""
    root = args.detections
    rec_dir = os.path.join(root, 'records')
    if not os.path.isdir(rec_dir):
        raise DataError(f'--detections: no records folder in {os.path.abspath(root)} (expected a detect.py output '
                        f'folder with records/<name>.json)')
    rec_files = scandir(rec_dir, suffix='.json', recursive=True)
    if not rec_files:
        raise DataError(f'--detections: no records (*.json) in {os.path.abspath(rec_dir)}')
    lr_imgs = _list_images(args.lr, '--lr') if args.lr else None
    names, paths, missing, no_lr = [], {}, {}, []
    for rel in rec_files:
        rec_path = os.path.join(rec_dir, rel)
        try:
            with open(rec_path, encoding='utf-8') as f:
                rec = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f'--detections: cannot read record {rec_path}: {e}') from None
        if not isinstance(rec, dict):
            raise DataError(f'--detections: record {rec_path} is not a JSON object')
        name = str(rec.get('name') or os.path.splitext(rel)[0]).replace(os.sep, '/')
        entry = {
            'mse': _first_existing(os.path.join(root, 'MSE-SR', name + '.png'), rec.get('mse_sr')),
            'gan': _first_existing(os.path.join(root, 'GAN-SR', name + '.png'), rec.get('gan_sr')),
            'mask': _first_existing(os.path.join(root, 'masks', name + '.png'), rec.get('mask')),
        }
        if lr_imgs is not None:
            entry['lr'] = lr_imgs.get(name)
        elif rec.get('lr'):
            entry['lr'] = _first_existing(rec['lr'])
        else:
            entry['lr'] = None
            no_lr.append(name)
        for k, v in entry.items():
            if v is None and not (k == 'lr' and name in no_lr):
                missing.setdefault(k, []).append(name)
        names.append(name)
        paths[name] = entry
    if no_lr:
        raise DataError(f'--detections: {len(no_lr)} record(s) in {os.path.abspath(rec_dir)} have no LR path (a '
                        f'detection run on existing SR folders): pass --lr DIR with the real LR images; '
                        f'names: {_format_list(sorted(no_lr))}')
    if missing:
        where = {'lr': f'--lr {args.lr}' if args.lr else 'the records\' lr paths',
                 'mse': f'{root}/MSE-SR or the records\' mse_sr paths',
                 'gan': f'{root}/GAN-SR or the records\' gan_sr paths',
                 'mask': f'{root}/masks or the records\' mask paths'}
        lines = [f'  {len(v)} {k} file(s) not found in {where[k]}: {_format_list(sorted(v))}'
                 for k, v in missing.items()]
        raise DataError('--detections: some twins of the recorded images are missing:\n' + '\n'.join(lines))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f'--detections: several records share the name(s) {_format_list(dup)}')
    source = {'mode': 'detections', 'detections': os.path.abspath(root),
              'lr': os.path.abspath(args.lr) if args.lr else None}
    return sorted(names), paths, source


# ------------------------------------------------------------------------------------------------ checks
def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image as the readers see it (EXIF orientation applied), from its header."""
    header = image_header(path)  # DataError above the pixel limit
    if header is not None:
        return header.display_size
    img = imread(path, flag='unchanged')
    return int(img.shape[0]), int(img.shape[1])


def _mask_offset(mask_hw, sr_hw, mask_path: str, sr_path: str) -> int:
    """0 for a mask at SR size; ``c`` for a ``(H-2c) x (W-2c)`` valid-mode mask; else DataError."""
    dh, dw = sr_hw[0] - mask_hw[0], sr_hw[1] - mask_hw[1]
    if dh == dw and dh >= 0 and dh % 2 == 0:
        return dh // 2
    raise DataError(f'mask {mask_path} is {mask_hw[0]}x{mask_hw[1]} (HxW) but the SR image {sr_path} is '
                    f'{sr_hw[0]}x{sr_hw[1]}: expected the SR size (or the SR size minus the same even margin '
                    f'on both axes, a valid-mode crop)')


def check_sizes(names, paths, scale: int | None) -> tuple[int, dict]:
    """Check every pair before writing anything; returns ``(scale, {name: mask offset})``."""
    offsets = {}
    first = None
    for name in names:
        p = paths[name]
        lr_hw, mse_hw, gan_hw = image_size(p['lr']), image_size(p['mse']), image_size(p['gan'])
        if mse_hw != gan_hw:
            raise DataError(f'MSE-SR {p["mse"]} is {mse_hw[0]}x{mse_hw[1]} but GAN-SR {p["gan"]} is '
                            f'{gan_hw[0]}x{gan_hw[1]} (HxW); the pair must match')
        sh, rh = divmod(gan_hw[0], lr_hw[0])
        sw, rw = divmod(gan_hw[1], lr_hw[1])
        if rh or rw or sh != sw or sh < 1:
            raise DataError(f'GT (GAN-SR) {p["gan"]} is {gan_hw[0]}x{gan_hw[1]} (HxW) but LR {p["lr"]} is '
                            f'{lr_hw[0]}x{lr_hw[1]}: the SR size must be exactly an integer scale times the LR size')
        if scale is None:
            scale, first = sh, name
        elif sh != scale:
            why = f'image {first!r}' if first else '--scale'
            raise DataError(f'GT (GAN-SR) {p["gan"]} is {gan_hw[0]}x{gan_hw[1]} (HxW) = x{sh} of LR {p["lr"]} '
                            f'({lr_hw[0]}x{lr_hw[1]}), but {why} has scale x{scale}: all images need the same scale')
        offsets[name] = _mask_offset(image_size(p['mask']), gan_hw, p['mask'], p['gan'])
    return scale, offsets


# ------------------------------------------------------------------------------------------------ split
def make_split(names: list[str], args) -> tuple[list[str], list[str]]:
    total = len(names)
    if args.train_fraction is not None:
        n_train = min(total, max(1, round(args.train_fraction * total)))
    else:
        n_train = 50 if args.train is None else args.train
        if n_train > total:
            raise ConfigError(f'--train: {n_train} training pairs asked for but only {total} image(s) found; '
                              f'lower --train or use --train-fraction')
    order = np.random.default_rng(args.seed).permutation(total)
    train = sorted(names[i] for i in order[:n_train])
    rest = sorted(names[i] for i in order[n_train:])
    return train, (sorted(names) if args.val_all else rest)


# ------------------------------------------------------------------------------------------------ writing
def _as_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _read_mask(path: str, sr_hw, offset: int) -> np.ndarray:
    """Binary (bool) mask at SR size; values >= 128 (or 1 for 0/1 masks) are artifacts."""
    from desra.finetune.pseudo_gt import feather_mask

    m = imread(path, flag='grayscale')
    binary = feather_mask(m, 0) > 0.5
    if offset:
        full = np.zeros(sr_hw, bool)
        full[offset:offset + binary.shape[0], offset:offset + binary.shape[1]] = binary
        binary = full
    return binary


def _write_meta(path: str, lines: list[str]) -> None:
    with atomic_open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in lines))


def planned_files(train: list[str], val: list[str]) -> list[str]:
    """Paths (relative to ``--out``) this run writes, ``split.json`` and the meta files included."""
    files = [f'{sub}/{n}.png' for n in train for sub in ('train/LR', 'train/GT')]
    files += [f'{sub}/{n}.png' for n in val for sub in ('val/LR', 'val/GT', 'val/GAN-SR', 'val/masks')]
    files += (['train/meta_info.txt'] if train else []) + (['val/meta_info.txt'] if val else [])
    return files + [SPLIT_FILE]


def _tracked(out: str) -> set[str]:
    """Files earlier runs wrote into ``out``: from ``split.json`` and an interrupted run's writing list."""
    tracked = set()
    for name in (SPLIT_FILE, WRITING_FILE):
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding='utf-8') as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f'--out: cannot read {path} ({e}); remove it or choose another --out') from None
        files = info.get('files')
        if files is None:  # split.json of an earlier version: derive the files from the names
            files = planned_files(list(info.get('train', [])), list(info.get('val', [])))
        tracked.update(files)
        tracked.add(name)
    return tracked


def prepare_out(out: str) -> list[str]:
    """Remove what earlier runs wrote into ``out``; refuse (deleting nothing) if it holds anything else."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise DataError(f'--out: {out} is a file, expected a folder')
        return []
    tracked = _tracked(out)
    present = [f.replace(os.sep, '/') for f in scandir(out, recursive=True)]
    foreign = [f for f in present if f not in tracked and f != LOCK_NAME]
    if foreign:
        raise DataError(f'--out: {out} holds {len(foreign)} file(s) that no earlier make_pseudo_gt run wrote (e.g. '
                        f'{_format_list([display_name(f) for f in sorted(foreign)])}); choose an empty folder or '
                        f'move them away (nothing was changed)')
    removed = [f for f in present if f in tracked and f != WRITING_FILE]
    for f in removed:
        os.remove(os.path.join(out, f))
    for dirpath, dirnames, filenames in os.walk(out, topdown=False):  # folders emptied by the removal
        if dirpath != out and not os.listdir(dirpath):
            os.rmdir(dirpath)
    return removed


def build(names, paths, train, val, offsets, out: str, feather: float) -> dict:
    """Write the split folders; returns ``{split: [meta lines]}``."""
    from desra.detection.pipeline import read_sr_image

    in_train, in_val = set(train), set(val)
    meta = {'train': [], 'val': []}
    todo = [n for n in names if n in in_train or n in in_val]
    progress = Progress(len(todo), 'pseudo-GT', unit='img')
    for name in todo:
        p = paths[name]
        lr = _as_uint8(read_sr_image(p['lr']))
        mse, gan = _as_uint8(read_sr_image(p['mse'])), _as_uint8(read_sr_image(p['gan']))
        if mse.shape != gan.shape:
            raise DataError(f'MSE-SR {p["mse"]} is {mse.shape[0]}x{mse.shape[1]} but GAN-SR {p["gan"]} is '
                            f'{gan.shape[0]}x{gan.shape[1]} (HxW); the pair must match')
        mask = _read_mask(p['mask'], gan.shape[:2], offsets[name])
        if mask.shape != gan.shape[:2]:
            raise DataError(f'mask {p["mask"]} is {mask.shape[0]}x{mask.shape[1]} (HxW) but the SR image '
                            f'{p["gan"]} is {gan.shape[0]}x{gan.shape[1]}')
        gt = pseudo_gt(mse, gan, mask, feather=feather)
        fname = name + '.png'
        line = f'{fname} ({gt.shape[0]},{gt.shape[1]},{gt.shape[2]})'
        for split in ('train', 'val'):
            if name not in (in_train if split == 'train' else in_val):
                continue
            base = os.path.join(out, split)
            imwrite_atomic(lr, os.path.join(base, 'LR', fname))
            imwrite_atomic(gt, os.path.join(base, 'GT', fname))
            if split == 'val':
                imwrite_atomic(gan, os.path.join(base, 'GAN-SR', fname))
                imwrite_atomic(mask.astype(np.uint8) * 255, os.path.join(base, 'masks', fname))
            meta[split].append(line)
        progress.update()
    progress.close()
    return meta


def main(argv=None) -> dict:
    from desra.engine.logger import get_root_logger

    args = parse_args(argv)
    get_root_logger()  # progress lines off a terminal
    if args.detections:
        names, paths, source = collect_detections(args)
    else:
        names, paths, source = collect_explicit(args)
    scale, offsets = check_sizes(names, paths, args.scale)
    train, val = make_split(names, args)
    out = os.path.abspath(args.out)
    files = planned_files(train, val)
    with FolderLock(out, 'pseudo-GT output folder'):
        remove_stale_temp_files(out)
        removed = prepare_out(out)
        if removed:
            print(f'make_pseudo_gt: removed {len(removed)} file(s) of the earlier split in {out}')
        with atomic_open(os.path.join(out, WRITING_FILE), 'w') as f:
            json.dump({'files': files}, f)
        meta = build(names, paths, train, val, offsets, out, args.feather)
        for split, split_names in (('train', train), ('val', val)):
            if split_names:
                _write_meta(os.path.join(out, split, 'meta_info.txt'), meta[split])
        info = {'train': train, 'val': val, 'seed': args.seed, 'scale': scale, 'feather': args.feather,
                'val_all': bool(args.val_all), 'num_images': len(names), 'source': source,
                'mask_offsets': {n: o for n, o in offsets.items() if o}, 'fingerprint': args.fingerprint,
                'files': files}
        with atomic_open(os.path.join(out, SPLIT_FILE), 'w') as f:
            json.dump(info, f, indent=2)
        os.remove(os.path.join(out, WRITING_FILE))
    cropped = sum(1 for o in offsets.values() if o)
    note = f'; {cropped} cropped mask(s) padded back to SR size' if cropped else ''
    print(f'make_pseudo_gt: {len(train)} train + {len(val)} val pair(s) at x{scale} (feather {args.feather:g}) '
          f'from {len(names)} image(s) -> {out}{note}')
    return info


if __name__ == '__main__':
    run_cli(main)
