"""Test a generator: ``python test.py -opt options/test_realesrgan_x4.yml``.

Saves SR images to ``results/<name>/visualization/<dataset>/`` and prints a PSNR/SSIM table.
"""
from desra.cli import run_cli


def main(argv=None):
    from desra.config import parse_options

    opt, _ = parse_options(argv, is_train=False, check_paths=True)  # options checked before torch is imported
    from desra.engine.evaluate import test_pipeline

    return test_pipeline(opt)


if __name__ == '__main__':
    run_cli(main)
