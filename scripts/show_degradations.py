"""See what a real-world model trains on: GT | degraded LQ pairs from the exact pipeline training uses.

    python scripts/show_degradations.py -opt options/train_realesrgan_x4plus.yml --n 16 [--out DIR]

The option file's training data set (``RealESRGANDataset``) and the model's degradation part
(``high_order_degradation``) are built as ``train.py`` builds them; the first ``--n`` samples of epoch 0 are drawn
in training batches (``batch_size_per_gpu``) at iterations 1, 2, ..., exactly as a run would, and shown before
the training-pair pool mixes them. Under each pair: the kernels drawn by the data set, the resize factors and
modes, the noise (type, sigma or scale, gray), the JPEG qualities of both stages, the second blur and the order
of the final stage.

Writes ``DIR/index.html`` (the pairs with their parameters), ``DIR/contact_sheet.png`` (all pairs in one picture),
``DIR/pairs/<k>_gt.png`` / ``<k>_lq.png`` and ``DIR/params.json``. Default ``DIR``:
``results/show_degradations/<name>``.
"""
from __future__ import annotations

import html
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import ConfigError  # noqa: E402


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('-opt', '--opt', dest='opt', required=True, help='a training option file')
    parser.add_argument('--n', type=int, default=16, help='number of pairs (default 16)')
    parser.add_argument('--out', default=None, help='output folder (default results/show_degradations/<name>)')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUBKEY=VALUE',
                        help='override options, as in train.py')
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f'--n must be >= 1, got {args.n}')
    return args


def captions(record: dict, data: dict, b: int) -> list[list[str]]:
    """Lines of text per image of one batch, from the dataset's kernel info and the degradation's record."""
    out = []
    for i in range(b):
        r1, r2 = record['resize'], record['resize2']
        n1, n2 = record['noise'][i], record['noise2'][i]

        def noise(n):
            kind, value, gray = n
            return f"{kind} {'sigma' if kind == 'gaussian' else 'scale'} {value}{' gray' if gray else ''}"

        out.append([
            f"1: blur {data['kernel1_info'][i]}; resize {r1[0]} x{r1[1]} {r1[2]}",
            f"   {noise(n1)}; jpeg q{record['jpeg'][i]:.0f}",
            f"2: blur {data['kernel2_info'][i] if record['blur2'] else 'none'}; resize {r2[0]} x{r2[1]} {r2[2]}",
            f"   {noise(n2)}; jpeg q{record['jpeg2'][i]:.0f}",
            f"final: {record['final']}; {data['sinc_info'][i]}",
        ])
    return out


def _to_u8(t):
    import numpy as np

    return (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy()[..., ::-1] * 255).round().astype(np.uint8)


