"""Detect GAN-SR artifacts (DeSRA): ``python detect.py -opt options/detect_desra.yml``.

Multi-GPU: ``torchrun --nproc_per_node=N detect.py -opt X.yml --launcher pytorch`` (images are sharded).
"""
from desra.cli import run_cli


def main(argv=None):
    from desra.config import build_arg_parser

    # the arguments first: --help and a bad flag answer before numpy, OpenCV (and torch) are loaded
    args = build_arg_parser('Detect GAN-SR artifacts (DeSRA).', is_train=False).parse_args(argv)
    from desra.detection.pipeline import detect_pipeline, parse_detect_options

    return detect_pipeline(parse_detect_options(args=args))


if __name__ == '__main__':
    run_cli(main)
