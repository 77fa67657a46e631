"""Restored images with binary artifact masks: the training data of the artifact localiser.

Three ways to name the files (exactly one):

* ``dataroot_img`` + ``dataroot_mask`` (+ ``dataroot_mse`` for the MSE-SR channels): two (three) folders paired
  by relative name without extension (flat, or the released ``root/<sub>/<img>`` layout);
* ``desra_root`` + ``methods``: the DeSRA release, ``<root>/<method>/GAN-SR`` with masks from
  ``<root>/<method>/<mask_folder>`` (``GT-Mask``, the hand-drawn masks, by default; ``DeSRA-Mask`` for the
  authors' detections) and ``<root>/<method>/MSE-SR``;
* ``detect_root``: a ``detect.py`` output folder; its records name the GAN-SR (and MSE-SR) image of every mask,
  so the DeSRA detector's masks become the labels (this distils the detector into a single-image model).

Masks: PNGs whose values are 0 and 255 (or 0 and 1; colour masks must have equal channels), or LabelMe ``.json``
polygons (rasterised by :func:`desra.metrics.artifact_metrics.load_mask`, optionally only the ``mask_labels``).
A mask of another size than its image, or with other values, is an error naming the files and what was seen.

Input: RGB in [0, 1]; with ``use_mse: true`` the MSE-SR image's RGB is appended (6 channels), which gives the
network the same evidence as the DeSRA detector (the difference between the two restorations) at the price of
needing an MSE-SR twin at inference. Training samples are ``gt_size`` crops (with probability
``artifact_crop_prob`` centred on a random artifact pixel, since artifacts cover a few percent of an image), with
random flips and transposes (``use_hflip``, ``use_rot``); other phases return whole images.

``meta_info_file``: one name per line (the relative name without extension, or with it) selects a split.

Items: ``{'lq': C x H x W float32, 'gt': 1 x H x W float32 in {0, 1}, 'lq_path', 'gt_path', 'name'}`` (``lq``
and ``gt`` are the names the engine's models read). Sampling keys ``(i, seed)`` as in
:class:`~desra.data.paired_image_dataset.PairedImageDataset`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch.utils import data

from desra.data.io import IMG_EXTENSIONS, imread
from desra.data.paired_image_dataset import dataset_key_path, format_list, parse_key, positive_int
from desra.data.transforms import augment
from desra.errors import ConfigError, DataError
from desra.registry import DATASET_REGISTRY
from desra.utils.images import display_name

__all__ = ['ArtifactMaskDataset', 'read_binary_mask']

_MASK_EXTENSIONS = IMG_EXTENSIONS + ('.json',)


def _list(root: str, key_path: str, extensions) -> dict[str, str]:
    """Files under ``root`` (flat or one sub-folder level) keyed by relative path without extension."""
    if not os.path.isdir(root):
        raise DataError(f'{key_path}: folder does not exist: {os.path.abspath(root)}')
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != '.' and os.sep in rel_dir:
            dirnames[:] = []
            continue
        dirnames.sort()
        for fname in sorted(filenames):
            stem, ext = os.path.splitext(fname)
            if fname.startswith('.') or ext.lower() not in extensions:
                continue
            key = stem if rel_dir == '.' else os.path.join(rel_dir, stem)
            path = os.path.join(dirpath, fname)
            if key in out:
                if ext.lower() == '.json' and not out[key].endswith('.json'):
                    continue  # a PNG mask wins over a LabelMe file of the same name (as eval_artifacts)
                if not (out[key].endswith('.json') and ext.lower() != '.json'):
                    raise DataError(f"{key_path}: two files share the name '{display_name(key)}': "
                                    f'{display_name(out[key])} and {display_name(path)}')
            out[key] = path
    if not out:
        raise DataError(f'{key_path}: no files ({", ".join(extensions)}) in {os.path.abspath(root)}')
    return out


def read_binary_mask(path: str, size: tuple[int, int], image_path: str, labels=None) -> np.ndarray:
    """A mask as an H x W float32 array in {0, 1}; checks its size against its image's and that it is binary."""
    h, w = size
    if path.endswith('.json'):
        from desra.metrics.artifact_metrics import load_mask

        try:
            return load_mask(path, size=(h, w), labels=labels).astype(np.float32)
        except ValueError as e:
            raise DataError(f'{display_name(path)}: {e}') from None
    m = imread(path, flag='unchanged')
    if m.ndim == 3:
        m = m[..., :3] if m.shape[2] >= 3 else m[..., :1]
        if m.shape[2] == 3 and not (np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2])):
            raise DataError(f'mask {display_name(path)} is a colour image with different channels; expected a '
                            'gray 0/255 mask')
        m = m[..., 0]
    if m.shape != (h, w):
        raise DataError(f'mask {display_name(path)} is {m.shape[1]}x{m.shape[0]} but its image '
                        f'{display_name(image_path)} is {w}x{h}')
    values = np.unique(m)
    top = 1 if values.max(initial=0) <= 1 else (255 if m.dtype == np.uint8 else 65535)
    if not np.all(np.isin(values, (0, top))):
        shown = ', '.join(str(int(v)) for v in values[:8]) + (' ...' if len(values) > 8 else '')
        raise DataError(f'mask {display_name(path)} is not binary: values {shown} (expected 0 and 255, or 0 and 1)')
    return (m > 0).astype(np.float32)


