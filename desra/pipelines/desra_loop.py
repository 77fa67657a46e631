"""The DeSRA loop (paper Sec. 3): detect -> pseudo-GT -> fine-tune -> detect again -> evaluate.

``python scripts/desra_pipeline.py -opt options/desra_pipeline.yml`` (torchrun-aware: detection is sharded
and fine-tuning runs with DDP; rank 0 builds the data set and the report). Everything goes under
``output.root`` (default ``reports/<name>``)::

    detect_before/   detections of the original GAN-SR model on all LR images (MSE-SR, GAN-SR, masks, ...)
    pseudo_gt/       train/ and val/ pairs (LR, pseudo-GT) + split.json      (scripts/make_pseudo_gt.py)
    finetune/        the fine-tuning experiment (models/net_g_<iter>.pth, training_states, losses.jsonl)
    detect_after/    detections on the fine-tuned EMA generator's outputs for the validation LR images
    table3.md, summary.json, index.html (before / after gallery)

Reported on the validation images: the detected artifact area before and after, the PSNR between the old and
the new GAN-SR output outside the detected regions (how much the rest of the image changed), and, when GT
artifact masks are given, IoU / precision / recall before and after plus the removal and addition rates
(``docs/metrics.md``).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np

from desra.atomic import atomic_open
from desra.config import (NONE, NUMBER, RUNTIME_KEYS, Spec, _typed, apply_force_yml, apply_image_limit,
                          build_arg_parser, check_schema, finalize_options, load_yaml_file, nonneg_int,
                          nonneg_number, num_gpu, positive_int, report_warnings, run_name, validate_options)
from desra.errors import ConfigError
from desra.tile_options import tile_size_option
from desra.utils.fingerprint import settings_hash, weights_identity

logger = logging.getLogger('desra')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fraction(value, path):
    if not 0 < value <= 1:
        raise ConfigError(f"{path}: expected a fraction in (0, 1], got {value!r}")
    return value


_MODEL = Spec(dict, True, {'network': _typed(True), 'path': Spec(str, True), 'param_key': Spec((str, NONE))})
LOOP_SCHEMA = Spec(dict, True, {
    'name': Spec(str, True, check=run_name),
    'scale': Spec(int, True, check=positive_int),
    'num_gpu': Spec((int, str), check=num_gpu),
    'seed': Spec(int),
    'max_image_pixels': Spec(int, check=nonneg_int),
    'import_modules': Spec(list),
    'data': Spec(dict, True, {'lr': Spec(str, True), 'gt_masks': Spec((str, NONE)), 'hr': Spec((str, NONE)),
                              'train_count': Spec(int, check=positive_int),
                              'train_fraction': Spec(NUMBER, check=_fraction)}),
    'mse_model': _MODEL,
    'gan_model': _MODEL,
    'gan_model_d': Spec(dict, False, {'path': Spec(str, True), 'param_key': Spec(str)}),
    'tile_size': Spec((int, str), check=tile_size_option), 'tile_pad': Spec(int, check=nonneg_int),
    'batch_size': Spec(int, check=positive_int),
    'segmenter': Spec((dict, NONE), False, {'type': Spec(str, True)}, closed=False),
    'class_weights': Spec((str, list, NONE)),
    'detector': _typed(True, threshold=Spec(NUMBER), min_area=Spec(NUMBER, check=nonneg_number)),
    'pseudo_gt': Spec(dict, False, {'feather': Spec(NUMBER, check=nonneg_number)}),
    'finetune': Spec(dict, True, {'options': Spec(str, True), 'force': Spec((dict, NONE), closed=False)}),
    'output': Spec(dict, False, {'root': Spec(str)}),
    'dist_params': Spec(dict, False, {'backend': Spec((str, NONE)), 'port': Spec(int, check=positive_int)}),
})


def _deep_update(base: dict, extra: dict) -> dict:
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def parse_loop_options(argv=None) -> dict:
    """Read and check the loop options, the fine-tune options they point to and every input image, before
    torch is imported; then set up torch.distributed when launched with torchrun."""
    args = build_arg_parser('The DeSRA loop: detect, pseudo-GT, fine-tune, detect, evaluate.',
                            is_train=False).parse_args(argv)
    from desra.engine.logger import get_root_logger

    get_root_logger(None, int(os.environ.get('RANK', '0') or 0))
    opt = load_yaml_file(args.opt)
    apply_force_yml(opt, args.force_yml)
    warnings: list[str] = []
    check_schema(opt, LOOP_SCHEMA, '', warnings)
    apply_image_limit(opt)
    root = report_root(opt)
    finetune_options(opt, os.path.join(root, 'pseudo_gt'), os.path.join(root, 'finetune'), warnings)
    from desra.detection.pipeline import preflight, validate_detect_options

    before = _detect_opt(opt, opt['data']['lr'], os.path.join(root, 'detect_before'), opt['gan_model'])
    validate_detect_options(before)
    preflight(before)
    report_warnings(warnings)
    rank, world = 0, 1
    if args.launcher != 'none':
        from desra.engine import dist as dist_utils

        rank, world = dist_utils.init_dist(args.launcher, opt.get('dist_params') or {})
    opt['rank'], opt['world_size'], opt['launcher'] = rank, world, args.launcher
    return opt


def report_root(opt: dict) -> str:
    return (opt.get('output') or {}).get('root') or os.path.join('reports', opt['name'])


def _detect_opt(opt: dict, lr_dir: str, out_root: str, gan_model: dict) -> dict:
    det = {'name': os.path.basename(out_root), 'scale': opt['scale'], 'num_gpu': opt.get('num_gpu', 'auto'),
           'input': {'lr': lr_dir}, 'mse_model': opt['mse_model'], 'gan_model': gan_model,
           'tile_size': opt.get('tile_size', 0), 'tile_pad': opt.get('tile_pad'),
           'batch_size': opt.get('batch_size', 1), 'segmenter': opt.get('segmenter'),
           'class_weights': opt.get('class_weights'), 'detector': copy.deepcopy(opt['detector']),
           'output': {'root': out_root, 'save_sr': True, 'save_maps': False, 'save_overlays': True, 'html': True}}
    if opt.get('import_modules'):
        det['import_modules'] = list(opt['import_modules'])
    return det


def finetune_options(opt: dict, data_dir: str, exp_root: str, warnings: list | None = None) -> dict:
    """The fine-tuning options: ``finetune.options`` + ``finetune.force``, fed the pseudo-GT train split and
    initialised from the GAN-SR model under test (and ``gan_model_d``). Validated like a ``train.py`` file."""
    ft = load_yaml_file(opt['finetune']['options'])
    _deep_update(ft, opt['finetune'].get('force') or {})
    ft['name'] = f"{opt['name']}_finetune"
    ft['scale'] = opt['scale']
    ft.setdefault('manual_seed', opt.get('seed', 0))  # a fixed seed: the stage's fingerprint must not drift
    ft['network_g'] = copy.deepcopy(opt['gan_model']['network'])
    train = ft['datasets']['train']
    train['dataroot_gt'] = os.path.join(data_dir, 'train', 'GT')
    train['dataroot_lq'] = os.path.join(data_dir, 'train', 'LR')
    train['meta_info_file'] = os.path.join(data_dir, 'train', 'meta_info.txt')
    ft['datasets'] = {'train': train}  # validation happens in the loop, on the held-out images
    ft.pop('val', None)
    path = ft.setdefault('path', {})
    path['pretrain_network_g'] = opt['gan_model']['path']
    path['param_key_g'] = opt['gan_model'].get('param_key', 'params_ema')
    if opt.get('gan_model_d'):
        path['pretrain_network_d'] = opt['gan_model_d']['path']
        path['param_key_d'] = opt['gan_model_d'].get('param_key', 'params')
    path['experiments_root'] = exp_root
    path['resume_state'] = None
    try:
        validate_options(ft, is_train=True, warnings=warnings)
    except ConfigError as e:
        raise ConfigError(f"finetune ({opt['finetune']['options']} + finetune.force): {e}") from None
    ft.update(is_train=True, auto_resume=False, rank=opt.get('rank', 0), world_size=opt.get('world_size', 1),
              dist=opt.get('world_size', 1) > 1, launcher=opt.get('launcher', 'none'))
    finalize_options(ft)
    ft['path']['tb_logger'] = os.path.join(exp_root, 'tb_logger')
    return ft


def finetune_fingerprint(ft: dict, upstream: str) -> tuple[str, dict]:
    """Fingerprint of the fine-tune stage: its options (without run-time fields) and pretrained weights' content,
    plus the pseudo-GT stage it trains on."""
    settings = {k: v for k, v in ft.items() if k not in RUNTIME_KEYS and k != 'path'}
    path = ft.get('path') or {}
    settings['pretrained'] = {k: weights_identity(path.get(f'pretrain_network_{k}')) for k in ('g', 'd')}
    settings['param_keys'] = {k: path.get(f'param_key_{k}') for k in ('g', 'd')}
    settings['upstream'] = upstream
    return settings_hash(settings), settings


def _records_fingerprint(detect_root: str, names: list[str]) -> str:
    fps = {}
    for n in names:
        try:
            with open(os.path.join(detect_root, 'records', n + '.json'), encoding='utf-8') as f:
                fps[n] = json.load(f).get('fingerprint')
        except (OSError, ValueError):
            fps[n] = None
    return settings_hash(fps)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, data: dict) -> None:
    with atomic_open(path, 'w') as f:
        json.dump(data, f, indent=2)


def _overlay_of(detect_dir: str, name: str) -> str:
    """The overlay picture a detection record names (JPEG or PNG, ``output.picture_format``)."""
    import json

    try:
        with open(os.path.join(detect_dir, 'records', name + '.json'), encoding='utf-8') as f:
            path = json.load(f).get('overlay')
    except (OSError, ValueError):
        path = None
    return path or os.path.join(detect_dir, 'overlays', name + '.jpg')


def _psnr_outside(old: np.ndarray, new: np.ndarray, mask: np.ndarray) -> float:
    keep = mask == 0
    if not keep.any():
        return float('nan')
    diff = old[keep].astype(np.float64) - new[keep].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    return float('inf') if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _read_mask(path: str) -> np.ndarray:
    from desra.data.io import imread

    m = imread(path, flag='unchanged')
    return (m > 0) if m.ndim == 2 else (m.max(axis=2) > 0)


def evaluate_loop(root: str, val_names: list[str], gt_dir: str | None, hr_dir: str | None = None,
                  scale: int = 4) -> dict:
    """Before/after numbers on the validation images (see the module docstring); with ``hr_dir`` (real HR
    photos named like the LR ones) also the Y-PSNR of the GAN-SR output against them (crop = scale)."""
    from desra.data.io import imread
    from desra.metrics.artifact_metrics import artifact_metrics, load_mask, removal_addition_rates

    before_dir, after_dir = os.path.join(root, 'detect_before'), os.path.join(root, 'detect_after')
    rows, before, after = [], {}, {}
    for name in val_names:
        mb = _read_mask(os.path.join(before_dir, 'masks', name + '.png'))
        ma = _read_mask(os.path.join(after_dir, 'masks', name + '.png'))
        old = imread(os.path.join(before_dir, 'GAN-SR', name + '.png'))
        new = imread(os.path.join(after_dir, 'GAN-SR', name + '.png'))
        before[name], after[name] = mb, ma
        rows.append({'name': name, 'height': int(mb.shape[0]), 'width': int(mb.shape[1]),
                     'area_before': float(mb.mean()), 'area_after': float(ma.mean()),
                     'psnr_outside': _psnr_outside(old, new, mb | ma),
                     'lr': os.path.join(root, 'pseudo_gt', 'val', 'LR', name + '.png'),
                     'gan_before': os.path.join(before_dir, 'GAN-SR', name + '.png'),
                     'overlay_before': _overlay_of(before_dir, name),
                     'gan_after': os.path.join(after_dir, 'GAN-SR', name + '.png'),
                     'overlay_after': _overlay_of(after_dir, name)})
    if hr_dir:
        from desra.metrics import calculate_psnr

        for r in rows:
            hr = imread(os.path.join(hr_dir, r['name'] + '.png'))
            r['psnr_hr_before'] = calculate_psnr(imread(r['gan_before']), hr, scale, test_y_channel=True)
            r['psnr_hr_after'] = calculate_psnr(imread(r['gan_after']), hr, scale, test_y_channel=True)
    finite = [r['psnr_outside'] for r in rows if math.isfinite(r['psnr_outside'])]
    summary = {'num_val_images': len(rows),
               'area_before': float(np.mean([r['area_before'] for r in rows])) if rows else 0.0,
               'area_after': float(np.mean([r['area_after'] for r in rows])) if rows else 0.0,
               'images_with_artifacts_before': sum(r['area_before'] > 0 for r in rows),
               'images_with_artifacts_after': sum(r['area_after'] > 0 for r in rows),
               'psnr_outside_mean': float(np.mean(finite)) if finite else float('inf'),
               'psnr_outside_unchanged_images': sum(1 for r in rows if r['psnr_outside'] == float('inf'))}
    if hr_dir and rows:
        summary['psnr_hr_before'] = float(np.mean([r['psnr_hr_before'] for r in rows]))
        summary['psnr_hr_after'] = float(np.mean([r['psnr_hr_after'] for r in rows]))
    if gt_dir:
        gts = {}
        for name in val_names:
            cands = [os.path.join(gt_dir, name + ext) for ext in ('.png', '.json')]
            path = next((c for c in cands if os.path.isfile(c)), None)
            if path is None:
                raise ConfigError(f"data.gt_masks: no GT mask for validation image '{name}' in {gt_dir}")
            gts[name] = load_mask(path, size=before[name].shape)
        summary['gt_before'] = {k: v for k, v in artifact_metrics(before, gts).items() if k != 'per_image'}
        summary['gt_after'] = {k: v for k, v in artifact_metrics(after, gts).items() if k != 'per_image'}
        summary['removal_addition'] = {k: v for k, v in removal_addition_rates(after, gts).items()
                                       if k != 'per_image'}
    return {'summary': summary, 'rows': rows}


def format_settings(settings: dict) -> list[str]:
    """The "Built from" section of ``table3.md``: what produced the numbers above it."""
    if not settings:
        return []
    ft = settings.get('finetune', {})
    lines = ['## Built from', '',
             f"- fine-tuned generator: `{ft.get('checkpoint')}` (EMA, iteration {ft.get('iterations')}, "
             f"SHA-256 {str(ft.get('checkpoint_sha256', ''))[:12]})",
             f"- fine-tune options: `{ft.get('options')}` + `finetune.force` {json.dumps(ft.get('force') or {})}",
             f"- GAN-SR model under test: `{settings['gan_model']['path']}` (SHA-256 "
             f"{str(settings['gan_model'].get('sha256', ''))[:12]}); MSE-SR model: `{settings['mse_model']['path']}` "
             f"(SHA-256 {str(settings['mse_model'].get('sha256', ''))[:12]})",
             f"- detector: {json.dumps(settings.get('detector'))}; segmenter: {json.dumps(settings.get('segmenter'))}; "
             f"class weights: {json.dumps(settings.get('class_weights'))}",
             f"- split: {settings['split']['train']} train / {settings['split']['val']} held-out image(s), seed "
             f"{settings['split']['seed']}, feather {settings['split']['feather']}",
             '- stage fingerprints: ' + ', '.join(f'{k} `{v}`' for k, v in settings.get('stages', {}).items()),
             f"- written {settings.get('written')}", '']
    return lines


def format_table3(name: str, summary: dict, iters: int, settings: dict | None = None) -> str:
    def pct(v):
        return f'{100 * v:.3f} %'

    lines = [f'# DeSRA loop: {name}', '',
             f'Fine-tuned for {iters} iterations; {summary["num_val_images"]} held-out validation image(s).', '',
             '| | before fine-tuning | after fine-tuning |', '|---|---|---|',
             f'| detected artifact area (mean fraction of pixels) | {pct(summary["area_before"])} | '
             f'{pct(summary["area_after"])} |',
             f'| images with detected artifacts | {summary["images_with_artifacts_before"]} | '
             f'{summary["images_with_artifacts_after"]} |',
             f'| PSNR(old GAN-SR, new GAN-SR) outside the detected regions | — | '
             f'{summary["psnr_outside_mean"]:.2f} dB |']
    if 'psnr_hr_before' in summary:
        lines.append(f'| Y-PSNR of GAN-SR against the real HR | {summary["psnr_hr_before"]:.2f} dB | '
                     f'{summary["psnr_hr_after"]:.2f} dB |')
    if 'gt_before' in summary:
        b, a, ra = summary['gt_before'], summary['gt_after'], summary['removal_addition']

        def num(v, scale=1.0, fmt='{:.4f}'):
            return 'n/a' if v is None else fmt.format(scale * v)

        lines += [f'| IoU vs GT (x100) | {num(b["iou"], 100, "{:.1f}")} | {num(a["iou"], 100, "{:.1f}")} |',
                  f'| precision | {num(b["precision"])} | {num(a["precision"])} |',
                  f'| recall | {num(b["recall"])} | {num(a["recall"])} |',
                  f'| removal rate (GT regions with no detection left) | — | {num(ra["removal_rate"], 100, "{:.2f}")} % |',
                  f'| addition rate (images with a new detected region) | — | '
                  f'{num(ra["addition_rate"], 100, "{:.2f}")} % |']
    lines += ['', 'PSNR outside the masks: over the pixels outside both the before and the after detections; '
              f'{summary["psnr_outside_unchanged_images"]} image(s) unchanged there (infinite PSNR, left out of '
              'the mean). Definitions of the GT metrics: docs/metrics.md.', '']
    lines += format_settings(settings or {})
    return '\n'.join(lines)


def _stage(n: int, total: int, title: str) -> None:
    logger.info('[stage %d/%d] %s', n, total, title)


def desra_loop(opt: dict) -> dict:
    """Run the whole loop; returns the summary dict (rank 0) or {} (other ranks).

    Every stage is fingerprinted (:mod:`desra.utils.fingerprint`); ``stages.json`` in the report root records
    them. A rerun reuses a stage only when its own settings and everything upstream are unchanged: detection
    skips images whose records match, the pseudo-GT is rebuilt when the detections or the split change, and
    the fine-tune continues from its newest intact state (``--auto_resume``) when its options and data are
    unchanged, or starts over (the earlier run archived) when they changed.
    """
    import time

    from desra.detection.gallery import write_gallery
    from desra.detection.pipeline import detect_pipeline, preflight
    from desra.engine import dist as dist_utils
    from desra.engine.logger import get_root_logger
    from desra.engine.trainer import train_pipeline
    from desra.utils.lock import FolderLock

    rank = opt.get('rank', 0)
    get_root_logger(None, rank)
    root = report_root(opt)
    before_dir, data_dir = os.path.join(root, 'detect_before'), os.path.join(root, 'pseudo_gt')
    after_dir, ft_root = os.path.join(root, 'detect_after'), os.path.join(root, 'finetune')
    stages_path = os.path.join(root, 'stages.json')
    lock = FolderLock(root, 'report root')
    dist_utils.call_on_rank0(lock.acquire)
    try:
        stages = _read_json(stages_path) if rank == 0 else {}

        # 1. detect on all LR images with the original GAN-SR model
        _stage(1, 5, f"detect artifacts of the GAN-SR model on {opt['data']['lr']}")
        before = _detect_opt(opt, opt['data']['lr'], before_dir, opt['gan_model'])
        before.update(rank=rank, world_size=opt.get('world_size', 1))
        detect_pipeline(before)
        names = preflight(before)['names']
        fp_detect = _records_fingerprint(before_dir, names)

        # 2. pseudo-GT pairs and the train/val split (rank 0), everyone waits
        data = opt['data']
        split_args = {'seed': opt.get('seed', 0), 'feather': (opt.get('pseudo_gt') or {}).get('feather', 0),
                      'train_fraction': data.get('train_fraction'), 'train_count': data.get('train_count', 50)}
        fp_pseudo = settings_hash({'detect_before': fp_detect, **split_args})
        _stage(2, 5, f'pseudo-GT and train / held-out split in {data_dir}')
        if rank == 0:
            split = _read_json(os.path.join(data_dir, 'split.json'))
            if split.get('fingerprint') == fp_pseudo and _split_complete(data_dir, split):
                logger.info('pseudo-GT is up to date (same detections and split settings): kept')
            else:
                cmd = [sys.executable, os.path.join(REPO, 'scripts', 'make_pseudo_gt.py'), '--detections', before_dir,
                       '--out', data_dir, '--seed', str(split_args['seed']), '--feather', str(split_args['feather']),
                       '--fingerprint', fp_pseudo]
                cmd += (['--train-fraction', str(data['train_fraction'])] if data.get('train_fraction') is not None
                        else ['--train', str(split_args['train_count'])])
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    raise ConfigError(f"pseudo-GT step failed: {(res.stderr.strip() or res.stdout.strip())}")
                logger.info(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else 'pseudo-GT written')
        dist_utils.barrier()
        split = _read_json(os.path.join(data_dir, 'split.json'))

        # 3. fine-tune the GAN model on (LR, pseudo-GT); resume it when nothing it depends on changed
        ft = finetune_options(opt, data_dir, ft_root)
        fp_finetune, _ = finetune_fingerprint(ft, fp_pseudo)
        same = stages.get('finetune', {}).get('fingerprint') == fp_finetune if rank == 0 else False
        same = bool(dist_utils.all_gather_object(same)[0])
        ft['auto_resume'] = same
        _stage(3, 5, f"fine-tune for {ft['train']['total_iter']} iterations in {ft_root}"
               + (' (continuing the earlier run: same options and data)' if same else ''))
        if rank == 0:
            stages['detect_before'] = {'fingerprint': fp_detect}
            stages['pseudo_gt'] = {'fingerprint': fp_pseudo}
            stages['finetune'] = {'fingerprint': fp_finetune, 'status': 'running'}
            stages.pop('detect_after', None)
            _write_json(stages_path, stages)
        result = train_pipeline(ft)
        iters = result['iter']
        tuned = dict(opt['gan_model'], path=os.path.join(ft['path']['models'], f'net_g_{iters}.pth'),
                     param_key='params_ema')
        if rank == 0:
            stages['finetune'].update(status='done', iterations=iters)
            _write_json(stages_path, stages)

        # 4. the fine-tuned EMA generator on the held-out LR images, detected again
        _stage(4, 5, f"detect artifacts of the fine-tuned model on the {len(split.get('val', []))} held-out image(s)")
        after = _detect_opt(opt, os.path.join(data_dir, 'val', 'LR'), after_dir, tuned)
        after.update(rank=rank, world_size=opt.get('world_size', 1))
        detect_pipeline(after)
        fp_after = _records_fingerprint(after_dir, split.get('val', []))

        # 5. evaluate and report (rank 0)
        _stage(5, 5, f'report in {root}')
        if rank != 0:
            return {}
        stages['detect_after'] = {'fingerprint': fp_after}
        _write_json(stages_path, stages)
        ev = evaluate_loop(root, split['val'], opt['data'].get('gt_masks'), opt['data'].get('hr'), opt['scale'])
        summary = ev['summary']
        summary.update(iterations=iters, train_images=len(split['train']), val_images=len(split['val']),
                       finetuned_checkpoint=tuned['path'])
        settings = {
            'finetune': {'options': opt['finetune']['options'], 'force': opt['finetune'].get('force'),
                         'iterations': iters, 'checkpoint': tuned['path'],
                         'checkpoint_sha256': (weights_identity(tuned['path']) or {}).get('sha256')},
            'gan_model': {'path': opt['gan_model']['path'],
                          'sha256': (weights_identity(opt['gan_model']['path']) or {}).get('sha256')},
            'mse_model': {'path': opt['mse_model']['path'],
                          'sha256': (weights_identity(opt['mse_model']['path']) or {}).get('sha256')},
            'detector': opt['detector'], 'segmenter': opt.get('segmenter'), 'class_weights': opt.get('class_weights'),
            'split': {'train': len(split['train']), 'val': len(split['val']), 'seed': split.get('seed'),
                      'feather': split.get('feather')},
            'stages': {k: v.get('fingerprint') for k, v in stages.items()},
            'written': time.strftime('%Y-%m-%d %H:%M:%S')}
        table = format_table3(opt['name'], summary, iters, settings)
        with atomic_open(os.path.join(root, 'table3.md'), 'w') as f:
            f.write(table)
        _write_json(os.path.join(root, 'summary.json'), {'summary': summary, 'settings': settings,
                                                          'per_image': ev['rows']})

        def info(r):
            return (f'<td>{100 * r["area_before"]:.2f}% &rarr; {100 * r["area_after"]:.2f}%<br>'
                    f'PSNR outside: {r["psnr_outside"]:.2f} dB</td>')

        write_gallery(root, ev['rows'], title=f"{opt['name']}: before / after DeSRA fine-tuning",
                      columns=[('LR', 'lr'), ('GAN-SR before', 'gan_before'), ('artifacts before', 'overlay_before'),
                               ('GAN-SR after', 'gan_after'), ('artifacts after', 'overlay_after')],
                      info=info, info_title='artifact area, change',
                      intro=table.split('\n\n', 2)[1].replace('\n', '<br>') + ' Full table: table3.md.',
                      sort_key=lambda r: -r['area_before'])
        print(table)
        return summary
    finally:
        lock.release()


def _split_complete(data_dir: str, split: dict) -> bool:
    files = split.get('files')
    return bool(files) and all(os.path.isfile(os.path.join(data_dir, f)) for f in files)
