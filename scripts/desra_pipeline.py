"""The DeSRA loop in one command: detect -> pseudo-GT -> fine-tune -> detect again -> evaluate.

    python scripts/desra_pipeline.py -opt options/desra_pipeline.yml
    torchrun --nproc_per_node=4 scripts/desra_pipeline.py -opt options/desra_pipeline.yml --launcher pytorch

Writes reports/<name>/{table3.md, summary.json, index.html} and the intermediate folders
(see desra/pipelines/desra_loop.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from desra.cli import run_cli  # noqa: E402


def main(argv=None):
    from desra.pipelines.desra_loop import desra_loop, parse_loop_options

    return desra_loop(parse_loop_options(argv))


if __name__ == '__main__':
    run_cli(main)
