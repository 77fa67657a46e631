"""Paired cropping and flip/rotation augmentation (BasicSR-compatible semantics).

Randomness: every function takes ``rng``, a :class:`numpy.random.Generator`. With ``rng=None`` the global
``np.random`` state is used, as BasicSR does; datasets pass a generator seeded per sample so that a
sample depends only on ``(index, seed)`` and not on which worker process draws it.
"""
from __future__ import annotations

import numpy as np
import torch

from desra.errors import ConfigError, DataError

__all__ = ['mod_crop', 'paired_random_crop', 'augment']


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right of an H x W [x C] image so that H and W are multiples of ``scale``."""
    if img.ndim not in (2, 3):
        raise ValueError(f'mod_crop expects an H x W or H x W x C image, got shape {img.shape}')
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale, ...].copy()


def _randint(rng: np.random.Generator | None, high: int) -> int:
    """Uniform integer in [0, high] inclusive."""
    if rng is None:
        return int(np.random.randint(0, high + 1))
    return int(rng.integers(0, high + 1))


def _random(rng: np.random.Generator | None) -> float:
    return float(np.random.random()) if rng is None else float(rng.random())


def paired_random_crop(img_gts, img_lqs, gt_patch_size: int, scale: int, gt_path: str | None = None,
                       rng: np.random.Generator | None = None):
    """Crop the same random region from GT and LQ images.

    Args:
        img_gts: GT image or list of images: numpy H x W [x C], or tensors [B x] C x H x W.
        img_lqs: LQ image(s) of the same kind, ``scale`` times smaller than the GT.
        gt_patch_size: GT patch side; the LQ patch side is ``gt_patch_size // scale``.
        scale: super-resolution factor.
        gt_path: the GT file, named in error messages.
        rng: random generator (global ``np.random`` if None).

    Returns:
        ``(gt_patches, lq_patches)``; like BasicSR, a list of one image is returned as that image.

    Raises:
        DataError: GT size is not ``scale`` x LQ size, or the LQ is smaller than the LQ patch.
    """
    if not isinstance(img_gts, list):
        img_gts = [img_gts]
    if not isinstance(img_lqs, list):
        img_lqs = [img_lqs]
    if gt_patch_size % scale != 0:
        raise ConfigError(f'gt_size ({gt_patch_size}) must be a multiple of scale ({scale})')
    is_tensor = torch.is_tensor(img_gts[0])

    def _hw(img):
        return tuple(img.shape[-2:]) if is_tensor else tuple(img.shape[:2])

    where = f' (GT {gt_path})' if gt_path else ''
    h_lq, w_lq = _hw(img_lqs[0])
    h_gt, w_gt = _hw(img_gts[0])
    lq_patch_size = gt_patch_size // scale
    for img in img_lqs[1:]:
        if _hw(img) != (h_lq, w_lq):
            raise DataError(f'LQ images to crop together differ in size: {h_lq}x{w_lq} and '
                            f'{_hw(img)[0]}x{_hw(img)[1]}{where}')
    for img in img_gts[1:]:
        if _hw(img) != (h_gt, w_gt):
            raise DataError(f'GT images to crop together differ in size: {h_gt}x{w_gt} and '
                            f'{_hw(img)[0]}x{_hw(img)[1]}{where}')
    if h_gt != h_lq * scale or w_gt != w_lq * scale:
        raise DataError(f'GT is {h_gt}x{w_gt} but LQ is {h_lq}x{w_lq} at scale {scale}: expected GT '
                        f'{h_lq * scale}x{w_lq * scale}{where}')
    if h_lq < lq_patch_size or w_lq < lq_patch_size:
        raise DataError(f'LQ is {h_lq}x{w_lq}, smaller than the LQ patch {lq_patch_size}x{lq_patch_size} '
                        f'(gt_size {gt_patch_size} / scale {scale}){where}')

    top = _randint(rng, h_lq - lq_patch_size)
    left = _randint(rng, w_lq - lq_patch_size)
    top_gt, left_gt = top * scale, left * scale
    if is_tensor:
        img_lqs = [v[..., top:top + lq_patch_size, left:left + lq_patch_size] for v in img_lqs]
        img_gts = [v[..., top_gt:top_gt + gt_patch_size, left_gt:left_gt + gt_patch_size] for v in img_gts]
    else:
        img_lqs = [v[top:top + lq_patch_size, left:left + lq_patch_size, ...] for v in img_lqs]
        img_gts = [v[top_gt:top_gt + gt_patch_size, left_gt:left_gt + gt_patch_size, ...] for v in img_gts]
    if len(img_gts) == 1:
        img_gts = img_gts[0]
    if len(img_lqs) == 1:
        img_lqs = img_lqs[0]
    return img_gts, img_lqs


def augment(imgs, hflip: bool = True, rotation: bool = True, flows=None, return_status: bool = False,
            rng: np.random.Generator | None = None):
    """Random horizontal flip, vertical flip and 90-degree rotation (transpose), each with p = 0.5.

    The same decisions apply to every image in ``imgs`` (e.g. a GT and its LQ). ``rotation=False``
    disables both the vertical flip and the transpose, as in BasicSR. Three random numbers are always
    drawn, so the decisions for a seed do not depend on the options.

    Args:
        imgs: numpy image H x W [x C] or a list of them.
        hflip: allow horizontal flips.
        rotation: allow vertical flips and transposes.
        flows: optional optical flow(s) H x W x 2 (dx, dy), transformed consistently.
        return_status: also return ``(hflip, vflip, rot90)``, the decisions taken.
        rng: random generator (global ``np.random`` if None).

    Returns:
        The augmented image(s) (a list of one is returned as that image), then the flows if given,
        then the status if asked. Outputs are contiguous copies.
    """
    draws = [_random(rng) for _ in range(3)]
    do_hflip = hflip and draws[0] < 0.5
    do_vflip = rotation and draws[1] < 0.5
    do_rot90 = rotation and draws[2] < 0.5

    def _img(img):
        if do_hflip:
            img = img[:, ::-1, ...]
        if do_vflip:
            img = img[::-1, ...]
        if do_rot90:
            img = img.transpose((1, 0) + tuple(range(2, img.ndim)))
        return np.ascontiguousarray(img)

    def _flow(flow):
        flow = flow.copy()
        if do_hflip:
            flow = flow[:, ::-1, :].copy()
            flow[:, :, 0] *= -1
        if do_vflip:
            flow = flow[::-1, :, :].copy()
            flow[:, :, 1] *= -1
        if do_rot90:
            flow = flow.transpose(1, 0, 2)[:, :, [1, 0]]
        return np.ascontiguousarray(flow)

    if not isinstance(imgs, list):
        imgs = [imgs]
    imgs = [_img(img) for img in imgs]
    if len(imgs) == 1:
        imgs = imgs[0]
    out = [imgs]
    if flows is not None:
        if not isinstance(flows, list):
            flows = [flows]
        flows = [_flow(f) for f in flows]
        if len(flows) == 1:
            flows = flows[0]
        out.append(flows)
    if return_status:
        out.append((do_hflip, do_vflip, do_rot90))
    return out[0] if len(out) == 1 else tuple(out)
