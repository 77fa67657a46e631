"""Real-ESRGAN's data sets: GT images with per-sample blur kernels (``RealESRGANDataset``) and pre-made pairs
(``RealESRGANPairedDataset``), with Real-ESRGAN's option keys.

``RealESRGANDataset`` item, for one GT image (data side of the degradation; the model degrades the batch):

1. read the GT (``meta_info`` lines: a path relative to ``dataroot_gt`` per line, Real-ESRGAN's format; or an
   LMDB), flip / rotate (``use_hflip``, ``use_rot``);
2. reflect-pad (BORDER_REFLECT_101) to at least ``crop_pad_size`` (400, Real-ESRGAN's value) and crop a random
   ``crop_pad_size`` square;
3. the first kernel: a size ``k`` drawn from the odd sizes 7 .. ``blur_kernel_size``; with probability ``sinc_prob``
   a sinc of cutoff ``omega_c`` ~ U(pi/3, pi) (``k < 13``) or U(pi/5, pi), else :func:`random_mixed_kernels` of
   ``kernel_list`` / ``kernel_prob`` with ``sig_x``, ``sig_y`` ~ U(``blur_sigma``), ``theta`` ~ U(-pi, pi),
   ``betag_range``, ``betap_range``; zero-padded to ``blur_kernel_size``;
4. the second kernel the same way with the ``*2`` keys;
5. the final sinc kernel: with probability ``final_sinc_prob`` a sinc of a drawn size and ``omega_c`` ~
   U(pi/3, pi) padded to ``blur_kernel_size``, else a unit pulse (no filtering).

Every random choice comes from the sample's seed (``dataset[(index, seed)]``, from the resumable sampler), so a
sample does not depend on worker or process. The drawn kernel types and sizes are returned too (``*_info``),
for ``scripts/show_degradations.py``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch.utils import data

from desra.data.degradations.kernels import KERNEL_TYPES, Draws, circular_lowpass_kernel, random_mixed_kernels
from desra.data.file_client import LmdbReader, check_lmdb_keys
from desra.data.paired_image_dataset import (PairedImageDataset, check_io_backend, dataset_key_path, parse_key,
                                             positive_int, read_image, require_folder)
from desra.data.transforms import augment
from desra.errors import ConfigError, DataError
from desra.registry import DATASET_REGISTRY

__all__ = ['RealESRGANDataset', 'RealESRGANPairedDataset', 'check_kernel_options']


def _float_range(opt, key, kp, positive=False):
    v = opt.get(key)
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  for x in v)):
        raise ConfigError(f'{kp}.{key}: expected [low, high], got {v!r}')
    if not v[0] < v[1] or (positive and v[0] <= 0):
        low = '0 < low' if positive else 'low'
        raise ConfigError(f'{kp}.{key}: expected [low, high] with {low} < high, got {list(v)}')
    return [float(v[0]), float(v[1])]


def _probability(opt, key, kp):
    v = opt.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ConfigError(f'{kp}.{key}: expected a probability in [0, 1], got {v!r}')
    return float(v)


def check_kernel_options(opt: dict, kp: str, suffix: str = '') -> dict:
    """One stage's kernel keys (``suffix`` '' or '2'): names, probabilities summing to 1, odd size >= 7, ranges."""
    out = {}
    size_key = f'blur_kernel_size{suffix}'
    size = opt.get(size_key)
    if isinstance(size, bool) or not isinstance(size, int) or size < 7 or size % 2 == 0:
        raise ConfigError(f'{kp}.{size_key}: expected an odd kernel size >= 7 (Real-ESRGAN: 21), got {size!r}')
    out['blur_kernel_size'] = size
    list_key, prob_key = f'kernel_list{suffix}', f'kernel_prob{suffix}'
    kernel_list = opt.get(list_key)
    if not isinstance(kernel_list, (list, tuple)) or not kernel_list:
        raise ConfigError(f'{kp}.{list_key}: expected a list of kernel types ({", ".join(KERNEL_TYPES)}), '
                          f'got {kernel_list!r}')
    for i, name in enumerate(kernel_list):
        if name not in KERNEL_TYPES:
            import difflib

            close = difflib.get_close_matches(str(name), KERNEL_TYPES, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise ConfigError(f"{kp}.{list_key}[{i}]: unknown kernel type {name!r}.{hint} Expected one of "
                              f"{', '.join(KERNEL_TYPES)}")
    kernel_prob = opt.get(prob_key)
    if not (isinstance(kernel_prob, (list, tuple)) and all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                            and p >= 0 for p in kernel_prob)):
        raise ConfigError(f'{kp}.{prob_key}: expected a list of probabilities >= 0, got {kernel_prob!r}')
    if len(kernel_prob) != len(kernel_list):
        raise ConfigError(f'{kp}.{prob_key}: {len(kernel_prob)} probabilities for the {len(kernel_list)} kernel types '
                          f'of {list_key}; give one per type')
    if not math.isclose(sum(kernel_prob), 1.0, abs_tol=1e-6):
        raise ConfigError(f'{kp}.{prob_key}: the probabilities sum to {sum(kernel_prob):g}, expected 1')
    out['kernel_list'], out['kernel_prob'] = list(kernel_list), [float(p) for p in kernel_prob]
    out['sinc_prob'] = _probability(opt, f'sinc_prob{suffix}', kp)
    out['blur_sigma'] = _float_range(opt, f'blur_sigma{suffix}', kp, positive=True)
    out['betag_range'] = _float_range(opt, f'betag_range{suffix}', kp, positive=True)
    out['betap_range'] = _float_range(opt, f'betap_range{suffix}', kp, positive=True)
    return out


