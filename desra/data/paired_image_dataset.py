"""GT/LQ image-pair dataset read from two folders (BasicSR's ``PairedImageDataset`` options).

Sampling keys: ``dataset[i]`` uses the global numpy RNG for cropping/augmentation (BasicSR behaviour);
``dataset[(i, seed)]`` takes all randomness from ``np.random.default_rng(seed)``, so a sample is a pure
function of ``(i, seed)`` whatever worker process or GPU rank loads it. That is what makes resumed and
multi-GPU runs reproduce the same batches.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch
from torch.utils import data

from desra.data.io import IMG_EXTENSIONS, imfrombytes, img2tensor, imread, is_image_file, scandir
from desra.data.transforms import augment, paired_random_crop
from desra.errors import ConfigError, DataError
from desra.metrics.color import bgr2ycbcr
from desra.registry import DATASET_REGISTRY

__all__ = ['PairedImageDataset']

_MAX_LISTED = 5


# ----------------------------------------------------------------------------------------------------
# Option and key helpers shared with SingleImageDataset.

def dataset_key_path(opt: dict) -> str:
    """YAML path of this dataset's option block, for messages (``datasets.<phase>``)."""
    return opt.get('key_path') or f"datasets.{opt.get('phase', 'train')}"


def check_io_backend(opt: dict, kp: str) -> str:
    """``'disk'`` or ``'lmdb'`` (BasicSR's LMDB layout, see :mod:`desra.data.file_client`)."""
    backend = opt.get('io_backend', {'type': 'disk'})
    if backend is None:
        return 'disk'
    if not isinstance(backend, dict):
        raise ConfigError(f"{kp}.io_backend: expected a mapping like {{type: disk}}, got {backend!r}")
    btype = backend.get('type', 'disk')
    if btype not in ('disk', 'lmdb'):
        raise ConfigError(f"{kp}.io_backend.type: expected 'disk' or 'lmdb', got {btype!r}")
    if btype == 'lmdb':
        from desra.data.file_client import require_lmdb

        require_lmdb(f'{kp}.io_backend.type')
    return btype


def read_image(path: str, reader=None, flag: str = 'color'):
    """An image by file path (disk) or by key (``reader``: an :class:`~desra.data.file_client.LmdbReader`)."""
    if reader is None:
        return imread(path, flag)
    return imfrombytes(reader.get(path), flag=flag, path=f'{reader.db_path}[{path}]')


def require_folder(opt: dict, key: str, kp: str, what: str) -> str:
    """Absolute path of the existing folder given by ``opt[key]``."""
    if opt.get(key) in (None, ''):
        raise ConfigError(f'{kp}.{key}: missing required key (folder of {what})')
    value = opt[key]
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f'{kp}.{key}: expected a folder path, got {value!r}')
    folder = os.path.abspath(os.path.expanduser(os.fspath(value)))
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise DataError(f'{kp}.{key}: expected a folder but found a file: {folder}')
        raise DataError(f'{kp}.{key}: folder does not exist: {folder}')
    return folder


def list_images(folder: str, key: str, kp: str, recursive: bool) -> list[str]:
    """Sorted image paths relative to ``folder``; DataError if there are none."""
    files = [f for f in scandir(folder, recursive=recursive) if is_image_file(f)]
    if not files:
        hint = '' if recursive else ' (sub-folders are not searched unless recursive: true)'
        raise DataError(f'{kp}.{key}: no image files ({", ".join(IMG_EXTENSIONS)}) in folder {folder}{hint}')
    return files


_META_SHAPE = re.compile(r'^(.*?)\s+\(\s*\d+\s*(?:,\s*\d+\s*){1,2}\)\s*$')


def _meta_key(opt: dict) -> str:
    return 'meta_info_file' if opt.get('meta_info_file') else 'meta_info'


