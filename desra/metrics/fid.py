"""Fréchet Inception Distance (FID) between two image sets, with pytorch-fid's network and arithmetic.

FID fits a Gaussian to the 2048-d pool3 features of :class:`~desra.archs.inception_arch.FIDInceptionV3` for each
set and measures the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FID = d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

with ``mu`` the feature mean (D,) and ``S`` the unbiased sample covariance (D x D), D = 2048. Lower is better.

Pieces:

* :func:`calculate_fid` — the distance from two (mu, sigma) pairs, BasicSR's name and signature, pytorch-fid's
  float64 computation (``scipy.linalg.sqrtm``).
* :class:`FeatureStats` — streaming float64 mean / covariance of feature vectors, saved as ``.npz``.
* :func:`load_fid_stats` — reads desra's / pytorch-fid's ``.npz`` (``mu``, ``sigma``) and BasicSR's ``.pth``
  (``mean``, ``cov``, e.g. ``inception_FFHQ_512.pth``) statistics files.
* :func:`extract_inception_features` — images (or their tiles) -> features.
* :class:`FIDMetric` — the set-level accumulator that validation and ``test.py`` use for a YAML entry
  ``fid: {type: calculate_fid, weights: ..., patch_size: ..., ref_stats: ...}``.

Small sets: the covariance of N samples has rank at most N - 1, so with N < 2048 it is singular and FID is biased
(it grows as N shrinks) and not comparable with published figures computed on thousands of images;
:class:`FIDMetric` warns about it. The LDL paper reports FID on sets as small as Set5 without saying how it
computed it (whole images, or patches); ``patch_size=None`` (the default) is the standard whole-image FID, as
pytorch-fid on two folders, and ``patch_size=P`` makes every non-overlapping P x P tile a sample instead.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from typing import Any

import numpy as np

from desra.errors import ConfigError, DataError
from desra.registry import METRIC_REGISTRY

__all__ = ['calculate_fid', 'FeatureStats', 'load_fid_stats', 'extract_inception_features', 'fid_from_stats',
           'FIDMetric']

logger = logging.getLogger('desra')

#: Tiles / images sent through the network at once by :func:`extract_inception_features`.
FEATURE_CHUNK = 32


def _as_numpy_float64(x, ndim: int, name: str) -> np.ndarray:
    if hasattr(x, 'detach'):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return np.atleast_1d(arr) if ndim == 1 else np.atleast_2d(arr)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular-matrix warning (pytorch-fid's ``disp=False``: the caller checks
    the result instead)."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', linalg.LinAlgWarning)
        return linalg.sqrtm(matrix)


@METRIC_REGISTRY.register()
def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^(1/2))`` from symmetric eigendecompositions: S1 S2 is similar to the PSD matrix
    ``S1^(1/2) S2 S1^(1/2)``, so the trace is the sum of the square roots of that matrix's eigenvalues."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root @ ((sigma2 + sigma2.T) / 2) @ root)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


@METRIC_REGISTRY.register()
def calculate_fid(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = 'sqrtm') -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed as pytorch-fid does.

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrtm(sigma1 @ sigma2))

    in float64. When ``sqrtm`` gives a non-finite result (a singular product), it is retried with ``eps * I``
    added to both covariances (a warning is logged). A complex square root (rounding on near-singular inputs) is
    accepted when the imaginary part of its diagonal is ~0 (``atol=1e-3``) and its real part is used.

    ``method='eigh'`` computes the same trace from two symmetric eigendecompositions instead (no matrix square
    root of a non-symmetric product, so no retry): on 2048 x 2048 covariances it agrees with ``sqrtm`` (and so with
    pytorch-fid, which ``'sqrtm'`` reproduces bit for bit) to 1e-14 relative when they have full rank and to 1e-7
    when they are estimated from 16-300 samples, and takes 2.4 s instead of 11.4 s on 2 CPU cores.

    Args:
        mu1, mu2: feature means, shape (D,) (numpy arrays, sequences or tensors).
        sigma1, sigma2: feature covariances, shape (D, D), symmetric positive semi-definite.
        eps: the diagonal offset of the retry.
        method: ``'sqrtm'`` (pytorch-fid's, default) or ``'eigh'``.

    Returns:
        The distance (a float >= 0 up to rounding; ~0 for identical statistics).

    Raises:
        ValueError: shapes that do not match, non-finite statistics, or a square root with a large imaginary part.

    ``calculate_fid.set_level`` marks it as a set-level metric: in a ``val.metrics`` block it is evaluated by
    :class:`FIDMetric` over the whole set, not per image.
    """
    mu1, mu2 = _as_numpy_float64(mu1, 1, 'mu1'), _as_numpy_float64(mu2, 1, 'mu2')
    sigma1, sigma2 = _as_numpy_float64(sigma1, 2, 'sigma1'), _as_numpy_float64(sigma2, 2, 'sigma2')
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f'calculate_fid: mu1 and mu2 must be vectors of the same length, got shapes '
                         f'{mu1.shape} and {mu2.shape}')
    dim = mu1.shape[0]
    for name, sigma in (('sigma1', sigma1), ('sigma2', sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(f'calculate_fid: {name} must be {dim} x {dim} (the length of mu), got shape '
                             f'{sigma.shape}')
    for name, value in (('mu1', mu1), ('sigma1', sigma1), ('mu2', mu2), ('sigma2', sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f'calculate_fid: {name} has NaN or infinite entries')
    diff = mu1 - mu2
    if method == 'eigh':
        return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product_eigh(sigma1, sigma2))
    if method != 'sqrtm':
        raise ValueError(f"calculate_fid: method must be 'sqrtm' or 'eigh', got {method!r}")
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning(f'FID: sqrtm(sigma1 @ sigma2) is not finite (singular product); retrying with {eps:g} '
                       'added to the diagonal of both covariances')
        offset = np.eye(dim) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError(f'calculate_fid: sqrtm(sigma1 @ sigma2) is not finite even with eps={eps:g} added')
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'calculate_fid: sqrtm(sigma1 @ sigma2) has an imaginary component of up to '
                             f'{np.max(np.abs(covmean.imag)):.3g} (the covariances are not positive semi-definite?)')
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


calculate_fid.set_level = True
calculate_fid.better = 'lower'


# ------------------------------------------------------------------------------------------ statistics

class FeatureStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Batches are merged with Chan et al.'s pairwise update: with the running count n, mean m and scatter
    M2 = sum_i (x_i - m)(x_i - m)^T, a batch (n_b, m_b, M2_b) gives

        n' = n + n_b,  m' = m + (m_b - m) n_b / n',  M2' = M2 + M2_b + (m_b - m)(m_b - m)^T n n_b / n'

    which avoids the cancellation of ``sum x x^T - n m m^T``. ``sigma = M2 / (n - 1)`` equals
    ``np.cov(all_features, rowvar=False)``.

    Statistics read from a file without a sample count (pytorch-fid's / BasicSR's files) have ``n = None`` and
    cannot be extended.
    """

    def __init__(self):
        self._n: int | None = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._sigma: np.ndarray | None = None   # fixed covariance of loaded statistics without a count
        self.meta: dict[str, Any] = {}

    @classmethod
    def from_moments(cls, mu, sigma, n: int | None = None, meta: dict | None = None) -> 'FeatureStats':
        """Statistics with a known mean (D,) and covariance (D x D) of ``n`` samples (None: unknown)."""
        stats = cls()
        stats._mean = _as_numpy_float64(mu, 1, 'mu').copy()
        sigma = _as_numpy_float64(sigma, 2, 'sigma').copy()
        if n is None:
            stats._n, stats._sigma = None, sigma
        else:
            stats._n = int(n)
            stats._m2 = sigma * (stats._n - 1) if stats._n > 1 else np.zeros_like(sigma)
        stats.meta = dict(meta or {})
        return stats

    @property
    def n(self) -> int | None:
        """Number of samples (None for loaded statistics without a count)."""
        return self._n

    @property
    def dim(self) -> int | None:
        """Feature dimension D (None before the first update)."""
        return None if self._mean is None else self._mean.shape[0]

    def update(self, features) -> 'FeatureStats':
        """Add an ``N x D`` batch of feature vectors (tensor on any device, or array); returns ``self``."""
        x = _as_numpy_float64(features, 2, 'features')
        if x.ndim != 2:
            raise ValueError(f'FeatureStats.update: expected an N x D array of features, got shape {x.shape}')
        if x.shape[0] == 0:
            return self
        if self._n is None:
            raise ValueError('FeatureStats.update: these statistics were loaded without a sample count and '
                             'cannot be extended')
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f'FeatureStats.update: features of dimension {x.shape[1]}, the statistics have '
                             f'{self._mean.shape[0]}')
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        centered = x - mean_b
        self._merge(n_b, mean_b, centered.T @ centered)
        return self

    def merge(self, other: 'FeatureStats') -> 'FeatureStats':
        """Add the samples summarised by ``other`` (e.g. another process's statistics); returns ``self``."""
        if other.n is None or self._n is None:
            raise ValueError('FeatureStats.merge: statistics without a sample count cannot be merged')
        if other.n == 0:
            return self
        if self._mean is not None and other.dim != self.dim:
            raise ValueError(f'FeatureStats.merge: dimensions {self.dim} and {other.dim} differ')
        self._merge(other.n, other._mean, other._m2)
        return self

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self._n == 0:
            self._n, self._mean, self._m2 = n_b, mean_b.copy(), m2_b.copy()
            return
        n_a = self._n
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self._n = n

    @property
    def mu(self) -> np.ndarray:
        """Mean feature vector, shape (D,), float64."""
        if self._mean is None:
            raise ValueError('FeatureStats: no features yet')
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased sample covariance ``M2 / (n - 1)``, shape (D, D), float64 (needs n >= 2)."""
        if self._sigma is not None:
            return self._sigma.copy()
        if self._mean is None or self._n < 2:
            raise ValueError(f'FeatureStats: a covariance needs at least 2 samples, got {self._n or 0}')
        return self._m2 / (self._n - 1)

    def save(self, path: str | os.PathLike, **meta) -> str:
        """Write ``mu``, ``sigma``, ``n`` and ``meta`` (a JSON string) to an ``.npz``, atomically; returns the path.

        The file is also a pytorch-fid statistics file (``mu``, ``sigma``).
        """
        from desra.atomic import atomic_open

        all_meta = {**self.meta, **meta}
        arrays = {'mu': self.mu, 'sigma': self.sigma, 'meta': np.array(json.dumps(all_meta, default=str))}
        if self._n is not None:
            arrays['n'] = np.array(self._n, dtype=np.int64)
        with atomic_open(path, 'wb') as f:
            np.savez(f, **arrays)
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'FeatureStats':
        """Read a statistics file (see :func:`load_fid_stats`); its ``meta`` (desra files) is in ``.meta``."""
        mu, sigma, n, meta = _read_stats_file(path)
        return cls.from_moments(mu, sigma, n, meta)


_EXPECTED_KEYS = ("an .npz with 'mu' and 'sigma' (desra / pytorch-fid) or a .pth dict with 'mean' and 'cov' "
                  "(BasicSR)")


def _numpy_safe_globals() -> list:
    """The numpy pickle globals that BasicSR's ``torch.save``-d statistics (numpy arrays) need under
    ``weights_only``; old files name numpy 1.x's ``numpy.core`` module."""
    import numpy as np

    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = [np.ndarray, np.dtype] + [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32,
                                                                    np.int64, np.uint8, np.bool_)]
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed += [(reconstruct, f'{mod}._reconstruct'), (scalar, f'{mod}.scalar')]
    return allowed


def _read_stats_file(path) -> tuple[np.ndarray, np.ndarray, int | None, dict]:
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f'FID statistics file not found: {os.path.abspath(path)} (expected {_EXPECTED_KEYS})')
    content: dict[str, Any]
    try:
        if zipfile.is_zipfile(path) and not _is_torch_zip(path):
            with np.load(path, allow_pickle=False) as npz:
                content = {k: npz[k] for k in npz.files}
        else:
            import torch

            with torch.serialization.safe_globals(_numpy_safe_globals()):
                content = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # corrupt file, not a stats file, pickled code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise DataError(f'{path}: cannot read FID statistics ({type(e).__name__}: {msg[:200]}); expected '
                        f'{_EXPECTED_KEYS}') from None
    if not isinstance(content, dict):
        raise DataError(f'{path}: holds a {type(content).__name__}, expected {_EXPECTED_KEYS}')
    mu_key = next((k for k in ('mu', 'mean') if k in content), None)
    sigma_key = next((k for k in ('sigma', 'cov') if k in content), None)
    if mu_key is None or sigma_key is None:
        raise DataError(f'{path}: not FID statistics: keys {sorted(map(str, content))}, expected '
                        f'{_EXPECTED_KEYS}')

    def to_numpy(v):
        return v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)

    try:
        mu = np.asarray(to_numpy(content[mu_key]), dtype=np.float64)
        sigma = np.asarray(to_numpy(content[sigma_key]), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f'{path}: {mu_key!r} / {sigma_key!r} are not numeric arrays ({e})') from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f'{path}: {mu_key!r} must have shape (D,) and {sigma_key!r} (D, D), got {mu.shape} and '
                        f'{sigma.shape}')
    n = int(to_numpy(content['n'])) if 'n' in content else None
    meta: dict = {}
    if 'meta' in content:
        try:
            meta = json.loads(str(to_numpy(content['meta'])))
        except (TypeError, ValueError):
            meta = {}
    return mu, sigma, n, meta if isinstance(meta, dict) else {}