def render_sheet(pairs: list, scale: int, columns: int = 4, min_side: int = 160):
    """One BGR picture: per pair GT | LQ (both shown at the GT size, at least ``min_side`` px, nearest
    neighbour) with the caption below."""
    import cv2
    import numpy as np

    font, fs, line_h = cv2.FONT_HERSHEY_SIMPLEX, 0.38, 14
    tiles = []
    for gt, lq, lines in pairs:
        zoom = max(1, -(-min_side // gt.shape[0]))
        size = (gt.shape[1] * zoom, gt.shape[0] * zoom)
        gt_big = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
        lq_big = cv2.resize(lq, size, interpolation=cv2.INTER_NEAREST)
        top = np.concatenate([gt_big, np.full((size[1], 4, 3), 255, np.uint8), lq_big], axis=1)
        text_w = max(cv2.getTextSize(line, font, fs, 1)[0][0] for line in lines) + 8
        width = max(top.shape[1], text_w)
        top = np.pad(top, ((0, 0), (0, width - top.shape[1]), (0, 0)), constant_values=255)
        text = np.full((line_h * len(lines) + 6, width, 3), 255, np.uint8)
        for k, line in enumerate(lines):
            cv2.putText(text, line, (3, line_h * (k + 1)), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([top, text], axis=0))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    pad = [np.pad(t, ((0, h - t.shape[0] + 10), (0, w - t.shape[1] + 10), (0, 0)), constant_values=255) for t in tiles]
    blank = np.full_like(pad[0], 255)
    rows = [np.concatenate(pad[i:i + columns] + [blank] * (columns - len(pad[i:i + columns])), axis=1)
            for i in range(0, len(pad), columns)]
    return np.concatenate(rows, axis=0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from desra.config import apply_force_yml, check_data_paths, finalize_options, load_yaml_file, validate_options
    from desra.engine.logger import get_root_logger

    get_root_logger()
    opt = load_yaml_file(args.opt)
    apply_force_yml(opt, args.force_yml)
    validate_options(opt, is_train=True)
    check_data_paths(opt)
    opt['is_train'] = True
    finalize_options(opt)

    import torch

    from desra.atomic import atomic_open
    from desra.data.build import build_dataset
    from desra.data.degradations.pipeline import SyntheticPairs
    from desra.data.io import imwrite_atomic
    from desra.data.sampler import ResumableSampler
    from desra.registry import MODEL_REGISTRY, import_user_modules

    import desra.models  # noqa: F401  (registers the models)

    import_user_modules(opt.get('import_modules'))
    model_cls = MODEL_REGISTRY.get(opt['model_type'], 'model_type')
    if not opt.get('high_order_degradation', getattr(model_cls, 'degrade_by_default', False)):
        raise ConfigError(f"{args.opt}: model_type {opt['model_type']} trains on pre-made pairs (no "
                          f"high_order_degradation); there is no on-the-fly degradation to show")
    ds_opt = opt['datasets']['train']
    dataset = build_dataset(ds_opt, 'datasets.train')
    if not getattr(dataset, 'provides_kernels', False):
        raise ConfigError(f'datasets.train.type: {type(dataset).__name__} gives no kernels; the degradation needs '
                          f'RealESRGANDataset')
    device = torch.device('cpu')
    synthesis = SyntheticPairs(opt, device, source=getattr(model_cls, 'degradation_source', 'gt'),
                               sharpen_gt=bool(opt.get('gt_usm', False)))
    b = ds_opt['batch_size_per_gpu']
    sampler = ResumableSampler(len(dataset), 1, 0, shuffle=ds_opt.get('use_shuffle', True), seed=opt['manual_seed'],
                               enlarge_ratio=ds_opt.get('dataset_enlarge_ratio', 1))
    keys = list(iter(sampler))
    out_dir = args.out or os.path.join('results', 'show_degradations', opt['name'])
    pairs, params, rows = [], [], []
    iteration = 0
    while len(pairs) < args.n:
        iteration += 1
        start = (iteration - 1) * b
        if start >= len(keys):
            sampler.set_epoch(sampler.epoch + 1)
            keys += list(iter(sampler))
        items = [dataset[keys[start + j]] for j in range(b)]
        batch = torch.utils.data.default_collate(items)
        record = {}
        lq, gt = synthesis(batch, iteration, 0, record=record, use_pool=False)
        for i, lines in enumerate(captions(record, batch, b)):
            if len(pairs) == args.n:
                break
            k = len(pairs)
            g, q = _to_u8(gt[i]), _to_u8(lq[i])
            gt_file, lq_file = os.path.join('pairs', f'{k:03d}_gt.png'), os.path.join('pairs', f'{k:03d}_lq.png')
            imwrite_atomic(g, os.path.join(out_dir, gt_file))
            imwrite_atomic(q, os.path.join(out_dir, lq_file))
            pairs.append((g, q, lines))
            params.append({'index': k, 'iteration': iteration, 'gt_path': batch['gt_path'][i], 'lines': lines,
                           'gt': gt_file, 'lq': lq_file})
            rows.append(f'<tr><td>{k}<br>{html.escape(os.path.basename(batch["gt_path"][i]))}</td>'
                        f'<td><img src="{gt_file}"></td><td><img src="{lq_file}" class="lq"></td>'
                        f'<td><pre>{html.escape(chr(10).join(lines))}</pre></td></tr>')
    sheet = render_sheet(pairs, opt['scale'])
    imwrite_atomic(sheet, os.path.join(out_dir, 'contact_sheet.png'))
    with atomic_open(os.path.join(out_dir, 'params.json'), 'w') as f:
        json.dump({'option_file': os.path.abspath(args.opt), 'pairs': params}, f, indent=2)
    page = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>degradations</title><style>'
            'body{font-family:system-ui,sans-serif} td{border:1px solid #ddd;padding:4px;vertical-align:top}'
            f'img{{width:{2 * 128}px;image-rendering:pixelated}}</style></head><body>'
            f'<h1>{html.escape(opt["name"])}: training pairs (GT | degraded LQ)</h1>'
            f'<p>{len(pairs)} pairs from {html.escape(args.opt)}, drawn as training iterations 1-{iteration} '
            f'(batch {b}), before the training-pair pool. <a href="contact_sheet.png">contact sheet</a></p>'
            '<table><tr><th>#</th><th>GT</th><th>LQ</th><th>drawn</th></tr>' + ''.join(rows) + '</table>'
            '</body></html>\n')
    with atomic_open(os.path.join(out_dir, 'index.html'), 'w') as f:
        f.write(page)
    print(f'show_degradations: {len(pairs)} pair(s) -> {os.path.join(out_dir, "index.html")} and contact_sheet.png')
    return {'out': out_dir, 'pairs': params}


if __name__ == '__main__':
    run_cli(main)
