"""Evaluate artifact detections against GT masks: IoU, Precision, Recall (DeSRA Tables 1-2) and, with
``--after``, the removal / addition rates of fine-tuning (Table 3).

    python scripts/eval_artifacts.py --pred results/det/RealESRGAN --gt datasets/DeSRA/RealESRGAN/GT-Mask \
        [--p 0.5] [--crop 5] [--after results/det/RealESRGAN-DeSRA] [--name Real-ESRGAN] [--json out.json]

Masks are paired by file stem (``img_001.png`` <-> ``img_001.png`` or ``img_001.json``). Folders may be
flat or use the released two-level layout ``root/<sub>/<img>``; stems that are unique in both folders
are matched wherever they sit, otherwise the relative path (without suffix) must match. Prediction
masks are images; GT masks are images or LabelMe ``.json`` files (a PNG wins over a JSON of the same
stem). A mask without its twin is an error listing the names (``--allow-missing`` skips them with a
warning).

``--crop 5`` (the default, as in the released scripts) crops the GT by 5 px on every side; a prediction
of the GT's full size is cropped too, a ``(H-10) x (W-10)`` detection map is used as it is.
Definitions: ``desra/metrics/artifact_metrics.py`` and ``docs/metrics.md``.
"""
from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.atomic import atomic_open
from desra.cli import run_cli, script_parser
from desra.data.io import IMG_EXTENSIONS, scandir
from desra.errors import DataError
from desra.metrics.artifact_metrics import artifact_metrics, removal_addition_rates


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('--pred', required=True, help='folder of detection masks of the original model')
    parser.add_argument('--gt', required=True, help='folder of GT artifact masks (.png or LabelMe .json)')
    parser.add_argument('--after', default=None,
                        help='folder of detection masks on the fine-tuned model outputs (removal/addition rates)')
    parser.add_argument('--p', type=float, default=0.5, help='region overlap ratio for precision/recall (>= p)')
    parser.add_argument('--crop', type=int, default=5, help='pixels cropped from each GT side (default 5)')
    parser.add_argument('--empty', choices=('one', 'skip', 'zero'), default='one',
                        help='IoU of an image with empty detection and empty GT (default: one)')
    parser.add_argument('--p-add', type=float, default=0.0,
                        help='a detected region after fine-tuning is "added" if its overlap with the GT is 0 '
                             'or below this fraction of its area (default 0: disjoint only)')
    parser.add_argument('--min-area', type=int, default=0, help='minimum area (px) of an added region')
    parser.add_argument('--name', default=None, help='method name in the table (default: the --pred folder name)')
    parser.add_argument('--after-name', default=None, help='name of the fine-tuned row (default: NAME-DeSRA)')
    parser.add_argument('--json', default=None, help='write all numbers (with per-image details) to this file')
    parser.add_argument('--allow-missing', action='store_true',
                        help='skip masks without a twin (with a warning) instead of failing')
    args = parser.parse_args(argv)
    if not 0.0 <= args.p <= 1.0:
        parser.error(f'--p must be in [0, 1], got {args.p}')
    if not 0.0 <= args.p_add <= 1.0:
        parser.error(f'--p-add must be in [0, 1], got {args.p_add}')
    if args.crop < 0:
        parser.error(f'--crop must be >= 0, got {args.crop}')
    if args.min_area < 0:
        parser.error(f'--min-area must be >= 0, got {args.min_area}')
    return args


def collect_masks(folder: str, allow_json: bool) -> dict[str, str]:
    """``relative path without suffix -> file`` for the mask files under ``folder`` (any depth)."""
    exts = IMG_EXTENSIONS + (('.json',) if allow_json else ())
    found: dict[str, str] = {}
    for rel in scandir(folder, recursive=True):
        stem, ext = os.path.splitext(rel)
        ext = ext.lower()
        if ext not in exts:
            continue
        key = stem.replace(os.sep, '/')
        old = found.get(key)
        if old is not None:
            old_json = old.lower().endswith('.json')
            if old_json and ext != '.json':
                found[key] = os.path.join(folder, rel)  # a PNG wins over a LabelMe JSON of the same stem
            elif not old_json and ext != '.json':
                raise DataError(f'two mask files with the stem {key!r} in {os.path.abspath(folder)}: '
                                f'{os.path.basename(old)} and {os.path.basename(rel)}')
            continue
        found[key] = os.path.join(folder, rel)
    if not found:
        kinds = 'image or LabelMe .json' if allow_json else 'image'
        raise DataError(f'no {kinds} mask files in {os.path.abspath(folder)}')
    return found


def _by_basename(masks: dict[str, str]) -> dict[str, str] | None:
    """Re-key by the bare stem when every stem is unique, else None."""
    out = {}
    for key, path in masks.items():
        stem = key.rsplit('/', 1)[-1]
        if stem in out:
            return None
        out[stem] = path
    return out