def _is_torch_zip(path: str) -> bool:
    """``torch.save`` files are zip archives too; theirs hold ``<name>/data.pkl``."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any(name.endswith('data.pkl') for name in z.namelist())


def load_fid_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(mu (D,), sigma (D, D), n)`` from a statistics file; ``n`` is None when the file does not say.

    Accepts desra's :meth:`FeatureStats.save` files and pytorch-fid's ``.npz`` (``mu``, ``sigma``), and BasicSR's
    ``torch.save``-d dicts with ``mean``, ``cov`` (numpy arrays or tensors; read with ``weights_only=True`` on CPU).

    Raises:
        DataError: one line naming the file and the keys expected.
    """
    mu, sigma, n, _ = _read_stats_file(path)
    return mu, sigma, n


# ------------------------------------------------------------------------------------------ features

def extract_inception_features(batch, inception, patch_size: int | None = None):
    """Pool3 features of RGB images, or of their tiles.

    Args:
        batch: ``B x 3 x H x W`` RGB tensor with values in [0, 1] (values outside are clamped, as saving the
            image would), on any device.
        inception: the FID network (:func:`~desra.archs.inception_arch.load_fid_inception`) or any module mapping
            ``N x 3 x h x w`` in [0, 1] to ``N x D``.
        patch_size: None: one sample per image (the standard whole-image FID, as pytorch-fid on two folders).
            An int P: each image is cut into non-overlapping P x P tiles, row-major (the rightmost
            ``W mod P`` columns and bottom ``H mod P`` rows are dropped), and every tile is a sample (resized to
            299 x 299 by the network). The LDL paper does not say how it computed FID on sets as small as Set5;
            tiles are one way to get more samples.

    Returns:
        ``N x D`` float32 features on the network's device, N = B (or B * floor(H/P) * floor(W/P)).
    """
    import torch

    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f'extract_inception_features: expected an RGB B x 3 x H x W tensor, got shape '
                         f'{tuple(batch.shape)}')
    param = next(inception.parameters(), None)
    device = param.device if param is not None else batch.device
    samples = batch.detach().clamp(0, 1)
    if patch_size is not None:
        p = int(patch_size)
        b, c, h, w = samples.shape
        rows, cols = h // p, w // p
        if p < 1 or rows == 0 or cols == 0:
            raise ValueError(f'extract_inception_features: patch_size {patch_size} does not fit in a {h} x {w} image')
        tiles = samples[:, :, :rows * p, :cols * p].reshape(b, c, rows, p, cols, p)
        samples = tiles.permute(0, 2, 4, 1, 3, 5).reshape(b * rows * cols, c, p, p)
    with torch.no_grad():
        feats = [inception(chunk.to(device=device, dtype=torch.float32)).float()
                 for chunk in samples.split(FEATURE_CHUNK)]
    return torch.cat(feats)


