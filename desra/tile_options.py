"""Option values of tiled inference (``tile_size``, ``tile_pad``), kept free of torch so option checking stays light.

:func:`desra.inference.tiled_forward` does the work; this module holds its defaults and the check of a
``tile_size`` option (``val.tile_size``, ``tile_size`` of detect/desra-loop files, ``models[i].tile`` of fuse files).
"""
from __future__ import annotations

from desra.errors import ConfigError

#: Context (input pixels) every used output pixel of a tile has on each side inside its window, unless the
#: image border is nearer. Chosen by measurement (``benchmarks/tiling.py``, Real-ESRGAN x4plus = 23 RRDB blocks,
#: real 256 px photo, windows overlapping by the minimum ``2 * tile_pad + blend``, the worst case of the layout):
#: 99.9th percentile of |tiled - whole| 2.99/255 at pad 24, 1.42/255 at 32, 0.79/255 at 40 (old algorithm, pad
#: 10: 5.45/255). The cost is ``((tile + 2 * pad) / (tile - blend))**2`` times the FLOPs of the whole image on
#: large images (3.0 for tile 128), hence ``tile_size: auto``. SPAN (receptive radius ~20 px) is exact with it.
DEFAULT_TILE_PAD = 40

#: Width (input pixels) of the raised-cosine cross-fade between neighbouring windows, centred in their overlap.
#: The fade removes the step at a seam; accuracy comes from the context (wider fades did not reduce the error).
DEFAULT_BLEND = 8

AUTO = 'auto'


def tile_size_option(value, path: str):
    """Check a ``tile_size`` option: an integer >= 0 (0 = whole image) or ``'auto'`` (whole image when it fits
    the memory budget, tiles otherwise). Whole floats (``128.0``) become ints. One-line error naming ``path``."""
    expected = f"{path}: expected an integer >= 0 or '{AUTO}'"
    if isinstance(value, str):
        if value != AUTO:
            raise ConfigError(f"{expected}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{expected}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{expected}, got {value!r}")
        value = int(value)
    if value < 0:
        raise ConfigError(f"{expected}, got {value!r}")
    return value
