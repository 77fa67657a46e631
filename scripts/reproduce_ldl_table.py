r"""Reproduce LDL's Table 1 (LPIPS, DISTS, FID, PSNR, SSIM on six x4 benchmarks) and compare with the paper.

    python scripts/reproduce_ldl_table.py --models "RRDB+LDL (DF2K)=pretrained/net_g_DF2K_RRDB+LDL.pth" \
        "RRDB+LDL (DIV2K)=pretrained/net_g_DIV2K_RRDB+LDL.pth" --benchmarks datasets/ \
        [--sets Set5 Set14 ...] [--metrics LPIPS DISTS FID PSNR SSIM] [--out results/ldl_table1] \
        [--network-g "{type: RRDBNet, num_feat: 64, num_block: 23, num_grow_ch: 32, scale: 4}"] \
        [--compare-with "mine=RRDB+LDL (DF2K)"] [--perceptual-crop 0] [--fid-patch-size 0] [--fid-method sqrtm] \
        [--tile 0] \
        [--device auto|cpu] [--alexnet F] [--vgg16 F] [--lpips-heads F] [--dists-weights F] [--fid-inception F]

``--models LABEL=PATH``: PATH is a checkpoint (BasicSR ``.pth`` with ``params_ema``/``params``, or
``.safetensors``; architecture ``--network-g``, default RRDBNet x4 64/23/32 as LDL's RRDB models) or a folder of
precomputed SR images ``PATH/<benchmark>/<GT stem>[_suffix].png``. A LABEL that is a column of the paper's table
(SFTGAN, SRGAN, SRResNet+LDL, ESRGAN, USRGAN, SPSR, "RRDB+LDL (DIV2K)", "RRDB+LDL (DF2K)", SwinIR+L_GAN,
SwinIR+LDL) is compared with it; others need ``--compare-with LABEL=COLUMN``.

What to download, and where it goes (nothing is downloaded by this script):

1. The benchmarks, in BasicSR's layout under ``--benchmarks`` (see datasets/README.md): ``Set5/GTmod12``,
   ``Set5/LRbicx4``, likewise Set14, Manga109, General100, Urban100; ``DIV2K/DIV2K_valid_HR`` and
   ``DIV2K/DIV2K_valid_LR_bicubic/X4``. Missing ones are skipped unless named with ``--sets``.
2. The LDL models (authors' Google Drive, see ``python scripts/download_pretrained.py --list``) -> pretrained/.
3. The metric files: ``python scripts/download_pretrained.py --only alexnet vgg16 fid_inception`` (torchvision /
   pytorch-fid backbones, official URLs) and ``--source pypi --only lpips dists`` (the LPIPS heads and DISTS
   weights that PyPI wheels ship).

The report (ours | paper | Δ per model and benchmark, one table per metric) is printed and written to
``<out>/ldl_table1.md`` and ``.json``; SR images and FID statistics go to ``<out>/<label>/``.
Protocol details: desra/pipelines/ldl_table.py.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import label_pairs, run_cli, script_parser  # noqa: E402
from desra.errors import ConfigError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from desra.pipelines.ldl_table import BENCHMARKS, METRICS

    p = script_parser(__doc__)
    p.add_argument('--models', nargs='+', required=True, metavar='LABEL=PATH',
                   help='checkpoints or folders of SR outputs, with their labels')
    p.add_argument('--benchmarks', required=True, help='root of the benchmark layouts (datasets/)')
    p.add_argument('--sets', nargs='+', choices=list(BENCHMARKS), default=None,
                   help='benchmarks (default: all that exist under --benchmarks)')
    p.add_argument('--metrics', nargs='+', choices=list(METRICS), default=list(METRICS))
    p.add_argument('--network-g', default=None, help='architecture of the checkpoints as a YAML mapping '
                                                     '(default: RRDBNet x4, 64 features, 23 blocks, grow 32)')
    p.add_argument('--param-key', default='params_ema', help='checkpoint key (default params_ema)')
    p.add_argument('--compare-with', nargs='+', metavar='LABEL=COLUMN', default=None,
                   help='paper column for a label that is not one')
    p.add_argument('--lpips-net', choices=['alex', 'vgg'], default='alex', help='LPIPS backbone (LDL: alex)')
    p.add_argument('--perceptual-crop', type=int, default=0, help='border cropped before LPIPS / DISTS (0)')
    p.add_argument('--fid-patch-size', type=int, default=0, help='FID on tiles of this size (0: whole images)')
    p.add_argument('--fid-method', choices=['sqrtm', 'eigh'], default='sqrtm',
                   help="Frechet distance: sqrtm (pytorch-fid's) or eigh (equal to 1e-7, ~5x faster on CPU)")
    p.add_argument('--tile', type=int, default=0, help='tiled inference, LR pixels per tile (0: whole image)')
    p.add_argument('--device', choices=['auto', 'cpu'], default='auto')
    p.add_argument('--out', default='results/ldl_table1', help='output folder (default results/ldl_table1)')
    for flag, what in (('alexnet', 'alexnet-owt-7be5be79.pth'), ('vgg16', 'vgg16-397923af.pth'),
                       ('lpips-heads', 'lpips_<net>_v0.1.safetensors'),
                       ('dists-weights', 'dists_alpha_beta.safetensors'),
                       ('fid-inception', 'pt_inception-2015-12-05-6726825d.pth')):
        p.add_argument(f'--{flag}', default=None, help=f'{what} (default: searched in pretrained/ etc.)')
    return p


def main(argv=None):
    import yaml

    args = build_parser().parse_args(argv)
    from desra.pipelines.ldl_table import LDLTableOptions, format_ldl_report, reproduce_ldl_table, write_ldl_report

    kwargs = {}
    if args.network_g:
        try:
            net = yaml.safe_load(args.network_g)
        except yaml.YAMLError as e:
            raise ConfigError(f'--network-g: not YAML ({str(e).splitlines()[0]})') from None
        if not isinstance(net, dict) or 'type' not in net:
            raise ConfigError('--network-g: expected a mapping with a type, e.g. "{type: RRDBNet, num_block: 23}"')
        kwargs['network_g'] = net
    weights = {k: v for k, v in (('alexnet', args.alexnet), ('vgg16', args.vgg16), ('lpips_heads', args.lpips_heads),
                                 ('dists', args.dists_weights), ('fid_inception', args.fid_inception)) if v}
    opts = LDLTableOptions(benchmarks_root=args.benchmarks, models=label_pairs(args.models, '--models'),
                           benchmarks=args.sets, metrics=args.metrics, param_key=args.param_key,
                           compare_with=label_pairs(args.compare_with, '--compare-with'), lpips_net=args.lpips_net,
                           perceptual_crop=args.perceptual_crop, fid_patch_size=args.fid_patch_size or None,
                           fid_method=args.fid_method,
                           weights=weights, out_dir=args.out, tile_size=args.tile, device=args.device, **kwargs)
    result = reproduce_ldl_table(opts)
    print(format_ldl_report(result))
    md, _ = write_ldl_report(result, args.out)
    print(f'written: {md}')
    return result


if __name__ == '__main__':
    run_cli(main)