def pair_masks(preds: dict[str, str], gts: dict[str, str], pred_dir: str, gt_dir: str,
               allow_missing: bool, label: str = 'prediction') -> tuple[dict[str, str], dict[str, str]]:
    """Match two ``key -> file`` dicts by bare stem (when unique on both sides) or by relative stem."""
    p_stem, g_stem = _by_basename(preds), _by_basename(gts)
    if p_stem is not None and g_stem is not None:
        preds, gts = p_stem, g_stem
    only_pred = sorted(k for k in preds if k not in gts)
    only_gt = sorted(k for k in gts if k not in preds)
    if only_pred or only_gt:
        msgs = []
        if only_pred:
            msgs.append(f'{len(only_pred)} {label} mask(s) in {os.path.abspath(pred_dir)} have no GT in '
                        f'{os.path.abspath(gt_dir)}: {_preview(only_pred)}')
        if only_gt:
            msgs.append(f'{len(only_gt)} GT mask(s) have no {label} mask in {os.path.abspath(pred_dir)}: '
                        f'{_preview(only_gt)}')
        if not allow_missing:
            raise DataError('; '.join(msgs) + ' (pass --allow-missing to skip them)')
        for m in msgs:
            print(f'warning: skipping {m}', file=sys.stderr)
    common = [k for k in sorted(gts) if k in preds]
    if not common:
        raise DataError(f'no {label} mask in {os.path.abspath(pred_dir)} has a GT twin in {os.path.abspath(gt_dir)}')
    return {k: preds[k] for k in common}, {k: gts[k] for k in common}


def _preview(names, limit=10):
    more = f' ... (+{len(names) - limit} more)' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def _fmt(v, digits=4, scale=1.0):
    return 'n/a' if v is None else f'{v * scale:.{digits}f}'


def _pct(v):
    return 'n/a' if v is None else f'{100 * v:.2f}%'


def main(argv=None):
    args = parse_args(argv)
    name = args.name or os.path.basename(os.path.normpath(args.pred))
    gts = collect_masks(args.gt, allow_json=True)
    preds, gt_pairs = pair_masks(collect_masks(args.pred, allow_json=False), gts, args.pred, args.gt,
                                 args.allow_missing)
    det = artifact_metrics(preds, gt_pairs, p=args.p, crop=args.crop, empty=args.empty)

    print('| Method | IoU (x100) | Precision | Recall |')
    print('|---|---|---|---|')
    print(f'| {name} | {_fmt(det["iou"], 1, 100)} | {_fmt(det["precision"])} | {_fmt(det["recall"])} |')
    print(f'\nimages: {det["num_images"]}; {det["num_pred_regions"]} detected regions '
          f'({det["num_correct_pred_regions"]} correct), {det["num_gt_regions"]} GT regions '
          f'({det["num_found_gt_regions"]} found); p={args.p:g}, crop={args.crop}')
    result = {'method': name, 'pred': os.path.abspath(args.pred), 'gt': os.path.abspath(args.gt),
              'detection': _jsonable(det)}

    if args.after:
        after_name = args.after_name or f'{name}-DeSRA'
        after, gt_after = pair_masks(collect_masks(args.after, allow_json=False), gts, args.after, args.gt,
                                     args.allow_missing, label='after-fine-tuning')
        det_after = artifact_metrics(after, gt_after, p=args.p, crop=args.crop, empty=args.empty)
        rates = removal_addition_rates(after, gt_after, p_add=args.p_add, min_area=args.min_area, crop=args.crop)
        print()
        print('| Method | IoU (x100) | Removal rate | Addition rate |')
        print('|---|---|---|---|')
        print(f'| {name} | {_fmt(det["iou"], 1, 100)} | - | - |')
        print(f'| {after_name} | {_fmt(det_after["iou"], 1, 100)} | {_pct(rates["removal_rate"])} | '
              f'{_pct(rates["addition_rate"])} |')
        print(f'\nremoval: {rates["num_removed_regions"]}/{rates["num_gt_regions"]} GT regions '
              f'(mean of per-image rates {_pct(rates["removal_rate_image_mean"])}); addition: '
              f'{rates["num_images_with_added"]}/{rates["num_images"]} images, {rates["num_added_regions"]}/'
              f'{rates["num_after_regions"]} regions (p_add={args.p_add:g}, min_area={args.min_area}); '
              f'images with any detected pixel outside the GT: {rates["num_images_with_new_pixels"]}')
        result.update({'after_method': after_name, 'after': os.path.abspath(args.after),
                       'detection_after': _jsonable(det_after), 'removal_addition': _jsonable(rates)})

    if args.json:
        with atomic_open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
            f.write('\n')
        print(f'\nwrote {args.json}')


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


if __name__ == '__main__':
    run_cli(main)