def read_meta_entries(opt: dict, kp: str) -> list[tuple[str, str | None]]:
    """``(gt name, lq name or None)`` per line of the meta file (``meta_info_file``, or Real-ESRGAN's ``meta_info``).

    Lines: ``name.png (h,w,c)`` (BasicSR), ``name.png`` (Real-ESRGAN), or ``gt.png, lq.png`` (Real-ESRGAN's paired
    data, comma and space between the two paths). Blank lines and ``#`` comments are skipped.
    """
    key = _meta_key(opt)
    path = os.path.abspath(os.path.expanduser(os.fspath(opt[key])))
    if not os.path.isfile(path):
        raise DataError(f'{kp}.{key}: file does not exist: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f'{kp}.{key}: cannot read {path}: {e}') from None
    entries = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        m = _META_SHAPE.match(line)
        if m:
            entries.append((m.group(1), None))
        elif ', ' in line:
            gt, lq = line.split(', ', 1)
            entries.append((gt.strip(), lq.strip()))
        else:
            entries.append((line.split()[0], None))
    if not entries:
        raise DataError(f'{kp}.{key}: {path} lists no images (expected lines like "0001.png (480,480,3)")')
    return entries


def read_meta_info(opt: dict, kp: str) -> list[str]:
    """Image names listed in the meta file (the GT names for paired lines; see :func:`read_meta_entries`)."""
    return [gt for gt, _ in read_meta_entries(opt, kp)]


def format_list(items: list[str]) -> str:
    shown = ', '.join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f', ... ({len(items) - _MAX_LISTED} more)'
    return shown


def parse_key(key: Any, length: int) -> tuple[int, int | None]:
    """``i`` or ``(i, seed)`` -> ``(i, seed)`` with ``i`` in range (negative indices count from the end)."""
    seed = None
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f'dataset key must be an int or an (index, seed) pair, got {key!r}')
        key, seed = key
        if seed is not None:
            seed = int(seed)
    if isinstance(key, torch.Tensor):
        key = key.item()
    try:
        index = int(key)
    except (TypeError, ValueError):
        raise TypeError(f'dataset key must be an int or an (index, seed) pair, got {key!r}') from None
    if index != key:
        raise TypeError(f'dataset index must be an integer, got {key!r}')
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f'dataset index {key} out of range for {length} samples')
    return index, seed


def parse_color_and_norm(opt: dict, kp: str) -> tuple[str | None, list | None, list | None]:
    """Validate ``color`` (None or 'y') and ``mean``/``std`` (one number per output channel)."""
    color = opt.get('color')
    if color not in (None, 'y', 'rgb'):
        raise ConfigError(f"{kp}.color: expected 'y' (Y channel only) or no value, got {color!r}")
    channels = 1 if color == 'y' else 3
    norm = []
    for key in ('mean', 'std'):
        value = opt.get(key)
        if value is not None:
            if isinstance(value, (int, float)):
                value = [value] * channels
            if not (isinstance(value, (list, tuple)) and len(value) == channels
                    and all(isinstance(v, (int, float)) for v in value)):
                raise ConfigError(f'{kp}.{key}: expected {channels} numbers (one per channel), got {value!r}')
            if key == 'std' and any(v == 0 for v in value):
                raise ConfigError(f'{kp}.std: values must be non-zero, got {value!r}')
            value = [float(v) for v in value]
        norm.append(value)
    if (norm[0] is None) != (norm[1] is None):
        missing = 'std' if norm[1] is None else 'mean'
        raise ConfigError(f'{kp}.{missing}: mean and std must be given together')
    return (None if color == 'rgb' else color), norm[0], norm[1]


def to_tensor(img: np.ndarray, color: str | None, mean, std) -> torch.Tensor:
    """uint8 BGR H x W x 3 -> float32 C x H x W in [0, 1] (RGB, or Y in [16/255, 235/255]), normalised."""
    img = img.astype(np.float32) / 255.
    if color == 'y':
        img = bgr2ycbcr(img, y_only=True)[..., None]
    t = img2tensor(img, bgr2rgb=True, float32=True)
    if mean is not None:
        t = (t - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return t


def positive_int(opt: dict, key: str, key_path: str) -> int:
    value = opt.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f'{key_path}: expected a positive integer, got {value!r}')
    return int(value)


# ----------------------------------------------------------------------------------------------------

