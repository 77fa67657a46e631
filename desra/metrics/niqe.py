"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, 'Making a "Completely Blind"
Image Quality Analyzer', IEEE Signal Processing Letters 20(3), 2013), and a sliding-window NIQE map.

Definition (the paper, with the choices of the authors' MATLAB release where the paper leaves one open):

1. The image is one luminance channel on the 0..255 scale, float64, rounded to integers (the MATLAB code
   reads 8-bit images). :func:`calculate_niqe` takes BGR images (the project's numpy convention) and uses the
   BT.601 Y channel (``convert_to='y'``, values in [16, 235], as BasicSR) or OpenCV's gray (``'gray'``).
2. MSCN coefficients ``(I - mu) / (sigma + C)``, C = 1, with mu and sigma the local mean and standard
   deviation under a 7 x 7 Gaussian window (sigma 7/6, normalised to sum 1), border replicated
   (MATLAB ``imfilter(..., 'replicate')``); ``sigma = sqrt(|E[I^2] - mu^2|)``. In flat areas ``I - mu`` is
   set to its exact value 0 instead of the blur's round-off (see :func:`compute_mscn`).
3. The image is cropped to a whole number of P x P patches (P = 96) and split into them. For every patch,
   18 features: an asymmetric generalised Gaussian (AGGD) fit of its MSCN coefficients (shape alpha and the
   mean scale ``(beta_l + beta_r) / 2``), and AGGD fits of the four products of neighbouring coefficients
   (horizontal, vertical, main diagonal, anti-diagonal; shape, mean, beta_l, beta_r each). The scales are
   ``beta = s sqrt(Gamma(1/alpha) / Gamma(3/alpha))`` with s the left / right standard deviation (MATLAB's
   ``estimateaggdparam``, BasicSR's ``estimate_aggd_param``). As in MATLAB's ``circshift`` on each block, the
   neighbour of a patch's last row/column is its first (the products wrap around inside the patch).
4. The same 18 features at a second scale: the image is downsampled by 2 with MATLAB's ``imresize(im, 0.5)``
   (bicubic kernel a = -0.5 widened by 2 for antialiasing, symmetric border; reimplemented in
   :func:`imresize_half`) and split into P/2 x P/2 patches, so each patch has 36 features; the order is
   that of the MATLAB release (scale 1 then scale 2; within a scale MSCN, horizontal, vertical, diagonal,
   anti-diagonal), so MATLAB-derived pristine parameters can be used as they are.
5. AGGD shape by moment matching: ``rho(a) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` is compared on the
   grid a = 0.2:0.001:10 with ``r^ (g^3 + 1)(g + 1) / (g^2 + 1)^2``, where ``r^ = (E|x|)^2 / E[x^2]`` and
   ``g = sl / sr`` (left/right standard deviations over the negative/positive values); the grid point
   nearest in rho is taken. The AGGD mean is ``(beta_r - beta_l) Gamma(2/a) / Gamma(1/a)``. A side without
   values (e.g. a flat patch) gives NaN scales and mean and, as MATLAB's ``min`` over an all-NaN distance,
   alpha = 0.2.
6. Quality: a multivariate Gaussian (mu_t, cov_t) is fitted to all patches of the test image; NIQE =
   ``sqrt((mu_p - mu_t)^T pinv((cov_p + cov_t) / 2) (mu_p - mu_t))`` with the pristine model (mu_p, cov_p).
   As MATLAB's ``nanmean`` / ``nancov``: mu_t is the mean of each feature over the patches where it is
   defined, cov_t the covariance of the patches with no NaN feature; one such patch gives cov_t = 0 (MATLAB's
   ``cov`` of one row; BasicSR returns NaN there). Larger = worse.
7. Pristine model (:func:`fit_pristine_params`): the same features on undistorted photos, keeping the
   patches whose sharpness (the mean of sigma over the patch, first scale) exceeds 0.75 x the image's
   sharpest patch, then the sample mean and covariance.

Arithmetic is float64 throughout. With BasicSR's MATLAB-derived parameters this equals BasicSR's
``calculate_niqe`` to within 3e-3 on the 16 shared photos (HR, MSE-SR and GAN-SR, crop 0 and 4; to 1e-3 on 87 of
96), the differences coming from BasicSR's float32 local variance (``E[I^2] - mu^2`` cancels in float32 on
near-flat areas) and grid ties of alpha. In perfectly flat areas MATLAB's and BasicSR's blurs reproduce the
pixel value, or miss it by round-off whose sign is implementation-defined; here the exact difference 0 is kept
(see :func:`compute_mscn`), which is what BasicSR's float32 blur gives.

Pristine parameters (:func:`resolve_niqe_params`): ``$DESRA_NIQE_PARAMS``; else MATLAB's (BasicSR's
``niqe_pris_params.npz``, from NIQE's ``modelparameters.mat`` fitted on 125 photos) in ``pretrained/`` when
present (``python scripts/download_pretrained.py --source pypi --only niqe`` extracts it from the basicsr 1.4.2
sdist); else the shipped fallback ``desra/resources/niqe_pristine_params.npz``, fitted by
``scripts/fit_niqe_params.py`` on public-domain/CC0 photos bundled with scikit-image (see
``desra/resources/NIQE_PARAMS.md``), whose absolute values are not comparable with published ones. Which one is
used is logged once. Any ``.npz`` with keys ``mu_pris_param`` / ``cov_pris_param`` (or ``mu`` / ``cov``) can be
passed with ``params=``.

The sliding-window map (:func:`niqe_map`) is defined in its docstring.
"""
from __future__ import annotations

import functools
import logging
import os

import cv2
import numpy as np
from scipy.special import gamma as _gamma_fn

from desra.metrics.color import to_y_channel
from desra.registry import METRIC_REGISTRY

__all__ = ['DEFAULT_PARAMS_PATH', 'NUM_FEATURES', 'PARAMS_ENV_VAR', 'calculate_niqe', 'compute_mscn', 'fit_aggd',
           'fit_ggd', 'fit_pristine_params', 'imresize_half', 'load_niqe_params', 'niqe_map', 'niqe_score',
           'patch_features', 'resolve_niqe_params', 'to_luminance']

logger = logging.getLogger('desra')

NUM_FEATURES = 36
PARAMS_ENV_VAR = 'DESRA_NIQE_PARAMS'
DEFAULT_PARAMS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'resources',
                                   'niqe_pristine_params.npz')

# Shape grid 0.2:0.001:10 (built from integers so every point is the exact decimal) and the functions of the
# shape the fits need, evaluated once.
_ALPHA_GRID = np.arange(200, 10001, dtype=np.float64) / 1000.0
_G1, _G2, _G3 = (_gamma_fn(k / _ALPHA_GRID) for k in (1.0, 2.0, 3.0))
_RHO_GRID = _G2 ** 2 / (_G1 * _G3)          # strictly increasing on the grid (checked below)
_MEAN_FACTOR = _G2 / np.sqrt(_G1 * _G3)      # AGGD mean = (sr - sl) * this
_BETA_FACTOR = np.sqrt(_G1 / _G3)            # AGGD scale beta = s * this
assert np.all(np.diff(_RHO_GRID) > 0)
del _G1, _G2, _G3

# (row, column) shifts of the four neighbour products, in MATLAB's circshift convention: the partner of x[i, j]
# is x[i - dy, j - dx] (horizontal, vertical, main diagonal, anti-diagonal).
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_FLAT_TOL = 1e-9


# ---------------------------------------------------------------------------------------- building blocks

def _gaussian_kernel_1d(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-x * x / (2.0 * sigma * sigma))
    return g / g.sum()


def compute_mscn(img: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients and local standard deviation of a 2-D image (float64, 0..255 scale).

    7 x 7 Gaussian window (sigma 7/6, sum 1, separable), replicated border. Returns ``(mscn, sigma)``.

    Where the whole window is flat the exact value of ``I - mu`` is 0, but the blur leaves round-off of
    about 1e-13 with arbitrary signs, and the AGGD fits split values by sign; so differences smaller than
    ``_FLAT_TOL`` (1e-9 on the 0..255 scale, far below any real difference of 8-bit data) are set to 0.
    """
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f'compute_mscn: expected a 2-D image, got shape {img.shape}')
    g = _gaussian_kernel_1d()

    def blur(x):
        return cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REPLICATE)

    mu = blur(img)
    sigma = np.sqrt(np.abs(blur(img * img) - mu * mu))
    diff = img - mu
    diff[np.abs(diff) < _FLAT_TOL] = 0.0
    return diff / (sigma + c), sigma


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0)))


@functools.lru_cache(maxsize=32)
def _half_contributions(in_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (0-based) and weights, ``out_len x taps``, of a x0.5 antialiased bicubic resize."""
    scale = 0.5
    out_len = int(np.ceil(in_len * scale))
    width = 4.0 / scale                                   # kernel support widened by 1/scale (antialiasing)
    x = np.arange(1, out_len + 1, dtype=np.float64)       # 1-based output coordinates
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)             # their positions in input coordinates (1-based)
    left = np.floor(u - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = scale * _cubic(scale * (u[:, None] - idx))
    w /= w.sum(axis=1, keepdims=True)
    # Out-of-range taps mirror the image including its edge sample (MATLAB's 'symmetric').
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    return src, w


def _resize_half_axis0(img: np.ndarray) -> np.ndarray:
    src, w = _half_contributions(img.shape[0])
    out = np.zeros((src.shape[0],) + img.shape[1:], dtype=np.float64)
    for t in range(src.shape[1]):
        out += w[:, t, None] * img[src[:, t]]
    return out


def imresize_half(img: np.ndarray) -> np.ndarray:
    """Downsample a 2-D float image by 2 like MATLAB's ``imresize(img, 0.5)`` (bicubic, antialiased).

    Output size ``ceil(H / 2) x ceil(W / 2)``; rows are resized first, then columns; float64, no rounding.
    """
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f'imresize_half: expected a 2-D image, got shape {img.shape}')
    return _resize_half_axis0(_resize_half_axis0(img).T).T


# ------------------------------------------------------------------------------------------- AGGD / GGD fits

def _nearest_alpha_index(rho: np.ndarray) -> np.ndarray:
    """Index of the grid shape whose rho is nearest (MATLAB: argmin of (rho_grid - rho)^2, first on ties)."""
    rho = np.asarray(rho, dtype=np.float64)
    finite = np.isfinite(rho)
    r = np.where(finite, rho, 0.0)
    hi = np.clip(np.searchsorted(_RHO_GRID, r), 1, len(_RHO_GRID) - 1)
    lo = hi - 1
    idx = np.where(np.abs(_RHO_GRID[hi] - r) < np.abs(r - _RHO_GRID[lo]), hi, lo)
    return np.where(finite, idx, -1)


def _take(grid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.where(idx >= 0, grid[np.maximum(idx, 0)], np.nan)


def _aggd_from_moments(n, n_neg, n_pos, s_neg2, s_pos2, s_abs):
    """AGGD fit from sufficient statistics (arrays of one shape): number of values, of negative and positive
    values, sums of squares over the negative / positive values, sum of absolute values.

    Returns ``(alpha, mean, beta_l, beta_r)`` with ``beta = s sqrt(Gamma(1/a) / Gamma(3/a))`` (s the left / right
    standard deviation) and ``mean = (beta_r - beta_l) Gamma(2/a) / Gamma(1/a)``. Undefined cases follow MATLAB
    (and BasicSR): a side without values has NaN standard deviation, so its beta and the mean are NaN, and the
    shape search over an all-NaN distance returns the first grid point, alpha = 0.2.
    """
    with np.errstate(divide='ignore', invalid='ignore'):
        sl = np.sqrt(s_neg2 / n_neg)
        sr = np.sqrt(s_pos2 / n_pos)
        g = sl / sr
        rhat = (s_abs / n) ** 2 / ((s_neg2 + s_pos2) / n)
        rhat_norm = rhat * (g ** 3 + 1.0) * (g + 1.0) / (g ** 2 + 1.0) ** 2
    idx = np.maximum(_nearest_alpha_index(rhat_norm), 0)
    scale = _BETA_FACTOR[idx]
    return _ALPHA_GRID[idx], (sr - sl) * _MEAN_FACTOR[idx], sl * scale, sr * scale


def _moments(x: np.ndarray, axis) -> tuple:
    """The statistics :func:`_aggd_from_moments` takes, reduced over ``axis`` (an int or a tuple)."""
    neg, pos = x < 0, x > 0
    x2 = x * x
    n_neg = np.sum(neg, axis=axis, dtype=np.float64)
    n = np.full(n_neg.shape, float(x.size // max(n_neg.size, 1)))
    return (n, n_neg, np.sum(pos, axis=axis, dtype=np.float64), np.sum(np.where(neg, x2, 0.0), axis=axis),
            np.sum(np.where(pos, x2, 0.0), axis=axis), np.sum(np.abs(x), axis=axis))


def fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching AGGD fit of a sample (any shape, flattened): ``(alpha, mean, beta_l, beta_r)``.

    ``alpha`` is on the grid 0.2:0.001:10; ``beta_l`` / ``beta_r`` are the AGGD scales, ``sigma_l sqrt(Gamma(1/a)
    / Gamma(3/a))`` with ``sigma_l^2`` the mean square of the negative values (likewise right); ``mean =
    (beta_r - beta_l) Gamma(2/a) / Gamma(1/a)``. Without negative (positive) values, beta_l (beta_r) and the
    mean are NaN and alpha is 0.2, as in MATLAB's ``estimateaggdparam``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    return tuple(float(v) for v in _aggd_from_moments(*_moments(x, 0)))


def fit_ggd(x: np.ndarray) -> tuple[float, float]:
    """Moment-matching zero-mean GGD fit (Sharifi & Leon-Garcia): ``(alpha, sigma^2)``.

    ``rho = E|x|^2 / E[x^2]`` is matched to ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` on the grid
    0.2:0.001:10 and ``sigma^2 = E[x^2]``. (NIQE's own features use :func:`fit_aggd`, as the MATLAB release;
    for a symmetric sample both give the same shape up to sampling noise.)
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    m2 = float(np.mean(x * x))
    with np.errstate(divide='ignore', invalid='ignore'):
        rho = float(np.mean(np.abs(x))) ** 2 / m2
    return float(_take(_ALPHA_GRID, _nearest_alpha_index(np.array(rho)))), m2


def _scale_features(stats_of) -> np.ndarray:
    """18 features per patch from ``stats_of(k)``, the moments of signal k (0: MSCN, 1-4: the products).

    As MATLAB's ``estimateaggdparam`` / ``computefeature``: the AGGD scales ``beta = s * sqrt(Gamma(1/a) /
    Gamma(3/a))`` (s the left / right standard deviation), ``(beta_l + beta_r) / 2`` for the MSCN term and
    ``alpha, mean, beta_l, beta_r`` for each product, with ``mean = (beta_r - beta_l) Gamma(2/a) / Gamma(1/a)``.
    """
    a, _, bl, br = _aggd_from_moments(*stats_of(0))
    feats = [a, (bl + br) / 2.0]
    for k in range(1, 5):
        feats.extend(_aggd_from_moments(*stats_of(k)))
    return np.stack(feats, axis=-1)


# -------------------------------------------------------------------------------------- patch features

def _blocks(x: np.ndarray, p: int, nh: int, nw: int) -> np.ndarray:
    """The top-left ``nh*p x nw*p`` part of a 2-D array as ``nh x nw x p x p`` blocks (a view)."""
    return x[:nh * p, :nw * p].reshape(nh, p, nw, p).transpose(0, 2, 1, 3)


def _block_scale_features(mscn: np.ndarray, p: int, nh: int, nw: int) -> np.ndarray:
    b = _blocks(mscn, p, nh, nw)

    def stats_of(k):
        if k == 0:
            sig = b
        else:  # products with the neighbour, wrapping inside each block (MATLAB circshift on the block)
            sig = b * np.roll(b, _SHIFTS[k - 1], axis=(2, 3))
        return _moments(sig, (2, 3))

    return _scale_features(stats_of).reshape(nh * nw, 18)


def patch_features(img: np.ndarray, patch_size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """NIQE features of the non-overlapping ``patch_size`` patches of a 2-D luminance image (0..255).

    The image is cropped to a whole number of patches (top-left part kept), as in the MATLAB release.

    Returns:
        ``(features, sharpness)``: ``N x 36`` (N patches in row-major order) and ``N`` (mean local standard
        deviation of each patch at the first scale).
    """
    img = np.asarray(img, dtype=np.float64)
    p = int(patch_size)
    if img.ndim != 2:
        raise ValueError(f'patch_features: expected a 2-D luminance image, got shape {img.shape}')
    if p < 4 or p % 2:
        raise ValueError(f'patch_features: patch_size must be an even number >= 4, got {patch_size}')
    nh, nw = img.shape[0] // p, img.shape[1] // p
    if nh == 0 or nw == 0:
        raise ValueError(f'NIQE needs an image of at least {p}x{p} pixels (one patch), got '
                         f'{img.shape[0]}x{img.shape[1]}')
    img = img[:nh * p, :nw * p]
    mscn, sigma = compute_mscn(img)
    f1 = _block_scale_features(mscn, p, nh, nw)
    sharpness = _blocks(sigma, p, nh, nw).mean(axis=(2, 3)).ravel()
    mscn2, _ = compute_mscn(imresize_half(img))
    f2 = _block_scale_features(mscn2, p // 2, nh, nw)
    return np.concatenate([f1, f2], axis=1), sharpness


def _mvg(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``nanmean`` (per column, over its finite values) and ``nancov`` (rows without NaN).

    NaN where a column has no finite value or no row is complete; one complete row gives a zero covariance
    (MATLAB's ``cov`` of one observation).
    """
    finite = np.isfinite(feats)
    with np.errstate(invalid='ignore', divide='ignore'):
        mu = np.where(finite, feats, 0.0).sum(axis=0) / finite.sum(axis=0)
    rows = feats[np.all(finite, axis=1)]
    d = feats.shape[1]
    if rows.shape[0] == 0:
        return mu, np.full((d, d), np.nan)
    if rows.shape[0] == 1:
        return mu, np.zeros((d, d))
    return mu, np.cov(rows, rowvar=False)


# ---------------------------------------------------------------------------------------- pristine model

def to_luminance(img: np.ndarray, input_order: str = 'HWC', convert_to: str = 'y') -> np.ndarray:
    """An image with values in [0, 255] -> the 2-D float64 luminance NIQE works on, rounded to integers.

    3-channel images are BGR (the project's numpy convention). ``convert_to``: ``'y'`` (BT.601 Y in
    [16, 235], :func:`desra.metrics.color.to_y_channel`) or ``'gray'`` (OpenCV's BGR2GRAY). 2-D and
    1-channel images are used as they are.
    """
    img = np.asarray(img)
    if input_order not in ('HWC', 'CHW'):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if img.ndim == 3 and input_order == 'CHW':
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        if img.shape[2] != 3:
            raise ValueError(f'expected a 1- or 3-channel image, got shape {img.shape}')
        if convert_to == 'y':
            img = to_y_channel(img)[..., 0]
        elif convert_to == 'gray':
            img = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_BGR2GRAY) * 255.0
        else:
            raise ValueError(f"convert_to must be 'y' or 'gray', got {convert_to!r}")
    elif img.ndim != 2:
        raise ValueError(f'expected an H x W or H x W x C image, got shape {img.shape}')
    return np.round(img.astype(np.float64))


def fit_pristine_params(images, patch_size: int = 96, sharpness_threshold: float = 0.75,
                        return_count: bool = False):
    """Fit NIQE's pristine MVG on undistorted images.

    Args:
        images: iterable of images with values in [0, 255]: 2-D luminance arrays (used as they are) or
            H x W x 3 BGR arrays (converted with :func:`to_luminance`, Y channel).
        patch_size: P (96 in NIQE).
        sharpness_threshold: per image, keep the patches whose sharpness exceeds this fraction of the
            image's largest (0.75 in the MATLAB release); 0 keeps every patch with non-zero sharpness.
        return_count: also return the number of patches used.

    Returns:
        ``(mu (36,), cov (36, 36))`` (sample mean and unbiased covariance), plus the patch count if asked.
    """
    kept = []
    for img in images:
        img = np.asarray(img)
        lum = img.astype(np.float64) if img.ndim == 2 else to_luminance(img)
        feats, sharp = patch_features(lum, patch_size)
        kept.append(feats[sharp > sharpness_threshold * sharp.max()])
    feats = np.concatenate(kept, axis=0) if kept else np.zeros((0, NUM_FEATURES))
    n_complete = int(np.all(np.isfinite(feats), axis=1).sum())
    if n_complete < 2:
        raise ValueError(f'fit_pristine_params: {n_complete} usable patch(es); need at least 2')
    mu, cov = _mvg(feats)
    return (mu, cov, feats.shape[0]) if return_count else (mu, cov)


def _check_params(mu, cov, origin: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64).ravel()
    cov = np.asarray(cov, dtype=np.float64)
    if mu.shape != (NUM_FEATURES,) or cov.shape != (NUM_FEATURES, NUM_FEATURES):
        raise ValueError(f'NIQE parameters from {origin}: expected mu of 36 values and a 36 x 36 cov, got '
                         f'{mu.shape} and {cov.shape}')
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
        raise ValueError(f'NIQE parameters from {origin}: non-finite values')
    return mu, cov


@functools.lru_cache(maxsize=8)
def _load_npz(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        for mk, ck in (('mu', 'cov'), ('mu_pris_param', 'cov_pris_param')):
            if mk in keys and ck in keys:
                mu, cov = _check_params(z[mk], z[ck], path)
                break
        else:
            raise ValueError(f'NIQE parameters {path}: expected keys mu/cov or mu_pris_param/cov_pris_param, '
                             f'found {sorted(keys)}')
    mu.setflags(write=False)
    cov.setflags(write=False)
    return mu, cov


def resolve_niqe_params(params=None):
    """Which pristine model ``params=None`` means now: ``(path, description)``.

    In order: the file named by ``$DESRA_NIQE_PARAMS``; BasicSR's MATLAB-derived ``niqe_pris_params.npz`` in
    ``pretrained/`` (cwd or repository; ``scripts/download_pretrained.py --source pypi --only niqe`` extracts it
    from the basicsr 1.4.2 sdist); else the shipped scikit-image fit (:data:`DEFAULT_PARAMS_PATH`), whose scale is
    not MATLAB's. A given ``params`` is returned as it is, described as "given".
    """
    if params is not None:
        return params, 'given'
    from desra.weights.locate import NIQE_PARAMS, find_weight_file

    path = find_weight_file(NIQE_PARAMS, 'NIQE', required=False)
    if path is not None:
        if os.environ.get(PARAMS_ENV_VAR):
            return str(path), f'${PARAMS_ENV_VAR}'
        return str(path), "MATLAB's (BasicSR's niqe_pris_params.npz)"
    return DEFAULT_PARAMS_PATH, 'the shipped scikit-image fit (not on MATLAB\'s scale)'


_announced: set = set()


def load_niqe_params(params=None) -> tuple[np.ndarray, np.ndarray]:
    """The pristine model ``(mu (36,), cov (36, 36))`` (read-only arrays).

    ``params``: ``None`` (see :func:`resolve_niqe_params`: ``$DESRA_NIQE_PARAMS``, else MATLAB's parameters in
    ``pretrained/niqe_pris_params.npz`` when present, else the shipped fallback; which one is logged once), a path
    to an ``.npz`` with keys ``mu``/``cov`` or ``mu_pris_param``/``cov_pris_param`` (BasicSR's names; a 1 x 36 mean
    is accepted), a dict with those keys, or a ``(mu, cov)`` pair.
    """
    if params is None:
        params, origin = resolve_niqe_params()
        if params not in _announced:
            _announced.add(params)
            log = logger.info if params != DEFAULT_PARAMS_PATH else logger.warning
            log('NIQE: pristine parameters %s: %s%s', origin, params,
                '' if params != DEFAULT_PARAMS_PATH else
                ' (values are not comparable with published NIQE; get MATLAB\'s with '
                '`python scripts/download_pretrained.py --source pypi --only niqe`)')
    if isinstance(params, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(params))
        if not os.path.isfile(path):
            raise FileNotFoundError(f'NIQE parameter file not found: {path}')
        return _load_npz(path, os.path.getmtime(path))
    if isinstance(params, dict):
        for mk, ck in (('mu', 'cov'), ('mu_pris_param', 'cov_pris_param')):
            if mk in params and ck in params:
                return _check_params(params[mk], params[ck], 'dict')
        raise ValueError(f'NIQE parameters: dict needs keys mu/cov or mu_pris_param/cov_pris_param, '
                         f'got {sorted(params)}')
    if isinstance(params, (tuple, list)) and len(params) == 2:
        return _check_params(params[0], params[1], 'a (mu, cov) pair')
    raise TypeError(f'NIQE parameters: expected None, a path, a dict or (mu, cov), got {type(params).__name__}')


# ------------------------------------------------------------------------------------------------ scores

def _pinv_half_sum(cov_p: np.ndarray, cov_t: np.ndarray) -> np.ndarray:
    return np.linalg.pinv((cov_p + cov_t) / 2.0)


def niqe_score(img: np.ndarray, params=None, patch_size: int = 96) -> float:
    """NIQE of a 2-D luminance image (0..255, at least ``patch_size`` square); NaN if no patch is usable."""
    mu_p, cov_p = load_niqe_params(params)
    mu_t, cov_t = _mvg(patch_features(img, patch_size)[0])
    if not (np.all(np.isfinite(mu_t)) and np.all(np.isfinite(cov_t))):
        return float('nan')
    d = mu_p - mu_t
    return float(np.sqrt(max(float(d @ _pinv_half_sum(cov_p, cov_t) @ d), 0.0)))


@METRIC_REGISTRY.register()
def calculate_niqe(img: np.ndarray, crop_border: int = 0, input_order: str = 'HWC', convert_to: str = 'y',
                   params=None, **kwargs) -> float:
    """NIQE of one image (no reference; lower is better). See the module docstring for the definition.

    Args:
        img: H x W x 3 BGR (or C x H x W with ``input_order='CHW'``) or H x W image with values in [0, 255].
            After cropping it must hold at least one 96 x 96 patch.
        crop_border: pixels removed from each side first.
        input_order: ``'HWC'`` or ``'CHW'``.
        convert_to: ``'y'`` (BT.601 Y channel, default) or ``'gray'``.
        params: pristine model, see :func:`load_niqe_params` (default: MATLAB's when
            ``pretrained/niqe_pris_params.npz`` is there, else the shipped fit, whose scale differs).
        **kwargs: ignored (e.g. ``img2`` passed by the validation loop).

    Returns:
        NIQE as a float (NaN when every patch is flat).
    """
    lum = to_luminance(img, input_order, convert_to)
    if crop_border:
        if 2 * crop_border >= min(lum.shape):
            raise ValueError(f'crop_border {crop_border} leaves nothing of a {lum.shape[0]}x{lum.shape[1]} image')
        lum = lum[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_score(lum, params)


calculate_niqe.better = 'lower'


# ------------------------------------------------------------------------------------ sliding-window map

def _window_starts(length: int, window: int, stride: int) -> np.ndarray:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)  # the last window touches the far border, so every pixel is covered
    return np.asarray(starts, dtype=np.int64)


def _integral(q: np.ndarray) -> np.ndarray:
    """Summed-area table with a leading zero row and column, float64 ((H + 1) x (W + 1))."""
    if q.dtype == np.bool_:
        q = q.view(np.uint8)
    return cv2.integral(np.ascontiguousarray(q), sdepth=cv2.CV_64F)


def _box_sums(q: np.ndarray, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of ``q`` over the ``h x w`` boxes with top-left corners ``ys x xs`` (len(ys) x len(xs))."""
    s = _integral(q)
    y0, y1, x0, x1 = ys[:, None], ys[:, None] + h, xs[None, :], xs[None, :] + w
    return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]


def _window_scale_features(mscn: np.ndarray, ys: np.ndarray, xs: np.ndarray, p: int) -> np.ndarray:
    """18 features of every p x p window (corners ys x xs), pairs counted only when both lie in the window."""

    def stats_of(k):
        if k == 0:
            sig, h, w = mscn, p, p
        else:
            dy, dx = _SHIFTS[k - 1]
            # sig[i, j] pairs the pixels (i + dy, j + max(dx, 0)) and (i, j + max(-dx, 0)): the box of pairs
            # inside a p x p window is (p - dy) x (p - |dx|) at the window's corner.
            a = mscn[dy:, max(dx, 0):mscn.shape[1] + min(dx, 0)]
            b = mscn[:mscn.shape[0] - dy, max(-dx, 0):mscn.shape[1] - max(dx, 0)]
            sig, h, w = a * b, p - dy, p - abs(dx)
        neg, pos = sig < 0, sig > 0
        sig2 = sig * sig
        n = np.full((len(ys), len(xs)), float(h * w))
        return (n, _box_sums(neg, ys, xs, h, w), _box_sums(pos, ys, xs, h, w),
                _box_sums(np.where(neg, sig2, 0.0), ys, xs, h, w), _box_sums(np.where(pos, sig2, 0.0), ys, xs, h, w),
                _box_sums(np.abs(sig), ys, xs, h, w))

    return _scale_features(stats_of)


def niqe_map(img: np.ndarray, window: int = 96, stride: int = 32, params=None, convert_to: str = 'y',
             input_order: str = 'HWC', return_window_scores: bool = False):
    """Sliding-window NIQE map: the NIQE of every ``window`` x ``window`` window, spread back to pixels.

    Definition. The luminance (as :func:`calculate_niqe`) is computed once; MSCN coefficients for the whole
    image at both scales (the second from :func:`imresize_half` of the whole image). Windows start every
    ``stride`` pixels, plus one flush with the bottom/right border so every pixel is covered; at the second
    scale a window is the ``window/2`` square at half its corner coordinates (clipped to the image). Each
    window is ONE NIQE patch: its 36 features are computed from window sums of the coefficients and their
    neighbour products (integral images, no per-window loop; a product counts when both of its pixels lie in
    the window, instead of MATLAB's wrap-around inside the patch). A single patch has no covariance of its
    own, so its score is the NIQE formula with a zero test covariance (what MATLAB's ``cov`` of one row
    gives): ``sqrt((f - mu_p)^T pinv(cov_p / 2) (f - mu_p))``, i.e. sqrt(2) x the Mahalanobis distance of
    the window's features to the pristine MVG. The value at a pixel is the mean score of all windows
    covering it; windows whose features are undefined (flat windows) are left out, and a pixel covered by
    none of the others gets 0. Larger = worse. Scores are on the scale of the chosen pristine parameters:
    pick thresholds on data.

    Images smaller than ``window`` use a window of their smaller side (rounded down to even, at least 16).

    Args:
        img: H x W x 3 BGR or H x W image in [0, 255] (uint8 or float), see :func:`to_luminance`.
        window: window side (even; 96 = NIQE's patch size).
        stride: distance between window corners.
        params: pristine model, see :func:`load_niqe_params`.
        convert_to, input_order: as in :func:`calculate_niqe`.
        return_window_scores: also return ``(scores, ys, xs)``: the len(ys) x len(xs) window scores and
            the windows' top-left corners.

    Returns:
        H x W float64 map (and the window scores if asked).
    """
    lum = to_luminance(img, input_order, convert_to)
    h, w = lum.shape
    if window % 2 or window < 16:
        raise ValueError(f'niqe_map: window must be an even number >= 16, got {window}')
    if stride < 1:
        raise ValueError(f'niqe_map: stride must be positive, got {stride}')
    window = min(window, h - h % 2, w - w % 2)
    if window < 16:
        raise ValueError(f'niqe_map: image {h}x{w} is too small (needs at least 16x16)')
    mu_p, cov_p = load_niqe_params(params)

    ys, xs = _window_starts(h, window, stride), _window_starts(w, window, stride)
    mscn, _ = compute_mscn(lum)
    f1 = _window_scale_features(mscn, ys, xs, window)
    del mscn
    half = imresize_half(lum)
    p2 = window // 2
    ys2, xs2 = np.minimum(ys // 2, half.shape[0] - p2), np.minimum(xs // 2, half.shape[1] - p2)
    mscn2, _ = compute_mscn(half)
    f2 = _window_scale_features(mscn2, ys2, xs2, p2)
    feats = np.concatenate([f1, f2], axis=-1)                          # nY x nX x 36

    d = feats - mu_p
    a = _pinv_half_sum(cov_p, np.zeros_like(cov_p))
    with np.errstate(invalid='ignore'):
        scores = np.sqrt(np.maximum(np.einsum('yxi,ij,yxj->yx', d, a, d), 0.0))
    valid = np.all(np.isfinite(feats), axis=-1)
    scores = np.where(valid, scores, np.nan)

    # Spread back: a 2-D difference array of (score, count) per window corner, then cumulative sums.
    yy, xx = np.meshgrid(ys, xs, indexing='ij')
    acc = []
    for vals in (np.where(valid, scores, 0.0), valid.astype(np.float64)):
        diff = np.zeros((h + 1, w + 1))
        for dy, dx, sign in ((0, 0, 1.0), (window, 0, -1.0), (0, window, -1.0), (window, window, 1.0)):
            np.add.at(diff, (yy + dy, xx + dx), sign * vals)
        acc.append(_integral(diff)[1:h + 1, 1:w + 1])
    total, count = acc
    out = np.where(count > 0.5, total / np.maximum(count, 1.0), 0.0)
    if return_window_scores:
        return out, (scores, ys, xs)
    return out
