"""Fuse K restorations of each input by their artifact maps (localise-and-fuse; see desra/fusion.py).

    python scripts/fuse.py -opt options/fuse_sr_photos.yml
    python scripts/fuse.py -opt options/fuse_folders.yml --force_yml fusion:rule=weighted fusion:feather=4

Writes results/fuse/<name>/{fused, maps, weights, outputs, records}/, metrics.md, metrics.json and index.html
(see desra/pipelines/fuse.py for the options and the layout). A rerun with the same settings skips the images
that are done.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from desra.cli import run_cli  # noqa: E402


def main(argv=None):
    from desra.pipelines.fuse import fuse_pipeline, parse_fuse_options

    return fuse_pipeline(parse_fuse_options(argv))


if __name__ == '__main__':
    run_cli(main)
