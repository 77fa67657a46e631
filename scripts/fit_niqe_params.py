"""Fit NIQE's pristine parameters (mu, cov) on public-domain / CC0 photos shipped with scikit-image.

    python scripts/fit_niqe_params.py [--out desra/resources/niqe_pristine_params.npz]

MATLAB's ``modelparameters.mat`` (fitted by the NIQE authors on 125 photos) is not redistributable here, so
the project ships parameters fitted by this script, offline, with the NIQE implementation of
:mod:`desra.metrics.niqe`. Procedure (that of the MATLAB release, ``estimatemodelparam``, applied to more
patch grids because the photo set is small):

- each photo is read from scikit-image's ``data`` folder (files listed in ``PRISTINE_SET``, with licences);
  colour photos are BGR -> BT.601 Y (studio swing, [16, 235]) rounded to integers, grayscale photos are
  treated as the colour image with equal channels (Y = 16 + 219/255 * gray, rounded), i.e. exactly the
  luminance :func:`desra.metrics.niqe.calculate_niqe` computes by default;
- for every photo, the 9 crops starting at (dy, dx), dy, dx in {0, 32, 64} (``--offsets``), are each cut into
  96 x 96 patches; per crop the patches sharper than 0.75 x the crop's sharpest are kept (sharpness = mean
  local standard deviation, as MATLAB). The shifted grids give ~8x more (overlapping) patches than one grid,
  which makes the 36 x 36 covariance full-rank and well conditioned with 8 photos;
- mu = the mean of the kept feature vectors, cov = their unbiased covariance.

The output ``.npz`` holds ``mu`` (36,), ``cov`` (36, 36) and metadata strings (images with package, version,
licence and SHA-256; package versions; patch size; offsets; number of patches; date). Fitting takes a few
seconds on a CPU. See ``desra/resources/NIQE_PARAMS.md``.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import sys

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.metrics.niqe import fit_pristine_params, to_luminance

DEFAULT_OUT = os.path.join(REPO, 'desra', 'resources', 'niqe_pristine_params.npz')
DEFAULT_OFFSETS = (0, 32, 64)
PATCH_SIZE = 96
SHARPNESS_THRESHOLD = 0.75

# File in scikit-image's ``skimage/data`` folder -> (subject, licence as stated in skimage.data's docstrings).
# Only undistorted photographs of natural scenes/objects with a public-domain or CC0 statement are used:
# left out are brick.png (perspective-warped and rescaled), the Middlebury motorcycle pair (no licence stated),
# moon.png (no licence stated), astronomical, medical, microscopy, synthetic and motion-blurred images.
PRISTINE_SET = {
    'astronaut.png': ('Eileen Collins, NASA Great Images', 'public domain (NASA)'),
    'camera.png': ('man with a camera (grayscale)', 'CC0, Lav Varshney'),
    'coffee.png': ('coffee cup, Pikolo Espresso Bar', 'CC0, Rachel Michetti'),
    'chelsea.png': ('Chelsea the cat', 'CC0, Stefan van der Walt'),
    'rocket.jpg': ('DSCOVR launch on Falcon 9, SpaceX', 'public domain (SpaceX)'),
    'grass.png': ('grass (grayscale crop), DeviantArt linolafett', 'CC0'),
    'gravel.png': ('gravel (grayscale, rescaled), CC0Textures Gravel04', 'CC0'),
    'coins.png': ('Greek coins from Pompeii (grayscale), Brooklyn Museum', 'no known copyright restrictions'),
}


def skimage_data_dir() -> str:
    try:
        import skimage
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit('fit_niqe_params.py needs scikit-image (pip install scikit-image): its bundled '
                         'sample photos are the pristine set') from e
    return os.path.join(os.path.dirname(skimage.__file__), 'data')


def sha256_of(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_pristine_luminance(data_dir: str | None = None) -> dict[str, np.ndarray]:
    """The pristine photos as 2-D float64 luminance (0..255, integers), keyed by file name."""
    data_dir = data_dir or skimage_data_dir()
    out = {}
    for name in PRISTINE_SET:
        path = os.path.join(data_dir, name)
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SystemExit(f'cannot read {path} (is this the scikit-image data folder?)')
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = to_luminance(img[..., :3])
    return out


def pristine_views(lums, offsets=DEFAULT_OFFSETS):
    """Every photo's crops ``lum[dy:, dx:]`` for dy, dx in ``offsets`` (each a separate 'image' for the fit)."""
    return [lum[dy:, dx:] for lum in lums for dy in offsets for dx in offsets]


def fit(data_dir: str | None = None, offsets=DEFAULT_OFFSETS):
    """Return ``(mu, cov, n_patches, metadata)``."""
    import scipy
    import skimage

    data_dir = data_dir or skimage_data_dir()
    lums = load_pristine_luminance(data_dir)
    mu, cov, n = fit_pristine_params(pristine_views(lums.values(), offsets), patch_size=PATCH_SIZE,
                                     sharpness_threshold=SHARPNESS_THRESHOLD, return_count=True)
    images = [{'file': f'skimage/data/{name}', 'package': 'scikit-image', 'version': skimage.__version__,
               'subject': subject, 'licence': licence, 'sha256': sha256_of(os.path.join(data_dir, name)),
               'shape': list(lums[name].shape)} for name, (subject, licence) in PRISTINE_SET.items()]
    meta = {
        'images': json.dumps(images),
        'package_versions': json.dumps({'scikit-image': skimage.__version__, 'numpy': np.__version__,
                                        'scipy': scipy.__version__, 'opencv-python': cv2.__version__}),
        'patch_size': str(PATCH_SIZE),
        'sharpness_threshold': str(SHARPNESS_THRESHOLD),
        'offsets': json.dumps(list(offsets)),
        'luminance': 'BT.601 Y (studio swing) of BGR, rounded; gray g -> Y of (g, g, g)',
        'n_patches': str(n),
        'date': datetime.date.today().isoformat(),
        'generator': 'scripts/fit_niqe_params.py (desra.metrics.niqe.fit_pristine_params)',
    }
    return mu, cov, n, meta


def write_npz(path: str, mu: np.ndarray, cov: np.ndarray, meta: dict) -> None:
    from desra.atomic import atomic_open

    buf = io.BytesIO()
    np.savez_compressed(buf, mu=mu.astype(np.float64), cov=cov.astype(np.float64),
                        **{k: np.array(v) for k, v in meta.items()})
    with atomic_open(path, 'wb') as f:
        f.write(buf.getvalue())
    os.chmod(path, 0o644)  # a package resource, readable by all (the temporary file was private)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT, help='output .npz (default: the shipped file)')
    parser.add_argument('--offsets', type=int, nargs='+', default=list(DEFAULT_OFFSETS),
                        help='grid offsets in pixels (default: 0 32 64)')
    parser.add_argument('--data-dir', default=None, help="folder holding the photos (default: skimage's data)")
    args = parser.parse_args(argv)
    mu, cov, n, meta = fit(args.data_dir, tuple(args.offsets))
    ev = np.linalg.eigvalsh(cov)
    write_npz(args.out, mu, cov, meta)
    print(f'wrote {args.out}: {len(PRISTINE_SET)} photos, {n} patches, cov eigenvalues '
          f'{ev.min():.3g} .. {ev.max():.3g}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