@DATASET_REGISTRY.register()
class PairedImageDataset(data.Dataset):
    """Pairs of ground-truth (GT) and low-quality (LQ) images, LQ ``scale`` times smaller.

    Options (BasicSR keys): ``dataroot_gt``, ``dataroot_lq`` (folders); ``meta_info_file`` (optional list
    of GT names relative to ``dataroot_gt``; the LQ has the same relative folder); ``filename_tmpl``
    (default ``'{}'``: LQ stem = ``filename_tmpl.format(GT stem)``, same extension, or the only LQ with
    that stem); ``recursive`` (search sub-folders, default false); ``io_backend`` (``{type: disk}``);
    ``phase``, ``scale``; for ``phase: train`` also ``gt_size`` (GT patch side, a multiple of ``scale``),
    ``use_hflip`` (alias ``use_flip``) and ``use_rot``; optional ``mean``/``std`` and ``color: y``.

    Training samples are a random aligned crop with random flips/transpose. Other phases return whole
    images; a GT up to ``scale - 1`` pixels larger than ``scale`` x LQ is cropped at the bottom/right.

    Items: ``{'lq': C x h x w, 'gt': C x H x W, 'lq_path': str, 'gt_path': str}``, float32 RGB in [0, 1]
    (before ``mean``/``std``), C = 3 (1 with ``color: y``).
    """

    #: The keys this class reads (besides the loader's); any other key in its block is an error.
    option_keys = frozenset({'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'meta_info', 'filename_tmpl',
                             'recursive', 'io_backend', 'gt_size', 'use_hflip', 'use_flip', 'use_rot', 'mean', 'std',
                             'color'})

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase', 'train')
        kp = self.key_path = dataset_key_path(opt)
        self.scale = positive_int(opt, 'scale', 'scale')
        self.backend = check_io_backend(opt, kp)
        self.color, self.mean, self.std = parse_color_and_norm(opt, kp)
        self.filename_tmpl = opt.get('filename_tmpl', '{}')
        if not isinstance(self.filename_tmpl, str) or '{' not in self.filename_tmpl:
            raise ConfigError(f"{kp}.filename_tmpl: expected a format string containing '{{}}', "
                              f"got {self.filename_tmpl!r}")
        try:
            self.filename_tmpl.format('0001')
        except (IndexError, KeyError, ValueError) as e:
            raise ConfigError(f"{kp}.filename_tmpl: {self.filename_tmpl!r} is not a valid format string with "
                              f"one '{{}}' field ({e})") from None
        if self.phase == 'train':
            if opt.get('gt_size') is None:
                raise ConfigError(f'{kp}.gt_size: missing required key for training (GT patch side in pixels, '
                                  f'a multiple of scale {self.scale})')
            self.gt_size = positive_int(opt, 'gt_size', f'{kp}.gt_size')
            if self.gt_size % self.scale:
                raise ConfigError(f'{kp}.gt_size: {self.gt_size} is not a multiple of scale {self.scale}')
        else:
            self.gt_size = opt.get('gt_size')
        self.use_hflip = bool(opt.get('use_hflip', opt.get('use_flip', False)))
        self.use_rot = bool(opt.get('use_rot', False))

        self.gt_folder = require_folder(opt, 'dataroot_gt', kp, 'ground-truth images')
        self.lq_folder = require_folder(opt, 'dataroot_lq', kp, 'low-quality input images')
        self.gt_reader = self.lq_reader = None
        if self.backend == 'lmdb':
            self.paths = self._paths_from_lmdb()
            return
        if opt.get('meta_info_file') or opt.get('meta_info'):  # meta_info: Real-ESRGAN's key
            self.paths = self._paths_from_meta_info()
        else:
            self.paths = self._paths_from_folders(bool(opt.get('recursive', False)))

    # -- pairing -------------------------------------------------------------------------------------

    def _lq_name(self, gt_rel: str, ext: str | None = None) -> str:
        folder, base = os.path.split(gt_rel)
        stem, gt_ext = os.path.splitext(base)
        return os.path.join(folder, self.filename_tmpl.format(stem) + (gt_ext if ext is None else ext))

    def _paths_from_folders(self, recursive: bool) -> list[dict]:
        kp = self.key_path
        gt_files = list_images(self.gt_folder, 'dataroot_gt', kp, recursive)
        lq_files = list_images(self.lq_folder, 'dataroot_lq', kp, recursive)
        lq_set = set(lq_files)
        lq_by_stem: dict[str, list[str]] = {}
        for f in lq_files:
            lq_by_stem.setdefault(os.path.splitext(f)[0], []).append(f)
        pairs, no_lq, used = [], [], set()
        for gt in gt_files:
            lq = self._lq_name(gt)
            if lq not in lq_set:
                # Same stem with another image extension (e.g. PNG GT, JPEG LQ) if unambiguous.
                candidates = lq_by_stem.get(os.path.splitext(lq)[0], [])
                if len(candidates) != 1:
                    no_lq.append(gt)
                    continue
                lq = candidates[0]
            used.add(lq)
            pairs.append({'gt_path': os.path.join(self.gt_folder, gt), 'lq_path': os.path.join(self.lq_folder, lq)})
        no_gt = [f for f in lq_files if f not in used]
        if no_lq or no_gt:
            lines = [f'{kp}: GT and LQ files do not pair up (LQ name = filename_tmpl '
                     f'{self.filename_tmpl!r} applied to the GT name, same extension)']
            if no_lq:
                lines.append(f'  {len(no_lq)} of {len(gt_files)} GT file(s) in {self.gt_folder} have no LQ partner '
                             f'in {self.lq_folder}: {format_list(no_lq)}')
            if no_gt:
                lines.append(f'  {len(no_gt)} of {len(lq_files)} LQ file(s) in {self.lq_folder} have no GT partner '
                             f'in {self.gt_folder}: {format_list(no_gt)}')
            raise DataError('\n'.join(lines))
        return pairs

    def _paths_from_lmdb(self) -> list[dict]:
        """BasicSR's paired LMDB: both ``meta_info.txt`` list the same keys; a sample is a key."""
        from desra.data.file_client import LmdbReader, check_lmdb_keys

        kp = self.key_path
        gt_keys = check_lmdb_keys(self.gt_folder, f'{kp}.dataroot_gt')
        lq_keys = check_lmdb_keys(self.lq_folder, f'{kp}.dataroot_lq')
        only_gt, only_lq = sorted(set(gt_keys) - set(lq_keys)), sorted(set(lq_keys) - set(gt_keys))
        if only_gt or only_lq:
            key, there, other = (only_gt[0], self.gt_folder, self.lq_folder) if only_gt else (
                only_lq[0], self.lq_folder, self.gt_folder)
            raise DataError(f"{kp}: key '{key}' is in {there}/meta_info.txt but not in {other}/meta_info.txt "
                            f"({len(only_gt) + len(only_lq)} unpaired key(s)); GT and LQ lmdb must hold the same keys")
        self.gt_reader = LmdbReader(self.gt_folder, f'{kp}.dataroot_gt')
        self.lq_reader = LmdbReader(self.lq_folder, f'{kp}.dataroot_lq')
        return [{'gt_path': k, 'lq_path': k} for k in sorted(gt_keys)]

    def _paths_from_meta_info(self) -> list[dict]:
        kp = self.key_path
        pairs, missing_gt, missing_lq = [], [], []
        for name, lq_name in read_meta_entries(self.opt, kp):
            gt_path = os.path.join(self.gt_folder, name)
            lq_path = os.path.join(self.lq_folder, lq_name if lq_name else self._lq_name(name))
            if not os.path.isfile(gt_path):
                missing_gt.append(name)
            if not os.path.isfile(lq_path):
                missing_lq.append(os.path.relpath(lq_path, self.lq_folder))
            pairs.append({'gt_path': gt_path, 'lq_path': lq_path})
        if missing_gt or missing_lq:
            key = _meta_key(self.opt)
            meta = os.path.abspath(os.fspath(self.opt[key]))
            lines = [f'{kp}.{key}: {meta} lists {len(pairs)} image(s) but some files are missing']
            if missing_gt:
                lines.append(f'  {len(missing_gt)} GT file(s) not in {self.gt_folder}: {format_list(missing_gt)}')
            if missing_lq:
                lines.append(f'  {len(missing_lq)} LQ file(s) not in {self.lq_folder}: {format_list(missing_lq)}')
            raise DataError('\n'.join(lines))
        return pairs

    # -- loading -------------------------------------------------------------------------------------

    def _match_sizes(self, img_gt: np.ndarray, img_lq: np.ndarray, gt_path: str, lq_path: str) -> np.ndarray:
        """Return the GT cropped to exactly ``scale`` x LQ; DataError if it is too small or too large.

        A surplus below ``scale`` pixels is what a floor-rounding downscaler leaves and is cropped.
        """
        s = self.scale
        (h_gt, w_gt), (h_lq, w_lq) = img_gt.shape[:2], img_lq.shape[:2]
        eh, ew = h_lq * s, w_lq * s
        if not (eh <= h_gt < eh + s and ew <= w_gt < ew + s):
            raise DataError(f'GT {gt_path} is {h_gt}x{w_gt} (HxW) but LQ {lq_path} is {h_lq}x{w_lq} at scale {s}: '
                            f'expected GT {eh}x{ew}')
        return img_gt[:eh, :ew]

    def __getitem__(self, key) -> dict:
        index, seed = parse_key(key, len(self))
        rng = None if seed is None else np.random.default_rng(seed)
        gt_path, lq_path = self.paths[index]['gt_path'], self.paths[index]['lq_path']
        img_gt = read_image(gt_path, self.gt_reader)
        img_lq = read_image(lq_path, self.lq_reader)
        img_gt = self._match_sizes(img_gt, img_lq, gt_path, lq_path)
        if self.phase == 'train':
            lq_patch = self.gt_size // self.scale
            h_lq, w_lq = img_lq.shape[:2]
            if h_lq < lq_patch or w_lq < lq_patch:
                raise DataError(f'LQ {lq_path} is {h_lq}x{w_lq} (HxW), smaller than the {lq_patch}x{lq_patch} LQ patch '
                                f'for {self.key_path}.gt_size {self.gt_size} at scale {self.scale} (GT {gt_path}); '
                                f'remove this pair or lower gt_size')
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.gt_size, self.scale, gt_path, rng=rng)
            img_gt, img_lq = augment([img_gt, img_lq], self.use_hflip, self.use_rot, rng=rng)
        return {
            'lq': to_tensor(img_lq, self.color, self.mean, self.std),
            'gt': to_tensor(img_gt, self.color, self.mean, self.std),
            'lq_path': lq_path,
            'gt_path': gt_path,
        }

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(name={self.opt.get("name", self.phase)!r}, phase={self.phase!r}, '
                f'pairs={len(self)}, gt={self.gt_folder}, lq={self.lq_folder})')
