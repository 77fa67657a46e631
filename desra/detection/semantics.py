"""Semantic-aware adjustment of D (DeSRA Eq. 8-9), class-weight files and their streaming statistics.

Per-class weights
-----------------
Split [0, 1] into ``bins = 20`` bins and count them **from the top**: bin ``i`` holds
``1 - (i + 1) / bins <= D < 1 - i / bins`` (bin 0 also holds D = 1). For class k, ``idx_k`` is the
smallest ``i`` such that more than ``coverage = 0.85`` of the class's D values lie in bins ``0..i``, i.e.
in ``D >= 1 - (i + 1) / bins``. The weight is ``w_k = bins / (bins - idx_k)`` (released: ``20/(20-idx)``),
so ``1 / w_k = 1 - idx_k / bins`` is the upper edge of the bin that holds the class's paper P85 value.

This is the paper's Eq. 8 ("sort the D values in descending order and take the value at 85 %",
``A_k = P85(D_k)``: the value that 85 % of the class's pixels exceed, ``np.percentile(D_k, 15)`` in numpy's
ascending convention) quantised up to a bin edge. It matches the released class file: smooth classes
whose D stays near 1 (sky) get idx 0 and weight 1; busy classes whose GAN texture legitimately differs
from the MSE output (tree 5, sea 7, tower 9, bulletin board 11) get larger weights, which lift their D
before the ``S < 0.7`` test. A class never seen gets idx 0 (weight 1).

Adjusted map (Eq. 9 as released): ``S = clip(D * w[label], 0, 1)``, artifact where ``S < threshold``.

Class files
-----------
* Released text format (``SSIM_MSE_GAN_threshold.txt``): 150 lines ``classname--idx`` sorted by name,
  idx an integer 0..19, weight ``20 / (20 - idx)``. Names are ADE20K names (``ADE20K_CLASSES``) compared
  after stripping surrounding whitespace; blank lines are ignored.
* This project's JSON (``.json``)::

      {"format": "desra-class-weights", "version": 1, "bins": 20, "coverage": 0.85,
       "weight_formula": "bins / (bins - idx)",
       "classes": {"wall": {"idx": 3, "weight": 1.1764705882352942, "p85": 0.8412, "count": 12345}, ...},
       "source": {...free-form provenance: folders, segmenter, image count...}}

  ``classes`` has one entry per ADE20K class, in label order. ``weight`` is what is used (if absent it is
  derived from ``idx`` and ``bins``); ``p85`` is the paper's A_k estimated from the histogram (null for a
  class never seen), ``count`` the number of pixels of that class.
"""
from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from desra.atomic import atomic_open
from desra.detection.ade20k import ADE20K_CLASSES
from desra.errors import ConfigError

__all__ = ['semantic_adjust', 'read_class_file', 'load_class_weights', 'write_class_file', 'write_class_json',
           'ClassHistogram', 'CLASS_FILE_BINS', 'CLASS_JSON_FORMAT']

#: The released class file splits [0, 1] into this many bins (weight = 20 / (20 - idx)).
CLASS_FILE_BINS = 20
CLASS_JSON_FORMAT = 'desra-class-weights'
_CLASS_INDEX = {name: i for i, name in enumerate(ADE20K_CLASSES)}


# ------------------------------------------------------------------------------------------ Eq. 9

def _is_int_dtype(x) -> bool:
    if torch.is_tensor(x):
        return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    return np.issubdtype(x.dtype, np.integer)


def _check_label_range(labels, num_classes: int, where: str) -> None:
    if labels.numel() == 0 if torch.is_tensor(labels) else labels.size == 0:
        return
    lo, hi = (int(v) for v in (torch.aminmax(labels) if torch.is_tensor(labels) else (labels.min(), labels.max())))
    bad = lo if lo < 0 else hi if hi >= num_classes else None
    if bad is not None:
        raise ValueError(f'{where}: label {bad} is out of range for {num_classes} classes '
                         f'(expected 0..{num_classes - 1})')


def _match_labels(D, labels, where: str):
    """labels converted to D's kind (torch/numpy) and layout; shapes checked."""
    if torch.is_tensor(D):
        labels = labels if torch.is_tensor(labels) else torch.from_numpy(np.asarray(labels))
        labels = labels.to(D.device)
        if D.dim() == 4 and labels.dim() == 3:
            labels = labels.unsqueeze(1)
    else:
        labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if not _is_int_dtype(labels):
        raise ValueError(f'{where}: labels must be an integer array of class indices, got dtype {labels.dtype}')
    if tuple(labels.shape) != tuple(D.shape):
        raise ValueError(f'{where}: labels of shape {tuple(labels.shape)} do not match D of shape {tuple(D.shape)}')
    return labels


