"""Reproduce the detection tables of DeSRA (ICML 2023) on the authors' artifact data set.

What it computes, per method folder ``<data>/<method>/`` (``RealESRGAN`` -> Table 1, ``LDL`` -> Table 2; any
other method, e.g. ``SwinIR``, gets a table of its own without paper figures):

* **NIQE**: the sliding-window NIQE map of the GAN-SR image (:class:`desra.detection.detectors.NIQEDetector`),
  thresholded at every value of a grid; the paper reports NIQE at its best threshold, so the row shows the
  threshold with the best IoU (the whole sweep is listed under the table and in the JSON).
* **LDL*** at thresholds 0.01 / 0.005 / 0.001 (:class:`~desra.detection.detectors.LDLStarDetector`).
* **DeSRA-det** (:class:`~desra.detection.detectors.DeSRADetector`) with the class weights and segmenter given;
  without them every class weight is 1 (``S = clip(D, 0, 1)``), and the report says so.
* **DeSRA-Mask (released)**: the authors' own masks, when the ``DeSRA-Mask`` folder exists.
* **PAL4Inpainting** is listed with the paper's figures only: it is not implemented here.

Each detector runs once per image pair: the LDL* map and the NIQE map are computed once and thresholded per
threshold (the thresholded masks then go through the detectors' own morphology). Images are streamed: only
small per-image metric records are kept (the inputs of :func:`desra.metrics.artifact_metrics.artifact_metrics`'s
pooled aggregation), never the maps or masks of other images.

Metrics (``docs/metrics.md``): IoU (mean over images, printed x100), pooled region Precision and Recall with
``p = 0.5``, GT cropped ``[5:H-5, 5:W-5]`` (``crop=5``, as the released scripts), against ``GT-Mask`` (PNG or
LabelMe JSON).

Table 3 (with ``finetuned_root``): DeSRA-det on ``<finetuned_root>/<method>/GAN-SR`` (the fine-tuned model's
outputs for the same LR inputs; the MSE-SR reference stays the original one unless that folder has its own
``MSE-SR``): the IoU of the remaining detections against the original GT, and the removal / addition rates of
:func:`desra.metrics.artifact_metrics.removal_addition_rates` (per-region definitions, pooled).

API::

    from desra.pipelines.reproduce import ReproduceOptions, reproduce_tables, format_report, write_report
    result = reproduce_tables(ReproduceOptions(data_root='datasets/DeSRA', methods=['RealESRGAN', 'LDL']))
    print(format_report(result)); write_report(result, 'reports/reproduce')
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from desra.atomic import atomic_open
from desra.data.io import IMG_EXTENSIONS
from desra.errors import ConfigError, DataError

logger = logging.getLogger('desra')

__all__ = [
    'DEFAULT_NIQE_THRESHOLDS',
    'LDL_THRESHOLDS',
    'PAPER_TABLES',
    'ReproduceOptions',
    'format_report',
    'paper_table_for',
    'reproduce_tables',
    'write_report',
]

# ------------------------------------------------------------------------------------------------ paper figures
#: The figures of DeSRA (ICML 2023), Tables 1-3, as printed (IoU x100; precision / recall as fractions; Table 3's
#: rates in percent; None where the paper prints "-"). 150 validation images per method.
PAPER_TABLES: dict[str, dict[str, Any]] = {
    'Table 1': {
        'method': 'Real-ESRGAN',
        'caption': 'Table 1 — artifact detection on Real-ESRGAN outputs',
        'rows': {
            'NIQE': {'iou': 2.9, 'precision': 0.0494, 'recall': 0.1054},
            'PAL4Inpainting': {'iou': 8.4, 'precision': 0.0855, 'recall': 0.0992},
            'LDL* (threshold=0.01)': {'iou': 29.9, 'precision': 0.3504, 'recall': 0.3485},
            'LDL* (threshold=0.005)': {'iou': 36.2, 'precision': 0.2618, 'recall': 0.5442},
            'LDL* (threshold=0.001)': {'iou': 35.3, 'precision': 0.1410, 'recall': 0.8391},
            'DeSRA-det': {'iou': 51.1, 'precision': 0.7055, 'recall': 0.6081},
        },
    },
    'Table 2': {
        'method': 'LDL',
        'caption': 'Table 2 — artifact detection on LDL outputs',
        'rows': {
            'NIQE': {'iou': 2.6, 'precision': 0.0236, 'recall': 0.1770},
            'PAL4Inpainting': {'iou': 8.8, 'precision': 0.0699, 'recall': 0.1337},
            'LDL* (threshold=0.01)': {'iou': 32.7, 'precision': 0.3070, 'recall': 0.4110},
            'LDL* (threshold=0.005)': {'iou': 36.7, 'precision': 0.2100, 'recall': 0.5770},
            'LDL* (threshold=0.001)': {'iou': 31.1, 'precision': 0.1003, 'recall': 0.8659},
            'DeSRA-det': {'iou': 44.5, 'precision': 0.6087, 'recall': 0.5335},
        },
    },
    'Table 3': {
        'caption': 'Table 3 — detection after DeSRA fine-tuning (IoU of remaining detections vs GT; lower is better)',
        'rows': {
            'Real-ESRGAN': {'iou': 51.1, 'removal_rate': None, 'addition_rate': None},
            'Real-ESRGAN-DeSRA': {'iou': 12.9, 'removal_rate': 75.43, 'addition_rate': 0.0},
            'LDL': {'iou': 44.5, 'removal_rate': None, 'addition_rate': None},
            'LDL-DeSRA': {'iou': 13.9, 'removal_rate': 74.97, 'addition_rate': 0.0},
        },
    },
}

#: NIQE threshold grid swept by default. Window scores of 16 clean photos: per-photo median 5.5-18 (10 typical)
#: with MATLAB's pristine parameters, 12-29 (20 typical) with the shipped fallback; artifacts score higher.
DEFAULT_NIQE_THRESHOLDS = (5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0)
#: The LDL* thresholds of the paper's Tables 1-2.
LDL_THRESHOLDS = (0.01, 0.005, 0.001)

_SR_FOLDERS = ('MSE-SR', 'GAN-SR', 'GT-Mask')
_DOWNLOAD_HINT = ('download the DeSRA artifact data set from the authors\' Google Drive (linked in the DeSRA '
                  'README) and unpack it as datasets/DeSRA/<method>/{MSE-SR,GAN-SR,GT-Mask,DeSRA-Mask,LR}/ '
                  '(see datasets/README.md)')


def paper_table_for(method: str) -> str | None:
    """The paper table of a method folder name: ``RealESRGAN`` (any spelling) -> Table 1, ``LDL`` -> Table 2."""
    key = re.sub(r'[^a-z0-9]', '', method.lower())
    if key.startswith('realesrgan'):
        return 'Table 1'
    if key.startswith('ldl'):
        return 'Table 2'
    return None


# ------------------------------------------------------------------------------------------------ options
@dataclasses.dataclass
class ReproduceOptions:
    """Settings of :func:`reproduce_tables` (the command-line flags of ``scripts/reproduce_tables.py``).

    Attributes:
        data_root: the DeSRA data set root holding one folder per method.
        methods: method folder names under ``data_root``.
        class_weights: class file (``.txt`` released ``classname--idx`` format, or ``.json``); None: weight 1.
        segmenter: ``'none'`` or ``'segformer'``.
        segformer_model: SegFormer folder (``save_pretrained`` / converted mmseg checkpoint) or hub id.
        device: device of the segmenter (None: CUDA when available).
        niqe_thresholds: NIQE thresholds swept (the best IoU is reported).
        niqe_window, niqe_stride, niqe_params: :func:`desra.metrics.niqe.niqe_map` settings.
        ldl_thresholds: LDL* thresholds (the paper's three by default).
        ldl_kernel: LDL* local-variance window.
        finetuned_root: folder with ``<method>/GAN-SR`` of the fine-tuned models (Table 3); None: no Table 3.
        limit: use only the first N images (sorted by name) of each method.
        min_area: morphology's minimum component area (pixels, or a fraction in (0, 1)) for every detector.
        p, crop, empty: metric settings (:func:`desra.metrics.artifact_metrics.artifact_metrics`).
        p_add, add_min_area: addition-rate settings (:func:`~desra.metrics.artifact_metrics.removal_addition_rates`).
        allow_missing: skip images without a twin (with a warning) instead of failing.
    """

    data_root: str
    methods: Sequence[str] = ('RealESRGAN', 'LDL')
    class_weights: str | None = None
    segmenter: str = 'none'
    segformer_model: str | None = None
    device: str | None = None
    niqe_thresholds: Sequence[float] = DEFAULT_NIQE_THRESHOLDS
    niqe_window: int = 96
    niqe_stride: int = 32
    niqe_params: str | None = None
    ldl_thresholds: Sequence[float] = LDL_THRESHOLDS
    ldl_kernel: int = 7
    finetuned_root: str | None = None
    limit: int | None = None
    min_area: int | float = 4000
    p: float = 0.5
    crop: int = 5
    empty: str = 'one'
    p_add: float = 0.0
    add_min_area: int = 0
    allow_missing: bool = False

    def validate(self) -> None:
        from desra.detection.morphology import resolve_min_area

        if not self.methods:
            raise ConfigError('methods: give at least one method folder name (e.g. RealESRGAN LDL)')
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f'methods: a method is listed twice: {list(self.methods)}')
        if self.segmenter not in ('none', 'segformer'):
            raise ConfigError(f"segmenter: expected 'none' or 'segformer', got {self.segmenter!r}")
        for name, values in (('niqe_thresholds', self.niqe_thresholds), ('ldl_thresholds', self.ldl_thresholds)):
            if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ConfigError(f'{name}: expected one or more finite numbers, got {list(values or [])}')
        if self.niqe_window % 2 or self.niqe_window < 16:
            raise ConfigError(f'niqe_window: must be an even number >= 16, got {self.niqe_window}')
        if self.niqe_stride < 1:
            raise ConfigError(f'niqe_stride: must be >= 1, got {self.niqe_stride}')
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f'limit: must be >= 1, got {self.limit}')
        try:
            resolve_min_area(self.min_area, 1000, 1000)
        except ValueError as e:
            raise ConfigError(f'min_area: {e}') from None
        if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.p_add <= 1.0:
            raise ConfigError(f'p and p_add must be in [0, 1], got {self.p} and {self.p_add}')
        if self.crop < 0 or self.add_min_area < 0:
            raise ConfigError('crop and add_min_area must be >= 0')
        if self.empty not in ('one', 'zero', 'skip'):
            raise ConfigError(f"empty: expected 'one', 'zero' or 'skip', got {self.empty!r}")


# ------------------------------------------------------------------------------------------------ files
def _list_masks(folder: str, what: str) -> dict[str, str]:
    """Mask files (images or LabelMe ``.json``) under ``folder``, flat or ``<sub>/<img>``, keyed by relative stem.

    A PNG (any image) wins over a JSON of the same stem.
    """
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        if rel_dir != '.' and os.sep in rel_dir:  # at most root/<sub>/<img>, like the released layout
            dirnames[:] = []
            continue
        dirnames.sort()
        for fname in sorted(filenames):
            stem, ext = os.path.splitext(fname)
            ext = ext.lower()
            if fname.startswith('.') or (ext not in IMG_EXTENSIONS and ext != '.json'):
                continue
            key = stem if rel_dir == '.' else f'{rel_dir}/{stem}'.replace(os.sep, '/')
            path = os.path.join(dirpath, fname)
            old = found.get(key)
            if old is None or old.lower().endswith('.json') and ext != '.json':
                found[key] = path
            elif ext != '.json':
                raise DataError(f'{what}: two masks share the name {key!r}: {old} and {path}')
    if not found:
        raise DataError(f'{what}: no mask files (images or LabelMe .json) in {os.path.abspath(folder)}')
    return found


def _list_sr(folder: str, what: str) -> dict[str, str]:
    from desra.detection.pipeline import list_images

    images, ignored = list_images(folder, what)
    if ignored:
        logger.warning('%s: ignoring %d non-image file(s): %s', what, len(ignored), ', '.join(ignored[:5]))
    return {k.replace(os.sep, '/'): v for k, v in images.items()}


def _basename(key: str) -> str:
    return key.rsplit('/', 1)[-1]


class _Twins:
    """Finds the file of a name in another folder: same relative stem, else the same bare stem when that stem
    is unique on both sides (the released folders are not always nested the same way)."""

    def __init__(self, files: dict[str, str], names: Sequence[str]):
        self.files = files
        counts: dict[str, int] = {}
        for k in files:
            counts[_basename(k)] = counts.get(_basename(k), 0) + 1
        name_counts: dict[str, int] = {}
        for n in names:
            name_counts[_basename(n)] = name_counts.get(_basename(n), 0) + 1
        self.by_base = {_basename(k): v for k, v in files.items()
                        if counts[_basename(k)] == 1 and name_counts.get(_basename(k), 0) == 1}

    def get(self, name: str) -> str | None:
        return self.files.get(name) or self.by_base.get(_basename(name))


def _preview(names: Sequence[str], limit: int = 10) -> str:
    more = f' ... (+{len(names) - limit} more)' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def _missing(names: Sequence[str], twins: _Twins, what: str, where: str, allow: bool) -> set[str]:
    """Names without a twin: an error listing them, or (``allow``) a warning and the set to skip."""
    miss = [n for n in names if twins.get(n) is None]
    if miss and not allow:
        raise DataError(f'{len(miss)} GAN-SR image(s) have no {what} twin in {os.path.abspath(where)}: '
                        f'{_preview(miss)} (pass --allow-missing to skip them)')
    if miss:
        logger.warning('skipping %d GAN-SR image(s) without a %s twin in %s: %s', len(miss), what,
                       os.path.abspath(where), _preview(miss))
    return set(miss)


# ------------------------------------------------------------------------------------------------ metrics
class _MetricAccumulator:
    """Streams :func:`artifact_metrics` one image at a time and pools the per-image records at the end."""

    def __init__(self, p: float, crop: int, empty: str):
        self.p, self.crop, self.empty = p, crop, empty
        self.per_image: list[dict] = []

    def add(self, name: str, pred, gt) -> dict:
        from desra.metrics.artifact_metrics import artifact_metrics

        rec = artifact_metrics({name: pred}, {name: gt}, p=self.p, crop=self.crop, empty=self.empty)['per_image'][0]
        self.per_image.append(rec)
        return rec

    def summary(self, per_image: bool = True) -> dict | None:
        if not self.per_image:
            return None
        recs = self.per_image
        ious = [r['iou'] for r in recs if r['iou'] is not None]
        n_pred = sum(r['pred_regions'] for r in recs)
        n_correct = sum(r['correct_pred_regions'] for r in recs)
        n_gt = sum(r['gt_regions'] for r in recs)
        n_found = sum(r['found_gt_regions'] for r in recs)
        out = {'iou': float(np.mean(ious)) if ious else None,
               'precision': n_correct / n_pred if n_pred else None,
               'recall': n_found / n_gt if n_gt else None,
               'num_images': len(recs), 'num_iou_images': len(ious), 'num_pred_regions': n_pred,
               'num_correct_pred_regions': n_correct, 'num_gt_regions': n_gt, 'num_found_gt_regions': n_found}
        if per_image:
            out['per_image'] = recs
        return out


class _RateAccumulator:
    """Streams :func:`removal_addition_rates` one image at a time and pools the per-image records."""

    def __init__(self, p_add: float, min_area: int, crop: int):
        self.p_add, self.min_area, self.crop = p_add, min_area, crop
        self.per_image: list[dict] = []

    def add(self, name: str, after, gt) -> None:
        from desra.metrics.artifact_metrics import removal_addition_rates

        self.per_image.append(removal_addition_rates({name: after}, {name: gt}, p_add=self.p_add,
                                                     min_area=self.min_area, crop=self.crop)['per_image'][0])

    def summary(self) -> dict | None:
        from desra.metrics.artifact_metrics import pool_removal_addition

        recs = self.per_image
        if not recs:
            return None
        return pool_removal_addition(recs, p_add=self.p_add, min_area=self.min_area, crop=self.crop)


# ------------------------------------------------------------------------------------------------ detectors
def _fmt_t(t: float) -> str:
    return f'{t:g}'


class _Detectors:
    """The registered detectors, built once; each is called once per image pair."""

    def __init__(self, opts: ReproduceOptions):
        import desra.detection.detectors  # noqa: F401  (registers the detectors)
        from desra.registry import DETECTOR_REGISTRY

        morph = {'min_area': opts.min_area}
        self.niqe_thresholds = list(dict.fromkeys(float(t) for t in opts.niqe_thresholds))
        self.ldl_thresholds = list(dict.fromkeys(float(t) for t in opts.ldl_thresholds))
        self.desra = DETECTOR_REGISTRY.build({'type': 'desra', **morph}, 'detector(desra)')
        self.ldl = DETECTOR_REGISTRY.build({'type': 'ldl_star', 'threshold': self.ldl_thresholds[0],
                                            'kernel_size': opts.ldl_kernel, **morph}, 'detector(ldl_star)')
        self.niqe = DETECTOR_REGISTRY.build({'type': 'niqe', 'threshold': self.niqe_thresholds[0],
                                             'window': opts.niqe_window, 'stride': opts.niqe_stride,
                                             'params': opts.niqe_params, **morph}, 'detector(niqe)')

    @staticmethod
    def _thresholded(detector, mse, gan, thresholds: list[float]) -> list[np.ndarray]:
        """Masks at every threshold from ONE detector call: the first threshold is the detector's own, the
        others reuse its map (``maps['D']``, the map it thresholded) with the detector's morphology."""
        mask, maps = detector(mse, gan)
        score = np.asarray(maps['D'], np.float64)
        masks = [np.asarray(mask, np.uint8)]
        for t in thresholds[1:]:
            masks.append(np.asarray(detector.finish(score > t, score)[0], np.uint8))
        return masks

    def ldl_masks(self, mse, gan) -> list[np.ndarray]:
        return self._thresholded(self.ldl, mse, gan, self.ldl_thresholds)

    def niqe_masks(self, mse, gan) -> list[np.ndarray]:
        return self._thresholded(self.niqe, mse, gan, self.niqe_thresholds)


def _build_semantics(opts: ReproduceOptions, notes: list[str]) -> tuple[Callable, Any, dict]:
    """(segment(gan_bgr) -> labels or None, class weights or None, description)."""
    from desra.detection.segmenters import DEFAULT_MODEL, build_segmenter
    from desra.detection.semantics import load_class_weights

    weights = load_class_weights(opts.class_weights) if opts.class_weights else None
    model = opts.segformer_model or DEFAULT_MODEL
    desc = {'segmenter': opts.segmenter, 'segformer_model': model if opts.segmenter == 'segformer' else None,
            'class_weights': os.path.abspath(opts.class_weights) if opts.class_weights else None,
            'weights_used': False}
    if opts.segmenter == 'none':
        if weights is not None:
            notes.append(f'Class file {opts.class_weights} given without a segmenter: it cannot be applied '
                         '(no labels), so DeSRA-det uses every class weight 1.')
        else:
            notes.append('No SegFormer and no class file: DeSRA-det uses every class weight 1 '
                         '(S = clip(D, 0, 1), the semantic adjustment of Eq. 8-9 is skipped).')
        return (lambda gan: None), None, desc
    if weights is None:
        notes.append('SegFormer given but no class file: every class weight is 1, so the labels would change '
                      'nothing; the segmenter is not run.')
        return (lambda gan: None), None, desc
    seg_opt = {'type': 'segformer', 'model': model}
    if opts.device:
        seg_opt['device'] = opts.device
    segmenter = build_segmenter(seg_opt, None, key_path='segmenter')
    desc['weights_used'] = True

    def segment(gan: np.ndarray):
        rgb = np.ascontiguousarray(np.clip(gan[..., ::-1], 0, 255).round().astype(np.uint8))
        labels = segmenter(rgb)
        if labels is None:
            return None
        return labels.cpu().numpy() if hasattr(labels, 'cpu') else np.asarray(labels)

    return segment, weights, desc


# ------------------------------------------------------------------------------------------------ evaluation
def _read_pair(mse_path: str, gan_path: str):
    from desra.detection.pipeline import read_sr_image

    mse, gan = read_sr_image(mse_path), read_sr_image(gan_path)
    if mse.shape != gan.shape:
        raise DataError(f'MSE-SR {mse_path} is {mse.shape[1]}x{mse.shape[0]} but GAN-SR {gan_path} is '
                        f'{gan.shape[1]}x{gan.shape[0]} (WxH); the pair must match')
    return mse, gan


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit='img', file=sys.stderr, disable=None)


