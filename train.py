"""Train a super-resolution model: ``python train.py -opt options/train_ldl_x4.yml [--auto_resume]``.

Multi-GPU: ``torchrun --nproc_per_node=4 train.py -opt X.yml --launcher pytorch``.
"""
from desra.cli import run_cli


def main(argv=None):
    from desra.config import parse_options

    opt, _ = parse_options(argv, is_train=True, check_paths=True)  # options checked before torch is imported
    from desra.engine.trainer import train_pipeline

    return train_pipeline(opt)


if __name__ == '__main__':
    run_cli(main)
