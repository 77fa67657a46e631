"""Artifact-detection metrics of DeSRA (Sec. 4.1 and Table 1-3): IoU, region Precision / Recall,
and the removal / addition rates of fine-tuning.

Conventions
-----------
* A mask is an ``H x W`` array; **nonzero = artifact** (bool, 0/1, 0/255, 16-bit, float). ``H x W x C``
  arrays are accepted: a pixel is an artifact when any colour channel is nonzero (a 4th alpha channel
  and the 2nd channel of a grey+alpha image are ignored).
* A *region* is an 8-connected component of a mask (``cv2.connectedComponents``, connectivity 8):
  pixels touching only diagonally belong to the same region.
* Per-region overlaps are counted with ``np.bincount`` over the component labels (no per-pixel loops).

Definitions (the released IoU / Precision / Recall scripts, ``p = 0.5``)
----------------------------------------------------------------------
* ``IoU = |A ∩ B| / |A ∪ B|`` per image (A = detection, B = GT), averaged over images. An image whose
  detection and GT are both empty has no union; ``empty='one'`` (default) counts it as IoU 1 (a perfect
  answer), ``'zero'`` as 0 and ``'skip'`` leaves it out of the mean. Papers report ``100 * IoU``.
* Precision, pooled over the data set: a detected region ``z`` is correct when ``|z ∩ B| / |z| >= p``;
  precision = correct detected regions / all detected regions (``None`` when nothing is detected).
* Recall, pooled: a GT region ``g`` is found when ``|g ∩ A| / |g| >= p``; recall = found GT regions /
  all GT regions (``None`` when there is no GT region). The paper writes ``> p``; the code uses ``>= p``
  and so does this module.
* ``crop=c`` crops the GT ``[c:H-c, c:W-c]`` like the released scripts (``c = 5``: the detection map is
  ``(H-10) x (W-10)`` because the variance window runs in valid mode). A prediction of the GT's full
  size is cropped the same way; a prediction that is already ``(H-2c) x (W-2c)`` is used as it is (only
  the GT is cropped). Any other size is an error naming the image.

Removal and addition rates (Table 3; the authors released no code for them)
---------------------------------------------------------------------------
The paper judges "removal of artifacts by A ∩ B = 0, the introduction of new artifacts by A ∪ B > B",
with A = detection on the *fine-tuned* model's output and B = the GT artifact mask of the *original*
model's output. This module reads it per region:

* **Removal.** Every 8-connected region ``g`` of B is *removed* when ``|A ∩ g| = 0`` (not a single
  detected pixel left inside it). ``removal_rate`` = removed GT regions / all GT regions, pooled over the
  data set; ``removal_rate_image_mean`` averages the per-image rates over the images that have GT
  regions. Unit: a fraction of GT regions (Table 3 prints it in percent: 75.43 % = 0.7543).
* **Addition.** Every 8-connected region ``z`` of A is *added* (a new artifact) when it does not touch
  B, ``|z ∩ B| = 0``, or, with ``p_add > 0``, when ``|z ∩ B| / |z| < p_add``; with ``min_area > 0``
  only regions with ``|z| >= min_area`` pixels count. ``addition_rate`` = images with at least one added
  region / all images. Unit: a fraction of images (Table 3: 0 %). The pooled counts
  (``num_added_regions`` out of ``num_after_regions``) are returned as well. With ``p_add = p`` an
  added region is exactly a detected region that precision counts as wrong.
* The literal pixel reading of "A ∪ B > B" (``A \\ B`` non-empty, i.e. any detected pixel outside the
  GT) is reported too, as ``pixel_addition_rate`` and per image as ``new_pixels``. It is not the
  default: DeSRA detections are dilated three times with a 5x5 kernel, so a remaining detection
  almost always spills a few pixels over a hand-drawn polygon, which would make a 0 % addition rate
  (as the paper reports) nearly impossible for reasons unrelated to new artifacts.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from desra.errors import DataError

__all__ = [
    'LABELME_SHAPE_TYPES',
    'MaskMismatchError',
    'artifact_metrics',
    'load_mask',
    'mask_iou',
    'region_precision_counts',
    'region_recall_counts',
    'removal_addition_rates',
    'to_bool_mask',
]

_EMPTY_MODES = ('one', 'skip', 'zero')

#: LabelMe shape types that are rasterised; ``line``, ``linestrip`` and ``point`` enclose no area and are
#: skipped with a warning; any other type is an error.
LABELME_SHAPE_TYPES = ('polygon', 'rectangle', 'circle', 'mask')
_LABELME_IGNORED = ('line', 'linestrip', 'point', 'points')


class MaskMismatchError(DataError, ValueError):
    """Masks that cannot be paired: a size mismatch or names present on one side only.

    It is a :class:`ValueError` for library callers and a :class:`~desra.errors.DataError` (a user error
    printed as one line) for the command-line tools.
    """


# ----------------------------------------------------------------------------------------------------
# Mask helpers
# ----------------------------------------------------------------------------------------------------

def to_bool_mask(mask: Any, what: str = 'mask') -> np.ndarray:
    """``H x W`` bool array: True where ``mask`` is nonzero (any colour channel for ``H x W x C``)."""
    m = np.asarray(mask)
    if m.ndim == 3:
        if m.shape[2] in (1, 2):  # grey or grey+alpha
            m = m[:, :, 0]
        elif m.shape[2] >= 3:
            m = m[:, :, :3]
            return np.ascontiguousarray(m.any(axis=2) if m.dtype == bool else (m != 0).any(axis=2))
    if m.ndim != 2:
        raise ValueError(f'{what}: expected an H x W (or H x W x C) mask, got shape {m.shape}')
    if m.dtype == bool:
        return np.ascontiguousarray(m)
    return np.ascontiguousarray(m != 0)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of 8-connected regions and the int32 label image (0 = background, 1..n = regions)."""
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n - 1, labels