def _check_folders(method: str, opts: ReproduceOptions) -> None:
    """DataError naming the path of a missing method, MSE-SR / GAN-SR / GT-Mask or fine-tuned GAN-SR folder."""
    mdir = os.path.join(opts.data_root, method)
    if not os.path.isdir(mdir):
        raise DataError(f'method folder does not exist: {os.path.abspath(mdir)} (expected {method}/ with '
                        f'{", ".join(_SR_FOLDERS)} under the data root; {_DOWNLOAD_HINT})')
    for f in _SR_FOLDERS:
        if not os.path.isdir(os.path.join(mdir, f)):
            raise DataError(f'{f} folder does not exist: {os.path.abspath(os.path.join(mdir, f))} (each method '
                            f'folder needs {", ".join(_SR_FOLDERS)}; {_DOWNLOAD_HINT})')
    if opts.finetuned_root:
        ft_gan_dir = os.path.join(opts.finetuned_root, method, 'GAN-SR')
        if not os.path.isdir(ft_gan_dir):
            raise DataError(f'fine-tuned GAN-SR folder does not exist: {os.path.abspath(ft_gan_dir)} (expected '
                            f'<finetuned-root>/{method}/GAN-SR with the fine-tuned model\'s outputs on {method}/LR)')


def _evaluate_method(method: str, opts: ReproduceOptions, det: _Detectors, segment: Callable, weights) -> dict:
    from desra.metrics.artifact_metrics import load_mask

    _check_folders(method, opts)
    mdir = os.path.join(opts.data_root, method)
    folders = {f: os.path.join(mdir, f) for f in ('MSE-SR', 'GAN-SR', 'GT-Mask', 'DeSRA-Mask', 'LR')}
    gan = _list_sr(folders['GAN-SR'], f'{method}/GAN-SR')
    mse = _list_sr(folders['MSE-SR'], f'{method}/MSE-SR')
    gts = _list_masks(folders['GT-Mask'], f'{method}/GT-Mask')
    names = sorted(gan)
    skip = _missing(names, _Twins(mse, names), 'MSE-SR', folders['MSE-SR'], opts.allow_missing)
    gt_twins = _Twins(gts, names)
    skip |= _missing(names, gt_twins, 'GT-Mask', folders['GT-Mask'], opts.allow_missing)
    names = [n for n in names if n not in skip]
    if not names:
        raise DataError(f'{method}: no GAN-SR image has both an MSE-SR and a GT-Mask twin in {os.path.abspath(mdir)}')
    used_gt = {gt_twins.get(n) for n in names}
    orphans = sorted(k for k, v in gts.items() if v not in used_gt)
    if orphans and opts.limit is None:
        logger.warning('%s: %d GT mask(s) have no GAN-SR image and are not used: %s', method, len(orphans),
                       _preview(orphans))
    if opts.limit is not None:
        names = names[:opts.limit]
    mse_twins = _Twins(mse, names)

    released = None
    if os.path.isdir(folders['DeSRA-Mask']):
        released = _Twins(_list_masks(folders['DeSRA-Mask'], f'{method}/DeSRA-Mask'), names)
        _missing(names, released, 'DeSRA-Mask', folders['DeSRA-Mask'], opts.allow_missing)

    ft = ft_mse = None
    if opts.finetuned_root:
        ft_dir = os.path.join(opts.finetuned_root, method)
        ft_gan_dir = os.path.join(ft_dir, 'GAN-SR')
        ft = _Twins(_list_sr(ft_gan_dir, f'finetuned {method}/GAN-SR'), names)
        _missing(names, ft, 'fine-tuned GAN-SR', ft_gan_dir, opts.allow_missing)
        if os.path.isdir(os.path.join(ft_dir, 'MSE-SR')):
            ft_mse = _Twins(_list_sr(os.path.join(ft_dir, 'MSE-SR'), f'finetuned {method}/MSE-SR'), names)

    acc = lambda: _MetricAccumulator(opts.p, opts.crop, opts.empty)
    acc_desra, acc_released, acc_t3_before, acc_t3_after = acc(), acc(), acc(), acc()
    acc_ldl = [acc() for _ in det.ldl_thresholds]
    acc_niqe = [acc() for _ in det.niqe_thresholds]
    rates = _RateAccumulator(opts.p_add, opts.add_min_area, opts.crop)
    seconds = dict.fromkeys(('read', 'segmenter', 'desra', 'ldl_star', 'niqe', 'finetuned'), 0.0)
    t_start = time.perf_counter()
    bar = _progress(len(names), method)
    for name in names:
        t0 = time.perf_counter()
        mse_img, gan_img = _read_pair(mse_twins.get(name), gan[name])
        gt = load_mask(gt_twins.get(name), size=gan_img.shape[:2])
        t1 = time.perf_counter()
        labels = segment(gan_img)
        t2 = time.perf_counter()
        mask_desra, _ = det.desra(mse_img, gan_img, labels=labels, class_weights=weights)
        t3 = time.perf_counter()
        seconds['read'] += t1 - t0
        seconds['segmenter'] += t2 - t1
        seconds['desra'] += t3 - t2
        acc_desra.add(name, mask_desra, gt)

        t0 = time.perf_counter()
        ldl_masks = det.ldl_masks(mse_img, gan_img)
        seconds['ldl_star'] += time.perf_counter() - t0
        for a, m in zip(acc_ldl, ldl_masks):
            a.add(name, m, gt)
        del ldl_masks

        t0 = time.perf_counter()
        niqe_masks = det.niqe_masks(mse_img, gan_img)
        seconds['niqe'] += time.perf_counter() - t0
        for a, m in zip(acc_niqe, niqe_masks):
            a.add(name, m, gt)
        del niqe_masks

        if released is not None and released.get(name) is not None:
            acc_released.add(name, load_mask(released.get(name)), gt)

        if ft is not None and ft.get(name) is not None:
            ref_path = ft_mse.get(name) if ft_mse is not None and ft_mse.get(name) else mse_twins.get(name)
            mse_ref, gan_ft = _read_pair(ref_path, ft.get(name))
            if gan_ft.shape != gan_img.shape:
                raise DataError(f'fine-tuned GAN-SR {ft.get(name)} is {gan_ft.shape[1]}x{gan_ft.shape[0]} but the '
                                f'original {gan[name]} is {gan_img.shape[1]}x{gan_img.shape[0]} (WxH)')
            t0 = time.perf_counter()
            mask_after, _ = det.desra(mse_ref, gan_ft, labels=segment(gan_ft), class_weights=weights)
            seconds['finetuned'] += time.perf_counter() - t0
            acc_t3_after.add(name, mask_after, gt)
            acc_t3_before.per_image.append(acc_desra.per_image[-1])
            rates.add(name, mask_after, gt)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    table = paper_table_for(method)
    paper_rows = PAPER_TABLES[table]['rows'] if table else {}
    rows = []
    # NIQE: the best threshold by IoU (ties: the first in the grid)
    sweep = [{'threshold': t, **(a.summary(per_image=False) or {})} for t, a in zip(det.niqe_thresholds, acc_niqe)]
    best = max(range(len(sweep)), key=lambda i: (-math.inf if sweep[i].get('iou') is None else sweep[i]['iou'], -i))
    rows.append(_row('niqe', 'NIQE', acc_niqe[best].summary(), paper_rows.get('NIQE'),
                     note=f'best threshold {_fmt_t(det.niqe_thresholds[best])} of '
                          f'{", ".join(_fmt_t(t) for t in det.niqe_thresholds)}',
                     extra={'threshold': det.niqe_thresholds[best]}))
    rows.append(_row('pal4inpainting', 'PAL4Inpainting', None, paper_rows.get('PAL4Inpainting'),
                     note='not run: PAL4Inpainting is not implemented in this project'))
    for t, a in zip(det.ldl_thresholds, acc_ldl):
        label = f'LDL* (threshold={_fmt_t(t)})'
        rows.append(_row(f'ldl_star@{_fmt_t(t)}', label, a.summary(), paper_rows.get(label),
                         extra={'threshold': t}))
    rows.append(_row('desra_det', 'DeSRA-det', acc_desra.summary(), paper_rows.get('DeSRA-det')))
    if released is not None:
        rows.append(_row('desra_mask_released', 'DeSRA-Mask (released)', acc_released.summary(),
                         paper_rows.get('DeSRA-det'),
                         note='the authors\' released masks; paper columns repeat the paper\'s DeSRA-det figures'))

    result = {'method': method, 'table': table,
              'display': PAPER_TABLES[table]['method'] if table else method,
              'folders': {f: (os.path.abspath(p) if os.path.isdir(p) else None) for f, p in folders.items()},
              'num_images': len(names), 'skipped_images': sorted(skip), 'rows': rows, 'niqe_sweep': sweep,
              'seconds': round(time.perf_counter() - t_start, 3),
              'detector_seconds': {k: round(v, 3) for k, v in seconds.items()}, 'table3': None}
    if ft is not None:
        result['table3'] = _table3(method, result['display'], acc_t3_before, acc_t3_after, rates,
                                   os.path.abspath(opts.finetuned_root))
    return result


