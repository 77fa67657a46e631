"""Multi-model fusion of K restorations of one input, guided by their artifact probability maps.

The artifact-optimisation stage of the localise-and-fuse method (``shared/papers/artifact_localization_deraining.txt``,
Sec. 2.2, "Artifact Optimization" and Fig. 4): K models (three deraining GANs there; three x4 SR GANs in
``options/fuse_sr_photos.yml``) restore the same input, a localiser gives each output an artifact probability map,
and the outputs are combined so that every region comes from a model that has no artifact there. The paper
reports "<base model> + Ours": the base model's output with its artifact regions repaired from the others, which
is what ``rule='select'`` with ``base`` does. The paper does not give the blending equations; the two rules below
are ours.

Notation: outputs ``O_k`` (k = 0..K-1), H x W x C (or H x W), uint8 or float, all the same size; artifact
probabilities ``p_k``, H x W in [0, 1] (1 = artifact); ``G_s *`` a Gaussian blur of standard deviation ``s``
pixels (kernel radius ``ceil(3 s)``, border reflected without repeating the edge pixel, ``s = 0``: identity);
``b`` the base model.

``select`` (default)::

    m(x)   = min_k p_k(x)
    C(x)   = {k : p_k(x) <= m(x) + tol}                  near-ties (default tol = 0.02, i.e. about 5 levels of
                                                          an 8-bit map: the localiser's noise in clean areas)
    s(x)   = b if b in C(x), else min C(x)               ties go to the base model, then to the lowest index
    S_k(x) = [s(x) = k]                                  one-hot selection
    W_k    = G_feather * S_k / sum_j G_feather * S_j     feathered (smooth) selection; feather = 0: W = S

``weighted``::

    w_k   = (1 - p_k) ** gamma                           (gamma = 1 by default; larger: trust clean maps more)
    w~_k  = G_feather * w_k + eps [k = b]                eps = 1e-6
    W_k   = w~_k / sum_j w~_j

  The ``eps`` on the base weight makes the result fall back to the base model where every model is flagged
  (all ``p_k = 1``, so all ``w_k = 0``) and keeps the weights continuous up to there (no special case); where
  the weights do not vanish its effect is below 1e-6 / sum_j w~_j.

Both rules: ``F = sum_k W_k O_k`` with ``W_k >= 0`` and ``sum_k W_k = 1``, a convex combination; it is clipped to
the per-pixel ``[min_k O_k, max_k O_k]`` (a no-op up to float rounding) so that the guarantees below hold
exactly, then rounded for uint8 input.

Guarantees (tested in ``tests/test_fusion.py``):

* K identical outputs give that output exactly, for any maps and either rule.
* ``F`` lies within the per-pixel min and max of the outputs.
* ``select``, ``feather = 0``: ``F(x) = O_{s(x)}(x)``; with feathering, ``F(x) = O_k(x)`` wherever ``s = k`` on
  the whole disc of radius ``ceil(3 feather)`` around x.
* Across a feathered edge between two constant outputs that differ by ``d``, neighbouring pixels differ by at
  most ``d * max_tap`` (+ 1 after rounding to uint8; ``max_tap`` the largest tap of the normalised kernel, about
  ``1 / (feather * sqrt(2 pi))``, :func:`max_kernel_tap`), instead of ``d`` for a hard selection.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ['FUSION_RULES', 'DEFAULT_FEATHER', 'DEFAULT_TIE_TOL', 'WEIGHTED_EPS', 'fuse', 'fusion_weights',
           'gaussian_blur', 'kernel_radius', 'max_kernel_tap']

FUSION_RULES = ('select', 'weighted')
#: Default feather sigma in pixels: seams are softened over about +-6 pixels, small next to artifact regions.
DEFAULT_FEATHER = 2.0
#: Default tie tolerance of ``select``.
DEFAULT_TIE_TOL = 0.02
#: The base model's extra weight in ``weighted`` (fallback where every model is flagged).
WEIGHTED_EPS = 1e-6


def kernel_radius(sigma: float) -> int:
    """Radius ``ceil(3 sigma)`` of the feather kernel (0 for ``sigma = 0``); the kernel has ``2 r + 1`` taps."""
    return int(math.ceil(3.0 * sigma)) if sigma > 0 else 0


def max_kernel_tap(sigma: float) -> float:
    """The largest tap of the normalised 1-D feather kernel (1 for ``sigma = 0``), about ``1 / (sigma sqrt(2 pi))``."""
    if sigma <= 0:
        return 1.0
    r = kernel_radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    return float(k.max() / k.sum())


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """``G_sigma * x`` of an H x W float map (kernel radius ``ceil(3 sigma)``, reflect-101 border); a copy for 0.

    The blur is linear and keeps constants, so blurring a partition of unity gives a partition of unity.
    """
    if sigma <= 0:
        return np.array(x, dtype=np.float32, copy=True)
    import cv2

    k = 2 * kernel_radius(sigma) + 1
    return cv2.GaussianBlur(np.ascontiguousarray(x, dtype=np.float32), (k, k), sigmaX=float(sigma),
                            sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def _hw(shape) -> str:
    return f'{shape[0]}x{shape[1]} (HxW)'


def _check_probs(artifact_probs, k: int, hw: tuple[int, int]) -> np.ndarray:
    """The K maps as one K x H x W float32 array; ValueError for a wrong count, size or range."""
    maps = list(artifact_probs)  # a sequence of maps, or the first axis of a K x H x W array
    if len(maps) != k:
        raise ValueError(f'fuse: {k} output(s) but {len(maps)} artifact map(s); give one H x W map per output')
    out = np.empty((k, *hw), np.float32)
    for i, p in enumerate(maps):
        p = np.asarray(p)
        if p.ndim == 3 and p.shape[2] == 1:
            p = p[..., 0]
        if p.shape != hw:
            raise ValueError(f'fuse: artifact_probs[{i}] is {_hw(p.shape) if p.ndim == 2 else p.shape} but the '
                             f'outputs are {_hw(hw)}; each map must be H x W at the outputs\' size')
        if p.dtype == bool or not np.issubdtype(p.dtype, np.number):
            raise ValueError(f'fuse: artifact_probs[{i}] has dtype {p.dtype}; expected probabilities (float in [0, 1])')
        lo, hi = float(np.min(p)), float(np.max(p))
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise ValueError(f'fuse: artifact_probs[{i}] has values outside [0, 1] (min {lo:g}, max {hi:g}); '
                             f'give probabilities, not logits or 8-bit maps')
        out[i] = p
    return out


def fusion_weights(probs: np.ndarray, rule: str = 'select', base: int = 0, feather: float = DEFAULT_FEATHER,
                   gamma: float = 1.0, tie_tol: float = DEFAULT_TIE_TOL) -> np.ndarray:
    """The per-pixel weights ``W`` (K x H x W float32, >= 0, summing to 1) of :func:`fuse` from K x H x W maps.

    ``probs`` must already be valid (K x H x W in [0, 1]); see the module docstring for the formulas.
    """
    k = probs.shape[0]
    if rule == 'select':
        m = probs.min(axis=0)
        candidate = probs <= m[None] + np.float32(tie_tol)
        # lowest candidate index, unless the base model is a candidate
        choice = np.where(candidate[base], base, np.argmax(candidate, axis=0))
        raw = np.stack([gaussian_blur((choice == i).astype(np.float32), feather) for i in range(k)])
    elif rule == 'weighted':
        w = np.clip(1.0 - probs, 0.0, 1.0)
        if gamma != 1:
            w = w ** np.float32(gamma)
        raw = np.stack([gaussian_blur(w[i], feather) for i in range(k)])
        np.maximum(raw, 0.0, out=raw)
        raw[base] += np.float32(WEIGHTED_EPS)
    else:
        raise ValueError(f"fuse: unknown rule {rule!r}; expected one of {', '.join(repr(r) for r in FUSION_RULES)}")
    total = raw.sum(axis=0)
    return (raw / total[None]).astype(np.float32)


def fuse(outputs: Sequence[np.ndarray], artifact_probs, rule: str = 'select', base: int = 0,
         feather: float = DEFAULT_FEATHER, gamma: float = 1.0, tie_tol: float = DEFAULT_TIE_TOL,
         return_weights: bool = False):
    """Fuse K restorations of one input by their artifact probabilities (formulas: the module docstring).

    Args:
        outputs: K images of the same shape, H x W x C or H x W, all uint8 or all the same float dtype
            (any range, e.g. [0, 255] or [0, 1]).
        artifact_probs: K maps H x W (or one K x H x W array), float in [0, 1], 1 = artifact.
        rule: ``'select'`` (per pixel the cleanest output, ties to ``base``) or ``'weighted'``
            (weights ``(1 - p) ** gamma``).
        base: index of the base model (ties in ``select``; fallback in ``weighted``).
        feather: sigma (pixels) of the Gaussian that smooths the weights; 0 = none (hard selection).
        gamma: exponent of ``weighted`` (> 0).
        tie_tol: ``select``: probabilities within ``tie_tol`` of the lowest count as equal (>= 0).
        return_weights: also return the K x H x W float32 weights (for pictures).

    Returns:
        The fused image, same shape and dtype as the outputs (uint8: rounded), or ``(fused, weights)``.

    Raises:
        ValueError: one line for K < 1, outputs of different sizes or dtypes (naming the indices and sizes),
            the wrong number of maps, maps of the wrong size or outside [0, 1], a bad rule, base, feather, gamma
            or tie_tol.
    """
    outs = [np.asarray(o) for o in outputs]
    k = len(outs)
    if k < 1:
        raise ValueError('fuse: need at least one output (K >= 1), got none')
    if rule not in FUSION_RULES:
        raise ValueError(f"fuse: unknown rule {rule!r}; expected one of {', '.join(repr(r) for r in FUSION_RULES)}")
    if isinstance(base, bool) or not isinstance(base, (int, np.integer)) or not 0 <= base < k:
        raise ValueError(f'fuse: base must be an output index in [0, {k - 1}], got {base!r}')
    for name, value, ok in (('feather', feather, lambda v: v >= 0), ('gamma', gamma, lambda v: v > 0),
                            ('tie_tol', tie_tol, lambda v: v >= 0)):
        if not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or not ok(value):
            want = 'a finite number > 0' if name == 'gamma' else 'a finite number >= 0'
            raise ValueError(f'fuse: {name} must be {want}, got {value!r}')
    ref = outs[0]
    if ref.ndim not in (2, 3):
        raise ValueError(f'fuse: outputs[0] has shape {ref.shape}; expected H x W x C or H x W')
    for i, o in enumerate(outs[1:], 1):
        if o.shape != ref.shape:
            raise ValueError(f'fuse: outputs[{i}] is {_hw(o.shape)}{_ch(o)} but outputs[0] is {_hw(ref.shape)}'
                             f'{_ch(ref)}; all K outputs must have the same size')
        if o.dtype != ref.dtype:
            raise ValueError(f'fuse: outputs[{i}] is {o.dtype} but outputs[0] is {ref.dtype}; give all K outputs '
                             f'in one dtype')
    if not (ref.dtype == np.uint8 or np.issubdtype(ref.dtype, np.floating)):
        raise ValueError(f'fuse: outputs are {ref.dtype}; expected uint8 or float images')
    probs = _check_probs(artifact_probs, k, ref.shape[:2])
    weights = fusion_weights(probs, rule, int(base), float(feather), float(gamma), float(tie_tol))

    work = np.float64 if ref.dtype == np.float64 else np.float32
    acc = np.zeros(ref.shape, work)
    lo = hi = None
    for i, o in enumerate(outs):
        w = weights[i] if ref.ndim == 2 else weights[i][..., None]
        acc += w.astype(work) * o.astype(work)
        lo = o.copy() if lo is None else np.minimum(lo, o)
        hi = o.copy() if hi is None else np.maximum(hi, o)
    fused = np.clip(acc, lo.astype(work), hi.astype(work))  # a convex combination: only rounding is clipped
    if ref.dtype == np.uint8:
        fused = np.rint(fused).astype(np.uint8)
    else:
        fused = fused.astype(ref.dtype)
    return (fused, weights) if return_weights else fused


def _ch(img: np.ndarray) -> str:
    return f' x {img.shape[2]}' if img.ndim == 3 else ''
