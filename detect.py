"""Detect GAN-SR artifacts (DeSRA): ``python detect.py -opt options/detect_desra.yml``.

Multi-GPU: ``torchrun --nproc_per_node=N detect.py -opt X.yml --launcher pytorch`` (images are sharded).
"""
from desra.cli import run_cli


def main(argv=None):
    from desra.detection.pipeline import detect_pipeline, parse_detect_options

    return detect_pipeline(parse_detect_options(argv))


if __name__ == '__main__':
    run_cli(main)