def _delta(ours, paper, scale: float, digits: int):
    """``round(ours * scale, digits) - paper`` (what the printed columns show), or None."""
    if ours is None or paper is None:
        return None
    return round(round(ours * scale, digits) - paper, digits)


def _row(key: str, label: str, ours: dict | None, paper: dict | None, note: str = '', extra: dict | None = None):
    delta = {}
    for m, scale, digits in (('iou', 100.0, 1), ('precision', 1.0, 4), ('recall', 1.0, 4)):
        delta[m] = _delta((ours or {}).get(m), (paper or {}).get(m), scale, digits)
    return {'key': key, 'label': label, 'ours': ours, 'paper': paper, 'delta': delta, 'note': note,
            **(extra or {})}


def _table3(method: str, display: str, before: _MetricAccumulator, after: _MetricAccumulator,
            rates: _RateAccumulator, root: str) -> dict:
    paper = PAPER_TABLES['Table 3']['rows']
    sb, sa, sr = before.summary(), after.summary(), rates.summary()
    rows = []
    for label, det_sum, rate_sum in ((display, sb, None), (f'{display}-DeSRA', sa, sr)):
        ours = {'iou': (det_sum or {}).get('iou'),
                'removal_rate': None if rate_sum is None else rate_sum['removal_rate'],
                'addition_rate': None if rate_sum is None else rate_sum['addition_rate']}
        pp = paper.get(label)
        rows.append({'label': label, 'ours': ours, 'paper': pp,
                     'delta': {'iou': _delta(ours['iou'], (pp or {}).get('iou'), 100.0, 1),
                               'removal_rate': _delta(ours['removal_rate'], (pp or {}).get('removal_rate'), 100.0, 2),
                               'addition_rate': _delta(ours['addition_rate'], (pp or {}).get('addition_rate'),
                                                       100.0, 2)}})
    return {'finetuned_root': root, 'num_images': len(after.per_image), 'rows': rows,
            'detection_before': sb, 'detection_after': sa, 'removal_addition': sr}


