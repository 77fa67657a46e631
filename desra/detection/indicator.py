"""DeSRA texture-similarity indicator D (Xie et al., ICML 2023, Sec. 3.2, Eq. 3-7, as released).

For each colour channel of the MSE-SR image x and the GAN-SR image y::

    mu_x   = w * x                      (w: the local window, normalised to sum 1)
    var_x  = w * (x^2) - mu_x^2         (likewise for y)
    c      = (2 sqrt(var_x + eps) sqrt(var_y + eps) + C) / (var_x + var_y + C)        (Eq. 7)

and D is the mean of c over the channels. ``D = 1`` means the same local texture complexity; a low D
means the GAN output is much busier (or much flatter) than the MSE output there: an artifact candidate.
The released code uses the SSIM window (11 x 11 Gaussian, sigma 1.5) and ``C = (0.03 * 255)^2``; the
paper's Eq. 3 describes a plain n x n mean (``window='box'``).

Implementation notes (why, not what):

* ``w`` is separable (outer product of a 1-D kernel), so it is applied as a vertical then a horizontal
  1-D pass: 2k instead of k^2 multiply-adds per pixel, no per-pixel windows.
* ``E[x^2] - mu^2`` cancels catastrophically in float32 (x^2 reaches 65025, so the variance of a flat
  window comes out ~1e-3 instead of 0, and ``dc/dvar`` near 0 is ~1e3 with eps = 1e-8: D errors of
  ~1e-3 on real photos). The local moments are therefore always accumulated in float64; ``dtype`` is
  the precision of Eq. 7 and of the returned map (float32 by default, ~2e-7 from a float64 run).
* On the CPU the moments come from OpenCV's separable filter (``cv2.sepFilter2D``, SIMD) on horizontal
  strips of rows processed by a small thread pool: each strip's buffers stay in cache and both cores
  are used. torch's depthwise ``conv2d`` is ~10x slower on CPU for float64. Other devices (CUDA) use
  two grouped ``F.conv2d`` passes (k x 1 then 1 x k) in float64. ``backend`` forces either path.
* The strip workers are one pool kept for the process (made again after a fork): starting threads per call
  cost more than a small image's whole computation on a busy machine.
* torch is imported only for tensor input or ``backend='torch'``: numpy callers (``detect.py`` on SR folders)
  never load it.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import os
import threading
from typing import TYPE_CHECKING

import cv2
import numpy as np

from desra.utils.lazy_torch import is_tensor, loaded_torch

if TYPE_CHECKING:
    import torch

__all__ = ['texture_similarity', 'window_kernel_1d', 'SSIM_CONSTANT']

#: (0.03 * 255)^2, the SSIM C2 constant the released code uses.
SSIM_CONSTANT = 58.5225

_STRIP_ROWS = 64  # output rows per CPU work item: ~2 MB of float64 buffers per array at W=2048, C=3


def window_kernel_1d(window: str = 'gaussian', window_size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D kernel g (float64, length ``window_size``) whose outer product is the window.

    ``'gaussian'``: ``cv2.getGaussianKernel(window_size, sigma)`` (the SSIM window of the release);
    ``'box'``: ``1 / window_size`` everywhere (the plain local mean of paper Eq. 3).
    """
    if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)) or window_size < 1 \
            or window_size % 2 == 0:
        raise ValueError(f'window_size must be an odd positive integer, got {window_size!r}')
    window_size = int(window_size)
    if window == 'gaussian':
        if not sigma > 0:
            raise ValueError(f'sigma must be > 0 for the gaussian window, got {sigma!r}')
        return cv2.getGaussianKernel(window_size, float(sigma), cv2.CV_64F)[:, 0].copy()
    if window == 'box':
        return np.full(window_size, 1.0 / window_size)
    raise ValueError(f"window must be 'gaussian' or 'box', got {window!r}")


def _as_dtype_name(dtype) -> str:
    if dtype is None:
        return 'float32'
    torch = loaded_torch()
    if torch is not None and isinstance(dtype, torch.dtype):
        name = str(dtype).replace('torch.', '')
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in ('float32', 'float64'):
        raise ValueError(f'dtype must be float32 or float64, got {dtype!r}')
    return name