def _region_overlaps(mask: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every 8-connected region of ``mask``: its area and the number of its pixels inside ``other``."""
    n, labels = _components(mask)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    inside = np.bincount(labels[other], minlength=n + 1)[1:]
    return area, inside


def _check_p(p: float, name: str = 'p') -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {p}')
    return p


def _same_shape(pred: np.ndarray, gt: np.ndarray, name: str = 'mask') -> None:
    if pred.shape != gt.shape:
        raise MaskMismatchError(f'{name}: prediction is {_hw(pred.shape)} but GT is {_hw(gt.shape)}')


def _hw(shape) -> str:
    return f'{shape[0]}x{shape[1]}'


# ----------------------------------------------------------------------------------------------------
# Single-image metrics
# ----------------------------------------------------------------------------------------------------

def mask_iou(pred, gt, empty: str = 'one') -> float | None:
    """``|A ∩ B| / |A ∪ B|`` of one prediction ``A`` and GT ``B`` (same size; nonzero = artifact).

    Args:
        empty: value when both masks are empty (no union): ``'one'`` -> 1.0 (default), ``'zero'`` -> 0.0,
            ``'skip'`` -> ``None`` (the image is left out of a mean).
    """
    if empty not in _EMPTY_MODES:
        raise ValueError(f"empty must be one of {_EMPTY_MODES}, got {empty!r}")
    a, b = to_bool_mask(pred, 'pred'), to_bool_mask(gt, 'gt')
    _same_shape(a, b)
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return {'one': 1.0, 'zero': 0.0, 'skip': None}[empty]
    return int(np.count_nonzero(a & b)) / union


def region_precision_counts(pred, gt, p: float = 0.5) -> tuple[int, int]:
    """``(correct, total)`` detected regions: a region ``z`` of ``pred`` is correct if ``|z ∩ gt| / |z| >= p``."""
    return _region_hits(pred, gt, p, regions_of='pred')


def region_recall_counts(pred, gt, p: float = 0.5) -> tuple[int, int]:
    """``(found, total)`` GT regions: a region ``g`` of ``gt`` is found if ``|g ∩ pred| / |g| >= p``."""
    return _region_hits(pred, gt, p, regions_of='gt')


def _region_hits(pred, gt, p: float, regions_of: str) -> tuple[int, int]:
    """``(hits, total)`` over the regions of ``regions_of`` whose overlap ratio with the other mask is ``>= p``."""
    p = _check_p(p)
    a, b = to_bool_mask(pred, 'pred'), to_bool_mask(gt, 'gt')
    _same_shape(a, b)
    area, inside = _region_overlaps(a, b) if regions_of == 'pred' else _region_overlaps(b, a)
    return int(np.count_nonzero(inside / np.maximum(area, 1) >= p)), int(area.size)


# ----------------------------------------------------------------------------------------------------
# Data-set metrics
# ----------------------------------------------------------------------------------------------------

def _names_preview(names: Sequence[str], limit: int = 10) -> str:
    names = [str(n) for n in names]
    more = f' ... (+{len(names) - limit} more)' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def _pairs(preds, gts, pred_label: str = 'prediction') -> list[tuple[Any, Any, Any]]:
    """``[(name, pred, gt), ...]`` from two sequences (by position) or two mappings (by name)."""
    if isinstance(preds, Mapping) and isinstance(gts, Mapping):
        only_pred = [k for k in preds if k not in gts]
        only_gt = [k for k in gts if k not in preds]
        if only_pred or only_gt:
            parts = []
            if only_pred:
                parts.append(f'{len(only_pred)} {pred_label} mask(s) without GT: {_names_preview(only_pred)}')
            if only_gt:
                parts.append(f'{len(only_gt)} GT mask(s) without {pred_label}: {_names_preview(only_gt)}')
            raise MaskMismatchError('; '.join(parts))
        return [(k, preds[k], gts[k]) for k in gts]
    if isinstance(preds, Mapping) or isinstance(gts, Mapping):
        raise TypeError(f'{pred_label} and GT masks must both be sequences or both be mappings (name -> mask)')
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise MaskMismatchError(f'{len(preds)} {pred_label} masks but {len(gts)} GT masks')
    return [(i, p, g) for i, (p, g) in enumerate(zip(preds, gts))]


def _materialise(mask, name, what: str) -> np.ndarray:
    """A bool mask from an array or from a file path (read with :func:`load_mask`)."""
    if isinstance(mask, (str, os.PathLike)):
        return load_mask(mask)
    return to_bool_mask(mask, f'image {name}: {what}')


def _align(pred: np.ndarray, gt: np.ndarray, crop: int, name) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``gt`` (and a full-size ``pred``) by ``crop`` pixels on every side; check the sizes."""
    h, w = gt.shape
    if crop:
        if 2 * crop >= h or 2 * crop >= w:
            raise MaskMismatchError(f'image {name}: GT mask {_hw(gt.shape)} is too small for crop={crop}')
        gt_c = gt[crop:h - crop, crop:w - crop]
        if pred.shape == gt.shape:
            return pred[crop:h - crop, crop:w - crop], gt_c
        if pred.shape == gt_c.shape:
            return pred, gt_c
        raise MaskMismatchError(
            f'image {name}: prediction is {_hw(pred.shape)} but GT is {_hw(gt.shape)}; with crop={crop} the '
            f'prediction must be {_hw(gt.shape)} or {_hw(gt_c.shape)}')
    if pred.shape != gt.shape:
        hint = ''
        if pred.shape[0] < h and h - pred.shape[0] == w - pred.shape[1] and (h - pred.shape[0]) % 2 == 0:
            hint = f' (a detection map in valid mode? use crop={(h - pred.shape[0]) // 2})'
        raise MaskMismatchError(f'image {name}: prediction is {_hw(pred.shape)} but GT is {_hw(gt.shape)}{hint}')
    return pred, gt


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def artifact_metrics(pred_masks, gt_masks, p: float = 0.5, crop: int = 0, empty: str = 'one') -> dict:
    """IoU (mean over images), Precision and Recall (pooled over regions) of artifact detections.

    Args:
        pred_masks: detections, a sequence of masks or a mapping ``name -> mask``; a mask is an array
            (nonzero = artifact) or a file path read with :func:`load_mask` (loaded one image at a time).
        gt_masks: GT masks, of the same kind; mappings are paired by name, and names present on one
            side only are an error listing them (the released script silently drops predictions without
            GT; this one refuses).
        p: overlap ratio for a region to count as correct / found (``>= p``).
        crop: pixels cropped from every side of the GT (and of full-size predictions); 5 for the
            released pipeline. See the module docstring.
        empty: IoU of an image where both masks are empty, see :func:`mask_iou`.

    Returns:
        ``{'iou', 'precision', 'recall', 'num_images', 'num_iou_images', 'num_pred_regions',
        'num_correct_pred_regions', 'num_gt_regions', 'num_found_gt_regions', 'p', 'crop', 'per_image'}``.
        ``iou`` / ``precision`` / ``recall`` are fractions in [0, 1] (``None`` when undefined: no image
        counted for IoU, no detected region, no GT region). ``per_image`` has one dict per image with
        ``name, iou, intersection, union, pred_regions, correct_pred_regions, gt_regions, found_gt_regions``.

    Raises:
        MaskMismatchError (a ValueError and DataError): unpaired names or sizes that do not match.
    """
    p = _check_p(p)
    crop = int(crop)
    if crop < 0:
        raise ValueError(f'crop must be >= 0, got {crop}')
    if empty not in _EMPTY_MODES:
        raise ValueError(f"empty must be one of {_EMPTY_MODES}, got {empty!r}")
    pairs = _pairs(pred_masks, gt_masks)
    if not pairs:
        raise ValueError('artifact_metrics: no masks given')
    per_image = []
    for name, pred, gt in pairs:
        a, b = _align(_materialise(pred, name, 'prediction'), _materialise(gt, name, 'GT'), crop, name)
        inter = int(np.count_nonzero(a & b))
        union = int(np.count_nonzero(a | b))
        iou = inter / union if union else {'one': 1.0, 'zero': 0.0, 'skip': None}[empty]
        pa, pin = _region_overlaps(a, b)
        ga, gin = _region_overlaps(b, a)
        per_image.append({
            'name': name, 'iou': iou, 'intersection': inter, 'union': union,
            'pred_regions': int(pa.size), 'correct_pred_regions': int(np.count_nonzero(pin / np.maximum(pa, 1) >= p)),
            'gt_regions': int(ga.size), 'found_gt_regions': int(np.count_nonzero(gin / np.maximum(ga, 1) >= p)),
        })
    ious = [r['iou'] for r in per_image if r['iou'] is not None]
    n_pred = sum(r['pred_regions'] for r in per_image)
    n_correct = sum(r['correct_pred_regions'] for r in per_image)
    n_gt = sum(r['gt_regions'] for r in per_image)
    n_found = sum(r['found_gt_regions'] for r in per_image)
    return {
        'iou': float(np.mean(ious)) if ious else None,
        'precision': _ratio(n_correct, n_pred),
        'recall': _ratio(n_found, n_gt),
        'num_images': len(per_image),
        'num_iou_images': len(ious),
        'num_pred_regions': n_pred,
        'num_correct_pred_regions': n_correct,
        'num_gt_regions': n_gt,
        'num_found_gt_regions': n_found,
        'p': p,
        'crop': crop,
        'per_image': per_image,
    }


def removal_addition_rates(after_masks, gt_masks, p_add: float = 0.0, min_area: int = 0, crop: int = 0) -> dict:
    """Removal and addition rates of fine-tuning (paper Table 3), defined per region (module docstring).

    Args:
        after_masks: detections A on the fine-tuned model's outputs (sequence or mapping name -> mask or
            file path, like :func:`artifact_metrics`).
        gt_masks: GT artifact masks B of the *original* model's outputs.
        p_add: a detected region ``z`` of A is *added* when ``|z ∩ B| = 0`` or ``|z ∩ B| / |z| < p_add``
            (default 0: only regions disjoint from B).
        min_area: only regions of at least this many pixels can count as added (0: any size).
        crop: as in :func:`artifact_metrics`.

    Returns:
        A dict of fractions in [0, 1] (multiply by 100 for Table 3's percent) and counts:

        * ``removal_rate``: removed GT regions / all GT regions, pooled (``None`` without GT regions);
          a GT region ``g`` is removed when ``|A ∩ g| = 0``.
        * ``removal_rate_image_mean``: mean over images with GT regions of the per-image removal rate.
        * ``addition_rate``: images with at least one added region / all images.
        * ``added_region_fraction``: added regions / all regions of A (``None`` when A is empty everywhere).
        * ``pixel_addition_rate``: images where ``A \\ B`` has at least one pixel / all images (the
          literal pixel reading of "A ∪ B > B").
        * counts ``num_images, num_gt_regions, num_removed_regions, num_after_regions,
          num_added_regions, num_images_with_added, num_images_with_new_pixels``, the settings
          ``p_add, min_area, crop``, and ``per_image`` (``name, gt_regions, removed_regions,
          removal_rate, after_regions, added_regions, new_pixels, has_added``).
    """
    p_add = _check_p(p_add, 'p_add')
    min_area = int(min_area)
    if min_area < 0:
        raise ValueError(f'min_area must be >= 0, got {min_area}')
    crop = int(crop)
    if crop < 0:
        raise ValueError(f'crop must be >= 0, got {crop}')
    pairs = _pairs(after_masks, gt_masks, pred_label='after')
    if not pairs:
        raise ValueError('removal_addition_rates: no masks given')
    per_image = []
    for name, after, gt in pairs:
        a, b = _align(_materialise(after, name, 'after-fine-tuning detection'), _materialise(gt, name, 'GT'),
                      crop, name)
        g_area, g_hit = _region_overlaps(b, a)
        removed = int(np.count_nonzero(g_hit == 0))
        z_area, z_in = _region_overlaps(a, b)
        added_mask = (z_in == 0) | (z_in / np.maximum(z_area, 1) < p_add)
        if min_area:
            added_mask &= z_area >= min_area
        added = int(np.count_nonzero(added_mask))
        per_image.append({
            'name': name, 'gt_regions': int(g_area.size), 'removed_regions': removed,
            'removal_rate': _ratio(removed, int(g_area.size)),
            'after_regions': int(z_area.size), 'added_regions': added,
            'new_pixels': int(np.count_nonzero(a & ~b)), 'has_added': added > 0,
        })
    return pool_removal_addition(per_image, p_add=p_add, min_area=min_area, crop=crop)


def pool_removal_addition(per_image: list[dict], p_add: float = 0.0, min_area: int = 0, crop: int = 0) -> dict:
    """Pool per-image removal/addition records (from :func:`removal_addition_rates`) into data-set rates."""
    n = len(per_image)
    n_gt = sum(r['gt_regions'] for r in per_image)
    n_removed = sum(r['removed_regions'] for r in per_image)
    n_after = sum(r['after_regions'] for r in per_image)
    n_added = sum(r['added_regions'] for r in per_image)
    img_rates = [r['removal_rate'] for r in per_image if r['removal_rate'] is not None]
    n_img_added = sum(1 for r in per_image if r['has_added'])
    n_img_pixels = sum(1 for r in per_image if r['new_pixels'] > 0)
    return {
        'removal_rate': _ratio(n_removed, n_gt),
        'removal_rate_image_mean': float(np.mean(img_rates)) if img_rates else None,
        'addition_rate': n_img_added / n,
        'added_region_fraction': _ratio(n_added, n_after),
        'pixel_addition_rate': n_img_pixels / n,
        'num_images': n,
        'num_gt_regions': n_gt,
        'num_removed_regions': n_removed,
        'num_after_regions': n_after,
        'num_added_regions': n_added,
        'num_images_with_added': n_img_added,
        'num_images_with_new_pixels': n_img_pixels,
        'p_add': p_add,
        'min_area': min_area,
        'crop': crop,
        'per_image': per_image,
    }


# ----------------------------------------------------------------------------------------------------
# Reading masks: PNG (or any image) and LabelMe JSON
# ----------------------------------------------------------------------------------------------------

def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f'size must be (height, width), got {size!r}') from None
    if h <= 0 or w <= 0:
        raise ValueError(f'size must be positive (height, width), got {size!r}')
    return h, w