@DATASET_REGISTRY.register()
class ArtifactMaskDataset(data.Dataset):
    """Restored images and their artifact masks (see the module docstring for the layouts and options)."""

    provides_masks = True
    option_keys = frozenset({'dataroot_img', 'dataroot_mask', 'dataroot_mse', 'desra_root', 'methods',
                             'mask_folder', 'detect_root', 'use_mse', 'meta_info_file', 'gt_size', 'use_hflip',
                             'use_rot', 'artifact_crop_prob', 'mask_labels', 'io_backend'})

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase', 'train')
        kp = self.key_path = dataset_key_path(opt)
        backend = (opt.get('io_backend') or {}).get('type', 'disk')
        if backend != 'disk':
            raise ConfigError(f"{kp}.io_backend.type: ArtifactMaskDataset reads files from disk, got {backend!r}")
        self.use_mse = bool(opt.get('use_mse', False))
        self.mask_labels = opt.get('mask_labels')
        self.items = self._items(kp)
        if opt.get('meta_info_file'):
            self.items = self._select(self.items, opt['meta_info_file'], kp)
        if self.phase == 'train':
            if opt.get('gt_size') is None:
                raise ConfigError(f'{kp}.gt_size: missing required key for training (crop side in pixels)')
            self.gt_size = positive_int(opt, 'gt_size', f'{kp}.gt_size')
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.use_rot = bool(opt.get('use_rot', True))
        self.artifact_crop_prob = float(opt.get('artifact_crop_prob', 0.0))
        if not 0.0 <= self.artifact_crop_prob <= 1.0:
            raise ConfigError(f'{kp}.artifact_crop_prob: expected a probability in [0, 1], got '
                              f'{opt["artifact_crop_prob"]!r}')

    # -- file lists ------------------------------------------------------------------------------------

    def _items(self, kp: str) -> list[dict]:
        given = [k for k in ('dataroot_img', 'desra_root', 'detect_root') if self.opt.get(k)]
        if len(given) != 1:
            raise ConfigError(f'{kp}: give exactly one of dataroot_img (+ dataroot_mask), desra_root (+ methods) or '
                              f'detect_root; got {", ".join(given) or "none"}')
        if given[0] == 'detect_root':
            return self._from_detect_root(kp)
        if given[0] == 'desra_root':
            methods = self.opt.get('methods')
            if not methods or not isinstance(methods, list):
                raise ConfigError(f'{kp}.methods: a list of method folders of desra_root, e.g. [RealESRGAN, LDL]')
            root, mask_folder = self.opt['desra_root'], self.opt.get('mask_folder', 'GT-Mask')
            items = []
            for m in methods:
                mse = os.path.join(root, m, 'MSE-SR') if self.use_mse else None
                items += self._pair(os.path.join(root, m, 'GAN-SR'), os.path.join(root, m, mask_folder), mse,
                                    f'{kp}.desra_root', prefix=f'{m}/')
            return items
        if not self.opt.get('dataroot_mask'):
            raise ConfigError(f'{kp}.dataroot_mask: missing required key (the mask folder of dataroot_img)')
        if self.use_mse and not self.opt.get('dataroot_mse'):
            raise ConfigError(f'{kp}.dataroot_mse: use_mse is true, give the MSE-SR folder')
        return self._pair(self.opt['dataroot_img'], self.opt['dataroot_mask'],
                          self.opt.get('dataroot_mse') if self.use_mse else None, kp)

    def _pair(self, img_root, mask_root, mse_root, kp, prefix='') -> list[dict]:
        imgs = _list(img_root, f'{kp}.dataroot_img' if not prefix else kp, IMG_EXTENSIONS)
        masks = _list(mask_root, f'{kp}.dataroot_mask' if not prefix else kp, _MASK_EXTENSIONS)
        mses = _list(mse_root, f'{kp}.dataroot_mse' if not prefix else kp, IMG_EXTENSIONS) if mse_root else {}
        no_mask = sorted(set(imgs) - set(masks))
        if no_mask:
            raise DataError(f'{kp}: {len(no_mask)} image(s) in {img_root} have no mask in {mask_root}: '
                            f'{format_list([display_name(n) for n in no_mask])}')
        if mse_root:
            no_mse = sorted(set(imgs) - set(mses))
            if no_mse:
                raise DataError(f'{kp}: {len(no_mse)} image(s) in {img_root} have no MSE-SR twin in {mse_root}: '
                                f'{format_list([display_name(n) for n in no_mse])}')
        return [{'name': prefix + n, 'img': imgs[n], 'mask': masks[n], 'mse': mses.get(n)} for n in sorted(imgs)]

    def _from_detect_root(self, kp: str) -> list[dict]:
        root = self.opt['detect_root']
        rec_dir = os.path.join(root, 'records')
        if not os.path.isdir(rec_dir):
            raise DataError(f'{kp}.detect_root: {os.path.abspath(root)} is not a detect.py output folder (no records/)')
        items = []
        for fname in sorted(os.listdir(rec_dir)):
            if not fname.endswith('.json'):
                continue
            path = os.path.join(rec_dir, fname)
            try:
                with open(path, encoding='utf-8') as f:
                    rec = json.load(f)
            except (OSError, ValueError) as e:
                raise DataError(f'{kp}.detect_root: unreadable record {display_name(path)} ({e})') from None
            img, mask, mse = rec.get('gan_sr'), rec.get('mask'), rec.get('mse_sr')
            missing = [p for p in (img, mask, mse if self.use_mse else None) if p and not os.path.isfile(p)]
            if not img or not mask or missing or (self.use_mse and not mse):
                raise DataError(f'{kp}.detect_root: record {display_name(path)} names files that are not there '
                                f'({", ".join(display_name(p) for p in missing) or "no gan_sr/mask path"}); rerun '
                                'detect.py with save_sr: true, or keep its inputs in place')
            items.append({'name': rec.get('name', fname[:-5]), 'img': img, 'mask': mask, 'mse': mse})
        if not items:
            raise DataError(f'{kp}.detect_root: no records in {os.path.abspath(rec_dir)}')
        return items

    @staticmethod
    def _select(items: list[dict], meta: str, kp: str) -> list[dict]:
        if not os.path.isfile(meta):
            raise DataError(f'{kp}.meta_info_file: file does not exist: {os.path.abspath(meta)}')
        with open(meta, encoding='utf-8') as f:
            wanted = [line.split()[0] for line in f if line.strip() and not line.startswith('#')]
        by_name = {it['name']: it for it in items}
        for it in items:
            by_name.setdefault(os.path.basename(it['name']), it)
        missing = [w for w in wanted if w not in by_name and os.path.splitext(w)[0] not in by_name]
        if missing:
            raise DataError(f'{kp}.meta_info_file: {len(missing)} name(s) of {meta} are not in the data: '
                            f'{format_list(missing)}')
        return [by_name.get(w, by_name.get(os.path.splitext(w)[0])) for w in wanted]

    # -- loading ---------------------------------------------------------------------------------------

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H x W x C float32 RGB [0, 1], C = 3 or 6) and mask (H x W float32 {0, 1}) of item ``index``."""
        it = self.items[index]
        img = imread(it['img'])
        mask = read_binary_mask(it['mask'], img.shape[:2], it['img'], self.mask_labels)
        planes = [img[..., ::-1]]
        if self.use_mse:
            mse = imread(it['mse'])
            if mse.shape != img.shape:
                raise DataError(f'MSE-SR {display_name(it["mse"])} is {mse.shape[1]}x{mse.shape[0]} but its image '
                                f'{display_name(it["img"])} is {img.shape[1]}x{img.shape[0]}')
            planes.append(mse[..., ::-1])
        return np.concatenate(planes, axis=2).astype(np.float32) / 255.0, mask

    def _crop(self, img, mask, rng, path):
        s = self.gt_size
        h, w = mask.shape
        if h < s or w < s:
            raise DataError(f'{display_name(path)} is {w}x{h}, smaller than the {s}x{s} crop of '
                            f'{self.key_path}.gt_size; lower gt_size or remove the image')
        draw = rng.random() if rng is not None else np.random.random()
        ys, xs = np.nonzero(mask)
        if draw < self.artifact_crop_prob and len(ys):
            k = int(rng.integers(len(ys))) if rng is not None else np.random.randint(len(ys))
            top = int(np.clip(ys[k] - s // 2, 0, h - s))
            left = int(np.clip(xs[k] - s // 2, 0, w - s))
        else:
            top = int(rng.integers(h - s + 1)) if rng is not None else np.random.randint(h - s + 1)
            left = int(rng.integers(w - s + 1)) if rng is not None else np.random.randint(w - s + 1)
        return img[top:top + s, left:left + s], mask[top:top + s, left:left + s]

    def __getitem__(self, key) -> dict:
        index, seed = parse_key(key, len(self))
        rng = None if seed is None else np.random.default_rng(seed)
        img, mask = self.load(index)
        it = self.items[index]
        if self.phase == 'train':
            img, mask = self._crop(img, mask, rng, it['img'])
            img, mask = augment([img, mask[..., None]], self.use_hflip, self.use_rot, rng=rng)
            mask = mask[..., 0]
        return {'lq': torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                'gt': torch.from_numpy(np.ascontiguousarray(mask))[None],
                'lq_path': it['img'], 'gt_path': it['mask'], 'name': it['name']}

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(name={self.opt.get("name", self.phase)!r}, phase={self.phase!r}, '
                f'images={len(self)}, use_mse={self.use_mse})')