def _reflect_pad_to(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    return cv2.copyMakeBorder(img, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT_101)


@DATASET_REGISTRY.register()
class RealESRGANDataset(data.Dataset):
    """GT images + the three kernels of Real-ESRGAN's degradation (see the module notes).

    Options (Real-ESRGAN's keys): ``dataroot_gt``, ``meta_info`` (also ``meta_info_file``), ``io_backend`` (``disk``
    or ``lmdb``), ``blur_kernel_size``, ``kernel_list``, ``kernel_prob``, ``sinc_prob``, ``blur_sigma``,
    ``betag_range``, ``betap_range``, the same with ``2``, ``final_sinc_prob``, ``use_hflip``, ``use_rot``,
    ``gt_size`` (read by the model, which crops after degrading), ``crop_pad_size`` (400).

    Items: ``gt`` (3 x S x S RGB in [0, 1], S = ``crop_pad_size``), ``kernel1``, ``kernel2``, ``sinc_kernel``
    (``blur_kernel_size`` square float32), ``gt_path``, and ``kernel1_info`` / ``kernel2_info`` / ``sinc_info``.
    """

    option_keys = frozenset({'dataroot_gt', 'meta_info', 'meta_info_file', 'io_backend', 'blur_kernel_size',
                             'kernel_list', 'kernel_prob', 'sinc_prob', 'blur_sigma', 'betag_range', 'betap_range',
                             'blur_kernel_size2', 'kernel_list2', 'kernel_prob2', 'sinc_prob2', 'blur_sigma2',
                             'betag_range2', 'betap_range2', 'final_sinc_prob', 'gt_size', 'use_hflip', 'use_flip',
                             'use_rot', 'crop_pad_size'})
    #: The model must degrade these items (``high_order_degradation: true``).
    provides_kernels = True

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        kp = self.key_path = dataset_key_path(opt)
        self.backend = check_io_backend(opt, kp)
        self.stages = [check_kernel_options(opt, kp, ''), check_kernel_options(opt, kp, '2')]
        self.final_sinc_prob = _probability(opt, 'final_sinc_prob', kp)
        self.max_kernel = max(self.stages[0]['blur_kernel_size'], self.stages[1]['blur_kernel_size'])
        self.crop_pad_size = positive_int(opt, 'crop_pad_size', f'{kp}.crop_pad_size') \
            if opt.get('crop_pad_size') is not None else 400
        self.use_hflip = bool(opt.get('use_hflip', opt.get('use_flip', False)))
        self.use_rot = bool(opt.get('use_rot', False))
        self.gt_folder = require_folder(opt, 'dataroot_gt', kp, 'ground-truth images')
        self.reader = None
        if self.backend == 'lmdb':
            self.reader = LmdbReader(self.gt_folder, f'{kp}.dataroot_gt')
            self.paths = check_lmdb_keys(self.gt_folder, f'{kp}.dataroot_gt')
        else:
            self.paths = self._paths_from_meta_info(kp)

    def _paths_from_meta_info(self, kp) -> list[str]:
        key = 'meta_info' if self.opt.get('meta_info') else 'meta_info_file'
        if not self.opt.get(key):
            raise ConfigError(f'{kp}.meta_info: missing required key (a text file listing the GT images relative to '
                              f'dataroot_gt, one per line; scripts/generate_meta_info.py writes it)')
        meta = os.path.abspath(os.path.expanduser(self.opt[key]))
        if not os.path.isfile(meta):
            raise DataError(f'{kp}.{key}: file does not exist: {meta}')
        paths = []
        with open(meta, encoding='utf-8') as f:
            for n, line in enumerate(f, 1):
                if not line.strip() or line.lstrip().startswith('#'):
                    continue
                rel = line.strip().split(' ')[0]
                path = os.path.join(self.gt_folder, rel)
                if not os.path.isfile(path):
                    raise DataError(f'{kp}.{key}: line {n} of {meta} names {rel}, which does not exist in '
                                    f'{self.gt_folder}')
                paths.append(path)
        if not paths:
            raise DataError(f'{kp}.{key}: {meta} lists no images')
        return paths

    # -- kernels
    def _kernel(self, stage: dict, draw: Draws):
        size = draw.choice([2 * v + 1 for v in range(3, stage['blur_kernel_size'] // 2 + 1)])
        if draw.uniform() < stage['sinc_prob']:
            omega_c = draw.uniform(np.pi / 3, np.pi) if size < 13 else draw.uniform(np.pi / 5, np.pi)
            kernel, info = circular_lowpass_kernel(omega_c, size, pad_to=0), f'sinc {size} wc={omega_c:.2f}'
        else:
            kernel, kind = random_mixed_kernels(stage['kernel_list'], stage['kernel_prob'], size, stage['blur_sigma'],
                                                stage['blur_sigma'], [-math.pi, math.pi], stage['betag_range'],
                                                stage['betap_range'], noise_range=None, rng=draw.rng,
                                                return_type=True)
            info = f'{kind} {size}'
        pad = (self.max_kernel - size) // 2
        return np.pad(kernel, ((pad, pad), (pad, pad))), info

    def __getitem__(self, key) -> dict:
        index, seed = parse_key(key, len(self))
        rng = np.random.default_rng(seed) if seed is not None else None
        draw = Draws(rng)
        gt_path = self.paths[index]
        img = read_image(gt_path, self.reader).astype(np.float32) / 255.
        img = augment(img, self.use_hflip, self.use_rot, rng=rng)
        size = self.crop_pad_size
        img = _reflect_pad_to(img, size)
        h, w = img.shape[:2]
        if h > size or w > size:
            top, left = draw.randint(0, h - size), draw.randint(0, w - size)
            img = img[top:top + size, left:left + size]
        kernel1, info1 = self._kernel(self.stages[0], draw)
        kernel2, info2 = self._kernel(self.stages[1], draw)
        if draw.uniform() < self.final_sinc_prob:
            k = draw.choice([2 * v + 1 for v in range(3, self.max_kernel // 2 + 1)])
            omega_c = draw.uniform(np.pi / 3, np.pi)
            sinc = circular_lowpass_kernel(omega_c, k, pad_to=self.max_kernel)
            sinc_info = f'sinc {k} wc={omega_c:.2f}'
        else:
            sinc = np.zeros((self.max_kernel, self.max_kernel))
            sinc[self.max_kernel // 2, self.max_kernel // 2] = 1
            sinc_info = 'no sinc'
        gt = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))).float()
        return {'gt': gt, 'kernel1': torch.from_numpy(kernel1).float(), 'kernel2': torch.from_numpy(kernel2).float(),
                'sinc_kernel': torch.from_numpy(sinc).float(), 'gt_path': gt_path, 'kernel1_info': info1,
                'kernel2_info': info2, 'sinc_info': sinc_info}

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(images={len(self)}, gt={self.gt_folder}, backend={self.backend})'


@DATASET_REGISTRY.register()
class RealESRGANPairedDataset(PairedImageDataset):
    """Real-ESRGAN's paired data set: ``meta_info`` lines ``gt_path, lq_path`` relative to ``dataroot_gt`` and
    ``dataroot_lq``; without ``meta_info`` the folders are paired by ``filename_tmpl``; LMDB as BasicSR's.

    Cropping, flips and rotations are those of :class:`~desra.data.paired_image_dataset.PairedImageDataset`.
    """
