"""Detect GAN-SR artifacts (DeSRA): ``python detect.py -opt options/detect_desra.yml``.

The detector (indicator Eq. 7, semantic adjustment, morphology) is built in the next milestone; until then this
entry point explains what is missing instead of failing obscurely.
"""
import sys


def main(argv=None):
    print('error: artifact detection (desra.detection) is not implemented yet in this version; '
          'it is tracked as the "DeSRA artifact detector" milestone. Training (train.py) and '
          'evaluation (test.py) are available.', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
