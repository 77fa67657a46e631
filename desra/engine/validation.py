"""Periodic validation: SR of every validation image, metrics (BasicSR's ``val.metrics``), images to disk/TB."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from desra.engine import dist as dist_utils
from desra.errors import ConfigError

logger = logging.getLogger('desra')


def check_metric_options(metrics_opt: dict, key_path: str = 'val.metrics') -> None:
    """Check every metric block before training starts: a registered ``type`` and arguments it accepts.

    A typo (``crop_borders``) would otherwise stop the run at its first validation, hours in.
    """
    import inspect

    import desra.metrics  # noqa: F401  (registers the metrics)
    from desra.config import unknown_key_error
    from desra.errors import CheckpointError, ConfigError
    from desra.registry import METRIC_REGISTRY

    for name, m_opt in (metrics_opt or {}).items():
        kp = f'{key_path}.{name}'
        if not isinstance(m_opt, dict) or 'type' not in m_opt:
            raise ConfigError(f'{kp}.type: missing required key (a registered metric name, e.g. calculate_psnr)')
        fn = METRIC_REGISTRY.get(m_opt['type'], f'{kp}.type')
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        named = {n: p for n, p in params.items() if n not in ('img', 'img2', 'self')
                 and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        # the built-in metrics take **kwargs for BasicSR compatibility; their named arguments are the options
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values()) \
            and not getattr(fn, '__module__', '').startswith('desra.')
        if m_opt.get('better', 'higher') not in ('higher', 'lower'):
            raise ConfigError(f"{kp}.better: expected 'higher' or 'lower', got {m_opt['better']!r}")
        if getattr(fn, 'set_level', False):
            from desra.metrics.fid import FIDMetric

            FIDMetric.check_options(m_opt, kp)
            continue
        if not open_kwargs:
            for key in m_opt:
                if key not in ('type', 'better') and key not in named:
                    raise unknown_key_error(kp, key, {**named, 'better': None})
        for n, p in named.items():
            if p.default is p.empty and n not in m_opt:
                raise ConfigError(f'{kp}.{n}: missing required key for {m_opt["type"]}')
        preflight = getattr(fn, 'preflight', None)
        if preflight is not None:
            try:
                preflight(**{k: v for k, v in m_opt.items() if k not in ('type', 'better')})
            except CheckpointError as e:
                raise CheckpointError(f'{kp}: {e}') from None


def _metric_fn(m_opt: dict, key_path: str):
    import desra.metrics  # noqa: F401  (registers the metrics)
    from desra.registry import METRIC_REGISTRY

    return METRIC_REGISTRY.get(m_opt.get('type'), f'{key_path}.type')


def is_set_level(m_opt: dict, key_path: str = 'val.metrics') -> bool:
    """Whether a metric is computed over a whole data set (FID) rather than averaged over images."""
    return bool(getattr(_metric_fn(m_opt, key_path), 'set_level', False))


def compute_metrics(metrics_opt: dict, sr: torch.Tensor, gt: torch.Tensor, sr_img: np.ndarray,
                    gt_img: np.ndarray, key_path: str = 'val.metrics') -> dict:
    """Evaluate each per-image ``{name: {type: calculate_psnr, crop_border: 4, ...}}`` entry on one image pair.

    Metrics whose type ends in ``_pt`` take B x C x H x W tensors in [0, 1] (computed on ``sr``'s device, ``gt``
    is moved there); the others take the uint8 HWC BGR images (BasicSR's convention). Set-level metrics are
    skipped (see :class:`MetricSet`).
    """
    from desra.metrics import calculate_metric

    results = {}
    for name, m_opt in metrics_opt.items():
        key = f'{key_path}.{name}'
        if is_set_level(m_opt, key):
            continue
        m_opt = {k: v for k, v in m_opt.items() if k != 'better'}  # BasicSR's "higher/lower is better" flag
        if str(m_opt.get('type', '')).endswith('_pt'):
            value = calculate_metric({'img': sr, 'img2': gt.to(sr.device)}, m_opt, key)
            value = float(value.mean()) if torch.is_tensor(value) else float(value)
        else:
            value = float(calculate_metric({'img': sr_img, 'img2': gt_img}, m_opt, key))
        results[name] = value
    return results


class MetricSet:
    """The ``val.metrics`` of one data set: per-image metrics averaged over the images, set-level metrics (FID)
    accumulated over them and computed once at the end.

    ``update(sr, gt, sr_img, gt_img)`` takes one pair (tensors B x 3 x H x W in [0, 1], on the device the
    network-based metrics should run on, and the uint8 BGR images) and returns its per-image values;
    ``results()`` returns ``{name: value}`` in the order of ``metrics_opt``.
    """

    def __init__(self, metrics_opt: dict, key_path: str = 'val.metrics', device=None):
        from desra.metrics.fid import FIDMetric

        self.metrics_opt = metrics_opt or {}
        self.key_path = key_path
        self.set_level = {name: FIDMetric({k: v for k, v in m_opt.items()}, f'{key_path}.{name}', device)
                          for name, m_opt in self.metrics_opt.items() if is_set_level(m_opt, f'{key_path}.{name}')}
        self.per_image = {n: o for n, o in self.metrics_opt.items() if n not in self.set_level}
        self.sums = {n: 0.0 for n in self.per_image}
        self.count = 0

    def update(self, sr: torch.Tensor, gt: torch.Tensor, sr_img: np.ndarray, gt_img: np.ndarray) -> dict:
        values = compute_metrics(self.per_image, sr, gt, sr_img, gt_img, self.key_path)
        for name, v in values.items():
            self.sums[name] += v
        if self.set_level:  # as FID on the saved 8-bit images
            sr_q, gt_q = (torch.round(x.clamp(0, 1) * 255) / 255 for x in (sr, gt.to(sr.device)))
            for metric in self.set_level.values():
                metric.update(sr_q, gt_q)
        self.count += 1
        return values

    def results(self) -> dict:
        if not self.count:
            return {}
        out = {}
        for name in self.metrics_opt:
            out[name] = self.set_level[name].compute() if name in self.set_level else self.sums[name] / self.count
        return out

    def save_stats(self, folder: str, dataset_name: str) -> None:
        """Write the feature statistics of the set-level metrics (``<folder>/<dataset>_{sr,gt}.npz``)."""
        for name, metric in self.set_level.items():
            metric.save_stats(folder if len(self.set_level) == 1 else os.path.join(folder, name), dataset_name)


def metric_better(m_opt: dict) -> str:
    """``'higher'`` or ``'lower'``: BasicSR's ``better`` key when given, else the registered metric's own direction
    (LPIPS, DISTS, FID and NIQE are lower-is-better), else higher."""
    if m_opt.get('better') is not None:
        return m_opt['better']
    try:
        return getattr(_metric_fn(m_opt, 'val.metrics'), 'better', 'higher')
    except ConfigError:  # an unknown type is reported by check_metric_options
        return 'higher'


def update_best(best: dict, dataset: str, results: dict, metrics_opt: dict, current_iter: int) -> dict:
    """Keep the best value of each metric and its iteration (``better`` says which direction); returns the entry."""
    entry = best.setdefault(dataset, {})
    for name, value in results.items():
        lower = metric_better(metrics_opt.get(name) or {}) == 'lower'
        old = entry.get(name)
        if old is None or (value < old['val'] if lower else value > old['val']):
            entry[name] = {'val': value, 'iter': current_iter, 'better': 'lower' if lower else 'higher'}
    return entry


def validate(model, loader, opt: dict, current_iter: int, tb_logger=None, save_img: bool = False) -> dict:
    """Run the EMA (or G) over ``loader`` on rank 0; returns ``{metric: mean}`` (empty on other ranks).

    The best value of each metric so far is kept in ``model.best_metric_results`` (BasicSR's name) and logged.
    """
    from desra.data.io import imwrite_atomic, tensor2img

    if hasattr(model, 'validation'):  # models with their own notion of validation (the artifact localiser)
        return model.validation(loader, opt, current_iter, tb_logger, save_img)
    results: dict = {}
    if opt.get('rank', 0) == 0:
        val_opt = opt.get('val') or {}
        metrics_opt = val_opt.get('metrics') or {}
        dataset_name = loader.dataset.opt.get('name', 'val') if hasattr(loader.dataset, 'opt') else 'val'
        metric_set = MetricSet(metrics_opt, 'val.metrics', getattr(model, 'device', None))
        for i, data in enumerate(loader):
            sr_dev = model.infer(data['lq'], tile_size=val_opt.get('tile_size', 0),
                                 tile_pad=val_opt.get('tile_pad')).clamp_(0, 1)
            sr = sr_dev.cpu()
            sr_img = tensor2img(sr)
            img_name = os.path.splitext(os.path.basename(data['lq_path'][0]))[0]
            if 'gt' in data and metrics_opt:
                metric_set.update(sr_dev, data['gt'], sr_img, tensor2img(data['gt']))
            if save_img:
                suffix = val_opt.get('suffix')
                fname = f'{img_name}_{suffix}.png' if suffix else f'{img_name}_{current_iter}.png'
                imwrite_atomic(sr_img, os.path.join(opt['path']['visualization'], dataset_name, fname))
            if tb_logger is not None and i < val_opt.get('tb_images', 4):
                tb_logger.add_image(f'val/{dataset_name}/{img_name}', sr[0], current_iter)
        results = metric_set.results()
        if results:
            best = update_best(model.__dict__.setdefault('best_metric_results', {}), dataset_name, results,
                               metrics_opt, current_iter)
            msg = ', '.join(f"{k}: {v:.4f} (best {best[k]['val']:.4f} @ iter {best[k]['iter']}, "
                            f"{best[k]['better']} is better)" for k, v in results.items())
            logger.info('Validation %s @ iter %d: %s', dataset_name, current_iter, msg)
            if tb_logger is not None:
                for k, v in results.items():
                    tb_logger.add_scalar(f'metrics/{dataset_name}/{k}', v, current_iter)
    dist_utils.barrier()
    return results
