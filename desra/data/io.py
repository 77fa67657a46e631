"""Image file I/O and numpy <-> tensor conversion (BasicSR-compatible names and semantics).

Conventions: numpy images are ``H x W x C`` (or ``H x W`` for grayscale) in OpenCV's BGR channel order;
tensors are ``C x H x W`` (or ``B x C x H x W``) in RGB order. Every failure to read or write a file is
raised as :class:`desra.errors.DataError` (reading) or :class:`desra.errors.OutputError` (writing) naming the
full path.

Every image read goes through :func:`imfrombytes`, which applies the project's one image policy
(:mod:`desra.utils.images`): the pixel limit is checked from the header before decoding, and the EXIF
orientation is applied whatever the flag, so training, testing, detection and pseudo-GT all see the same,
upright pixels. torch is imported only by the tensor conversions.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Sequence

import cv2
import numpy as np

from desra.atomic import atomic_write_bytes
from desra.errors import DataError
from desra.utils.images import apply_orientation, read_header

__all__ = ['IMG_EXTENSIONS', 'is_image_file', 'imfrombytes', 'imread', 'imencode', 'png_params', 'imwrite_atomic',
           'imwrite', 'img2tensor', 'tensor2img', 'scandir']

#: Lower-case suffixes treated as images by the datasets (matching is case-insensitive).
IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

# OpenCV applies EXIF orientation for 'color' and 'grayscale' only; it is ignored here and applied by
# desra.utils.images.apply_orientation for every flag, so all readers agree.
_IMREAD_FLAGS = {
    'color': cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    'grayscale': cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
    'unchanged': cv2.IMREAD_UNCHANGED,
}

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def is_image_file(name: str) -> bool:
    """True if ``name`` ends with one of :data:`IMG_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def _check_png_structure(content: bytes) -> str | None:
    """Walk the PNG chunk list; return a description of the first defect, or None if intact.

    Some libpng/OpenCV builds return a partially decoded (grey-filled) image for a truncated file
    instead of failing, so completeness is verified here, before decoding, independently of cv2.
    """
    pos = len(_PNG_SIGNATURE)
    n = len(content)
    view = memoryview(content)
    while True:
        if pos + 8 > n:
            return f'truncated PNG: file ends at byte {n} before the IEND chunk'
        length, ctype = struct.unpack('>I4s', content[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > n:
            return (f'truncated PNG: chunk {ctype!r} at byte {pos} needs {length + 12} bytes '
                    f'but the file ends at byte {n}')
        crc = struct.unpack('>I', content[end - 4:end])[0]
        if zlib.crc32(view[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
            return f'corrupt PNG: CRC mismatch in chunk {ctype!r} at byte {pos}'
        if ctype == b'IEND':
            return None
        pos = end


def _check_jpeg_structure(content: bytes) -> str | None:
    """Return a defect description if the JPEG has no end-of-image marker after its last scan.

    Entropy-coded data byte-stuffs 0xFF, so the markers SOS (FFDA) and EOI (FFD9) only appear as real
    markers; an EXIF thumbnail has its own SOS/EOI pair near the start, hence "after the last SOS".
    """
    last_sos = content.rfind(b'\xff\xda')
    last_eoi = content.rfind(b'\xff\xd9')
    if last_sos < 0:
        return 'corrupt JPEG: no image scan (SOS marker) found'
    if last_eoi < last_sos:
        return 'truncated JPEG: no end-of-image marker after the last scan'
    return None


def imfrombytes(content: bytes, flag: str = 'color', float32: bool = False, path: str = '<bytes>') -> np.ndarray:
    """Decode an encoded image.

    Args:
        content: the encoded file bytes.
        flag: ``'color'`` (H x W x 3 BGR, 8-bit), ``'grayscale'`` (H x W, 8-bit) or ``'unchanged'``
            (as stored: 16-bit and alpha preserved).
        float32: convert to float32 and divide by 255 (values in [0, 1] for 8-bit images).
        path: used in error messages only.

    Returns:
        The decoded image (uint8, or uint16 for 16-bit files with ``flag='unchanged'``; float32 if asked),
        turned upright by its EXIF orientation.

    Raises:
        DataError: empty, truncated or corrupt file, or more pixels than
            :func:`desra.utils.images.max_image_pixels` (checked from the header, before decoding).
    """
    if flag not in _IMREAD_FLAGS:
        raise ValueError(f"imread flag must be one of {sorted(_IMREAD_FLAGS)}, got {flag!r}")
    if len(content) == 0:
        raise DataError(f'cannot read image {path}: the file is empty')
    header = read_header(content, path)  # DataError above the pixel limit, before any decoding
    defect = None
    if content.startswith(_PNG_SIGNATURE):
        defect = _check_png_structure(content)
    elif content.startswith(b'\xff\xd8'):
        defect = _check_jpeg_structure(content)
    if defect:
        raise DataError(f'cannot read image {path}: {defect}')
    try:
        img = cv2.imdecode(np.frombuffer(content, np.uint8), _IMREAD_FLAGS[flag])
    except cv2.error as e:
        raise DataError(f'cannot read image {path}: OpenCV failed to decode it ({str(e).strip()})') from None
    if img is None or img.size == 0:
        raise DataError(f'cannot read image {path}: not a valid image file or corrupt '
                        f'(expected one of {", ".join(IMG_EXTENSIONS)})')
    if header is not None and header.orientation != 1:
        img = apply_orientation(img, header.orientation)
    if float32:
        img = img.astype(np.float32) / 255.
    return img


def imread(path: str | os.PathLike, flag: str = 'color', float32: bool = False) -> np.ndarray:
    """Read an image file like ``cv2.imread`` but with errors that name the file.

    The bytes are read with numpy and decoded in memory so that non-ASCII paths work on every platform.
    Truncated PNG/JPEG files are rejected even where the codec would return a partial image.

    Args:
        path: image file.
        flag: ``'color'`` (H x W x 3 BGR uint8), ``'grayscale'`` (H x W uint8) or ``'unchanged'``.
        float32: return float32 values divided by 255.

    Raises:
        DataError: the file does not exist, cannot be read or is not a complete image.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f'image file does not exist: {os.path.abspath(path)}')
    if os.path.isdir(path):
        raise DataError(f'expected an image file but found a folder: {os.path.abspath(path)}')
    try:
        content = np.fromfile(path, dtype=np.uint8).tobytes()
    except OSError as e:
        raise DataError(f'cannot read image {os.path.abspath(path)}: {e.strerror or e}') from None
    return imfrombytes(content, flag=flag, float32=float32, path=os.path.abspath(path))


def png_params(level: int) -> list[int]:
    """``cv2.imencode`` parameters for a PNG at compression ``level``: 0 (stored) to 9 (smallest, slowest).

    Every level uses the SUB row filter (on photos ~1.5x faster than libpng's adaptive choice). Level 1 uses
    zlib's run-length strategy, OpenCV's own default: on photos it is both faster and smaller than the default
    strategy at levels 1-3. Levels 2-9 are zlib's levels with its default strategy (9: ~8 % smaller than 1,
    ~30x slower). The pixels are the same at every level.
    """
    level = int(level)
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if level == 1:
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, 'IMWRITE_PNG_FILTER'):  # not in older OpenCV builds
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    return params


def imencode(img: np.ndarray, path: str | os.PathLike, params: Sequence[int] | None = None) -> np.ndarray:
    """Encode ``img`` (H x W [x C], BGR, uint8/uint16) in the format of ``path``'s suffix; returns the bytes.

    Raises:
        DataError: no suffix, a format OpenCV does not write, or an image it cannot encode (shape, dtype).
    """
    path = os.path.abspath(os.fspath(path))
    ext = os.path.splitext(path)[1]
    if not ext:
        raise DataError(f'cannot write image {path}: the file name needs a suffix such as .png')
    try:
        ok, buf = cv2.imencode(ext, img, list(params) if params else [])
    except cv2.error as e:
        raise DataError(f'cannot encode image for {path} (shape {getattr(img, "shape", None)}, dtype '
                        f'{getattr(img, "dtype", None)}): {str(e).strip()}') from None
    if not ok:
        raise DataError(f'cannot encode image for {path}: OpenCV refused the format {ext!r}')
    return buf


def imwrite_atomic(img: np.ndarray, path: str | os.PathLike, params: Sequence[int] | None = None,
                   auto_mkdir: bool = True) -> bool:
    """Encode ``img`` (H x W [x C], BGR, uint8/uint16) by the suffix of ``path`` and write it atomically.

    The bytes go to a temporary file in the destination folder, are fsync'ed, then renamed over
    ``path``: a reader (or a crash) never sees a half-written image.

    Args:
        img: image in OpenCV layout.
        path: destination; the suffix selects the format (``.png``, ``.jpg``, ...).
        params: ``cv2.imencode`` parameters, e.g. ``[cv2.IMWRITE_JPEG_QUALITY, 95]`` or :func:`png_params`.
        auto_mkdir: create missing parent folders.

    Returns:
        True (for drop-in compatibility with ``cv2.imwrite``).
    """
    path = os.path.abspath(os.fspath(path))
    buf = imencode(img, path, params)
    if not auto_mkdir and not os.path.isdir(os.path.dirname(path)):
        raise DataError(f'cannot write image {path}: folder does not exist')
    atomic_write_bytes(path, buf)  # OutputError naming the file (and the bytes needed when the disk is full)
    return True


#: BasicSR name for the same function.
imwrite = imwrite_atomic


def img2tensor(imgs, bgr2rgb: bool = True, float32: bool = True):
    """numpy image(s) H x W x C (BGR) or H x W -> tensor(s) C x H x W (RGB if ``bgr2rgb``).

    Values are not rescaled. Returns a list when given a list, else a single tensor.
    """

    import torch

    def _convert(img: np.ndarray):
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[2] == 3 and bgr2rgb:
            if img.dtype == np.float64:  # cv2.cvtColor does not accept float64
                img = img.astype(np.float32)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if img.ndim == 2:
                img = img[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return t.float() if float32 else t

    if isinstance(imgs, list):
        return [_convert(img) for img in imgs]
    return _convert(imgs)


def _grid(t, padding: int = 2):
    """Tile a B x C x H x W batch into one C x H' x W' image, ``int(sqrt(B))`` images per row."""
    b, c, h, w = t.shape
    ncol = max(int(math.sqrt(b)), 1)
    nrow = int(math.ceil(b / ncol))
    out = t.new_zeros(c, nrow * (h + padding) + padding, ncol * (w + padding) + padding)
    for k in range(b):
        r, q = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        out[:, y:y + h, x:x + w] = t[k]
    return out


def tensor2img(tensor, rgb2bgr: bool = True, out_type=np.uint8, min_max=(0, 1)):
    """Tensor(s) -> numpy image(s) in OpenCV layout.

    Args:
        tensor: a tensor or list of tensors, shaped B x C x H x W (a batch larger than one is tiled into
            a grid), C x H x W or H x W; RGB order for 3 channels.
        rgb2bgr: convert 3-channel images to BGR.
        out_type: ``np.uint8`` (values ``round(x * 255)``) or a float type (values in [0, 1]).
        min_max: the value range of the input; values are clamped to it then mapped to [0, 1].

    Returns:
        H x W x 3 or H x W arrays; a list when given a list or several tensors.
    """
    import torch

    if not (torch.is_tensor(tensor) or (isinstance(tensor, list) and all(torch.is_tensor(t) for t in tensor))):
        raise TypeError(f'tensor2img expects a tensor or a list of tensors, got {type(tensor).__name__}')
    single = torch.is_tensor(tensor)
    tensors = [tensor] if single else tensor
    results = []
    lo, hi = min_max
    for t in tensors:
        t = t.squeeze(0).float().detach().cpu().clamp_(lo, hi)
        t = (t - lo) / (hi - lo)
        if t.dim() == 4:
            img = _grid(t).numpy().transpose(1, 2, 0)
            if rgb2bgr and img.shape[2] == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        elif t.dim() == 3:
            img = t.numpy().transpose(1, 2, 0)
            if img.shape[2] == 1:
                img = img[:, :, 0]
            elif rgb2bgr and img.shape[2] == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        elif t.dim() == 2:
            img = t.numpy()
        else:
            raise ValueError(f'tensor2img supports 4-D, 3-D and 2-D tensors, got shape {tuple(t.shape)}')
        if out_type == np.uint8:
            img = (img * 255.0).round()
        results.append(np.ascontiguousarray(img.astype(out_type)))
    return results[0] if len(results) == 1 else results


def scandir(dir_path: str | os.PathLike, suffix: str | tuple[str, ...] | None = None, recursive: bool = False,
            full_path: bool = False) -> list[str]:
    """Sorted list of the files in ``dir_path`` (hidden files and folders, named ``.*``, are skipped).

    Args:
        dir_path: folder to scan.
        suffix: keep only names ending with this suffix (or any of a tuple of suffixes); case-sensitive,
            like ``str.endswith``.
        recursive: descend into sub-folders.
        full_path: return ``os.path.join(dir_path, rel)`` instead of the path relative to ``dir_path``.

    Raises:
        DataError: ``dir_path`` is not an existing folder.
    """
    dir_path = os.fspath(dir_path)
    if not os.path.isdir(dir_path):
        raise DataError(f'folder does not exist: {os.path.abspath(dir_path)}')
    if suffix is not None and not isinstance(suffix, (str, tuple)):
        raise TypeError(f'"suffix" must be a string or tuple of strings, got {type(suffix).__name__}')
    found = []

    def _walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith('.'):
                    continue
                rel_path = os.path.join(rel, entry.name) if rel else entry.name
                if entry.is_file():
                    if suffix is None or entry.name.endswith(suffix):
                        found.append(rel_path)
                elif recursive and entry.is_dir():
                    _walk(entry.path, rel_path)

    _walk(dir_path, '')
    found.sort()
    if full_path:
        return [os.path.join(dir_path, p) for p in found]
    return found
