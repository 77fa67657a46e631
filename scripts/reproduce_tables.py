r"""Reproduce DeSRA's artifact-detection Tables 1-3 on the authors' data set and compare with the paper.

    python scripts/reproduce_tables.py --data datasets/DeSRA --methods RealESRGAN LDL \
        [--class-weights pretrained/SSIM_MSE_GAN_threshold.txt] \
        [--segmenter segformer --segformer-model pretrained/segformer-b5-finetuned-ade-640-640] \
        [--niqe-thresholds 10 20 30 ...] [--finetuned-root results/finetuned] [--out reports/reproduce] \
        [--limit N] [--min-area 4000]

Rows per method (Table 1 = RealESRGAN, Table 2 = LDL): NIQE (best threshold of the sweep), PAL4Inpainting
(paper figures only, not implemented), LDL* at 0.01 / 0.005 / 0.001, DeSRA-det, and DeSRA-Mask (released)
when the method has a DeSRA-Mask folder. Ours next to the paper's figures, with Δ = ours - paper. Table 3 with
--finetuned-root. The report is printed and written to <out>/tables.md and <out>/tables.json.

What to download, and where it goes (nothing is downloaded by this script):

1. The DeSRA artifact data set (required): from the authors' Google Drive (linked in the DeSRA GitHub
   README), unpacked as

       datasets/DeSRA/<method>/MSE-SR/...      MSE-SR outputs        (required)
       datasets/DeSRA/<method>/GAN-SR/...      GAN-SR outputs        (required)
       datasets/DeSRA/<method>/GT-Mask/...     hand-drawn GT masks   (required; PNG or LabelMe .json)
       datasets/DeSRA/<method>/DeSRA-Mask/...  the authors' masks    (optional: the "released" row)
       datasets/DeSRA/<method>/LR/...          real LR inputs        (not needed here)

   with <method> = RealESRGAN, LDL (SwinIR also works, without paper figures). Folders may be flat or the
   released two-level root/<sub>/<img> layout; files are paired by name. See datasets/README.md.
2. The class file SSIM_MSE_GAN_threshold.txt of the DeSRA release (optional) -> pretrained/, passed with
   --class-weights (or compute one with scripts/compute_class_weights.py).
3. SegFormer-B5 ADE20K (optional, needed for the class weights to apply) -> a save_pretrained folder, e.g.
   `huggingface-cli download nvidia/segformer-b5-finetuned-ade-640-640 --local-dir
   pretrained/segformer-b5-finetuned-ade-640-640`, or the authors' mmseg checkpoint converted with
   scripts/convert_mmseg_segformer.py; passed with --segmenter segformer --segformer-model FOLDER.
   Without SegFormer and class file, DeSRA-det uses every class weight 1, and the report says so.
4. Table 3 (optional): outputs of the DeSRA-fine-tuned models on <method>/LR, as
   <finetuned-root>/<method>/GAN-SR/... (same names as GAN-SR), passed with --finetuned-root.

Each detector runs once per image pair (the LDL* and NIQE maps are thresholded per grid value), and images
are streamed, so memory does not grow with the data set. Metric definitions: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser
from desra.pipelines.reproduce import (
    DEFAULT_NIQE_THRESHOLDS,
    LDL_THRESHOLDS,
    ReproduceOptions,
    format_report,
    reproduce_tables,
    write_report,
)


def _min_area(s: str):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a pixel count or a fraction in (0, 1), got {s!r}') from None
    if v < 0 or (v >= 1 and not v.is_integer()):
        raise argparse.ArgumentTypeError(f'expected a pixel count >= 0 or a fraction in (0, 1), got {s!r}')
    return int(v) if v.is_integer() else v


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument('--data', required=True, help='DeSRA data set root (e.g. datasets/DeSRA)')
    parser.add_argument('--methods', nargs='+', default=['RealESRGAN', 'LDL'],
                        help='method folders under --data (default: RealESRGAN LDL)')
    parser.add_argument('--class-weights', default=None,
                        help='class file (released SSIM_MSE_GAN_threshold.txt or .json); default: every weight 1')
    parser.add_argument('--segmenter', choices=('none', 'segformer'), default='none',
                        help='semantic segmenter for the class weights (default: none)')
    parser.add_argument('--segformer-model', default=None,
                        help='SegFormer save_pretrained folder or hub id (default: '
                             'nvidia/segformer-b5-finetuned-ade-640-640)')
    parser.add_argument('--device', default=None, help='segmenter device (default: CUDA when available)')
    parser.add_argument('--niqe-thresholds', nargs='+', type=float, default=list(DEFAULT_NIQE_THRESHOLDS),
                        help='NIQE thresholds to sweep; the best IoU is reported (default: %(default)s)')
    parser.add_argument('--niqe-window', type=int, default=96, help='NIQE window side, even, >= 16 (default 96)')
    parser.add_argument('--niqe-stride', type=int, default=32, help='NIQE window stride (default 32)')
    parser.add_argument('--niqe-params', default=None,
                        help="NIQE pristine parameters (default: MATLAB's pretrained/niqe_pris_params.npz when "
                             'present, else the shipped fallback; the report says which)')
    parser.add_argument('--ldl-thresholds', nargs='+', type=float, default=list(LDL_THRESHOLDS),
                        help='LDL* thresholds (default: the paper\'s 0.01 0.005 0.001)')
    parser.add_argument('--finetuned-root', default=None,
                        help='folder with <method>/GAN-SR of the DeSRA-fine-tuned models (Table 3)')
    parser.add_argument('--out', default=os.path.join('reports', 'reproduce'),
                        help='output folder for tables.md and tables.json (default: reports/reproduce)')
    parser.add_argument('--limit', type=int, default=None, help='use only the first N images of each method')
    parser.add_argument('--min-area', type=_min_area, default=4000,
                        help='drop detected components of <= this many pixels (or a fraction in (0, 1) of the '
                             'image), for every detector (default: the released 4000)')
    parser.add_argument('--p', type=float, default=0.5, help='region overlap ratio of precision / recall (0.5)')
    parser.add_argument('--crop', type=int, default=5, help='pixels cropped from each GT side (default 5)')
    parser.add_argument('--empty', choices=('one', 'skip', 'zero'), default='one',
                        help='IoU of an image with empty detection and empty GT (default: one)')
    parser.add_argument('--p-add', type=float, default=0.0,
                        help='Table 3: a remaining region is "added" if its GT overlap is 0 or below this fraction')
    parser.add_argument('--add-min-area', type=int, default=0, help='Table 3: minimum area of an added region')
    parser.add_argument('--allow-missing', action='store_true',
                        help='skip images without a twin (with a warning) instead of failing')
    parser.add_argument('--quiet', action='store_true', help='do not print the report (still written)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    opts = ReproduceOptions(
        data_root=args.data, methods=args.methods, class_weights=args.class_weights, segmenter=args.segmenter,
        segformer_model=args.segformer_model, device=args.device, niqe_thresholds=args.niqe_thresholds,
        niqe_window=args.niqe_window, niqe_stride=args.niqe_stride, niqe_params=args.niqe_params,
        ldl_thresholds=args.ldl_thresholds, finetuned_root=args.finetuned_root, limit=args.limit,
        min_area=args.min_area, p=args.p, crop=args.crop, empty=args.empty, p_add=args.p_add,
        add_min_area=args.add_min_area, allow_missing=args.allow_missing)
    result = reproduce_tables(opts)
    report = format_report(result)
    md, js = write_report(result, args.out, report)
    if not args.quiet:
        print(report)
    print(f'wrote {md} and {js}')


if __name__ == '__main__':
    run_cli(main)
