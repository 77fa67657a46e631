"""DeSRA artifact detection for one image pair or a batch (Sec. 3.2): D -> semantic S -> threshold -> morphology.

The released pipeline: D in valid mode ((H-10) x (W-10) for the 11 x 11 window), the SegFormer label map
cropped by 5 px per side to line up, ``S = clip(D * w[label], 0, 1)``, ``S < 0.7``, erode 5x5, dilate 5x5
three times, fill holes (3x3), drop 8-connected components of <= 4000 px. The released masks stay at the
cropped size; by default this function puts the mask back at SR size with the uncovered 5 px band marked
0 (no artifact), which is what pseudo-GT blending and the metrics at SR size need.

Numpy input without labels needs neither torch nor the semantic module (both are imported when used).
"""
from __future__ import annotations

import os

import numpy as np

from desra.detection.indicator import SSIM_CONSTANT, texture_similarity
from desra.detection.morphology import clean_mask
from desra.utils.lazy_torch import is_tensor

__all__ = ['detect_artifacts']


def _crop_labels(labels, full_hw, valid_hw, h: int, is_torch: bool, device):
    """Label map at SR size (cropped by h per side) or already at the valid size -> D's kind and layout."""
    from desra.detection.semantics import _is_int_dtype

    if is_torch:
        import torch

        lab = labels if torch.is_tensor(labels) else torch.from_numpy(np.asarray(labels))
        lab = lab.to(device)
        if lab.dim() == 4 and lab.shape[1] == 1:
            lab = lab[:, 0]
        if lab.dim() == 2:
            lab = lab[None]
    else:
        lab = labels.cpu().numpy() if is_tensor(labels) else np.asarray(labels)
    if not _is_int_dtype(lab):
        raise ValueError(f'detect_artifacts: labels must be integer class indices, got dtype {lab.dtype}')
    hw = tuple(lab.shape[-2:])
    if hw == tuple(full_hw):
        lab = lab[..., h:hw[0] - h, h:hw[1] - h]
    elif hw != tuple(valid_hw):
        raise ValueError(f'detect_artifacts: labels of shape {tuple(lab.shape)} match neither the SR size '
                         f'{full_hw[0]}x{full_hw[1]} nor the cropped size {valid_hw[0]}x{valid_hw[1]}')
    return lab


def detect_artifacts(mse_sr, gan_sr, labels=None, class_weights=None, threshold: float = 0.7,
                     window: str = 'gaussian', window_size: int = 11, sigma: float = 1.5,
                     constant: float = SSIM_CONSTANT, erode: int = 5, dilate: int = 5, dilate_iterations: int = 3,
                     fill_holes: int = 3, min_area=4000, official_crop: bool = False, return_maps: bool = False):
    """DeSRA artifact mask of a GAN-SR image, given the MSE-SR image of the same input.

    Args:
        mse_sr, gan_sr: SR images in [0, 255] as accepted by :func:`texture_similarity` (numpy
            ``H x W x C`` / ``H x W``, or torch ``B x C x H x W`` / ``C x H x W``).
        labels: optional semantic class indices of the GAN-SR image (ADE20K order): numpy ``H x W`` or torch
            ``B x H x W`` / ``B x 1 x H x W``, at SR size (cropped by ``window_size // 2`` per side here,
            as released) or already at the cropped size.
        class_weights: per-class weights for the labels: a ``.txt`` / ``.json`` class file path, a dict
            ``{name: weight}`` or K floats (see :func:`load_class_weights`). None: every weight 1, i.e.
            ``S = clip(D, 0, 1)`` (also when labels are given). Requires ``labels`` when set.
        threshold: artifact where ``S < threshold`` (0.7).
        window, window_size, sigma, constant: indicator options (:func:`texture_similarity`).
        erode, dilate, dilate_iterations, fill_holes, min_area: morphology (:func:`clean_mask`); a float
            ``min_area`` in (0, 1) is a fraction of the cropped map's area ``(H-2h) x (W-2h)``.
        official_crop: True returns the released ``(H-2h) x (W-2h)`` mask (``h = window_size // 2``);
            False (default) returns an ``H x W`` mask whose ``h``-pixel border band is 0.
        return_maps: also return ``{'D': D, 'S': S, 'labels': cropped labels or None}``, all at the
            cropped size: numpy ``H' x W'`` arrays, or torch ``B x 1 x H' x W'`` maps and ``B x H' x W'``
            labels (no batch dimension for a ``C x H x W`` input).

    Returns:
        uint8 0/255 mask (255 = artifact): numpy ``H x W`` for numpy input, torch ``B x H x W`` on the
        input's device for torch input (``H x W`` for a ``C x H x W`` input); with ``return_maps``, the
        pair ``(mask, maps)``.
    """
    if labels is None and class_weights is not None:
        raise ValueError('detect_artifacts: class_weights are given but no labels to look them up with')
    is_torch = is_tensor(mse_sr)
    D = texture_similarity(mse_sr, gan_sr, window=window, window_size=window_size, sigma=sigma,
                           constant=constant, valid=True)
    h = int(window_size) // 2
    full_hw = tuple(mse_sr.shape[-2:]) if is_torch else tuple(mse_sr.shape[:2])
    valid_hw = tuple(D.shape[-2:])
    squeeze = is_torch and mse_sr.dim() == 3
    Db = D[None] if squeeze else D  # torch: B x 1 x H' x W'

    lab = None
    if labels is not None:
        lab = _crop_labels(labels, full_hw, valid_hw, h, is_torch, D.device if is_torch else None)
        if is_torch and lab.shape[0] != Db.shape[0]:
            raise ValueError(f'detect_artifacts: {lab.shape[0]} label maps for a batch of {Db.shape[0]} images')
    if class_weights is not None:
        from desra.detection.semantics import load_class_weights, semantic_adjust

        if isinstance(class_weights, (str, os.PathLike, dict)):
            class_weights = load_class_weights(class_weights)
        S = semantic_adjust(Db, lab, class_weights)
    else:
        S = Db.clamp(0, 1) if is_torch else np.clip(Db, 0, 1)

    binary = S < threshold
    mask = clean_mask(binary[:, 0] if is_torch else binary, erode=erode, dilate=dilate,
                      dilate_iterations=dilate_iterations, fill_holes=fill_holes, min_area=min_area)
    if not official_crop:
        if is_torch:
            import torch

            full = torch.zeros(mask.shape[:-2] + full_hw, dtype=torch.uint8, device=mask.device)
        else:
            full = np.zeros(full_hw, np.uint8)
        full[..., h:h + valid_hw[0], h:h + valid_hw[1]] = mask
        mask = full
    if squeeze:
        mask, S = mask[0], S[0]
        lab = None if lab is None else lab[0]
    if return_maps:
        return mask, {'D': D, 'S': S, 'labels': lab}
    return mask