# ------------------------------------------------------------------------------------------ set-level metric

def _warn(msg: str) -> None:
    logger.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def fid_from_stats(stats_a: FeatureStats, stats_b: FeatureStats, eps: float = 1e-6, method: str = 'sqrtm') -> float:
    """:func:`calculate_fid` of two :class:`FeatureStats`, with the small-sample checks.

    Fewer samples than features (N < D, e.g. < 2048) make the covariance singular: a warning (logged and
    ``UserWarning``) says the estimate is unreliable and not comparable with published figures, and the value is
    still computed. Fewer than 2 samples in a set (no covariance) give NaN with such a warning.
    """
    counts = [s.n for s in (stats_a, stats_b) if s.n is not None]
    dim = stats_a.dim or stats_b.dim or 0
    if stats_a.dim is None or stats_b.dim is None or any(n < 2 for n in counts):
        n = min(counts) if counts else 0
        _warn(f'FID from {n} sample{"s" if n != 1 else ""}: a covariance needs at least 2 samples per set, so the '
              'FID is undefined (NaN); it would in any case be unreliable and not comparable with published figures')
        return float('nan')
    if counts and min(counts) < dim:
        n = min(counts)
        _warn(f'FID from {n} samples (< {dim} features): the feature covariance is singular (rank <= {n - 1}), so '
              'the estimate is unreliable (biased upwards) and not comparable with published figures')
    return calculate_fid(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma, eps=eps, method=method)