def _weight_vector(class_weights, where: str = 'class_weights') -> np.ndarray:
    w = class_weights.detach().cpu().numpy() if torch.is_tensor(class_weights) else class_weights
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'{where}: expected a 1-D sequence of numbers, got {type(class_weights).__name__}') from None
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f'{where}: expected a 1-D sequence of K > 0 weights, got shape {w.shape}')
    bad = np.flatnonzero(~np.isfinite(w) | (w <= 0))
    if bad.size:
        raise ValueError(f'{where}: weight {w[bad[0]]!r} of class {int(bad[0])} is not a finite number > 0')
    return w


def semantic_adjust(D, labels, class_weights):
    """Semantic adjustment (paper Eq. 9 as released): ``S = clip(D * w[labels], 0, 1)``.

    Args:
        D: indicator map, values in (0, 1]; numpy (any shape, typically ``H' x W'``) or torch
            (typically ``B x 1 x H' x W'``).
        labels: integer class indices with D's spatial layout: the same shape as D, or for a 4-D torch D
            also ``B x H' x W'``. numpy or torch (converted to D's kind and device).
        class_weights: K weights (1-D tensor, array or list of floats > 0), indexed by label.

    Returns:
        S, same shape, type, dtype and device as D, values in [0, 1].

    Raises:
        ValueError: a label outside ``0..K-1`` (the message names the value and K), mismatched shapes,
            non-integer labels or invalid weights.
    """
    w = _weight_vector(class_weights)
    labels = _match_labels(D, labels, 'semantic_adjust')
    _check_label_range(labels, len(w), 'semantic_adjust')
    if torch.is_tensor(D):
        wt = torch.as_tensor(w, dtype=D.dtype, device=D.device)
        return (D * wt[labels.long()]).clamp_(0, 1)
    wn = w.astype(D.dtype if np.issubdtype(D.dtype, np.floating) else np.float64)
    return np.clip(D * wn[labels], 0, 1)


# ------------------------------------------------------------------------------------ class files

def _close(name: str) -> str:
    close = difflib.get_close_matches(name, ADE20K_CLASSES, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _missing_error(path: str, seen: set, example_idx: str) -> ConfigError:
    missing = [n for n in ADE20K_CLASSES if n not in seen]
    names = ', '.join(f"'{n}'" for n in missing[:5]) + (', ...' if len(missing) > 5 else '')
    what = f"missing class '{missing[0]}'" if len(missing) == 1 else f'missing {len(missing)} classes: {names}'
    return ConfigError(f'{path}: {what} (the 150 ADE20K classes are required; {len(seen)} given), '
                       f"e.g. add {example_idx.format(name=missing[0])}")


def _read_class_txt(path: str) -> np.ndarray:
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f'{path}: not a UTF-8 text class file ({e.reason})') from None
    idx = np.zeros(len(ADE20K_CLASSES), np.int64)
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, sep, num = line.rpartition('--')
        name = name.strip()
        num = num.strip()
        if not sep or not name or not (num.isascii() and num.isdigit()):
            raise ConfigError(f"{path}:{lineno}: malformed line {line!r}; expected 'classname--idx' "
                              f'(an ADE20K class name, two hyphens, an integer 0..{CLASS_FILE_BINS - 1})')
        if name not in _CLASS_INDEX:
            raise ConfigError(f"{path}:{lineno}: unknown ADE20K class '{name}'{_close(name)}")
        if name in first_line:
            raise ConfigError(f"{path}:{lineno}: duplicate class '{name}' (first given on line {first_line[name]})")
        value = int(num)
        if not 0 <= value < CLASS_FILE_BINS:
            raise ConfigError(f"{path}:{lineno}: class '{name}' has idx {value}; expected an integer "
                              f'0..{CLASS_FILE_BINS - 1}')
        first_line[name] = lineno
        idx[_CLASS_INDEX[name]] = value
    if len(first_line) != len(ADE20K_CLASSES):
        raise _missing_error(path, set(first_line), "a line '{name}--0'")
    return CLASS_FILE_BINS / (CLASS_FILE_BINS - idx)


