r"""Reproduce Table 1 of the deraining artifact-localisation paper (PSNR / SSIM / LPIPS on Rain100L, Rain12, Rain800,
SPA-Data) from folders of derained outputs, and print it beside the paper's figures.

    python scripts/reproduce_derain_table.py --outputs VRGNet=results/vrgnet "VRGNet+Ours=results/vrgnet_fused" \
        [--datasets datasets/derain] [--sets Rain100L Rain12 Rain800 SPA-Data] [--metrics PSNR SSIM LPIPS] \
        [--compare-with "mine=VRGNet+Ours"] [--color y|bgr] [--crop-border 0] [--lpips-net alex] \
        [--perceptual-crop 0] [--with-input] [--out results/derain_table1] [--device auto|cpu] \
        [--alexnet F] [--vgg16 F] [--lpips-heads F]

``--outputs LABEL=FOLDER``: FOLDER holds ``<set>/<name>.png`` (or ``<name>_<suffix>.png``, as test.py saves them in
``results/<name>/visualization/``), one per GT image ``--datasets/<set>/clean/<name>.png``, of the same size. A
LABEL that is a row of the paper's table (DSC, GMM, DDN, DerainCycleGAN, VRGNet, SemiDerainGAN, CycleGAN+Ours,
VRGNet+Ours, Semi-Derain+Ours; case-, space- and hyphen-insensitive) is compared with it; others need
``--compare-with LABEL=ROW``. ``--with-input`` adds the rainy inputs as a row.

Conventions (the paper states none): PSNR / SSIM on the Y channel of YCbCr, no border crop (``--color y``,
``--crop-border 0``, the deraining literature's usual MATLAB protocol); ``--color bgr`` averages the three
channels instead. LPIPS v0.1 with AlexNet on RGB. ``--metrics PSNR SSIM`` runs without the LPIPS files.

What to get, and where it goes (nothing is downloaded by this script):

1. The test sets, converted to ``datasets/derain/<set>/{rainy,clean}/<name>.png`` (datasets/README.md,
   "Deraining"); missing sets are skipped unless named with ``--sets``.
2. The derained outputs of the models (DerainCycleGAN, VRGNet, Semi-DerainGAN: the authors' code and weights) and
   of their artifact-fused versions, one folder per model with a sub-folder per set.
3. For LPIPS: ``python scripts/download_pretrained.py --only alexnet`` and ``--source pypi --only lpips_alex``
   (or point ``--alexnet`` / ``--lpips-heads``, or ``$DESRA_ALEXNET_WEIGHTS`` / ``$DESRA_LPIPS_ALEX_HEADS``, at them).

The report (ours | paper | Δ per label and set, one table per metric) is printed and written to
``<out>/derain_table1.md`` and ``.json`` (with the per-image values). Protocol: desra/pipelines/derain_table.py.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import label_pairs, run_cli, script_parser  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from desra.pipelines.derain_table import METRICS, SETS

    p = script_parser(__doc__)
    p.add_argument('--outputs', nargs='+', default=None, metavar='LABEL=FOLDER',
                   help='folders of derained outputs (<set>/<name>.png), with their labels')
    p.add_argument('--datasets', default='datasets/derain', help='root of <set>/{rainy,clean} (datasets/derain)')
    p.add_argument('--sets', nargs='+', choices=list(SETS), default=None,
                   help='data sets (default: all that exist under --datasets)')
    p.add_argument('--metrics', nargs='+', choices=list(METRICS), default=list(METRICS))
    p.add_argument('--compare-with', nargs='+', metavar='LABEL=ROW', default=None,
                   help='paper row for a label that is not one')
    p.add_argument('--color', choices=['y', 'bgr'], default='y',
                   help='PSNR / SSIM on the Y channel of YCbCr (default) or on the BGR channels')
    p.add_argument('--crop-border', type=int, default=0, help='border cropped before PSNR / SSIM (0)')
    p.add_argument('--lpips-net', choices=['alex', 'vgg'], default='alex', help='LPIPS backbone (alex)')
    p.add_argument('--perceptual-crop', type=int, default=0, help='border cropped before LPIPS (0)')
    p.add_argument('--with-input', action='store_true', help='also evaluate the rainy inputs (<set>/rainy)')
    p.add_argument('--device', choices=['auto', 'cpu'], default='auto', help='where LPIPS runs')
    p.add_argument('--out', default='results/derain_table1', help='output folder (default results/derain_table1)')
    for flag, what in (('alexnet', 'alexnet-owt-7be5be79.pth'), ('vgg16', 'vgg16-397923af.pth'),
                       ('lpips-heads', 'lpips_<net>_v0.1.safetensors')):
        p.add_argument(f'--{flag}', default=None, help=f'{what} (default: searched in pretrained/ etc.)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from desra.pipelines.derain_table import (DerainTableOptions, format_derain_report, reproduce_derain_table,
                                              write_derain_report)

    weights = {k: v for k, v in (('alexnet', args.alexnet), ('vgg16', args.vgg16), ('lpips_heads', args.lpips_heads))
               if v}
    opts = DerainTableOptions(datasets_root=args.datasets, outputs=label_pairs(args.outputs, '--outputs', 'FOLDER'),
                              sets=args.sets, metrics=args.metrics,
                              compare_with=label_pairs(args.compare_with, '--compare-with', 'ROW'),
                              y_channel=args.color == 'y', crop_border=args.crop_border, lpips_net=args.lpips_net,
                              perceptual_crop=args.perceptual_crop, weights=weights, with_input=args.with_input,
                              out_dir=args.out, device=args.device)
    result = reproduce_derain_table(opts)
    print(format_derain_report(result))
    md, _ = write_derain_report(result, args.out)
    print(f'written: {md}')
    return result


if __name__ == '__main__':
    run_cli(main)
