"""Blur kernels of Real-ESRGAN's degradation model (numpy, ``k x k`` float64, summing to 1).

Conventions (BasicSR's, so kernels made here equal BasicSR's for the same parameters):

* the grid is centred: offsets ``-(k // 2) .. k // 2``; ``grid[..., 0]`` is the column offset x and
  ``grid[..., 1]`` the row offset y (:func:`mesh_grid`);
* the covariance is ``S = U diag(sig_x^2, sig_y^2) U^T`` with ``U`` the rotation by ``theta`` (radians)
  (:func:`sigma_matrix2`); ``isotropic=True`` uses ``sig_x`` for both axes and ignores ``sig_y`` and ``theta``;
* with ``d(x) = x^T S^-1 x`` the (unnormalised) kernels are

  - Gaussian: ``exp(-d / 2)``;
  - generalised Gaussian: ``exp(-(d)^beta / 2)`` (``beta`` = 1: Gaussian; large ``beta``: flat top, sharp edge);
  - plateau: ``1 / (d^beta + 1)`` (heavy tails);

  each divided by its sum;
* the sinc kernel (:func:`circular_lowpass_kernel`) is the ideal circular low-pass filter of cutoff
  ``omega_c`` (radians per pixel, in (0, pi]): ``k(r) = omega_c J1(omega_c r) / (2 pi r)``, ``k(0) =
  omega_c^2 / (4 pi)``, normalised, then zero-padded (centred) to ``pad_to``.

Randomness: the ``random_*`` functions draw from the global ``np.random`` / ``random`` state when ``rng`` is None,
in BasicSR's order (so seeded global state gives BasicSR's kernels), or from ``rng`` (a
:class:`numpy.random.Generator`), which is what the data sets use: a kernel is then a pure function of the
sample's seed.
"""
from __future__ import annotations

import math
import random

import numpy as np

__all__ = ['KERNEL_TYPES', 'sigma_matrix2', 'mesh_grid', 'pdf2', 'bivariate_Gaussian', 'bivariate_generalized_Gaussian',
           'bivariate_plateau', 'random_bivariate_Gaussian', 'random_bivariate_generalized_Gaussian',
           'random_bivariate_plateau', 'random_mixed_kernels', 'circular_lowpass_kernel', 'Draws']

#: The kernel names ``kernel_list`` may hold.
KERNEL_TYPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


class Draws:
    """Random draws from the global RNGs (``rng=None``, BasicSR's behaviour) or from a numpy ``Generator``."""

    def __init__(self, rng: np.random.Generator | None = None):
        self.rng = rng

    def uniform(self, low: float = 0.0, high: float = 1.0, size=None):
        if self.rng is None:
            return np.random.uniform(low, high, size)
        return self.rng.uniform(low, high, size)

    def choices(self, population, weights):
        """One element, with the given relative weights (``random.choices(population, weights)[0]``)."""
        if self.rng is None:
            return random.choices(population, weights)[0]
        p = np.asarray(weights, np.float64)
        return population[int(self.rng.choice(len(population), p=p / p.sum()))]

    def choice(self, population):
        """One element, uniformly (``random.choice``)."""
        if self.rng is None:
            return random.choice(population)
        return population[int(self.rng.integers(0, len(population)))]

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high], both included (``random.randint``)."""
        if self.rng is None:
            return random.randint(low, high)
        return int(self.rng.integers(low, high + 1))


def sigma_matrix2(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Covariance ``U diag(sig_x^2, sig_y^2) U^T``, ``U = [[cos t, -sin t], [sin t, cos t]]``."""
    d_matrix = np.array([[sig_x ** 2, 0], [0, sig_y ** 2]])
    u_matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return np.dot(u_matrix, np.dot(d_matrix, u_matrix.T))


