"""Reproduce Table 1 of the deraining artifact-localisation paper ("The Cross-Domain Application Research of a
Super-Resolution Semantic Artifact ...", IJRES; ``../shared/papers/artifact_localization_deraining.txt``): PSNR,
SSIM and LPIPS of derained outputs on Rain100L, Rain12, Rain800 and SPA-Data, printed beside the paper's figures.

The paper runs DerainCycleGAN, VRGNet and Semi-DerainGAN, localises artifacts in their outputs with a DeepLabV3+
trained on the DeSRA GAN-SR artifact masks, and fills each model's artifact regions from the other models'
outputs ("+Ours" rows). This module evaluates folders of such outputs; it does not run the deraining models.

Evaluation protocol (the choices the paper leaves open are marked):

* Data: ``<root>/<set>/clean/<name>.png`` (GT) for each set of :data:`SETS` (``datasets/derain``, layout and
  conversion of the released sets in ``datasets/README.md``, "Deraining"); ``<root>/<set>/rainy/`` holds the
  inputs (evaluated as the row "rainy input" with ``with_input``).
* Outputs: ``<folder>/<set>/<GT stem>.png`` or ``<GT stem>_<suffix>.png`` (what ``test.py`` saves in
  ``results/<name>/visualization/<set>/``); any image extension; the same size as the GT; 8-bit.
* PSNR / SSIM: **the paper does not say** on which channel. Default: the Y channel of YCbCr (BT.601, MATLAB's
  ``rgb2ycbcr``), no border crop, MATLAB-style SSIM (11x11 Gaussian, sigma 1.5): the usual convention of the
  deraining literature, whose Rain100L / Rain12 / Rain800 / SPA-Data tables are mostly computed with MATLAB on
  Y. ``y_channel=False`` computes them on the BGR channels (averaged) instead; ``crop_border`` crops first.
* LPIPS: v0.1 with AlexNet (``alex``; the paper does not name the backbone), on RGB, ``perceptual_crop`` (0).

A label that names a row of the paper's table (case-, space-, hyphen- and underscore-insensitive, e.g.
``VRGNet``, ``semi-derain+ours``; also ``DerainCycleGAN+Ours`` and ``SemiDerainGAN+Ours``) is compared with it;
any other label with ``compare_with`` (a row name) or shown without paper figures.
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

__all__ = ['SETS', 'TEST_IMAGES', 'METRICS', 'ROWS', 'PAPER_TABLE1', 'INPUT_LABEL', 'DerainTableOptions',
           'paper_row', 'find_sets', 'match_outputs', 'reproduce_derain_table', 'format_derain_report',
           'write_derain_report']

#: The paper's data sets, in its column order (also the folder names under the data sets root).
SETS = ('Rain100L', 'Rain12', 'Rain800', 'SPA-Data')

#: Number of test pairs of each set as usually released (a smaller count here is pointed out in the report).
TEST_IMAGES = {'Rain100L': 100, 'Rain12': 12, 'Rain800': 100, 'SPA-Data': 1000}

#: Metric -> (direction, decimals in the paper).
METRICS = {'PSNR': ('higher', 2), 'SSIM': ('higher', 3), 'LPIPS': ('lower', 4)}

#: The rows of the paper's Table 1 ("DDN" is printed "DDNI[12]" in the text we have: the reference mark).
ROWS = ('DSC', 'GMM', 'DDN', 'DerainCycleGAN', 'VRGNet', 'SemiDerainGAN', 'CycleGAN+Ours', 'VRGNet+Ours',
        'Semi-Derain+Ours')

#: Label spellings (normalised) that mean a row whose name they do not match.
_ALIASES = {'ddni': 'DDN', 'deraincyclegan+ours': 'CycleGAN+Ours', 'semideraingan+ours': 'Semi-Derain+Ours',
            'semiderain': 'SemiDerainGAN'}

#: Table 1 as printed: PSNR/SSIM/LPIPS per set, in the order of SETS.
_TABLE1_TEXT = '''
DSC              27.34/0.849/0.0923 30.07/0.866/0.1012 18.56/0.600/0.1798 34.95/0.942/0.0784
GMM              29.05/0.872/0.0911 32.14/0.916/0.0877 20.46/0.730/0.1465 34.30/0.943/0.0806
DDN              32.38/0.926/0.0720 34.04/0.933/0.0715 20.88/0.762/0.1239 35.02/0.940/0.0761
DerainCycleGAN   31.49/0.936/0.0734 34.44/0.952/0.0703 24.32/0.842/0.1183 34.12/0.950/0.0718
VRGNet           35.56/0.966/0.0630 35.28/0.957/0.0662 24.91/0.884/0.0854 35.76/0.961/0.0523
SemiDerainGAN    34.12/0.958/0.0632 35.86/0.960/0.0679 25.29/0.868/0.0815 35.47/0.956/0.0594
CycleGAN+Ours    34.03/0.951/0.0606 35.37/0.955/0.0634 25.16/0.853/0.0799 34.86/0.943/0.0680
VRGNet+Ours      35.99/0.965/0.0556 35.44/0.952/0.0653 25.20/0.889/0.0717 35.92/0.965/0.0510
Semi-Derain+Ours 34.52/0.962/0.0613 36.02/0.963/0.0601 25.31/0.870/0.0649 35.60/0.951/0.0502
'''


def _parse_table(text: str) -> dict:
    table = {m: {s: {} for s in SETS} for m in METRICS}
    for line in text.strip().splitlines():
        row, *cells = line.split()
        for s, cell in zip(SETS, cells):
            for m, v in zip(METRICS, cell.split('/')):
                table[m][s][row] = float(v)
    return table


#: The paper's Table 1: metric -> set -> row -> value.
PAPER_TABLE1 = {'rows': ROWS, **_parse_table(_TABLE1_TEXT)}

#: The label of the rainy inputs themselves (``with_input``).
INPUT_LABEL = 'rainy input'


def _norm(name: str) -> str:
    return re.sub(r'[\s_\-]+', '', name).lower()


def paper_row(label: str, compare_with: str | None = None) -> str | None:
    """The Table 1 row for ``label`` (or for ``compare_with`` when given); None when there is none."""
    want = _norm(compare_with or label)
    for row in ROWS:
        if _norm(row) == want:
            return row
    if want in _ALIASES:
        return _ALIASES[want]
    if compare_with:
        raise ConfigError(f'--compare-with {compare_with!r}: not a row of the paper\'s Table 1; rows: '
                          f'{", ".join(ROWS)}')
    return None


@dataclasses.dataclass
class DerainTableOptions:
    """What :func:`reproduce_derain_table` evaluates.

    Args:
        datasets_root: the folder holding ``<set>/clean`` (and ``<set>/rainy``) for the sets of :data:`SETS`.
        outputs: ``{label: folder}``, each folder holding ``<set>/<name>[_suffix].png`` derained outputs.
        sets: names to evaluate (default: all of :data:`SETS` under the root; a named set must be there).
        metrics: subset of :data:`METRICS`.
        compare_with: ``{label: paper row}`` for labels that are not a row name.
        y_channel: PSNR / SSIM on Y of YCbCr (default, the deraining convention) or, False, on the BGR channels.
        crop_border: pixels cropped from each side before PSNR / SSIM (0).
        lpips_net: LPIPS backbone (``alex``).
        perceptual_crop: pixels cropped from each side before LPIPS (0).
        weights: ``{'alexnet': path, 'vgg16': ..., 'lpips_heads': ...}`` (default: searched as in
            :mod:`desra.weights.locate`: ``$DESRA_ALEXNET_WEIGHTS`` / ``$DESRA_LPIPS_ALEX_HEADS``, ``pretrained/``...).
        with_input: also evaluate the rainy inputs (row :data:`INPUT_LABEL`).
        out_dir: where the report goes.
        device: 'auto' (CUDA when available) or 'cpu', for LPIPS.
    """
    datasets_root: str
    outputs: dict
    sets: Sequence[str] | None = None
    metrics: Sequence[str] = tuple(METRICS)
    compare_with: dict = dataclasses.field(default_factory=dict)
    y_channel: bool = True
    crop_border: int = 0
    lpips_net: str = 'alex'
    perceptual_crop: int = 0
    weights: dict = dataclasses.field(default_factory=dict)
    with_input: bool = False
    out_dir: str = 'results/derain_table1'
    device: str = 'auto'

    def check(self) -> None:
        if self.device not in ('auto', 'cpu'):
            raise ConfigError(f"--device {self.device!r}: expected 'auto' or 'cpu'")
        if not self.outputs and not self.with_input:
            raise ConfigError('--outputs: give at least one LABEL=FOLDER')
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ConfigError(f'--metrics {bad[0]}: unknown; choose from {", ".join(METRICS)}')
        if not self.metrics:
            raise ConfigError(f'--metrics: choose at least one of {", ".join(METRICS)}')
        bad = [s for s in (self.sets or ()) if s not in SETS]
        if bad:
            raise ConfigError(f'--sets {bad[0]}: unknown data set; choose from {", ".join(SETS)}')
        for key, value in (('--crop-border', self.crop_border), ('--perceptual-crop', self.perceptual_crop)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f'{key} {value!r}: expected an integer >= 0')
        if self.lpips_net not in ('alex', 'vgg'):
            raise ConfigError(f"--lpips-net {self.lpips_net!r}: expected 'alex' or 'vgg'")
        if self.with_input and INPUT_LABEL in self.outputs:
            raise ConfigError(f'--outputs: the label {INPUT_LABEL!r} is taken by --with-input')
        for label, folder in self.outputs.items():
            if not os.path.isdir(folder):
                what = 'is a file, not a folder of outputs' if os.path.exists(folder) else 'no such folder'
                raise DataError(f'--outputs {label}={folder}: {what}')
        for label, row in self.compare_with.items():
            if label not in self.outputs:
                raise ConfigError(f'--compare-with {label}={row}: no --outputs label {label!r}')
            paper_row(label, row)
        unknown = sorted(set(self.weights) - {'alexnet', 'vgg16', 'lpips_heads'})
        if unknown:
            raise ConfigError(f'weights: unknown key {unknown[0]!r}')


def find_sets(root: str, names: Sequence[str] | None = None, with_input: bool = False) -> dict:
    """``{set: (clean folder, rainy folder)}`` of the sets under ``root``; a set asked for by name that is not
    there is an error naming the folder expected (as is a missing ``rainy/`` with ``with_input``)."""
    if not os.path.isdir(root):
        raise DataError(f'--datasets {root}: no such folder (expected the datasets/derain root of '
                        'datasets/README.md, "Deraining")')
    found = {}
    for name in names or SETS:
        clean, rainy = os.path.join(root, name, 'clean'), os.path.join(root, name, 'rainy')
        if os.path.isdir(clean):
            if with_input and not os.path.isdir(rainy):
                raise DataError(f'{name}: {rainy} does not exist (needed by --with-input)')
            found[name] = (clean, rainy)
        elif names:
            raise DataError(f'{name}: {clean} does not exist (layout: datasets/README.md, "Deraining")')
    if not found:
        raise DataError(f'--datasets {root}: none of {", ".join(SETS)} found (expected e.g. '
                        f'{os.path.join(root, "Rain100L", "clean")}; see datasets/README.md, "Deraining")')
    return found


def _size(path: str) -> tuple[int, int] | None:
    """(height, width) from the header, orientation applied; None when the header says nothing."""
    from desra.utils.images import image_header

    header = image_header(path)
    return None if header is None else header.display_size


def _size_error(out_path: str, out_hw, gt_path: str, gt_hw) -> DataError:
    return DataError(f'{out_path}: {out_hw[1]}x{out_hw[0]} (WxH), but its GT {gt_path} is {gt_hw[1]}x{gt_hw[0]}')


def match_outputs(folder: str, gt_dir: str, what: str, set_name: str) -> list[tuple[str, str]]:
    """``[(GT path, output path)]`` for every GT image of ``gt_dir``: the output ``<folder>/<stem>.<ext>`` (preferred)
    or the only ``<stem>_<suffix>.<ext>``. Sizes are compared from the file headers. ``what`` names the output
    folder in the messages (``--outputs LABEL=FOLDER``), ``set_name`` the data set."""
    from desra.data.io import is_image_file, scandir

    if not os.path.isdir(folder):
        raise DataError(f'{what}: no {set_name}/ folder of derained images in it ({folder}); choose the sets '
                        'with --sets')
    gts = [f for f in scandir(gt_dir) if is_image_file(f)]
    if not gts:
        raise DataError(f'{gt_dir}: no GT images in it')
    outs = [f for f in scandir(folder) if is_image_file(f)]
    by_stem: dict[str, list[str]] = {}
    for f in outs:
        by_stem.setdefault(os.path.splitext(f)[0], []).append(f)
    pairs, used = [], set()
    for g in gts:
        stem = os.path.splitext(g)[0]
        exact = by_stem.get(stem, [])
        match = exact or [f for f in outs if f.startswith(stem + '_')]
        gt_path = os.path.join(gt_dir, g)
        if not match:
            raise DataError(f'{folder}: no derained image for {gt_path} (expected {stem}.png or '
                            f'{stem}_<suffix>.png)')
        if len(match) > 1:
            raise DataError(f'{folder}: more than one derained image for {gt_path}: {", ".join(match[:3])}')
        out_path = os.path.join(folder, match[0])
        gt_hw, out_hw = _size(gt_path), _size(out_path)
        if gt_hw is not None and out_hw is not None and gt_hw != out_hw:
            raise _size_error(out_path, out_hw, gt_path, gt_hw)
        used.add(match[0])
        pairs.append((gt_path, out_path))
    extra = [f for f in outs if f not in used]
    if extra:
        logger.warning('%s: %d image(s) with no GT in %s ignored (e.g. %s)', folder, len(extra), gt_dir, extra[0])
    return pairs


def _metric_options(opts: DerainTableOptions) -> dict:
    """``{metric: {type: ..., ...}}`` entries for :func:`desra.metrics.calculate_metric`."""
    w = opts.weights
    table = {
        'PSNR': {'type': 'calculate_psnr', 'crop_border': opts.crop_border, 'test_y_channel': opts.y_channel},
        'SSIM': {'type': 'calculate_ssim', 'crop_border': opts.crop_border, 'test_y_channel': opts.y_channel},
        'LPIPS': {'type': 'calculate_lpips', 'crop_border': opts.perceptual_crop, 'net': opts.lpips_net,
                  'backbone': w.get('alexnet' if opts.lpips_net == 'alex' else 'vgg16'),
                  'heads': w.get('lpips_heads'), 'device': 'cpu' if opts.device == 'cpu' else None},
    }
    return {m: {k: v for k, v in table[m].items() if v is not None or k == 'type'} for m in METRICS
            if m in opts.metrics}


def _sources(opts: DerainTableOptions, sets: dict) -> dict:
    """``{label: {set: folder of its outputs}}``."""
    out = {}
    if opts.with_input:
        out[INPUT_LABEL] = {s: rainy for s, (_, rainy) in sets.items()}
    for label, folder in opts.outputs.items():
        out[label] = {s: os.path.join(folder, s) for s in sets}
    return out


def reproduce_derain_table(opts: DerainTableOptions) -> dict:
    """Evaluate every output folder on every set; returns ``{'settings', 'models': {label: {'source', 'row',
    'results': {set: {'images': n, metric: mean}}, 'per_image': {set: {name: {metric: value}}}}}, 'paper',
    'metrics_opt'}``. Every pair is matched and its size checked (from the headers) before any metric runs."""
    from desra.data.io import imread
    from desra.engine.validation import check_metric_options
    from desra.metrics import calculate_metric
    from desra.utils.progress import Progress

    opts.check()
    sets = find_sets(opts.datasets_root, opts.sets, opts.with_input)
    metrics_opt = _metric_options(opts)
    check_metric_options(metrics_opt, 'metrics')  # every weight file is found before anything is read
    sources = _sources(opts, sets)
    plan = {}
    for label, per_set in sources.items():
        what = f'--outputs {label}={opts.outputs[label]}' if label in opts.outputs else '--with-input'
        plan[label] = {s: match_outputs(per_set[s], sets[s][0], what, s) for s in sets}

    models = {label: {'source': os.path.abspath(opts.outputs[label]) if label in opts.outputs else
                      os.path.abspath(opts.datasets_root) + f'{os.sep}<set>{os.sep}rainy',
                      'row': None if label == INPUT_LABEL else paper_row(label, opts.compare_with.get(label)),
                      'results': {}, 'per_image': {}} for label in sources}
    for s, (gt_dir, _) in sets.items():
        gts = [g for g, _ in plan[next(iter(plan))][s]]
        sums = {label: dict.fromkeys(metrics_opt, 0.0) for label in sources}
        progress = Progress(len(gts), f'derain table {s}', unit='img')
        for i, gt_path in enumerate(gts):
            gt = imread(gt_path)
            for label in sources:
                out_path = plan[label][s][i][1]
                img = imread(out_path)
                if img.shape != gt.shape:
                    raise _size_error(out_path, img.shape[:2], gt_path, gt.shape[:2])
                values = {m: float(calculate_metric({'img': img, 'img2': gt}, m_opt, f'metrics.{m}'))
                          for m, m_opt in metrics_opt.items()}
                for m, v in values.items():
                    sums[label][m] += v
                models[label]['per_image'].setdefault(s, {})[os.path.basename(gt_path)] = values
            progress.update()
        progress.close()
        for label in sources:
            models[label]['results'][s] = {'images': len(gts), **{m: v / len(gts) for m, v in sums[label].items()}}
    settings = dataclasses.asdict(opts)
    settings['sets'] = list(sets)
    paper = {label: {s: {m: PAPER_TABLE1[m][s][m_['row']] for m in opts.metrics} for s in sets}
             for label, m_ in models.items() if m_['row']}
    return {'settings': settings, 'models': models, 'paper': paper, 'metrics_opt': metrics_opt}


def _fmt(v, decimals: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    return f'{v:.{decimals}f}'


def format_derain_report(result: dict) -> str:
    """Markdown: one table per metric, rows = data sets, for each label ours | paper | Δ (ours - paper)."""
    s = result['settings']
    channel = 'Y channel of YCbCr (BT.601)' if s['y_channel'] else 'BGR channels (averaged)'
    lines = ['# Deraining Table 1 (artifact localisation + multi-model fusion): reproduction report', '',
             f'- Data sets root: `{s["datasets_root"]}`; GT `<set>/clean/<name>.png`; outputs rounded to 8 bits.',
             f'- PSNR / SSIM: {channel}, crop {s["crop_border"]}, MATLAB-style SSIM (the paper does not state the '
             'channel; Y is the deraining convention).',
             '- Δ = ours − paper; ↓ lower is better, ↑ higher is better.']
    if 'LPIPS' in s['metrics']:
        lines.insert(-1, f'- LPIPS: v0.1, {s["lpips_net"]}, on RGB, crop {s["perceptual_crop"]} (the paper does not '
                         'name the backbone).')
    models = result['models']
    first = next(iter(models.values()))['results']
    for name in s['sets']:
        n = first.get(name, {}).get('images')
        if n is not None and n != TEST_IMAGES[name]:
            lines.append(f'- {name}: {n} image(s) here; the released test set has {TEST_IMAGES[name]}, so the '
                         'figures are not comparable one to one.')
    for label, m in models.items():
        row = m['row']
        lines.append(f'- **{label}**: `{m["source"]}`; compared with the paper\'s row '
                     + (f'"{row}"' if row else '— none' + ('' if label == INPUT_LABEL else
                                                           ' (label not a Table 1 row; use --compare-with)')))
    for metric in s['metrics']:
        direction, dec = METRICS[metric]
        lines += ['', f'## {metric} {"↓" if direction == "lower" else "↑"}', '']
        header = ['Set', 'images']
        for label, m in models.items():
            header += [f'{label} (ours)'] + ([f'paper ({m["row"]})', 'Δ'] if m['row'] else [])
        lines += ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
        for name in s['sets']:
            row = [name, str(first.get(name, {}).get('images', '-'))]
            for label, m in models.items():
                ours = m['results'].get(name, {}).get(metric)
                row.append(_fmt(ours, dec))
                if m['row']:
                    paper = PAPER_TABLE1[metric][name][m['row']]
                    bad = ours is None or not math.isfinite(ours)
                    row += [_fmt(paper, dec), '-' if bad else f'{ours - paper:+.{dec}f}']
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'


def write_derain_report(result: dict, out_dir: str) -> tuple[str, str]:
    """Write ``<out_dir>/derain_table1.md`` and ``.json`` atomically; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    md, js = os.path.join(out_dir, 'derain_table1.md'), os.path.join(out_dir, 'derain_table1.json')
    with atomic_open(md, 'w') as f:
        f.write(format_derain_report(result))
    with atomic_open(js, 'w') as f:
        json.dump(result, f, indent=2, default=str)
    return md, js