def reproduce_tables(opts: ReproduceOptions) -> dict:
    """Run the detectors over every method's images and score them; returns the result (see module docstring).

    Raises:
        DataError: a missing data root, method folder, MSE-SR / GAN-SR / GT-Mask folder, or GAN-SR images
            without an MSE-SR / GT-Mask (/ DeSRA-Mask / fine-tuned) twin (unless ``allow_missing``).
        ConfigError: bad options or class file; CheckpointError: a SegFormer that cannot be loaded.
    """
    opts.validate()
    if not os.path.isdir(opts.data_root):
        raise DataError(f'data root does not exist: {os.path.abspath(opts.data_root)} ({_DOWNLOAD_HINT})')
    if opts.finetuned_root and not os.path.isdir(opts.finetuned_root):
        raise DataError(f'--finetuned-root does not exist: {os.path.abspath(opts.finetuned_root)}')
    for method in opts.methods:  # fail on a missing folder before any slow model loading or detection
        _check_folders(method, opts)
    notes: list[str] = []
    segment, weights, sem = _build_semantics(opts, notes)
    det = _Detectors(opts)
    notes.append('PAL4Inpainting is not implemented here: its row shows the paper\'s figures only.')
    if not opts.finetuned_root:
        notes.append('Table 3 not computed: no --finetuned-root (outputs of the DeSRA-fine-tuned models on the '
                     'same LR images); the paper\'s Table 3 is shown for reference.')
    started = time.strftime('%Y-%m-%d %H:%M:%S')
    methods = [_evaluate_method(m, opts, det, segment, weights) for m in opts.methods]
    for m in methods:
        if m['folders']['DeSRA-Mask'] is None:
            notes.append(f'{m["method"]}: no DeSRA-Mask folder, so the authors\' released masks are not evaluated.')
        if m['table'] is None:
            notes.append(f'{m["method"]}: not in the paper\'s Tables 1-2; its table has no paper figures.')
    from desra.metrics.niqe import resolve_niqe_params

    settings = dataclasses.asdict(opts)
    niqe_path, niqe_origin = resolve_niqe_params(opts.niqe_params)
    settings.update(data_root=os.path.abspath(opts.data_root), methods=list(opts.methods),
                    niqe_params_used=f'{niqe_origin}: `{niqe_path}`' if opts.niqe_params is None else f'`{niqe_path}`',
                    niqe_thresholds=det.niqe_thresholds, ldl_thresholds=det.ldl_thresholds,
                    finetuned_root=os.path.abspath(opts.finetuned_root) if opts.finetuned_root else None)
    return {'started': started, 'settings': settings, 'semantics': sem, 'notes': notes, 'methods': methods,
            'paper': PAPER_TABLES}