def mesh_grid(kernel_size: int):
    """``(xy, xx, yy)``: ``xy`` is ``k x k x 2`` with ``xy[..., 0]`` = column offset, ``xy[..., 1]`` = row offset."""
    ax = np.arange(-kernel_size // 2 + 1., kernel_size // 2 + 1.)
    xx, yy = np.meshgrid(ax, ax)
    xy = np.stack((xx, yy), axis=-1)
    return xy, xx, yy


def _mahalanobis(sigma_matrix: np.ndarray, grid: np.ndarray) -> np.ndarray:
    inverse_sigma = np.linalg.inv(sigma_matrix)
    return np.sum(np.dot(grid, inverse_sigma) * grid, 2)


def pdf2(sigma_matrix: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Unnormalised bivariate Gaussian ``exp(-x^T S^-1 x / 2)`` on ``grid`` (``k x k x 2``)."""
    return np.exp(-0.5 * _mahalanobis(sigma_matrix, grid))


def _sigma(sig_x, sig_y, theta, isotropic):
    if isotropic:
        return np.array([[sig_x ** 2, 0], [0, sig_x ** 2]])
    return sigma_matrix2(sig_x, sig_y, theta)


def _grid(kernel_size, grid):
    return mesh_grid(kernel_size)[0] if grid is None else grid


def bivariate_Gaussian(kernel_size: int, sig_x: float, sig_y: float, theta: float, grid=None,
                       isotropic: bool = True) -> np.ndarray:
    """Normalised Gaussian kernel ``exp(-x^T S^-1 x / 2)`` (see the module notes for S and the grid)."""
    kernel = pdf2(_sigma(sig_x, sig_y, theta, isotropic), _grid(kernel_size, grid))
    return kernel / np.sum(kernel)


def bivariate_generalized_Gaussian(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float,
                                   grid=None, isotropic: bool = True) -> np.ndarray:
    """Normalised generalised Gaussian ``exp(-(x^T S^-1 x)^beta / 2)``; ``beta`` > 0 (1 = Gaussian)."""
    d = _mahalanobis(_sigma(sig_x, sig_y, theta, isotropic), _grid(kernel_size, grid))
    kernel = np.exp(-0.5 * np.power(d, beta))
    return kernel / np.sum(kernel)


def bivariate_plateau(kernel_size: int, sig_x: float, sig_y: float, theta: float, beta: float, grid=None,
                      isotropic: bool = True) -> np.ndarray:
    """Normalised plateau kernel ``1 / ((x^T S^-1 x)^beta + 1)``; ``beta`` > 0."""
    d = _mahalanobis(_sigma(sig_x, sig_y, theta, isotropic), _grid(kernel_size, grid))
    kernel = np.reciprocal(np.power(d, beta) + 1)
    return kernel / np.sum(kernel)


def _check_odd(kernel_size):
    if kernel_size % 2 != 1:
        raise ValueError(f'kernel_size must be odd, got {kernel_size}')


def _check_range(name, r):
    if not r[0] < r[1]:
        raise ValueError(f'{name}: expected [low, high] with low < high, got {list(r)}')


def _draw_sigmas(draw, sigma_x_range, sigma_y_range, rotation_range, isotropic):
    _check_range('sigma_x_range', sigma_x_range)
    sigma_x = draw.uniform(sigma_x_range[0], sigma_x_range[1])
    if isotropic:
        return sigma_x, sigma_x, 0
    _check_range('sigma_y_range', sigma_y_range)
    _check_range('rotation_range', rotation_range)
    sigma_y = draw.uniform(sigma_y_range[0], sigma_y_range[1])
    rotation = draw.uniform(rotation_range[0], rotation_range[1])
    return sigma_x, sigma_y, rotation


def _draw_beta(draw, beta_range):
    # half of the draws below 1, half above: BasicSR assumes beta_range[0] < 1 < beta_range[1]
    if draw.uniform() < 0.5:
        return draw.uniform(beta_range[0], 1)
    return draw.uniform(1, beta_range[1])


def _multiplicative_noise(draw, kernel, noise_range):
    if noise_range is not None:
        _check_range('noise_range', noise_range)
        kernel = kernel * draw.uniform(noise_range[0], noise_range[1], size=kernel.shape)
    return kernel / np.sum(kernel)


def random_bivariate_Gaussian(kernel_size, sigma_x_range, sigma_y_range, rotation_range, noise_range=None,
                              isotropic=True, rng=None):
    """A Gaussian kernel with ``sig_x`` ~ U(sigma_x_range) (and ``sig_y``, ``theta`` when anisotropic), optionally
    times a multiplicative noise ~ U(noise_range) per entry, renormalised."""
    _check_odd(kernel_size)
    draw = Draws(rng)
    sx, sy, rot = _draw_sigmas(draw, sigma_x_range, sigma_y_range, rotation_range, isotropic)
    return _multiplicative_noise(draw, bivariate_Gaussian(kernel_size, sx, sy, rot, isotropic=isotropic), noise_range)


def random_bivariate_generalized_Gaussian(kernel_size, sigma_x_range, sigma_y_range, rotation_range, beta_range,
                                          noise_range=None, isotropic=True, rng=None):
    """A generalised Gaussian kernel; ``beta`` ~ U(beta_range[0], 1) or U(1, beta_range[1]) with p = 1/2 each."""
    _check_odd(kernel_size)
    draw = Draws(rng)
    sx, sy, rot = _draw_sigmas(draw, sigma_x_range, sigma_y_range, rotation_range, isotropic)
    beta = _draw_beta(draw, beta_range)
    kernel = bivariate_generalized_Gaussian(kernel_size, sx, sy, rot, beta, isotropic=isotropic)
    return _multiplicative_noise(draw, kernel, noise_range)


def random_bivariate_plateau(kernel_size, sigma_x_range, sigma_y_range, rotation_range, beta_range, noise_range=None,
                             isotropic=True, rng=None):
    """A plateau kernel; ``beta`` drawn as in :func:`random_bivariate_generalized_Gaussian`."""
    _check_odd(kernel_size)
    draw = Draws(rng)
    sx, sy, rot = _draw_sigmas(draw, sigma_x_range, sigma_y_range, rotation_range, isotropic)
    beta = _draw_beta(draw, beta_range)
    kernel = bivariate_plateau(kernel_size, sx, sy, rot, beta, isotropic=isotropic)
    return _multiplicative_noise(draw, kernel, noise_range)


def random_mixed_kernels(kernel_list, kernel_prob, kernel_size=21, sigma_x_range=(0.6, 5), sigma_y_range=(0.6, 5),
                         rotation_range=(-math.pi, math.pi), betag_range=(0.5, 8), betap_range=(0.5, 8),
                         noise_range=None, rng=None, return_type=False):
    """One kernel of a type drawn from ``kernel_list`` with weights ``kernel_prob`` (names in :data:`KERNEL_TYPES`).

    ``generalized_*`` kernels draw ``beta`` from ``betag_range``, ``plateau_*`` from ``betap_range``; plateau kernels
    get no multiplicative noise (as in BasicSR). ``return_type=True`` also returns the type drawn.
    """
    draw = Draws(rng)
    kernel_type = draw.choices(list(kernel_list), kernel_prob)
    iso = kernel_type in ('iso', 'generalized_iso', 'plateau_iso')
    if kernel_type in ('iso', 'aniso'):
        kernel = random_bivariate_Gaussian(kernel_size, sigma_x_range, sigma_y_range, rotation_range,
                                           noise_range=noise_range, isotropic=iso, rng=rng)
    elif kernel_type in ('generalized_iso', 'generalized_aniso'):
        kernel = random_bivariate_generalized_Gaussian(kernel_size, sigma_x_range, sigma_y_range, rotation_range,
                                                       betag_range, noise_range=noise_range, isotropic=iso, rng=rng)
    elif kernel_type in ('plateau_iso', 'plateau_aniso'):
        kernel = random_bivariate_plateau(kernel_size, sigma_x_range, sigma_y_range, rotation_range, betap_range,
                                          noise_range=None, isotropic=iso, rng=rng)
    else:
        raise ValueError(f"unknown kernel type '{kernel_type}'; expected one of {', '.join(KERNEL_TYPES)}")
    return (kernel, kernel_type) if return_type else kernel


def circular_lowpass_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """2-D sinc (ideal circular low-pass) kernel of cutoff ``cutoff`` (radians per pixel), normalised to sum 1, then
    zero-padded on every side to ``pad_to x pad_to`` when ``pad_to > kernel_size`` (``pad_to - kernel_size`` even).

    ``k(r) = cutoff * J1(cutoff * r) / (2 pi r)`` with ``r`` the distance to the centre, ``k(0) = cutoff^2 / (4 pi)``.
    """
    from scipy import special

    _check_odd(kernel_size)
    c = (kernel_size - 1) / 2
    y, x = np.mgrid[0:kernel_size, 0:kernel_size].astype(np.float64)
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2)
    with np.errstate(divide='ignore', invalid='ignore'):
        kernel = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    kernel[(kernel_size - 1) // 2, (kernel_size - 1) // 2] = cutoff ** 2 / (4 * np.pi)
    kernel = kernel / np.sum(kernel)
    if pad_to and pad_to > kernel_size:
        pad = (pad_to - kernel_size) // 2
        kernel = np.pad(kernel, ((pad, pad), (pad, pad)))
    return kernel