_FID_OPTIONS = ('type', 'weights', 'patch_size', 'ref_stats', 'eps', 'method', 'better')


class FIDMetric:
    """FID of a validation / test set: SR vs GT feature statistics accumulated batch by batch.

    Args:
        opt: the YAML entry, e.g. ``{type: calculate_fid, weights: pretrained/pt_inception-...pth,
            patch_size: null, ref_stats: datasets/Set5_fid_gt.npz, eps: 1.0e-6}``:

            * ``weights``: the Inception file (default None: searched, see :func:`load_fid_inception`);
            * ``patch_size``: None (whole images) or P (non-overlapping P x P tiles; see
              :func:`extract_inception_features`);
            * ``ref_stats``: statistics of the GT set. When the file exists, GT images are not run through the
              network and these statistics are used; otherwise the GT statistics are computed and saved there by
              :meth:`compute`, for the next run;
            * ``eps``: diagonal offset of :func:`calculate_fid`'s retry; ``method``: ``sqrtm`` (pytorch-fid's,
              default) or ``eigh`` (equal to 1e-7, 5x faster, see :func:`calculate_fid`); ``better``: accepted and
              ignored.
        key_path: the YAML path of ``opt``, for error messages.
        device: where the features are computed (default: CUDA when available, else CPU).
        inception: a feature network to use instead of loading the FID network (``N x 3 x h x w`` in [0, 1] ->
            ``N x D``); ``weights`` is then ignored.

    Use: ``update(sr, gt)`` per batch, ``compute()`` at the end, ``reset()`` before the next validation.

    Raises:
        ConfigError: an unknown or invalid option, or ``ref_stats`` computed with another ``patch_size``.
        CheckpointError: the Inception file is missing or wrong.
    """

    @staticmethod
    def check_options(opt: dict, key_path: str = 'val.metrics.fid', check_files: bool = True) -> dict:
        """Check a ``calculate_fid`` YAML entry without building anything; returns the options with defaults.

        ``check_files`` also checks, reading nothing, that the Inception file can be found (before a run starts
        rather than at its first validation) and that an existing ``ref_stats`` is a file.

        Raises:
            ConfigError: ``"{key_path}.{key}: unknown option for calculate_fid; accepted: ..."`` or a bad value.
            CheckpointError: ``"{key_path}: FID needs pt_inception-2015-12-05-6726825d.pth ..."`` (file missing).
        """
        if not isinstance(opt, dict):
            raise ConfigError(f'{key_path}: expected a mapping with type: calculate_fid, got {type(opt).__name__}')
        for key in opt:
            if key not in _FID_OPTIONS:
                raise ConfigError(f"{key_path}.{key}: unknown option for calculate_fid; accepted: "
                                  f"{', '.join(_FID_OPTIONS)}")
        if opt.get('type', 'calculate_fid') != 'calculate_fid':
            raise ConfigError(f"{key_path}.type: FIDMetric evaluates 'calculate_fid', got {opt['type']!r}")
        weights = opt.get('weights')
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise ConfigError(f'{key_path}.weights: expected a path to {_inception_filename()} (or null), '
                              f'got {weights!r}')
        patch_size = opt.get('patch_size')
        if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int)
                                       or patch_size < 1):
            raise ConfigError(f'{key_path}.patch_size: expected a positive integer (tile size in pixels) or null, '
                              f'got {patch_size!r}')
        eps = _positive_float(opt.get('eps', 1e-6), f'{key_path}.eps')
        method = opt.get('method', 'sqrtm')
        if method not in ('sqrtm', 'eigh'):
            raise ConfigError(f"{key_path}.method: expected 'sqrtm' or 'eigh', got {method!r}")
        ref = opt.get('ref_stats')
        if ref is not None and not isinstance(ref, (str, os.PathLike)):
            raise ConfigError(f'{key_path}.ref_stats: expected a path to an .npz (or null), got {ref!r}')
        ref = None if ref is None else os.fspath(os.path.expanduser(ref))
        if check_files:
            from desra.errors import CheckpointError
            from desra.weights.locate import FID_INCEPTION, find_weight_file

            if ref is not None and os.path.exists(ref) and not os.path.isfile(ref):
                raise ConfigError(f'{key_path}.ref_stats: {os.path.abspath(ref)} is not a file')
            try:
                if weights is None:
                    find_weight_file(FID_INCEPTION, needed_by='FID')
                elif os.fspath(weights) != 'random' and not os.path.isfile(os.path.expanduser(weights)):
                    raise CheckpointError(f'{weights}: file not found (expected {FID_INCEPTION.what}, '
                                          f'{FID_INCEPTION.filename})')
            except CheckpointError as e:
                raise CheckpointError(f'{key_path}: {e}') from None
        return {'type': 'calculate_fid', 'weights': weights, 'patch_size': patch_size, 'ref_stats': ref, 'eps': eps,
                'method': method, 'better': opt.get('better')}

    def __init__(self, opt: dict, key_path: str = 'val.metrics.fid', device=None, *, inception=None):
        import torch

        from desra.errors import CheckpointError

        checked = self.check_options(opt or {}, key_path, check_files=False)
        self.key_path = key_path
        self.weights, self.patch_size = checked['weights'], checked['patch_size']
        self.eps, self.ref_stats, self.method = checked['eps'], checked['ref_stats'], checked['method']
        if inception is not None:
            self.inception = inception
            param = next(inception.parameters(), None)
            self.device = param.device if param is not None else torch.device('cpu')
        else:
            from desra.archs.inception_arch import load_fid_inception

            if device is None:
                device = 'cuda' if torch.cuda.is_available() else 'cpu'
            self.device = torch.device(device)
            try:
                self.inception = load_fid_inception(self.weights, self.device)
            except CheckpointError as e:
                raise CheckpointError(f'{key_path}: {e}') from None
        self.gt_from_file = self.ref_stats is not None and os.path.isfile(self.ref_stats)
        self._loaded_gt: FeatureStats | None = None
        if self.gt_from_file:
            self._loaded_gt = FeatureStats.load(self.ref_stats)
            saved_patch = self._loaded_gt.meta.get('patch_size', self.patch_size)
            if saved_patch != self.patch_size:
                raise ConfigError(f'{key_path}.ref_stats: {self.ref_stats} was computed with patch_size='
                                  f'{saved_patch}, this run uses patch_size={self.patch_size}; delete the file or '
                                  'point ref_stats elsewhere')
            logger.info(f'FID: GT statistics from {self.ref_stats} (n={self._loaded_gt.n}); GT images are not '
                        'run through the network')
        self.reset()

    def reset(self) -> None:
        """Forget the SR statistics (and the GT statistics unless they come from ``ref_stats``)."""
        self.sr_stats = FeatureStats()
        self.gt_stats = self._loaded_gt if self.gt_from_file else FeatureStats()

    def features(self, images):
        """``N x D`` features of a ``B x 3 x H x W`` [0, 1] batch (tiles with ``patch_size``), on the device."""
        try:
            return extract_inception_features(images, self.inception, self.patch_size)
        except ValueError as e:
            if self.patch_size is not None and 'patch_size' in str(e):
                raise ConfigError(f'{self.key_path}.patch_size: {e}') from None
            raise

    def update(self, sr, gt=None) -> None:
        """Add a batch: ``sr`` and ``gt`` RGB ``B x 3 x H x W`` tensors in [0, 1] on any device (``gt`` may be None
        when the GT statistics come from ``ref_stats``; it is then ignored anyway)."""
        self.sr_stats.update(self.features(sr))
        if self.gt_from_file:
            return
        if gt is None:
            raise ValueError(f'{self.key_path}: FIDMetric.update needs the GT batch (no ref_stats file to use)')
        self.gt_stats.update(self.features(gt))

    def compute(self) -> float:
        """FID of the SR set against the GT set (NaN with a warning below 2 samples, a warning below D samples).

        The first time the GT statistics are complete and ``ref_stats`` does not exist yet, they are saved there.
        """
        if (self.ref_stats is not None and not self.gt_from_file and self.gt_stats.n is not None
                and self.gt_stats.n >= 2 and not os.path.isfile(self.ref_stats)):
            self.gt_stats.save(self.ref_stats, **self._meta('gt'))
            logger.info(f'FID: GT statistics of {self.gt_stats.n} samples saved to {self.ref_stats}')
        if self.sr_stats.dim is not None and self.gt_stats.dim is not None and self.sr_stats.dim != self.gt_stats.dim:
            source = self.ref_stats if self.gt_from_file else 'the GT set'
            raise DataError(f'{source}: statistics of dimension {self.gt_stats.dim}, the network gives '
                            f'{self.sr_stats.dim}-d features')
        return fid_from_stats(self.sr_stats, self.gt_stats, eps=self.eps, method=self.method)

    def _meta(self, which: str, dataset_name: str | None = None) -> dict:
        meta = {'set': which, 'patch_size': self.patch_size, 'feature_dim': self.sr_stats.dim or self.gt_stats.dim,
                'weights': os.path.basename(os.fspath(self.weights)) if self.weights else _inception_filename()}
        if dataset_name is not None:
            meta['dataset'] = dataset_name
        return meta

    def save_stats(self, folder: str | os.PathLike, dataset_name: str) -> tuple[str, str]:
        """Write ``<folder>/<dataset_name>_sr.npz`` and ``<folder>/<dataset_name>_gt.npz``; returns both paths."""
        sr_path = os.path.join(os.fspath(folder), f'{dataset_name}_sr.npz')
        gt_path = os.path.join(os.fspath(folder), f'{dataset_name}_gt.npz')
        self.sr_stats.save(sr_path, **self._meta('sr', dataset_name))
        self.gt_stats.save(gt_path, **self._meta('gt', dataset_name))
        return sr_path, gt_path


def _inception_filename() -> str:
    from desra.weights.locate import FID_INCEPTION

    return FID_INCEPTION.filename


def _positive_float(value, key_path: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{key_path}: expected a positive number, got {value!r}') from None
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0:
        raise ConfigError(f'{key_path}: expected a positive number, got {value!r}')
    return out
