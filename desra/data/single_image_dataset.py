"""LQ-only image dataset for inference/testing (BasicSR's ``SingleImageDataset`` options)."""
from __future__ import annotations

import os

from torch.utils import data

from desra.data.io import imread
from desra.data.paired_image_dataset import (check_io_backend, dataset_key_path, format_list, list_images,
                                             parse_color_and_norm, parse_key, read_meta_info, require_folder,
                                             to_tensor)
from desra.errors import DataError
from desra.registry import DATASET_REGISTRY

__all__ = ['SingleImageDataset']


@DATASET_REGISTRY.register()
class SingleImageDataset(data.Dataset):
    """Images from one folder, returned whole.

    Options: ``dataroot_lq`` (folder); ``meta_info_file`` (optional list of names relative to it, lines
    ``name.png (h,w,c)`` or ``name.png``); ``recursive`` (search sub-folders, default false);
    ``io_backend`` (``{type: disk}``); optional ``mean``/``std`` and ``color: y``.

    Items: ``{'lq': C x H x W float32 RGB in [0, 1] (before mean/std), 'lq_path': str}``. Keys may be an
    int or an ``(index, seed)`` pair; there is no randomness, so the seed is ignored.
    """

    option_keys = frozenset({'dataroot_lq', 'meta_info_file', 'recursive', 'io_backend', 'mean', 'std', 'color'})

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase', 'test')
        kp = self.key_path = dataset_key_path(opt)
        check_io_backend(opt, kp)
        self.color, self.mean, self.std = parse_color_and_norm(opt, kp)
        self.lq_folder = require_folder(opt, 'dataroot_lq', kp, 'input images')
        if opt.get('meta_info_file'):
            names = read_meta_info(opt, kp)
            missing = [n for n in names if not os.path.isfile(os.path.join(self.lq_folder, n))]
            if missing:
                meta = os.path.abspath(os.fspath(opt['meta_info_file']))
                raise DataError(f'{kp}.meta_info_file: {meta} lists {len(names)} image(s) but {len(missing)} '
                                f'are not in {self.lq_folder}: {format_list(missing)}')
        else:
            names = list_images(self.lq_folder, 'dataroot_lq', kp, bool(opt.get('recursive', False)))
        self.paths = [os.path.join(self.lq_folder, n) for n in names]

    def __getitem__(self, key) -> dict:
        index, _ = parse_key(key, len(self))
        lq_path = self.paths[index]
        img = imread(lq_path, 'color')
        return {'lq': to_tensor(img, self.color, self.mean, self.std), 'lq_path': lq_path}

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(name={self.opt.get("name", self.phase)!r}, images={len(self)}, '
                f'lq={self.lq_folder})')