def load_mask(path: str | os.PathLike, size: Sequence[int] | None = None,
              labels: Iterable[str] | None = None) -> np.ndarray:
    """Read an artifact mask as an ``H x W`` bool array (True = artifact).

    Args:
        path: an image (``.png`` etc.: grayscale, colour, palette or 16-bit; nonzero in any colour
            channel = artifact, alpha ignored) or a LabelMe ``.json`` file (see below).
        size: ``(height, width)``. For an image it is checked; for LabelMe it is used when the file has no
            ``imageHeight`` / ``imageWidth`` and checked against them otherwise.
        labels: LabelMe only: rasterise only the shapes whose ``label`` is in this collection (default:
            every shape).

    LabelMe rasterisation (vertices in pixel coordinates, pixel centres at integers; a coordinate is
    rounded to the nearest integer, halves up: ``floor(x + 0.5)``; shapes are filled with their border):

    * ``polygon`` (also a missing / null ``shape_type``, as in LabelMe < 3): ``cv2.fillPoly``; >= 3 points.
    * ``rectangle``: the axis-aligned box spanned by the first two points (any corner order), inclusive.
    * ``circle``: centre = first point, radius = distance to the second point (rounded), filled.
    * ``mask`` (LabelMe >= 5.5): the base64 PNG in ``mask`` placed at the first point (truncated to int).
    * ``line``, ``linestrip``, ``point``: enclose no area; skipped with a :class:`UserWarning`.
    * any other type: :class:`DataError`.

    LabelMe's own export draws with Pillow, whose boundary pixels can differ from OpenCV's by one pixel
    along edges; interiors agree. The distributed DeSRA GT masks are PNGs, which are read exactly.

    Raises:
        DataError (naming the file): unreadable image / JSON, no image size, a malformed shape (too few
        points, non-numeric coordinates), an unknown shape type, or a size mismatch.
    """
    path = os.fspath(path)
    size = _check_size(size)
    if path.lower().endswith('.json'):
        return _load_labelme(path, size, labels)
    from desra.data.io import imread

    img = imread(path, flag='unchanged')
    mask = to_bool_mask(img, os.path.abspath(path))
    if size is not None and mask.shape != size:
        raise DataError(f'mask {os.path.abspath(path)} is {_hw(mask.shape)}, expected {_hw(size)}')
    return mask


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(v, -(1 << 20), 1 << 20) + 0.5).astype(np.int32)


