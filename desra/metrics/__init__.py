"""Image-quality metrics; importing registers them in ``METRIC_REGISTRY``.

In a YAML ``val.metrics`` block each entry names a registered function by ``type`` and gives its
keyword arguments, e.g. ``psnr: {type: calculate_psnr, crop_border: 4, test_y_channel: false}``.

Per-image metrics are averaged over a data set; a function with ``set_level = True`` (``calculate_fid``) is
computed over the whole set instead (:class:`desra.engine.validation.MetricSet`). A function's ``better``
attribute (``'lower'`` for LPIPS, DISTS, FID, NIQE) is the default of the YAML ``better`` key, used in tables and
"best" tracking; a ``preflight`` attribute checks, before a run starts, that the files the metric needs exist.
"""
from __future__ import annotations

import copy

from desra.metrics.color import bgr2ycbcr, rgb2ycbcr, rgb2ycbcr_pt, to_y_channel, ycbcr2bgr, ycbcr2rgb  # noqa: F401
from desra.metrics.psnr_ssim import (calculate_psnr, calculate_psnr_pt, calculate_ssim,  # noqa: F401
                                     calculate_ssim_pt)
from desra.metrics.artifact_metrics import (artifact_metrics, load_mask, mask_iou,  # noqa: F401
                                            region_precision_counts, region_recall_counts, removal_addition_rates)
from desra.metrics.niqe import calculate_niqe, niqe_map  # noqa: F401
from desra.metrics.lpips import calculate_lpips, calculate_lpips_pt  # noqa: F401
from desra.metrics.dists import calculate_dists, calculate_dists_pt  # noqa: F401
from desra.metrics.fid import calculate_fid  # noqa: F401
from desra.errors import ConfigError
from desra.registry import METRIC_REGISTRY

__all__ = ['calculate_metric', 'calculate_psnr', 'calculate_ssim', 'calculate_psnr_pt', 'calculate_ssim_pt',
           'bgr2ycbcr', 'rgb2ycbcr', 'rgb2ycbcr_pt', 'ycbcr2bgr', 'ycbcr2rgb', 'to_y_channel', 'artifact_metrics',
           'load_mask', 'mask_iou', 'region_precision_counts', 'region_recall_counts', 'removal_addition_rates',
           'calculate_niqe', 'niqe_map', 'calculate_lpips', 'calculate_lpips_pt', 'calculate_dists',
           'calculate_dists_pt', 'calculate_fid']


def calculate_metric(data: dict, opt: dict, key_path: str = 'val.metrics'):
    """Evaluate the metric described by ``opt`` (``type`` + keyword arguments) on ``data``.

    ``data`` holds the images, e.g. ``{'img': sr, 'img2': gt}``; ``key_path`` is the YAML path of
    ``opt``, used in error messages.
    """
    opt = copy.deepcopy(opt)
    metric_type = opt.pop('type', None)
    if metric_type is None:
        raise ConfigError(f'{key_path}.type: missing required key (a registered metric name, e.g. calculate_psnr)')
    return METRIC_REGISTRY.get(metric_type, f'{key_path}.type')(**data, **opt)
