r"""Synthetic rain streaks: the additive rain model ``I = clip(B + R, 0, 255)`` as plain, seeded numpy functions.

The model (all images on the 0..255 scale, ``B`` the clean background, ``I`` the rainy image):

.. math::

    I = \mathrm{clip}(B + R,\ 0,\ 255), \qquad R = \sum_k S_k + 255\, h

* ``R`` is achromatic (one ``H x W`` layer added to every channel) and ``>= 0``; it is returned *before* the
  clipping, so ``I == clip(B + R)`` holds exactly (up to the rounding to uint8 for uint8 inputs).
* ``S_k`` is one streak layer (:class:`RainLayer`); several layers (e.g. a heavy one of long, bright streaks and
  a light one of short, faint ones, :func:`light_layer`) are summed.
* ``h`` is an optional uniform veil (``haze``, a fraction of 255; additive, so that the identity above holds).

One streak layer (:func:`sample_streaks` then :func:`render_streaks`):

1. **Seeds.** ``n ~ Poisson(density * A / 1e6)`` streak centres, uniform over the image extended by a margin
   ``m = l_max / 2 + 3 * blur + width`` on every side (``A`` the extended area), so ``density`` is the number of
   streaks per megapixel of the image -- a per-pixel seed probability ``p = density / 1e6`` -- with streaks
   crossing the border as often as inside.
2. **Streak.** Each seed ``i`` is smeared into a segment (the motion blur of a falling drop over the exposure)
   of length ``l_i ~ U[l_min, l_max]`` pixels, centred on the seed, at the angle
   ``theta_i ~ U[angle - angle_jitter, angle + angle_jitter]`` degrees from vertical. The direction is
   ``(dx, dy) = (sin theta, cos theta)`` in image coordinates (x right, y down): a positive angle leans the
   streak's lower end to the right (wind from the left).
3. **Brightness.** ``a_i = 255 * intensity * (1 - intensity_jitter * u_i)``, ``u_i ~ U[0, 1]``.
4. **Rendering.** Each segment is a box profile ``width`` pixels across, rasterised by bilinear splatting of
   points spaced at most 0.5 px along and across it (vectorised over all streaks: no Python loop per streak),
   then the layer is blurred by a Gaussian of standard deviation ``blur``. This is the same as convolving a
   sparse seed image with an oriented line kernel (a motion-blur kernel), but with every streak's own length and
   angle instead of one kernel per layer. The layer is scaled so that a vertical streak centred on a pixel column
   has peak ``a_i`` (slanted streaks, spread over two columns by the splatting, peak a little lower).

Random draws come from one ``numpy.random.Generator`` in a fixed order (per layer: count, x, y, length, angle,
brightness), so the same seed and parameters give the same rain, bit for bit.

Parameters of :class:`RainLayer` (defaults; allowed ranges in :data:`RANGES`):

============== ======================= ========================= ===============================================
name           default                 range                     meaning
============== ======================= ========================= ===============================================
density        1500                    0 .. 100000               streaks per megapixel (per-pixel p = d / 1e6)
length         (20, 40)                1 <= l_min <= l_max <= 1000  streak length in pixels, uniform in the range
angle          10                      -80 .. 80                 mean angle, degrees from vertical
angle_jitter   5                       0 .. 45                   half-width of the uniform angle spread
intensity      0.5                     0 < i <= 1                peak brightness, a fraction of 255
intensity_jitter 0.4                   0 .. 1                    brightness spread (a_i in [1 - j, 1] * peak)
width          1                       1 .. 10                   streak thickness in pixels (box profile)
blur           0.6                     0 .. 10                   Gaussian sigma in pixels (0: none)
============== ======================= ========================= ===============================================

and of :func:`add_rain` / :func:`rain_layer`: ``haze`` (default 0, range 0 .. 0.5).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from desra.errors import ConfigError

__all__ = ['RainLayer', 'Streaks', 'RANGES', 'HAZE_RANGE', 'DEFAULT_LAYER', 'light_layer', 'check_layer',
           'check_haze', 'sample_streaks', 'render_streaks', 'rain_layer', 'add_rain', 'image_seed', 'image_rng']


@dataclasses.dataclass(frozen=True)
class RainLayer:
    """Parameters of one streak layer (see the module docstring for the model, defaults and ranges)."""
    density: float = 1500.0
    length: tuple = (20.0, 40.0)
    angle: float = 10.0
    angle_jitter: float = 5.0
    intensity: float = 0.5
    intensity_jitter: float = 0.4
    width: float = 1.0
    blur: float = 0.6

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['length'] = [float(v) for v in self.length]
        return d


#: The default (single, "heavy") layer.
DEFAULT_LAYER = RainLayer()

#: Field -> (low, high, rule shown in errors); ``length`` is checked as ``low <= l_min <= l_max <= high``.
RANGES = {
    'density': (0.0, 1e5, '0 <= density <= 100000 (streaks per megapixel)'),
    'length': (1.0, 1000.0, '1 <= L_MIN <= L_MAX <= 1000 (pixels)'),
    'angle': (-80.0, 80.0, '-80 <= angle <= 80 (degrees from vertical)'),
    'angle_jitter': (0.0, 45.0, '0 <= jitter <= 45 (degrees)'),
    'intensity': (0.0, 1.0, '0 < intensity <= 1 (a fraction of 255)'),
    'intensity_jitter': (0.0, 1.0, '0 <= jitter <= 1'),
    'width': (1.0, 10.0, '1 <= width <= 10 (pixels)'),
    'blur': (0.0, 10.0, '0 <= blur <= 10 (Gaussian sigma, pixels)'),
}
HAZE_RANGE = (0.0, 0.5, '0 <= haze <= 0.5 (a fraction of 255)')


def light_layer(layer: RainLayer = DEFAULT_LAYER) -> RainLayer:
    """A light layer to go with ``layer``: 3x the density, 0.4x the length (at least 1 px), 0.4x the intensity,
    1.5x the angle jitter (at most 45), width 1, the same angle and blur."""
    lo, hi = (max(1.0, 0.4 * v) for v in layer.length)
    return dataclasses.replace(layer, density=min(3 * layer.density, RANGES['density'][1]), length=(lo, hi),
                               angle_jitter=min(1.5 * layer.angle_jitter, 45.0), intensity=0.4 * layer.intensity,
                               width=1.0)


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return ' '.join(_fmt(x) for x in v)
    return f'{v:g}' if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


def check_layer(layer: RainLayer, names: dict | None = None, prefix: str = '') -> RainLayer:
    """Raise a one-line :class:`ConfigError` for a parameter outside :data:`RANGES`; returns ``layer``.

    ``names`` maps a field to the name used in the message (e.g. ``{'length': '--length'}``); ``prefix`` is put
    before the field name otherwise (e.g. ``'layers[1].'``). Message: ``"<name> <value>: expected <rule>"``.
    """
    names = names or {}

    def bad(field, value):
        return ConfigError(f'{names.get(field, prefix + field)} {_fmt(value)}: expected {RANGES[field][2]}')

    for field in ('density', 'angle', 'angle_jitter', 'intensity_jitter', 'width', 'blur'):
        value = getattr(layer, field)
        lo, hi, _ = RANGES[field]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise bad(field, value)
    value = layer.intensity
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise bad('intensity', value)
    length = layer.length
    lo, hi, _ = RANGES['length']
    if (not isinstance(length, (tuple, list)) or len(length) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in length)
            or not lo <= length[0] <= length[1] <= hi):
        raise bad('length', length)
    return layer


def check_haze(haze: float, name: str = 'haze') -> float:
    lo, hi, rule = HAZE_RANGE
    if not isinstance(haze, (int, float)) or isinstance(haze, bool) or not lo <= haze <= hi:
        raise ConfigError(f'{name} {_fmt(haze)}: expected {rule}')
    return float(haze)


class Streaks(NamedTuple):
    """The streaks of one layer, one entry per streak: centre ``x``, ``y`` (pixels; pixel ``(r, c)`` has its
    centre at ``x = c, y = r``), ``length`` (pixels), ``angle`` (degrees from vertical) and ``brightness`` (peak,
    0..255 scale)."""
    x: np.ndarray
    y: np.ndarray
    length: np.ndarray
    angle: np.ndarray
    brightness: np.ndarray

    def __len__(self) -> int:  # the number of streaks (not the number of fields)
        return int(self.x.shape[0])


def _margin(layer: RainLayer) -> float:
    return layer.length[1] / 2 + 3 * layer.blur + layer.width


def sample_streaks(shape: Sequence[int], layer: RainLayer, rng: np.random.Generator) -> Streaks:
    """Draw the streaks of one layer for an image of ``shape`` (``(H, W, ...)``): steps 1-3 of the model."""
    check_layer(layer)
    h, w = int(shape[0]), int(shape[1])
    m = _margin(layer)
    area = (h + 2 * m) * (w + 2 * m)
    n = int(rng.poisson(layer.density * area / 1e6))
    x = rng.uniform(-m, w - 1 + m, n)
    y = rng.uniform(-m, h - 1 + m, n)
    length = rng.uniform(layer.length[0], layer.length[1], n)
    angle = layer.angle + rng.uniform(-layer.angle_jitter, layer.angle_jitter, n)
    brightness = 255. * layer.intensity * (1 - layer.intensity_jitter * rng.uniform(0, 1, n))
    return Streaks(x, y, length, angle, brightness)


#: Most splatted points held at once (the streaks are rendered in chunks of about this many points).
_CHUNK_POINTS = 1 << 21


def _splat(shape: tuple[int, int], streaks: Streaks, width: float, offset: float) -> np.ndarray:
    """Unblurred, unnormalised layer on a canvas of ``shape``, coordinates shifted by ``offset``: each streak is
    a ``length x width`` box of mass ``brightness * length * width`` (points at most 0.5 px apart, bilinear)."""
    h, w = shape
    out = np.zeros(h * w, np.float64)
    n = len(streaks)
    if n == 0:
        return out.reshape(h, w).astype(np.float32)
    k = max(1, math.ceil(2 * float(np.max(streaks.length))))  # points along (spacing <= 0.5 px)
    nw = max(1, math.ceil(2 * width))                           # points across
    t = (np.arange(k) + 0.5) / k - 0.5                          # midpoints of k equal parts of [-1/2, 1/2]
    o = ((np.arange(nw) + 0.5) / nw - 0.5) * width
    per = max(1, _CHUNK_POINTS // (k * nw))
    for s in range(0, n, per):
        sl = slice(s, s + per)
        theta = np.deg2rad(streaks.angle[sl])[:, None, None]
        sx, sy = np.sin(theta), np.cos(theta)               # along the streak
        along = t[None, :, None] * streaks.length[sl][:, None, None]
        across = o[None, None, :]
        px = streaks.x[sl][:, None, None] + offset + along * sx + across * sy
        py = streaks.y[sl][:, None, None] + offset + along * sy - across * sx
        mass = (streaks.brightness[sl] * streaks.length[sl] / k * width / nw)[:, None, None]
        mass = np.broadcast_to(mass, px.shape).ravel()
        px, py = px.ravel(), py.ravel()
        x0, y0 = np.floor(px), np.floor(py)
        fx, fy = px - x0, py - y0
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                           (1, 1, fx * fy)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += np.bincount(yi[ok] * w + xi[ok], weights=(mass * wt)[ok], minlength=h * w)
    return out.reshape(h, w).astype(np.float32)


def _blur(layer: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return layer
    return cv2.GaussianBlur(layer, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


@functools.lru_cache(maxsize=64)
def _peak_gain(width: float, blur: float) -> float:
    """1 / the peak of a vertical, pixel-centred streak of brightness 1 (length 41 px) after splat and blur."""
    size = 61
    one = Streaks(*(np.array([v], np.float64) for v in (30., 30., 41., 0., 1.)))
    peak = float(_blur(_splat((size, size), one, width, 0.0), blur).max())
    return 1.0 / peak


def render_streaks(shape: Sequence[int], streaks: Streaks, width: float = 1.0, blur: float = 0.0) -> np.ndarray:
    """The layer ``S`` (float32 ``H x W``, >= 0) of ``streaks`` (step 4 of the model): box profile ``width`` px
    across, Gaussian ``blur``, scaled so that a vertical pixel-centred streak peaks at its ``brightness``."""
    h, w = int(shape[0]), int(shape[1])
    pad = int(math.ceil(3 * blur)) + 2  # rendered on a padded canvas, so the blur sees what lies outside
    canvas = _splat((h + 2 * pad, w + 2 * pad), streaks, width, float(pad))
    canvas = _blur(canvas, blur) * np.float32(_peak_gain(float(width), float(blur)))
    return np.ascontiguousarray(np.maximum(canvas[pad:pad + h, pad:pad + w], 0))


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def rain_layer(shape: Sequence[int], layers: Sequence[RainLayer] = (DEFAULT_LAYER,), haze: float = 0.0,
               rng=None, return_streaks: bool = False):
    """The rain layer ``R = sum_k S_k + 255 * haze`` (float32 ``H x W``, >= 0) for an image of ``shape``.

    Args:
        shape: ``(H, W)`` or ``(H, W, C)``.
        layers: the streak layers (each checked against :data:`RANGES`).
        haze: uniform veil, a fraction of 255 (0 .. 0.5).
        rng: a ``numpy.random.Generator``, or a seed for ``numpy.random.default_rng``.
        return_streaks: also return the list of :class:`Streaks`, one per layer.
    """
    for i, layer in enumerate(layers):
        check_layer(layer, prefix=f'layers[{i}].' if len(layers) > 1 else '')
    check_haze(haze)
    rng = _as_rng(rng)
    h, w = int(shape[0]), int(shape[1])
    total = np.zeros((h, w), np.float32)
    drawn = []
    for layer in layers:
        streaks = sample_streaks((h, w), layer, rng)
        total += render_streaks((h, w), streaks, layer.width, layer.blur)
        drawn.append(streaks)
    if haze:
        total += np.float32(255. * haze)
    return (total, drawn) if return_streaks else total


def add_rain(img: np.ndarray, layers: Sequence[RainLayer] = (DEFAULT_LAYER,), haze: float = 0.0,
             rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Rainy version of ``img``: returns ``(I, R)`` with ``I = clip(B + R, 0, 255)``.

    Args:
        img: the clean background ``B``, ``H x W`` or ``H x W x C`` (any channel order: the rain is achromatic),
            uint8, or float on the 0..255 scale.
        layers, haze, rng: as :func:`rain_layer`.

    Returns:
        ``I`` (uint8, rounded, for a uint8 ``img``; float32 otherwise) and ``R`` (float32 ``H x W``, before
        clipping).
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f'add_rain: expected an H x W or H x W x C image, got shape {img.shape}')
    r = rain_layer(img.shape, layers, haze, rng)
    rr = r if img.ndim == 2 else r[..., None]
    rainy = np.clip(img.astype(np.float32) + rr, 0, 255)
    if img.dtype == np.uint8:
        rainy = np.round(rainy).astype(np.uint8)
    return rainy, r


def image_seed(seed: int, name: str) -> list[int]:
    """``[seed, crc32(name)]``: the seed of one image of a set (see :func:`image_rng`)."""
    return [int(seed), zlib.crc32(name.encode('utf-8', 'surrogateescape'))]


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The generator for one image of a set: ``default_rng([seed, crc32(name)])``, so an image's rain depends only
    on the seed, its file name and the parameters, not on the other images in the folder."""
    return np.random.default_rng(image_seed(seed, name))