def _read_class_json(path: str) -> np.ndarray:
    try:
        with open(path, encoding='utf-8') as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f'{path}: not a valid JSON class-weights file ({e})') from None
    if not isinstance(doc, dict) or doc.get('format') != CLASS_JSON_FORMAT:
        raise ConfigError(f'{path}: not a desra class-weights file (expected "format": "{CLASS_JSON_FORMAT}")')
    if doc.get('version') != 1:
        raise ConfigError(f'{path}: unsupported version {doc.get("version")!r} (this desra reads version 1)')
    bins = doc.get('bins', CLASS_FILE_BINS)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f'{path}: bins: expected a positive integer, got {bins!r}')
    classes = doc.get('classes')
    if not isinstance(classes, dict):
        raise ConfigError(f'{path}: classes: expected an object mapping class names to entries')
    w = np.ones(len(ADE20K_CLASSES))
    seen = set()
    for name, entry in classes.items():
        key = f'{path}: classes.{name}'
        if name.strip() not in _CLASS_INDEX:
            raise ConfigError(f"{path}: classes: unknown ADE20K class '{name}'{_close(name.strip())}")
        if name.strip() in seen:
            raise ConfigError(f"{path}: classes: duplicate class '{name.strip()}'")
        seen.add(name.strip())
        if not isinstance(entry, dict):
            raise ConfigError(f'{key}: expected an object with "weight" (or "idx"), got {entry!r}')
        if 'weight' in entry:
            value = entry['weight']
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f'{key}.weight: expected a finite number > 0, got {value!r}')
        elif 'idx' in entry:
            i = entry['idx']
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < bins:
                raise ConfigError(f'{key}.idx: expected an integer 0..{bins - 1}, got {i!r}')
            value = bins / (bins - i)
        else:
            raise ConfigError(f'{key}: needs "weight" (or "idx")')
        w[_CLASS_INDEX[name.strip()]] = value
    if len(seen) != len(ADE20K_CLASSES):
        raise _missing_error(path, seen, 'an entry "{name}": {{"weight": 1.0}}')
    return w