# ------------------------------------------------------------------------------------------------ report
def _num(v, scale: float = 1.0, digits: int = 4, missing: str = 'n/a') -> str:
    return missing if v is None else f'{v * scale:.{digits}f}'


def _sgn(v, digits: int) -> str:
    return '-' if v is None else f'{v:+.{digits}f}'


_DET_HEADER = ('| Method | IoU (ours) | IoU (paper) | Δ | Precision (ours) | Precision (paper) | Δ | Recall (ours) '
               '| Recall (paper) | Δ |')
_T3_HEADER = ('| Method | IoU (ours) | IoU (paper) | Δ | Removal rate (ours) | Removal rate (paper) | Δ '
              '| Addition rate (ours) | Addition rate (paper) | Δ |')


def _det_line(row: dict) -> str:
    ours, paper, d = row['ours'], row['paper'] or {}, row['delta']
    not_run = ours is None
    label = row['label']
    if row['key'] == 'niqe' and row['ours'] is not None:
        label += f' (t={_fmt_t(row["threshold"])})'
    cells = [label]
    for m, scale, digits in (('iou', 100.0, 1), ('precision', 1.0, 4), ('recall', 1.0, 4)):
        cells += ['-' if not_run else _num(ours.get(m), scale, digits), _num(paper.get(m), 1.0, digits, '-'),
                  _sgn(d[m], digits)]
    return '| ' + ' | '.join(cells) + ' |'