def _drop_alpha(c: int) -> int:
    """Channels used: RGBA/BGRA (4) -> the 3 colour channels, gray+alpha (2) -> the gray one."""
    return 3 if c == 4 else 1 if c == 2 else c


def texture_similarity(mse_sr, gan_sr, window: str = 'gaussian', window_size: int = 11, sigma: float = 1.5,
                       constant: float = SSIM_CONSTANT, valid: bool = True, eps: float = 1e-8, dtype=None,
                       backend: str = 'auto'):
    """DeSRA indicator D (paper Eq. 7 with the released window): per-pixel texture similarity in (0, 1].

    Args:
        mse_sr, gan_sr: the MSE-SR and GAN-SR images, same shape, values in the uint8 range [0, 255]
            (any dtype; floats are not rescaled). Either both torch tensors ``B x C x H x W`` or
            ``C x H x W``, or both numpy arrays ``H x W x C`` or ``H x W``. The channel order does not
            matter (BGR and RGB give the same D). Alpha is dropped: 4 channels are treated as RGBA/BGRA
            (the 3 colour channels are used), 2 channels as gray+alpha (the first is used); any other
            channel count is used as is (grayscale C = 1 works).
        window: ``'gaussian'`` (released: outer product of ``cv2.getGaussianKernel(window_size, sigma)``)
            or ``'box'`` (paper Eq. 3: plain mean over the window; ``sigma`` unused).
        window_size: odd window side n (11).
        sigma: Gaussian standard deviation (1.5).
        constant: C of Eq. 7, ``(0.03 * 255)^2 = 58.5225``.
        valid: True (official): only pixels whose whole window lies inside the image, i.e. a map of
            ``(H - 2h) x (W - 2h)`` with ``h = window_size // 2`` (the released ``[5:-5, 5:-5]`` crop,
            computed in 'valid' mode). False: a full ``H x W`` map; the window is completed by reflecting
            the image about its edge pixels without repeating them (``dcb|abcd|cba``: OpenCV's default
            BORDER_REFLECT_101, torch/numpy ``'reflect'``). Interior pixels are identical in both modes.
        eps: added to each variance under the square roots (1e-8). Variances are clamped at 0 first
            (float64 round-off can make a flat window's variance ~-1e-11).
        dtype: precision of Eq. 7 and of the result: float32 (default) or float64 (torch or numpy dtype,
            or the name). The local moments are always accumulated in float64 (see the module notes).
        backend: ``'auto'`` (OpenCV strips for numpy and CPU tensors, ``F.conv2d`` elsewhere), ``'cv2'``
            or ``'torch'`` (separable ``F.conv2d``, any device).

    Returns:
        D with values in (0, 1] (up to ~1e-9 above 1 through eps): a ``B x 1 x H' x W'`` tensor on the
        input's device (``1 x H' x W'`` for a ``C x H x W`` input), or an ``H' x W'`` numpy array for
        numpy input. Not differentiable (inputs are detached).

    Raises:
        TypeError: one input is a tensor and the other is not, or an input is neither.
        ValueError: different shapes (both named), an unsupported layout, an image smaller than the
            window, or a bad window / dtype / backend option.
    """
    is_torch = is_tensor(mse_sr)
    if is_torch != is_tensor(gan_sr):
        raise TypeError('texture_similarity: mse_sr and gan_sr must both be torch tensors or both numpy '
                        f'arrays, got {type(mse_sr).__name__} and {type(gan_sr).__name__}')
    if not is_torch and not (isinstance(mse_sr, np.ndarray) and isinstance(gan_sr, np.ndarray)):
        raise TypeError('texture_similarity: expected numpy arrays or torch tensors, got '
                        f'{type(mse_sr).__name__} and {type(gan_sr).__name__}')
    if tuple(mse_sr.shape) != tuple(gan_sr.shape):
        raise ValueError('texture_similarity: mse_sr and gan_sr must have the same shape, got '
                         f'{tuple(mse_sr.shape)} (mse_sr) and {tuple(gan_sr.shape)} (gan_sr)')
    g = window_kernel_1d(window, window_size, sigma)
    out_name = _as_dtype_name(dtype)
    if backend not in ('auto', 'cv2', 'torch'):
        raise ValueError(f"backend must be 'auto', 'cv2' or 'torch', got {backend!r}")
    h = len(g) // 2

    # canonical layouts: torch B x C x H x W, numpy H x W x C
    if is_torch:
        if mse_sr.dim() not in (3, 4):
            raise ValueError('texture_similarity: tensors must be B x C x H x W or C x H x W, got shape '
                             f'{tuple(mse_sr.shape)}')
        squeeze = mse_sr.dim() == 3
        x1, x2 = (t.detach()[None] if squeeze else t.detach() for t in (mse_sr, gan_sr))
        nc = _drop_alpha(x1.shape[1])
        x1, x2 = x1[:, :nc], x2[:, :nc]
        size = tuple(x1.shape[-2:])
    else:
        if mse_sr.ndim not in (2, 3):
            raise ValueError('texture_similarity: arrays must be H x W x C or H x W, got shape '
                             f'{mse_sr.shape}')
        x1, x2 = (a[:, :, None] if a.ndim == 2 else a for a in (mse_sr, gan_sr))
        nc = _drop_alpha(x1.shape[2])
        x1, x2 = x1[:, :, :nc], x2[:, :, :nc]
        size = x1.shape[:2]
    if min(size) < len(g):
        raise ValueError(f'texture_similarity: images of {size[0]}x{size[1]} are smaller than the '
                         f'{len(g)}x{len(g)} window')
    _warn_if_unit_range(x1, x2)

    use_torch = backend == 'torch' or (backend == 'auto' and is_torch and x1.device.type != 'cpu')
    if use_torch:
        import torch

        t1, t2 = (x if is_torch else torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
                  for x in (x1, x2))
        d = _similarity_torch(t1, t2, g, constant, eps, valid, getattr(torch, out_name))
        if not is_torch:
            return d[0, 0].cpu().numpy()
        return d[0] if squeeze else d

    if is_torch:  # CPU tensors: zero-copy numpy views, channels first
        import torch

        a1, a2 = (t.numpy() if t.dtype != torch.bfloat16 and t.dtype != torch.float16 else t.float().numpy()
                  for t in (x1.cpu(), x2.cpu()))
        pairs = [(a1[b], a2[b]) for b in range(a1.shape[0])]
        channels_first = True
    else:
        pairs = [(x1, x2)]
        channels_first = False
    if not valid:  # reflect-101 completion, then the same valid-mode computation
        pad = ((0, 0), (h, h), (h, h)) if channels_first else ((h, h), (h, h), (0, 0))
        pairs = [(np.pad(p, pad, mode='reflect'), np.pad(q, pad, mode='reflect')) for p, q in pairs]
    out = _similarity_cv2(pairs, channels_first, g, constant, eps, np.dtype(out_name))
    if not is_torch:
        return out[0]
    d = torch.from_numpy(out)[:, None]
    if x1.device.type != 'cpu':
        d = d.to(x1.device)
    return d[0] if squeeze else d


