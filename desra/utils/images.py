"""Image headers before decoding: size limits, EXIF orientation, and printable file names.

One image policy for every reader of the project (training, ``test.py``, ``detect.py``, pseudo-GT):

* **Pixel limit.** Width x height is read from the file header (Pillow, which parses headers lazily) before
  anything is decoded; an image above :func:`max_image_pixels` (default 178,956,970 pixels, twice Pillow's
  warning level, the size at which Pillow itself refuses a file) is refused with a one-line
  :class:`~desra.errors.DataError` naming the file. Set ``DESRA_MAX_IMAGE_PIXELS`` (``0`` = no limit) or the
  ``max_image_pixels`` option to change it.
* **EXIF orientation** is applied, whatever the decoding flag, so an image looks the same to every reader
  (and as an image viewer shows it): the pixels are decoded as stored and turned by :func:`apply_orientation`.
* **File names** that are not valid UTF-8 (possible on Linux) are kept as they are for file access;
  :func:`display_name` gives a printable form for logs, CSV and HTML.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import NamedTuple

import numpy as np

from desra.errors import ConfigError, DataError

__all__ = ['ImageHeader', 'DEFAULT_MAX_IMAGE_PIXELS', 'max_image_pixels', 'set_max_image_pixels', 'read_header',
           'image_header', 'check_pixel_limit', 'apply_orientation', 'display_name']

#: Pillow refuses images above 2 x ``Image.MAX_IMAGE_PIXELS`` (89,478,485): the same default here.
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485
_limit: int | None = None


class ImageHeader(NamedTuple):
    """What the header says: stored ``width`` x ``height``, EXIF ``orientation`` (1-8, 1 = as stored), format."""
    width: int
    height: int
    orientation: int
    format: str

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) after the orientation is applied (5-8 swap the axes)."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)


def max_image_pixels() -> int:
    """The pixel limit in force: :func:`set_max_image_pixels`, else ``DESRA_MAX_IMAGE_PIXELS``, else the default.

    0 means no limit.
    """
    if _limit is not None:
        return _limit
    env = os.environ.get('DESRA_MAX_IMAGE_PIXELS', '').strip()
    if env:
        try:
            value = int(float(env)) if env.lower() not in ('none', 'off') else 0
        except ValueError:
            raise ConfigError(f"DESRA_MAX_IMAGE_PIXELS: expected a number of pixels (0 = no limit), got {env!r}") \
                from None
        return max(value, 0)
    return DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(value: int | None, key_path: str = 'max_image_pixels') -> None:
    """Set the limit for this process (``None``: back to the environment / default; ``0``: no limit)."""
    global _limit
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                              or value != int(value)):
        raise ConfigError(f"{key_path}: expected a whole number of pixels >= 0 (0 = no limit), got {value!r}")
    _limit = None if value is None else int(value)


def _png_exif(f) -> bytes | None:
    """The payload of a PNG's ``eXIf`` chunk, found by walking the chunk headers (no pixel data is read)."""
    f.seek(8)
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None
        length, ctype = int.from_bytes(head[:4], 'big'), head[4:]
        if ctype == b'eXIf':
            data = f.read(length)
            return data if len(data) == length else None
        if ctype == b'IEND':
            return None
        f.seek(length + 4, io.SEEK_CUR)


def _orientation(im, f) -> int:
    from PIL import Image

    try:
        if im.format == 'PNG':
            # Pillow's PNG getexif() decodes the whole image to look for eXIf after the pixel data
            data = _png_exif(f)
            if not data:
                return 1
            exif = Image.Exif()
            exif.load(data)
        else:
            exif = im.getexif()
        value = int(exif.get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block: decode as stored
        return 1
    return value if value in range(1, 9) else 1


def _open_header(f, path: str, check_limit: bool) -> ImageHeader | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return None
    saved = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            Image.MAX_IMAGE_PIXELS = None  # the limit is checked here, with a message naming the file
            im = Image.open(f)
    except Exception:  # not a format Pillow knows: the decoder will judge it
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    try:
        header = ImageHeader(int(im.size[0]), int(im.size[1]), 1, im.format or '?')
        if check_limit:
            check_pixel_limit(header, path)  # before anything that could decode pixels
        return header._replace(orientation=_orientation(im, f))
    finally:
        im.close()


def read_header(content: bytes, path: str = '<bytes>', check_limit: bool = True) -> ImageHeader | None:
    """Header of an encoded image held in memory; None when Pillow cannot parse it.

    With ``check_limit`` an image above the pixel limit raises :class:`DataError` before its EXIF is read.
    """
    return _open_header(io.BytesIO(content), path, check_limit)


def image_header(path: str, check_limit: bool = True) -> ImageHeader | None:
    """Header of an image file (only the header bytes are read); None when Pillow cannot parse it."""
    try:
        with open(path, 'rb') as f:
            return _open_header(f, os.path.abspath(path), check_limit)
    except OSError as e:
        raise DataError(f'cannot read image {os.path.abspath(path)}: {e.strerror or e}') from None


def check_pixel_limit(header: ImageHeader | None, path: str) -> None:
    limit = max_image_pixels()
    if header is None or not limit:
        return
    pixels = header.width * header.height
    if pixels > limit:
        raise DataError(f'image {os.path.abspath(path)} is {header.width}x{header.height} = {pixels:,} pixels, above '
                        f'the limit of {limit:,} (a decompression bomb, or an image too large to process); '
                        f'raise the limit with max_image_pixels / DESRA_MAX_IMAGE_PIXELS if it is genuine')


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image decoded as stored (H x W [x C]) into the upright view EXIF ``orientation`` describes.

    1: as stored; 2: mirrored left-right; 3: rotated 180; 4: mirrored top-bottom; 5: transposed (mirrored along
    the main diagonal); 6: rotated 90 degrees clockwise; 7: transverse (mirrored along the anti-diagonal);
    8: rotated 90 degrees counter-clockwise.
    """
    if orientation in (None, 1):
        return img
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, k=1),
    }
    op = ops.get(int(orientation))
    return img if op is None else np.ascontiguousarray(op(img))


def display_name(name) -> str:
    """A printable, valid-UTF-8 form of a file name: undecodable bytes appear as ``\\xNN``."""
    name = os.fspath(name)
    if isinstance(name, bytes):
        return name.decode('utf-8', 'backslashreplace')
    try:
        name.encode('utf-8')
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode('utf-8', 'backslashreplace')