def _semantics_text(sem: dict) -> str:
    if sem['weights_used']:
        return f'class file {sem["class_weights"]} with SegFormer `{sem["segformer_model"]}`'
    return 'none: every class weight 1 (S = clip(D, 0, 1))'


def format_report(result: dict) -> str:
    """The markdown report of :func:`reproduce_tables`'s result."""
    s, sem = result['settings'], result['semantics']
    lines = ['# DeSRA Tables 1-3: reproduction report', '',
             f'- Data: `{s["data_root"]}`; methods: '
             + ', '.join(f'{m["method"]} ({m["num_images"]} images)' for m in result['methods'])
             + ('' if s['limit'] is None else f' (--limit {s["limit"]})')
             + '. The paper used the 150 validation images of each method.',
             f'- DeSRA-det semantic weights: {_semantics_text(sem)}; segmenter: {sem["segmenter"]}'
             + (f' (`{sem["segformer_model"]}`)' if sem['segformer_model'] else '') + '.',
             (f'- NIQE: sliding-window map (window {s["niqe_window"]}, stride {s["niqe_stride"]}, pristine parameters '
              f'{s["niqe_params_used"]}), thresholds swept: '
              f'{", ".join(_fmt_t(t) for t in s["niqe_thresholds"])}; the row shows the best IoU.'),
             (f'- LDL*: LDL artifact map with MSE-SR as GT (kernel {s["ldl_kernel"]}), thresholds '
              f'{", ".join(_fmt_t(t) for t in s["ldl_thresholds"])}.'),
             (f'- Morphology of every detector: erode 5, dilate 5 x3, fill holes, drop components <= {s["min_area"]} px'
              f'{" (the released 4000)" if s["min_area"] == 4000 else " (released: 4000)"}.'),
             (f'- Metrics: IoU x100 (mean over images; empty detection and empty GT = {s["empty"]}), pooled region '
              f'Precision / Recall with p = {s["p"]:g}, GT cropped by {s["crop"]} px per side. Δ = ours − paper.'),
             f'- Started {result["started"]}.', '']
    if result['notes']:
        lines.append('Not available / not run:')
        lines += [f'- {n}' for n in result['notes']]
        lines.append('')
    for m in result['methods']:
        table = m['table']
        title = (PAPER_TABLES[table]['caption'] if table
                 else f'{m["method"]} — artifact detection (not in the paper)')
        lines += [f'## {title}', '',
                  f'`{m["method"]}`: {m["num_images"]} images; DeSRA-det weights: {_semantics_text(sem)}.'
                  + (' Paper figures: DeSRA (ICML 2023), 150 validation images.' if table else ''), '',
                  _DET_HEADER, '|' + '---|' * 10]
        lines += [_det_line(r) for r in m['rows']]
        lines.append('')
        for r in m['rows']:
            o = r['ours']
            if o is None:
                lines.append(f'- {r["label"]}: {r["note"]}.')
                continue
            lines.append(f'- {r["label"]}: {o["num_images"]} images, {o["num_pred_regions"]} detected regions '
                         f'({o["num_correct_pred_regions"]} correct), {o["num_gt_regions"]} GT regions '
                         f'({o["num_found_gt_regions"]} found)' + (f'; {r["note"]}' if r['note'] else '') + '.')
        t = m['detector_seconds']
        lines.append(f'- Time: {m["seconds"]:.1f} s in all; DeSRA-det {t["desra"]:.1f} s '
                     f'(segmenter {t["segmenter"]:.1f} s), '
                     f'LDL* {t["ldl_star"]:.1f} s (one map per image, {len(s["ldl_thresholds"])} thresholds), NIQE '
                     f'{t["niqe"]:.1f} s (one map per image, {len(s["niqe_thresholds"])} thresholds).')
        lines.append('- NIQE sweep (IoU x100 / Precision / Recall): ' + '; '.join(
            f't={_fmt_t(x["threshold"])}: {_num(x.get("iou"), 100.0, 1)} / {_num(x.get("precision"))} / '
            f'{_num(x.get("recall"))}' for x in m['niqe_sweep']) + '.')
        lines.append('')
    lines += ['## ' + PAPER_TABLES['Table 3']['caption'], '']
    t3 = [m for m in result['methods'] if m['table3'] is not None]
    if not t3:
        lines += ['Not computed (no `--finetuned-root`). Paper figures:', '',
                  '| Method | IoU (paper) | Removal rate (paper) | Addition rate (paper) |', '|---|---|---|---|']
        for label, v in PAPER_TABLES['Table 3']['rows'].items():
            lines.append(f'| {label} | {v["iou"]:.1f} | {_pct(v["removal_rate"])} | {_pct(v["addition_rate"])} |')
        lines.append('')
    else:
        lines += [(f'Fine-tuned outputs: `{t3[0]["table3"]["finetuned_root"]}`. Removal: a GT region with no detected '
                   'pixel left (pooled over GT regions); addition: images with a detected region that does not touch '
                   f'the GT (p_add = {s["p_add"]:g}, min area {s["add_min_area"]}); see docs/metrics.md.'), '',
                  _T3_HEADER, '|' + '---|' * 10]
        for m in t3:
            for r in m['table3']['rows']:
                o, pp, d = r['ours'], r['paper'] or {}, r['delta']
                cells = [r['label'], _num(o['iou'], 100.0, 1), _num(pp.get('iou'), 1.0, 1, '-'), _sgn(d['iou'], 1)]
                for k in ('removal_rate', 'addition_rate'):
                    cells += ['-' if o[k] is None else f'{100 * o[k]:.2f}%', _pct(pp.get(k)), _sgn(d[k], 2)]
                lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
        for m in t3:
            ra = m['table3']['removal_addition']
            if ra is None:
                continue
            mean = ra['removal_rate_image_mean']
            lines.append(f'- {m["display"]}-DeSRA: {m["table3"]["num_images"]} images; removed '
                         f'{ra["num_removed_regions"]}/{ra["num_gt_regions"]} GT regions (mean of per-image rates '
                         f'{_pct(None if mean is None else 100 * mean)}); '
                         f'added: {ra["num_images_with_added"]}/{ra["num_images"]} images, {ra["num_added_regions"]}/'
                         f'{ra["num_after_regions"]} regions; images with any detected pixel outside the GT: '
                         f'{ra["num_images_with_new_pixels"]}.')
        lines.append('')
    return '\n'.join(lines)


def _pct(v) -> str:
    return '-' if v is None else f'{v:.2f}%'


def write_report(result: dict, out_dir: str, report: str | None = None) -> tuple[str, str]:
    """Write ``<out_dir>/tables.md`` and ``<out_dir>/tables.json`` atomically; returns their paths."""
    report = format_report(result) if report is None else report
    md, js = os.path.join(out_dir, 'tables.md'), os.path.join(out_dir, 'tables.json')
    with atomic_open(md, 'w') as f:
        f.write(report if report.endswith('\n') else report + '\n')
    with atomic_open(js, 'w') as f:
        json.dump(result, f, indent=1, default=_json_default)
        f.write('\n')
    return md, js


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