def _warn_if_unit_range(x1, x2) -> None:
    """Values in [0, 1] make every variance tiny next to C, so D ~ 1 everywhere: almost surely a mistake."""
    is_float = x1.is_floating_point() if is_tensor(x1) else np.issubdtype(x1.dtype, np.floating)
    if not is_float:
        return
    if float(x1.max()) <= 1.0 and float(x2.max()) <= 1.0:
        warnings.warn('texture_similarity expects values in [0, 255]; both inputs are floats <= 1, so D will '
                      'be ~1 everywhere. Multiply [0, 1] images by 255.', stacklevel=3)


# ---------------------------------------------------------------------------------------- CPU path

def _similarity_cv2(pairs, channels_first: bool, g: np.ndarray, constant: float, eps: float,
                    out_dtype: np.dtype) -> np.ndarray:
    """D for each (x, y) pair of same-size arrays (already padded for valid mode) -> B x H' x W'."""
    k = len(g)
    h = k // 2
    first = pairs[0][0]
    nc, rows_in, cols_in = (first.shape if channels_first else (first.shape[2],) + first.shape[:2])
    rows, cols = rows_in - 2 * h, cols_in - 2 * h
    out = np.empty((len(pairs), rows, cols), dtype=out_dtype)
    gk = g.reshape(-1, 1)
    f = out_dtype.type

    def local_variance(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Variances of the windows centred on valid rows r0..r1-1, C x R x W' in out_dtype."""
        s = a[:, r0:r1 + 2 * h] if channels_first else a[r0:r1 + 2 * h].transpose(2, 0, 1)
        small_int = s.dtype == np.uint8  # x^2 is exact in uint16: no float64 copy of the strip needed
        # always a private copy: the float path squares it in place
        s = np.ascontiguousarray(s) if small_int else np.array(s, dtype=np.float64, order='C', copy=True)
        var = np.empty((nc, r1 - r0, cols), dtype=out_dtype)
        for c in range(nc):
            p = s[c]
            mu = cv2.sepFilter2D(p, cv2.CV_64F, gk, gk)[h:h + r1 - r0, h:h + cols]
            sq = np.square(p, dtype=np.uint16) if small_int else np.multiply(p, p, out=p)
            ex2 = cv2.sepFilter2D(sq, cv2.CV_64F, gk, gk)[h:h + r1 - r0, h:h + cols]
            var[c] = np.subtract(ex2, np.multiply(mu, mu, out=mu), out=ex2)  # cast after the float64 difference
        return np.maximum(var, 0, out=var)

    def work(item) -> None:
        b, r0, r1 = item
        v1 = local_variance(pairs[b][0], r0, r1)
        v2 = local_variance(pairs[b][1], r0, r1)
        den = np.add(v1, v2)
        den += f(constant)
        v1 += f(eps)
        v2 += f(eps)
        c = np.multiply(v1, v2, out=v1)
        np.sqrt(c, out=c)
        c *= f(2)
        c += f(constant)
        c /= den
        np.mean(c, axis=0, out=out[b, r0:r1])

    items = [(b, r0, min(r0 + _STRIP_ROWS, rows)) for b in range(len(pairs)) for r0 in range(0, rows, _STRIP_ROWS)]
    n_threads = min(max(1, cv2.getNumThreads()), len(items))
    if n_threads == 1:
        for it in items:
            work(it)
    else:
        for _ in _strip_pool(n_threads).map(work, items):  # re-raises a worker's exception here
            pass
    return out


_POOL_LOCK = threading.Lock()
_POOL: dict = {}


def _strip_pool(n_threads: int) -> ThreadPoolExecutor:
    """The process's strip workers (at least ``n_threads``), made on first use and again after a fork."""
    with _POOL_LOCK:
        if _POOL.get('pid') != os.getpid() or _POOL['size'] < n_threads:
            # a forked child inherits the object but not its threads; more threads asked: a larger pool
            old = _POOL.get('pool') if _POOL.get('pid') == os.getpid() else None
            _POOL.update(pool=ThreadPoolExecutor(n_threads, thread_name_prefix='desra-indicator'), pid=os.getpid(),
                         size=n_threads)
            if old is not None:
                old.shutdown(wait=False)
        return _POOL['pool']


# -------------------------------------------------------------------------------------- torch path

def _similarity_torch(x1: torch.Tensor, x2: torch.Tensor, g: np.ndarray, constant: float, eps: float,
                      valid: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """D from B x C x H x W tensors with two grouped 1-D convolutions in float64 -> B x 1 x H' x W'."""
    import torch
    from torch.nn import functional as F

    mom_dtype = torch.float32 if x1.device.type == 'mps' else torch.float64  # MPS has no float64
    nc = x1.shape[1]
    x1 = x1.to(mom_dtype)
    x2 = x2.to(mom_dtype)
    if not valid:
        h = len(g) // 2
        x1 = F.pad(x1, (h, h, h, h), mode='reflect')
        x2 = F.pad(x2, (h, h, h, h), mode='reflect')
    stack = torch.cat([x1, x1 * x1, x2, x2 * x2], dim=1)
    del x1, x2
    n = stack.shape[1]
    gt = torch.as_tensor(g, dtype=mom_dtype, device=stack.device)
    mom = F.conv2d(stack, gt.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
    mom = F.conv2d(mom, gt.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    mu1, e1, mu2, e2 = mom.split(nc, dim=1)
    v1 = (e1 - mu1 * mu1).clamp_min_(0).to(out_dtype)
    v2 = (e2 - mu2 * mu2).clamp_min_(0).to(out_dtype)
    den = v1 + v2 + constant
    c = ((v1 + eps) * (v2 + eps)).sqrt_().mul_(2).add_(constant).div_(den)
    return c.mean(dim=1, keepdim=True)
