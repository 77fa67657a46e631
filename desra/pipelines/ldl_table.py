"""Reproduce LDL's Table 1 (Liang, Zeng & Zhang, CVPR 2022): LPIPS, DISTS, FID, PSNR and SSIM of x4 GAN-SR models on
Set5, Set14, Manga109, General100, Urban100 and DIV2K100, printed beside the paper's figures.

Evaluation protocol (the paper's section 4.1; the choices it leaves open are marked):

* LR inputs: MATLAB-bicubic x4 reductions of the GT (BasicSR's benchmark packs: ``<set>/GTmod12`` and
  ``<set>/LRbicx4``; DIV2K100 = ``DIV2K/DIV2K_valid_HR`` with ``DIV2K_valid_LR_bicubic/X4/<name>x4.png``; see
  ``datasets/README.md``). SR outputs are rounded to 8 bits (as saved PNGs) before every metric.
* PSNR / SSIM: Y channel of YCbCr, ``crop_border = 4`` (MATLAB definitions, :mod:`desra.metrics.psnr_ssim`).
* LPIPS: v0.1 with AlexNet (``lpips.LPIPS(net='alex')``, LDL's choice), DISTS (``DISTS_pytorch``), on RGB;
  the paper does not say whether borders are cropped: ``perceptual_crop`` (default 0, as BasicSR's
  ``calculate_lpips.py``).
* FID: pytorch-fid's Inception, SR set vs GT set of each benchmark, whole images resized to 299 (the paper does
  not say how it handled sets as small as Set5; ``fid_patch_size`` cuts images into tiles instead). With fewer
  samples than the 2048 features the estimate is unreliable and a warning says so.

Two sources of SR images: a model (``label=checkpoint``, run through :func:`desra.engine.evaluate.test_pipeline`,
which also saves the SR images), or a folder of precomputed outputs (``label=folder``, holding
``<folder>/<benchmark>/<GT stem>[_suffix].png``). A label that names a column of the paper's table (e.g.
``RRDB+LDL (DF2K)``, compared case- and space-insensitively) is compared with it; any other label is compared with
``compare_with`` (a column name) or shown without paper figures.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Sequence

from desra.atomic import atomic_open
from desra.errors import ConfigError, DataError

logger = logging.getLogger('desra')

__all__ = ['BENCHMARKS', 'LDLTableOptions', 'METRICS', 'PAPER_TABLE1', 'find_benchmarks', 'format_ldl_report',
           'paper_column', 'reproduce_ldl_table', 'write_ldl_report']

#: Benchmark -> (GT folder, LR folder, LR file name template for a GT stem), relative to the benchmark root.
BENCHMARKS = {
    'Set5': ('Set5/GTmod12', 'Set5/LRbicx4', '{}'),
    'Set14': ('Set14/GTmod12', 'Set14/LRbicx4', '{}'),
    'Manga109': ('Manga109/GTmod12', 'Manga109/LRbicx4', '{}'),
    'General100': ('General100/GTmod12', 'General100/LRbicx4', '{}'),
    'Urban100': ('Urban100/GTmod12', 'Urban100/LRbicx4', '{}'),
    'DIV2K100': ('DIV2K/DIV2K_valid_HR', 'DIV2K/DIV2K_valid_LR_bicubic/X4', '{}x4'),
}

#: Metric -> (direction, decimals in the paper).
METRICS = {'LPIPS': ('lower', 4), 'DISTS': ('lower', 4), 'FID': ('lower', 3), 'PSNR': ('higher', 3),
           'SSIM': ('higher', 4)}

_COLUMNS = ('SFTGAN', 'SRGAN', 'SRResNet+LDL', 'ESRGAN', 'USRGAN', 'SPSR', 'RRDB+LDL (DIV2K)', 'RRDB+LDL (DF2K)',
            'SwinIR+L_GAN', 'SwinIR+LDL')
_BENCH = tuple(BENCHMARKS)


def _rows(text: str) -> dict:
    values = [[float(v) for v in line.split()] for line in text.strip().splitlines()]
    return {b: dict(zip(_COLUMNS, row)) for b, row in zip(_BENCH, values)}


#: LDL (CVPR 2022) Table 1, x4: metric -> benchmark -> column -> value (../shared/papers/ldl_cvpr2022.txt).
PAPER_TABLE1 = {
    'columns': _COLUMNS,
    'training_data': dict(zip(_COLUMNS, ('ImageNet + OST', 'DIV2K', 'DIV2K', 'DF2K + OST', 'DF2K', 'DIV2K', 'DIV2K',
                                         'DF2K', 'DF2K', 'DF2K'))),
    'LPIPS': _rows('''
        0.0800 0.0753 0.0759 0.0758 0.0795 0.0647 0.0670 0.0691 0.0656 0.0655
        0.1313 0.1327 0.1303 0.1241 0.1347 0.1207 0.1207 0.1132 0.1160 0.1091
        0.0716 0.0707 0.0673 0.0649 0.0630 0.0672 0.0553 0.0544 0.0542 0.0469
        0.0947 0.0964 0.0898 0.0879 0.0937 0.0862 0.0790 0.0796 0.0796 0.0740
        0.1343 0.1439 0.1330 0.1229 0.1330 0.1184 0.1096 0.1084 0.1077 0.1021
        0.1331 0.1257 0.1172 0.1154 0.1325 0.1099 0.1011 0.0999 0.1038 0.0944'''),
    'DISTS': _rows('''
        0.1085 0.1003 0.1010 0.0949 0.1045 0.0921 0.0917 0.0919 0.0930 0.0899
        0.1133 0.1067 0.1016 0.0951 0.0997 0.0920 0.0935 0.0866 0.0930 0.0869
        0.0646 0.0557 0.0523 0.0471 0.0471 0.0463 0.0404 0.0355 0.0365 0.0315
        0.0992 0.0982 0.0939 0.0874 0.0931 0.0884 0.0827 0.0801 0.0835 0.0794
        0.1062 0.1081 0.0989 0.0880 0.0975 0.0849 0.0822 0.0793 0.0835 0.0800
        0.0736 0.0663 0.0624 0.0593 0.0645 0.0546 0.0528 0.0526 0.0531 0.0507'''),
    'FID': _rows('''
        39.261 31.507 27.542 27.215 37.006 30.904 25.288 24.803 35.401 27.955
        60.493 63.945 52.080 54.933 55.635 53.867 49.577 43.454 48.910 46.057
        21.464 11.948 12.652 11.552 10.658 10.662 9.855 10.161 9.703 8.680
        36.845 33.868 32.737 29.843 32.959 30.159 27.506 27.211 27.557 25.304
        21.370 22.162 21.512 20.345 21.555 18.672 17.758 16.351 17.555 16.282
        18.183 13.922 14.823 13.557 14.031 13.754 12.145 12.121 12.736 12.075'''),
    'PSNR': _rows('''
        30.057 29.920 30.527 30.438 30.910 30.397 30.985 31.033 30.873 31.028
        26.743 26.839 27.278 26.594 27.405 26.860 27.491 27.228 27.282 27.526
        28.167 28.110 28.664 28.413 28.753 28.561 29.407 29.620 29.345 30.143
        29.159 29.327 29.775 29.425 30.001 29.424 30.232 30.289 30.104 30.441
        24.338 24.410 24.745 24.365 24.891 24.804 25.498 25.459 25.736 26.231
        28.085 28.165 28.602 28.175 28.787 28.182 28.951 28.819 28.784 29.117'''),
    'SSIM': _rows('''
        0.8483 0.8478 0.8570 0.8523 0.8657 0.8443 0.8626 0.8611 0.8655 0.8611
        0.7175 0.7252 0.7366 0.7144 0.7486 0.7254 0.7476 0.7358 0.7407 0.7478
        0.8562 0.8632 0.8702 0.8595 0.8717 0.8590 0.8746 0.8734 0.8796 0.8880
        0.8060 0.8074 0.8164 0.8095 0.8241 0.8091 0.8277 0.8280 0.8305 0.8347
        0.7235 0.7302 0.7409 0.7341 0.7503 0.7474 0.7673 0.7661 0.7786 0.7918
        0.7707 0.7745 0.7855 0.7759 0.7941 0.7720 0.7951 0.7897 0.7911 0.8011'''),
}


def _norm(name: str) -> str:
    return re.sub(r'[\s_\-]+', '', name).lower()


def paper_column(label: str, compare_with: str | None = None) -> str | None:
    """The Table 1 column for ``label`` (or for ``compare_with`` when given); None when there is none."""
    want = _norm(compare_with or label)
    for col in _COLUMNS:
        if _norm(col) == want:
            return col
    if compare_with:
        raise ConfigError(f'--compare-with {compare_with!r}: not a column of LDL Table 1; columns: '
                          f'{", ".join(_COLUMNS)}')
    return None


@dataclasses.dataclass
class LDLTableOptions:
    """What :func:`reproduce_ldl_table` evaluates.

    Args:
        benchmarks_root: the folder holding the benchmark layouts of :data:`BENCHMARKS` (``datasets/``).
        models: ``{label: checkpoint}`` (run with ``network_g``) and/or ``{label: folder of SR outputs}``.
        benchmarks: names to evaluate (default: all of :data:`BENCHMARKS` that exist under the root).
        metrics: subset of :data:`METRICS`.
        network_g: the architecture of the checkpoints (default RRDBNet x4, 64 features, 23 blocks).
        param_key: checkpoint key (``params_ema`` falls back to ``params``, see ``load_network_weights``).
        compare_with: ``{label: paper column}`` for labels that are not a column name.
        lpips_net: LPIPS backbone (``alex`` in LDL).
        perceptual_crop: border cropped before LPIPS / DISTS (the paper does not say; default 0).
        fid_patch_size: FID on non-overlapping tiles of this size instead of whole images.
        fid_method: ``'sqrtm'`` (pytorch-fid's) or ``'eigh'`` (equal to 1e-7, faster), see ``calculate_fid``.
        weights: ``{'alexnet': path, 'vgg16': ..., 'lpips_heads': ..., 'dists': ..., 'fid_inception': ...}``
            (default: searched in ``pretrained/`` etc., see :mod:`desra.weights.locate`).
        out_dir: where SR images, FID statistics and the report go.
        tile_size, tile_pad: tiled inference (LR pixels per tile; 0 = whole image, 'auto' = whole image when it
            fits in memory); ``tile_pad=None`` is :data:`desra.inference.DEFAULT_TILE_PAD`.
        device: 'auto' (CUDA when available) or 'cpu'.
    """
    benchmarks_root: str
    models: dict
    benchmarks: Sequence[str] | None = None
    metrics: Sequence[str] = tuple(METRICS)
    network_g: dict = dataclasses.field(default_factory=lambda: {
        'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32,
        'scale': 4})
    param_key: str = 'params_ema'
    compare_with: dict = dataclasses.field(default_factory=dict)
    lpips_net: str = 'alex'
    perceptual_crop: int = 0
    fid_patch_size: int | None = None
    fid_method: str = 'sqrtm'
    weights: dict = dataclasses.field(default_factory=dict)
    out_dir: str = 'results/ldl_table1'
    tile_size: int | str = 0
    tile_pad: int | None = None
    device: str = 'auto'

    def check(self) -> None:
        if self.device not in ('auto', 'cpu'):
            raise ConfigError(f"--device {self.device!r}: expected 'auto' or 'cpu'")
        if not self.models:
            raise ConfigError('--models: give at least one LABEL=CHECKPOINT or LABEL=FOLDER')
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ConfigError(f'--metrics {bad[0]}: unknown; choose from {", ".join(METRICS)}')
        bad = [b for b in (self.benchmarks or ()) if b not in BENCHMARKS]
        if bad:
            raise ConfigError(f'--sets {bad[0]}: unknown benchmark; choose from {", ".join(BENCHMARKS)}')
        for label, path in self.models.items():
            if not os.path.exists(path):
                raise DataError(f'--models {label}={path}: no such checkpoint file or results folder')
        for label, col in self.compare_with.items():
            paper_column(label, col)
        unknown = sorted(set(self.weights) - {'alexnet', 'vgg16', 'lpips_heads', 'dists', 'fid_inception'})
        if unknown:
            raise ConfigError(f'weights: unknown key {unknown[0]!r}')


def find_benchmarks(root: str, names: Sequence[str] | None = None) -> dict:
    """``{benchmark: (gt folder, lr folder, template)}`` that exist under ``root``; a benchmark asked for by name
    that is not there is an error naming the folder expected."""
    if not os.path.isdir(root):
        raise DataError(f'--benchmarks {root}: no such folder (expected the datasets/ root of datasets/README.md)')
    found = {}
    for name in names or BENCHMARKS:
        gt_rel, lr_rel, tmpl = BENCHMARKS[name]
        gt, lr = os.path.join(root, gt_rel), os.path.join(root, lr_rel)
        if os.path.isdir(gt) and os.path.isdir(lr):
            found[name] = (gt, lr, tmpl)
        elif names:
            missing = gt if not os.path.isdir(gt) else lr
            raise DataError(f'{name}: {missing} does not exist (layout: datasets/README.md, "Validation and test '
                            'sets")')
    if not found:
        raise DataError(f'--benchmarks {root}: none of {", ".join(BENCHMARKS)} found (expected e.g. '
                        f'{os.path.join(root, BENCHMARKS["Set5"][0])}; see datasets/README.md)')
    return found


def _metric_options(opts: LDLTableOptions) -> dict:
    """``val.metrics`` entries for the selected metrics (names are the table's)."""
    w = opts.weights
    crop = opts.perceptual_crop
    table = {
        'PSNR': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
        'SSIM': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True},
        'LPIPS': {'type': 'calculate_lpips', 'crop_border': crop, 'net': opts.lpips_net,
                  'backbone': w.get('alexnet' if opts.lpips_net == 'alex' else 'vgg16'), 'heads': w.get('lpips_heads')},
        'DISTS': {'type': 'calculate_dists', 'crop_border': crop, 'backbone': w.get('vgg16'),
                  'weights': w.get('dists')},
        'FID': {'type': 'calculate_fid', 'weights': w.get('fid_inception'), 'patch_size': opts.fid_patch_size,
                'method': opts.fid_method},
    }
    out = {}
    for m in METRICS:
        if m in opts.metrics:
            out[m] = {k: v for k, v in table[m].items() if v is not None or k == 'type'}
    return out


def _slug(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9.+-]+', '_', label).strip('_') or 'model'


def _evaluate_checkpoint(label, ckpt, benchmarks, metrics_opt, opts) -> dict:
    from desra.config import finalize_options
    from desra.engine.evaluate import test_pipeline

    name = _slug(label)
    opt = {
        'name': name, 'scale': 4, 'num_gpu': 0 if opts.device == 'cpu' else 'auto', 'is_train': False,
        'network_g': dict(opts.network_g),
        'path': {'pretrain_network_g': ckpt, 'param_key_g': opts.param_key, 'strict_load_g': True,
                 'results_root': os.path.join(os.path.abspath(opts.out_dir), name)},
        'datasets': {f'test_{b}': {'name': b, 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lr,
                                   'filename_tmpl': tmpl, 'io_backend': {'type': 'disk'}}
                     for b, (gt, lr, tmpl) in benchmarks.items()},
        'val': {'save_img': True, 'suffix': name, 'tile_size': opts.tile_size, 'tile_pad': opts.tile_pad,
                'metrics': metrics_opt},
    }
    finalize_options(opt)
    rows = test_pipeline(opt)
    return {r['dataset']: {k: v for k, v in r.items() if k != 'dataset'} for r in rows}


def _evaluate_folder(label, folder, benchmarks, metrics_opt, opts) -> dict:
    """Metrics of precomputed SR images ``<folder>/<benchmark>/<GT stem>[_suffix].<ext>`` against the GT."""
    import torch

    from desra.data.io import IMG_EXTENSIONS, img2tensor, imread, scandir
    from desra.engine.dist import get_device
    from desra.engine.validation import MetricSet

    device = get_device(0 if opts.device == 'cpu' else 'auto')
    out = {}
    for b, (gt_dir, _, _) in benchmarks.items():
        sr_dir = os.path.join(folder, b)
        if not os.path.isdir(sr_dir):
            raise DataError(f'--models {label}={folder}: no {b}/ folder of SR images in it ({sr_dir})')
        sr_files = sorted(scandir(sr_dir, suffix=IMG_EXTENSIONS))
        metric_set = MetricSet(metrics_opt, 'metrics', device)
        gts = sorted(scandir(gt_dir, suffix=IMG_EXTENSIONS))
        for g in gts:
            stem = os.path.splitext(g)[0]
            match = [f for f in sr_files if os.path.splitext(f)[0] == stem or f.startswith(stem + '_')]
            if len(match) != 1:
                raise DataError(f'{sr_dir}: {"no" if not match else "more than one"} SR image for GT {g} '
                                f'(expected {stem}.png or {stem}_<suffix>.png)')
            gt_img = imread(os.path.join(gt_dir, g))
            sr_img = imread(os.path.join(sr_dir, match[0]))
            if sr_img.shape != gt_img.shape:
                raise DataError(f'{os.path.join(sr_dir, match[0])}: {sr_img.shape[1]}x{sr_img.shape[0]}, the GT '
                                f'{g} is {gt_img.shape[1]}x{gt_img.shape[0]}')
            sr_t, gt_t = (img2tensor(x.astype('float32') / 255.).unsqueeze(0) for x in (sr_img, gt_img))
            with torch.no_grad():
                metric_set.update(sr_t.to(device), gt_t, sr_img, gt_img)
        out[b] = {'images': len(gts), **metric_set.results()}
    return out


def reproduce_ldl_table(opts: LDLTableOptions) -> dict:
    """Evaluate every model on every benchmark; returns ``{'settings', 'models': {label: {'column', 'results':
    {benchmark: {metric: value, 'images': n}}}}, 'paper'}``."""
    from desra.engine.validation import check_metric_options

    opts.check()
    benchmarks = find_benchmarks(opts.benchmarks_root, opts.benchmarks)
    metrics_opt = _metric_options(opts)
    check_metric_options(metrics_opt, 'metrics')  # every weight file is found before any model runs
    models = {}
    for label, path in opts.models.items():
        logger.info('LDL Table 1: %s (%s)', label, path)
        fn = _evaluate_folder if os.path.isdir(path) else _evaluate_checkpoint
        results = fn(label, path, benchmarks, metrics_opt, opts)
        models[label] = {'source': os.path.abspath(path), 'column': paper_column(label, opts.compare_with.get(label)),
                         'results': results}
    settings = dataclasses.asdict(opts)
    settings['benchmarks'] = list(benchmarks)
    return {'settings': settings, 'models': models, 'metrics_opt': metrics_opt}


def _fmt(v, decimals: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    return f'{v:.{decimals}f}'


def format_ldl_report(result: dict) -> str:
    """Markdown: one table per metric, rows = benchmarks, for each model ours | paper | Δ (ours - paper)."""
    s = result['settings']
    lines = ['# LDL Table 1: reproduction report', '',
             f'- Benchmarks root: `{s["benchmarks_root"]}`; x4, MATLAB-bicubic LR; SR rounded to 8 bits.',
             '- PSNR / SSIM: Y channel, crop 4. LPIPS: v0.1, '
             f'{s["lpips_net"]}; LPIPS / DISTS on RGB, crop {s["perceptual_crop"]} (the paper does not say).',
             '- FID: pytorch-fid Inception, SR set vs GT set per benchmark, '
             + (f'{s["fid_patch_size"]} px tiles' if s['fid_patch_size'] else 'whole images resized to 299')
             + '; fewer samples than 2048 features make it unreliable (Set5 has 5 images).',
             '- Δ = ours − paper; ↓ lower is better, ↑ higher is better.', '']
    models = result['models']
    for label, m in models.items():
        col = m['column']
        lines.append(f'- **{label}**: `{m["source"]}`; compared with the paper\'s column '
                     + (f'"{col}" (trained on {PAPER_TABLE1["training_data"][col]})' if col else
                        '— none (label not a Table 1 column; use --compare-with)'))
    for metric in s['metrics']:
        direction, dec = METRICS[metric]
        lines += ['', f'## {metric} {"↓" if direction == "lower" else "↑"}', '']
        header = ['Benchmark', 'images']
        for label, m in models.items():
            header += [f'{label} (ours)'] + ([f'paper ({m["column"]})', 'Δ'] if m['column'] else [])
        lines += ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
        for b in s['benchmarks']:
            first = next(iter(models.values()))['results'].get(b, {})
            row = [b, str(first.get('images', '-'))]
            for label, m in models.items():
                ours = m['results'].get(b, {}).get(metric)
                row.append(_fmt(ours, dec))
                if m['column']:
                    paper = PAPER_TABLE1[metric][b][m['column']]
                    row += [_fmt(paper, dec), '-' if ours is None or math.isnan(ours) else f'{ours - paper:+.{dec}f}']
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'


def write_ldl_report(result: dict, out_dir: str) -> tuple[str, str]:
    """Write ``<out_dir>/ldl_table1.md`` and ``.json`` atomically; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md, js = os.path.join(out_dir, 'ldl_table1.md'), os.path.join(out_dir, 'ldl_table1.json')
    with atomic_open(md, 'w') as f:
        f.write(format_ldl_report(result))
    with atomic_open(js, 'w') as f:
        json.dump({k: v for k, v in result.items()}, f, indent=2, default=str)
    return md, js
