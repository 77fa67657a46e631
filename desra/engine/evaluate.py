"""``test.py``: run a generator over paired or LR-only datasets, save the SR images, tabulate PSNR/SSIM.

The counterpart of BasicSR's test pipeline, with tiling for large images and a markdown table at the end.
"""
from __future__ import annotations

import logging
import os
import time

import torch

from desra.atomic import atomic_open
from desra.data.build import build_dataset, build_eval_loader
from desra.data.io import imwrite_atomic, tensor2img
from desra.engine import dist as dist_utils
from desra.engine.logger import detach_log_file, get_root_logger
from desra.engine.validation import MetricSet, check_metric_options, metric_better
from desra.inference import tiled_forward
from desra.models.base_model import build_network, check_network_scale, load_pretrained
from desra.registry import import_user_modules
from desra.utils.images import display_name
from desra.utils.progress import Progress

logger = logging.getLogger('desra')


def format_markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f'{v:.4f}' if isinstance(v, float) else str(v)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |' for r in rows]
    return '\n'.join(lines)


def test_pipeline(opt: dict) -> list[dict]:
    """Evaluate ``network_g`` on every ``datasets.*`` entry; returns one summary row per dataset.

    The network, its weights, the data sets and the metric options are all checked before ``results/<name>``
    is created.
    """
    get_root_logger()
    import_user_modules(opt.get('import_modules'))
    device = dist_utils.get_device(opt.get('num_gpu', 'auto'))
    net = build_network(opt['network_g'], 'network_g').to(device).eval()
    check_network_scale(net, opt['scale'], 'network_g')
    path = opt.get('path') or {}
    if path.get('pretrain_network_g'):
        load_pretrained(net, path['pretrain_network_g'], path.get('param_key_g', 'params'),
                        path.get('strict_load_g', True), 'path.pretrain_network_g')
    else:
        logger.warning('path.pretrain_network_g is not set: testing a randomly initialised network')
    val_opt = opt.get('val') or {}
    metrics_opt = val_opt.get('metrics') or {}
    check_metric_options(metrics_opt, 'val.metrics')
    save_img = val_opt.get('save_img', True)
    datasets = [(key, ds_opt, build_dataset(ds_opt, f'datasets.{key}')) for key, ds_opt in opt['datasets'].items()]

    os.makedirs(opt['path']['results_root'], exist_ok=True)
    log_file = os.path.join(opt['path']['log'], f"test_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    get_root_logger(log_file)
    rows = []
    try:
        for key, ds_opt, dataset in datasets:
            loader = build_eval_loader(dataset, ds_opt)
            name = ds_opt.get('name', key)
            metric_set = MetricSet(metrics_opt, 'val.metrics', device)
            per_image = []
            progress = Progress(len(dataset), f'test {name}', unit='img')
            for data in loader:
                with torch.no_grad():
                    sr = tiled_forward(net, data['lq'].to(device), opt['scale'], tile_size=val_opt.get('tile_size', 0),
                                       tile_pad=val_opt.get('tile_pad'), mod_pad=getattr(net, 'mod_pad', 1))
                sr_dev = sr.float().clamp_(0, 1)
                sr = sr_dev.cpu()
                sr_img = tensor2img(sr)
                img_name = os.path.splitext(os.path.basename(data['lq_path'][0]))[0]
                if save_img:
                    suffix = val_opt.get('suffix') or opt['name']
                    imwrite_atomic(sr_img, os.path.join(opt['path']['visualization'], name, f'{img_name}_{suffix}.png'))
                if 'gt' in data and metrics_opt:
                    values = metric_set.update(sr_dev, data['gt'], sr_img, tensor2img(data['gt']))
                    per_image.append({'image': display_name(img_name), **values})
                progress.update()
            progress.close()
            row = {'dataset': name, 'images': len(dataset)}
            if metric_set.count:
                row.update(metric_set.results())
                columns = ['image', *metric_set.per_image]
                logger.info('%s:\n%s', name, format_markdown_table(per_image, columns))
                if metric_set.set_level:
                    metric_set.save_stats(os.path.join(opt['path']['results_root'], 'fid_stats'), name)
            rows.append(row)
        headers = {m: f'{m} ({"↓" if metric_better(m_opt) == "lower" else "↑"})' for m, m_opt in metrics_opt.items()}
        table = format_markdown_table([{headers.get(k, k): v for k, v in r.items()} for r in rows],
                                      ['dataset', 'images', *headers.values()])
        print(table)
        with atomic_open(os.path.join(opt['path']['results_root'], 'metrics.md'), 'w') as f:
            f.write(table + '\n')
    finally:
        detach_log_file(log_file)
    return rows