def read_class_file(path) -> np.ndarray:
    """Per-class weights (150,) float64 in ADE20K label order from a class file.

    ``.json``: this project's format (see the module notes); anything else: the released text format,
    one ``classname--idx`` line per class, weight ``20 / (20 - idx)``.

    Raises:
        ConfigError: a missing file; a malformed line, an unknown or duplicate class name, an idx outside
            0..19 (each named with the file, line number and class); a class missing from the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f'class file not found: {path}')
    if path.lower().endswith('.json'):
        return _read_class_json(path)
    return _read_class_txt(path)


def load_class_weights(path_or_values, num_classes: int = len(ADE20K_CLASSES)) -> np.ndarray:
    """Class weights from any accepted form -> float64 array (K,).

    Args:
        path_or_values: a ``.txt`` (released format) or ``.json`` (this project's) class file; a dict
            ``{class name: weight}`` (ADE20K names; classes not named keep weight 1); or a 1-D
            list / array / tensor of K weights in label order.
        num_classes: K for a dict (150 ADE20K classes).

    Raises:
        ConfigError: an unreadable or invalid file, an unknown class name, a weight that is not a
            finite number > 0.
    """
    if isinstance(path_or_values, (str, os.PathLike)):
        path = os.fspath(path_or_values)
        if os.path.splitext(path)[1].lower() not in ('.txt', '.json'):
            raise ConfigError(f'class weights file {path}: expected a .txt (released classname--idx format) '
                              'or a .json (desra-class-weights) file')
        return read_class_file(path)
    if isinstance(path_or_values, Mapping):
        if num_classes != len(ADE20K_CLASSES):
            raise ConfigError('class_weights: a {name: weight} mapping needs the 150 ADE20K classes')
        w = np.ones(num_classes)
        for name, value in path_or_values.items():
            key = str(name).strip()
            if key not in _CLASS_INDEX:
                raise ConfigError(f"class_weights: unknown ADE20K class '{name}'{_close(key)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f'class_weights.{name}: expected a finite number > 0, got {value!r}')
            w[_CLASS_INDEX[key]] = float(value)
        return w
    try:
        return _weight_vector(path_or_values)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _idx_vector(idx, bins: int = CLASS_FILE_BINS) -> np.ndarray:
    if isinstance(idx, Mapping):
        out = np.zeros(len(ADE20K_CLASSES), np.int64)
        for name, v in idx.items():
            if name not in _CLASS_INDEX:
                raise ValueError(f"unknown ADE20K class '{name}'{_close(name)}")
            out[_CLASS_INDEX[name]] = v
        missing = [n for n in ADE20K_CLASSES if n not in idx]
        if missing:
            raise ValueError(f"idx is missing class '{missing[0]}' ({len(missing)} missing)")
        idx = out
    arr = np.asarray(idx)
    if arr.shape != (len(ADE20K_CLASSES),) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f'idx must be {len(ADE20K_CLASSES)} integers in ADE20K label order, got '
                         f'shape {arr.shape} dtype {arr.dtype}')
    if arr.min() < 0 or arr.max() >= bins:
        raise ValueError(f'idx values must be 0..{bins - 1}, got {int(arr.min())}..{int(arr.max())}')
    return arr.astype(np.int64)


def write_class_file(path, idx) -> None:
    """Write the released text format atomically: ``name--idx`` lines sorted as the release sorts them.

    ``idx``: 150 integers 0..19 in ADE20K label order (e.g. :meth:`ClassHistogram.bin_index`) or a dict
    ``{name: idx}``. Lines are ordered by ``name + '--'``, which reproduces the released order ('screen
    door' before 'screen').
    """
    arr = _idx_vector(idx)
    lines = sorted((f'{name}--{int(arr[i])}' for i, name in enumerate(ADE20K_CLASSES)),
                   key=lambda s: s.rpartition('--')[0] + '--')
    with atomic_open(os.fspath(path), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_class_json(path, idx, p85=None, counts=None, bins: int = CLASS_FILE_BINS, coverage: float = 0.85,
                     source: dict | None = None) -> None:
    """Write this project's JSON class file atomically (format described in the module notes).

    Args:
        idx: 150 bin indices 0..bins-1 in ADE20K label order (or a dict ``{name: idx}``).
        p85: optional 150 paper P85 values (NaN or None for classes never seen -> null).
        counts: optional 150 pixel counts.
        bins, coverage: the histogram settings the indices were computed with.
        source: free-form JSON-serialisable provenance.
    """
    arr = _idx_vector(idx, bins)
    p = None if p85 is None else np.asarray(p85, dtype=np.float64)
    n = None if counts is None else np.asarray(counts)
    classes = {}
    for i, name in enumerate(ADE20K_CLASSES):
        entry = {'idx': int(arr[i]), 'weight': bins / (bins - int(arr[i]))}
        if p is not None:
            entry['p85'] = None if not math.isfinite(p[i]) else round(float(p[i]), 6)
        if n is not None:
            entry['count'] = int(n[i])
        classes[name] = entry
    doc = {'format': CLASS_JSON_FORMAT, 'version': 1, 'bins': int(bins), 'coverage': float(coverage),
           'weight_formula': 'bins / (bins - idx)', 'classes': classes, 'source': source or {}}
    with atomic_open(os.fspath(path), 'w') as f:
        json.dump(doc, f, indent=1)
        f.write('\n')


# ------------------------------------------------------------------------------- Eq. 8 statistics

class ClassHistogram:
    """Per-class histograms of D in constant memory, for the class weights (paper Eq. 8).

    Counts are kept on a fine grid of ``bins * subbins`` equal bins over [0, 1] (``num_classes x
    bins*subbins`` int64: 1.2 MB by default); the coarse bin of a value is its fine bin ``// subbins``.
    A value D falls in fine bin ``min(floor(D * bins * subbins), bins * subbins - 1)`` after clipping to
    [0, 1] (D can exceed 1 by ~1e-9 through eps); non-finite values are ignored.

    Example::

        hist = ClassHistogram()
        for mse, gan, labels in pairs:
            hist.update(texture_similarity(mse, gan), labels[5:-5, 5:-5])
        write_class_file('weights.txt', hist.bin_index(0.85))
    """

    def __init__(self, num_classes: int = len(ADE20K_CLASSES), bins: int = CLASS_FILE_BINS, subbins: int = 50):
        for name, v in (('num_classes', num_classes), ('bins', bins), ('subbins', subbins)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f'ClassHistogram: {name} must be a positive integer, got {v!r}')
        self.num_classes = int(num_classes)
        self.bins = int(bins)
        self.subbins = int(subbins)
        self.fine_counts = np.zeros((self.num_classes, self.bins * self.subbins), np.int64)

    def update(self, D, labels) -> None:
        """Add the D values of one image or batch, each counted under its pixel's class.

        ``D`` and ``labels`` as for :func:`semantic_adjust` (same shape; torch ``B x 1 x H x W`` D with
        ``B x H x W`` labels is accepted). A label outside ``0..num_classes-1`` raises ValueError.
        """
        labels = _match_labels(D, labels, 'ClassHistogram.update')
        if torch.is_tensor(D):
            D, labels = D.detach().cpu().numpy(), labels.cpu().numpy()
        _check_label_range(labels, self.num_classes, 'ClassHistogram.update')
        d = np.asarray(D, dtype=np.float64).ravel()
        lab = labels.ravel().astype(np.int64)
        ok = np.isfinite(d)
        if not ok.all():
            d, lab = d[ok], lab[ok]
        nfine = self.bins * self.subbins
        fine = np.clip(d, 0.0, 1.0)
        fine *= nfine
        fine = np.minimum(fine.astype(np.int64), nfine - 1)
        lab *= nfine
        lab += fine
        self.fine_counts += np.bincount(lab, minlength=self.num_classes * nfine).reshape(self.num_classes, nfine)

    def merge(self, other: ClassHistogram) -> ClassHistogram:
        """Add another histogram's counts (e.g. from another process); returns self."""
        if other.fine_counts.shape != self.fine_counts.shape or other.subbins != self.subbins:
            raise ValueError('ClassHistogram.merge: histograms have different shapes')
        self.fine_counts += other.fine_counts
        return self

    @property
    def counts(self) -> np.ndarray:
        """``num_classes x bins`` counts of the coarse bins, ascending D (bin j holds [j/bins, (j+1)/bins))."""
        return self.fine_counts.reshape(self.num_classes, self.bins, self.subbins).sum(axis=2)

    @property
    def totals(self) -> np.ndarray:
        """Number of pixels seen per class."""
        return self.fine_counts.sum(axis=1)

    def bin_index(self, coverage: float = 0.85) -> np.ndarray:
        """The released idx per class (int64, 0..bins-1): the smallest top-down bin index ``i`` such that
        more than ``coverage`` of the class's values satisfy ``D >= 1 - (i + 1) / bins``. Classes never
        seen get 0."""
        if not 0 < coverage < 1:
            raise ValueError(f'coverage must be in (0, 1), got {coverage!r}')
        top_down = np.cumsum(self.counts[:, ::-1], axis=1)
        total = top_down[:, -1:]
        above = top_down > coverage * total
        idx = np.argmax(above, axis=1)
        idx[total[:, 0] == 0] = 0
        return idx.astype(np.int64)

    def weights(self, coverage: float = 0.85) -> np.ndarray:
        """``bins / (bins - idx)`` per class (float64; 1 for classes never seen)."""
        return self.bins / (self.bins - self.bin_index(coverage))

    def percentile(self, q: float) -> np.ndarray:
        """Per-class q-th percentile of D in numpy's ascending convention (``np.percentile(D_k, q)``).

        Estimated from the fine histogram: the values of a fine bin are taken as evenly spread inside
        it (at the centres of ``n`` equal sub-intervals), then numpy's 'linear' rule is applied to those
        virtual samples. Each virtual sample lies in the same fine bin as the true sample of the same
        rank, so the error is below one fine bin (``1 / (bins * subbins)`` = 0.001 by default). NaN for a
        class never seen.
        """
        if not 0 <= q <= 100:
            raise ValueError(f'q must be in [0, 100], got {q!r}')
        counts = self.fine_counts
        cum = np.cumsum(counts, axis=1)
        n = cum[:, -1]
        seen = n > 0
        rank = q / 100.0 * np.maximum(n - 1, 0)
        k0 = np.floor(rank).astype(np.int64)
        k1 = np.minimum(k0 + 1, np.maximum(n - 1, 0))
        frac = rank - k0
        nfine = counts.shape[1]

        def value_at(k):
            j = np.minimum((cum <= k[:, None]).sum(axis=1), nfine - 1)  # fine bin of the k-th value
            rows = np.arange(len(k))
            before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
            cnt = np.maximum(counts[rows, j], 1)
            return (j + (k - before + 0.5) / cnt) / nfine

        out = value_at(k0) * (1 - frac) + value_at(k1) * frac
        out[~seen] = np.nan
        return out

    def p85(self, coverage: float = 0.85) -> np.ndarray:
        """The paper's A_k (Eq. 8): the value that ``coverage`` of the class's D values exceed
        (descending order, 85 %), i.e. ``percentile(100 * (1 - coverage))``. NaN for unseen classes."""
        if not 0 < coverage < 1:
            raise ValueError(f'coverage must be in (0, 1), got {coverage!r}')
        return self.percentile(100.0 * (1.0 - coverage))