def _labelme_points(shape: dict, where: str, minimum: int) -> np.ndarray:
    pts = shape.get('points')
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f'{where}: "points" must be a list of [x, y] numbers, got {pts!r:.80}') from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < minimum:
        raise DataError(f'{where}: needs at least {minimum} [x, y] points, got {pts!r:.80}')
    if not np.isfinite(arr).all():
        raise DataError(f'{where}: non-finite coordinates in "points"')
    return arr


def _decode_shape_mask(data: Any, where: str) -> np.ndarray:
    import base64
    import binascii

    if not isinstance(data, str):
        raise DataError(f'{where}: shape_type "mask" needs a base64 PNG string in "mask"')
    try:
        raw = base64.b64decode(data, validate=False)
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except (binascii.Error, ValueError, cv2.error):
        img = None
    if img is None:
        raise DataError(f'{where}: the "mask" field is not a base64-encoded image')
    return to_bool_mask(img, where)


def _load_labelme(path: str, size: tuple[int, int] | None, labels: Iterable[str] | None) -> np.ndarray:
    apath = os.path.abspath(path)
    if not os.path.isfile(apath):
        raise DataError(f'LabelMe file does not exist: {apath}')
    try:
        with open(apath, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f'cannot read LabelMe file {apath}: {e}') from None
    if not isinstance(data, dict):
        raise DataError(f'LabelMe file {apath}: expected a JSON object, got {type(data).__name__}')
    shapes = data.get('shapes')
    if not isinstance(shapes, list):
        raise DataError(f'LabelMe file {apath}: missing or invalid "shapes" list')

    file_size = None
    hh, ww = data.get('imageHeight'), data.get('imageWidth')
    if hh is not None or ww is not None:
        try:
            file_size = (int(hh), int(ww))
            if file_size[0] <= 0 or file_size[1] <= 0 or file_size != (hh, ww):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f'LabelMe file {apath}: "imageHeight"/"imageWidth" must be positive integers, '
                            f'got {hh!r}/{ww!r}') from None
    if file_size is None and size is None:
        raise DataError(f'LabelMe file {apath}: no "imageHeight"/"imageWidth"; pass the image size (height, width)')
    if file_size is not None and size is not None and file_size != size:
        raise DataError(f'LabelMe file {apath}: image size {_hw(file_size)} does not match the expected {_hw(size)}')
    h, w = file_size or size

    keep = None if labels is None else set(labels)
    canvas = np.zeros((h, w), np.uint8)
    ignored: dict[str, int] = {}
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise DataError(f'LabelMe file {apath}: shapes[{i}] is not an object')
        label = shape.get('label')
        if keep is not None and label not in keep:
            continue
        stype = shape.get('shape_type') or 'polygon'
        where = f'LabelMe file {apath}: shapes[{i}] (label {label!r}, {stype})'
        if stype == 'polygon':
            pts = _round_half_up(_labelme_points(shape, where, 3))
            cv2.fillPoly(canvas, [pts.reshape(-1, 1, 2)], 1)
        elif stype == 'rectangle':
            pts = _round_half_up(_labelme_points(shape, where, 2))
            (x0, y0), (x1, y1) = pts[0], pts[1]
            cv2.rectangle(canvas, (int(min(x0, x1)), int(min(y0, y1))), (int(max(x0, x1)), int(max(y0, y1))),
                          1, thickness=-1)
        elif stype == 'circle':
            pts = _labelme_points(shape, where, 2)
            centre = _round_half_up(pts[0])
            radius = int(_round_half_up(np.asarray(math.hypot(*(pts[1] - pts[0])))))
            cv2.circle(canvas, (int(centre[0]), int(centre[1])), radius, 1, thickness=-1)
        elif stype == 'mask':
            pts = _labelme_points(shape, where, 1)
            sub = _decode_shape_mask(shape.get('mask'), where)
            x0, y0 = int(pts[0][0]), int(pts[0][1])
            ys, xs = slice(max(y0, 0), min(y0 + sub.shape[0], h)), slice(max(x0, 0), min(x0 + sub.shape[1], w))
            if ys.start < ys.stop and xs.start < xs.stop:
                canvas[ys, xs] |= sub[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        elif stype in _LABELME_IGNORED:
            ignored[stype] = ignored.get(stype, 0) + 1
        else:
            raise DataError(f'{where}: unknown shape_type {stype!r}; supported: '
                            f'{", ".join(LABELME_SHAPE_TYPES)} (ignored: {", ".join(_LABELME_IGNORED)})')
    if ignored:
        what = ', '.join(f'{n} {t}' for t, n in sorted(ignored.items()))
        warnings.warn(f'LabelMe file {apath}: skipped shapes that enclose no area ({what})', UserWarning,
                      stacklevel=3)
    return canvas.astype(bool)
