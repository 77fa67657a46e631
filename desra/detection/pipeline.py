"""``detect.py``: find the artifacts of a GAN-SR model on real images (DeSRA Sec. 3.1-3.2) and write them out.

Two input modes:

(a) ``input.lr``: a folder of real LR images; the MSE-SR and GAN-SR generators (``mse_model``, ``gan_model``,
    any registered arch, official checkpoint formats) are run on them, tiled so memory stays bounded.
(b) ``input.mse_sr`` + ``input.gan_sr``: folders of SR results that already exist (flat, or the released
    two-level ``root/<sub>/<img>`` layout), paired by relative path.
(c) ``input.images``: a folder of restored images alone, for detectors that need no MSE-SR twin (``detector.type:
    localizer``, a trained artifact localiser). Mode (a) with such a detector needs only ``gan_model``.

Order of work, so that bad input never leaves a half-written output root:

1. options and every input image are checked without torch (:func:`preflight`): the header of each image
   (pixel limit, pair sizes, the detector's minimum size) is read, nothing is decoded;
2. the detector, segmenter, class weights and generators are built and loaded;
3. the output root is locked (:class:`~desra.utils.lock.FolderLock`; a second run on the same root refuses);
4. each image whose record carries the fingerprint of the current settings and inputs is skipped; every
   other image is recomputed, and the log says how many and why (``settings changed: detector.threshold``);
5. per image, the files are written as one durable commit (:func:`~desra.atomic.commit_files`): temporary
   files, one parallel fsync pass, renames, one fsync per folder, and only then the JSON record. The record
   is what marks an image done, so a run killed at any point leaves no record over missing or partial files,
   and the rerun recomputes exactly the images without a record.

Outputs: ``masks/`` (uint8 0/255), ``vis/D`` (or ``vis/P``), ``overlays/`` (``output.save_overlays``, default
on), ``MSE-SR/`` + ``GAN-SR/`` (``output.save_sr``, default on in mode (a)), ``records/*.json``, ``summary.csv``
and ``index.html``. The float maps ``maps/{D,S,P}/*.npy`` and the label PNGs are written only with
``output.save_maps: true`` (about 1 MB per 512 x 512 image). The pictures for people (``vis/``, ``overlays/``)
are JPEG (quality 90) unless ``output.picture_format: png``: encoding two 512 x 384 colour pictures as PNG costs
about 25 ms at level 1 against 1.5 ms as JPEG, more than the detection itself; masks, labels and SR images are
always PNG (exact). PNGs are written at zlib level
``output.png_compression`` (0-9, default 1: fast; on photos 9 is ~8 % smaller and ~30x slower, 0 ~2.7x
larger). The level does not change a pixel, so it is recorded in each record but is not part of the
fingerprint: changing it alone recomputes nothing.

The next image is decoded and the previous one written (encoding and commit) in threads while the current
one is detected; the closing ``Timing:`` log line gives the wall time per image and what the loop waited for.

The fingerprint (:func:`detection_settings`) covers the detector type and arguments, the segmenter and its
weights, the class-weight file's content, the two generators (network options, parameter key, checkpoint
SHA-256), tiling, the outputs asked for, and each input file's identity (path, size, mtime).

torch is imported only when the work needs it: mode (a), a real segmenter, a torch detector, or torchrun.
Mode (b) with ``segmenter: {type: none}`` and the DeSRA detector runs on numpy and OpenCV alone.

With torchrun, each rank takes every N-th image. Input images are read as documented in :func:`read_sr_image`
(grayscale, RGBA and 16-bit PNGs are accepted; EXIF orientation is applied).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from desra.atomic import atomic_open, commit_files, fsync_dir, remove_stale_temp_files
from desra.config import (NONE, NUMBER, Spec, _typed, build_arg_parser, read_checked_options,
                          check_schema, nonneg_int, nonneg_number, num_gpu, positive_int,
                          report_warnings, run_name)
from desra.data.io import IMG_EXTENSIONS, imencode, imread, png_params
from desra.engine.logger import detach_log_file, get_root_logger
from desra.errors import ConfigError, DataError
from desra.tile_options import DEFAULT_TILE_PAD, tile_size_option
from desra.registry import DETECTOR_REGISTRY, import_user_modules
from desra.utils.fingerprint import RecordedOutputs, file_identity, settings_hash, weights_identity
from desra.utils.images import check_pixel_limit, display_name, image_header
from desra.utils.lazy_torch import is_tensor
from desra.utils.lock import FolderLock
from desra.utils.progress import Progress

logger = logging.getLogger('desra')

#: Bumped when the detector's outputs change for the same settings, so old records are recomputed.
RECORD_VERSION = 3  # 3: seamless tiles (blended windows, tile_pad 40 by default)

#: zlib level of the PNGs ``detect.py`` writes (``output.png_compression``): fast; the pixels never depend on it.
PNG_COMPRESSION_DEFAULT = 1
#: File format of the pictures (``vis/``, ``overlays/``): ``output.picture_format``.
PICTURE_FORMATS = ('jpg', 'png')
PICTURE_FORMAT_DEFAULT = 'jpg'
JPEG_QUALITY = 90


def picture_format(value, path: str) -> str:
    """``output.picture_format``: ``'jpg'`` or ``'png'``."""
    if value not in PICTURE_FORMATS:
        raise ConfigError(f"{path}: expected 'jpg' or 'png', got {value!r}")
    return value


def cv2_jpeg_quality() -> int:
    import cv2

    return cv2.IMWRITE_JPEG_QUALITY


def png_level(value, path: str) -> int:
    """``output.png_compression``: an integer zlib level 0-9."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigError(f'{path}: expected an integer from 0 (no compression, fastest) to 9 (smallest files), '
                          f'got {value!r}')
    return value


MODEL_SPEC = Spec(dict, False, {'network': _typed(True), 'path': Spec(str, True), 'param_key': Spec((str, NONE)),
                                'strict': Spec(bool)})
DETECT_SCHEMA = Spec(dict, True, {
    'name': Spec(str, True, check=run_name),
    'scale': Spec(int, check=positive_int),
    'num_gpu': Spec((int, str), check=num_gpu),
    'import_modules': Spec(list),
    'max_image_pixels': Spec(int, check=nonneg_int),
    'input': Spec(dict, True, {'lr': Spec((str, NONE)), 'mse_sr': Spec((str, NONE)), 'gan_sr': Spec((str, NONE)),
                               'images': Spec((str, NONE))}),
    'mse_model': MODEL_SPEC,
    'gan_model': MODEL_SPEC,
    'tile_size': Spec((int, str), check=tile_size_option), 'tile_pad': Spec(int, check=nonneg_int),
    'batch_size': Spec(int, check=positive_int),
    'segmenter': Spec((dict, NONE), False, {'type': Spec(str, True)}, closed=False),
    'class_weights': Spec((str, list, NONE)),
    'detector': _typed(True, threshold=Spec(NUMBER), min_area=Spec(NUMBER, check=nonneg_number)),
    'output': Spec(dict, False, {'root': Spec(str), 'save_maps': Spec(bool), 'save_overlays': Spec(bool),
                                 'save_sr': Spec(bool), 'html': Spec(bool),
                                 'png_compression': Spec(int, check=png_level),
                                 'picture_format': Spec(str, check=picture_format)}),
    'dist_params': Spec(dict, False, {'backend': Spec((str, NONE)), 'port': Spec(int, check=positive_int)}),
})


# ------------------------------------------------------------------------------------------------ input
def list_images(root: str, key_path: str) -> tuple[dict[str, str], list[str]]:
    """Images under ``root`` (flat, or one sub-folder level), keyed by relative path without extension.

    Returns ``(images, ignored)`` where ``ignored`` lists files that are not images by their extension.
    """
    if not root or not os.path.isdir(root):
        raise DataError(f"{key_path}: folder does not exist: {os.path.abspath(root) if root else root}")
    images, ignored = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != '.' and os.sep in rel_dir:  # the released layout is at most root/<sub>/<img>
            dirnames[:] = []
            continue
        dirnames.sort()
        for fname in sorted(filenames):
            if fname.startswith('.'):
                continue
            rel = fname if rel_dir == '.' else os.path.join(rel_dir, fname)
            stem, ext = os.path.splitext(rel)
            if ext.lower() not in IMG_EXTENSIONS:
                ignored.append(rel)
                continue
            if stem in images:
                raise DataError(f"{key_path}: two images share the name '{display_name(stem)}': "
                                f"{display_name(images[stem])} and {display_name(os.path.join(root, rel))}")
            images[stem] = os.path.join(root, rel)
    if not images:
        raise DataError(f"{key_path}: no images ({', '.join(IMG_EXTENSIONS)}) in {os.path.abspath(root)}")
    return images, ignored


def read_sr_image(path: str) -> np.ndarray:
    """Read an image as H x W x 3 float32 BGR in the uint8 range [0, 255].

    Grayscale is replicated to three channels; the alpha channel of RGBA/BGRA images is dropped (SR models
    and the indicator work on colour only); 16-bit images are scaled by 255 / 65535. EXIF orientation is
    applied and the pixel limit checked, as by every reader of the project (:mod:`desra.utils.images`).
    """
    img = imread(path, flag='unchanged')
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype == np.uint16:
        return img.astype(np.float32) * (255.0 / 65535.0)
    if img.dtype != np.uint8:
        raise DataError(f"{display_name(path)}: unsupported image dtype {img.dtype}; expected 8- or 16-bit")
    return img.astype(np.float32)


def pair_sr_folders(mse_root: str, gan_root: str) -> tuple[list[str], dict, dict]:
    """Pair MSE-SR and GAN-SR images by relative name; a GAN-SR image with no MSE-SR twin is an error."""
    mse, ignored_m = list_images(mse_root, 'input.mse_sr')
    gan, ignored_g = list_images(gan_root, 'input.gan_sr')
    for root, ignored in ((mse_root, ignored_m), (gan_root, ignored_g)):
        if ignored:
            logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), root,
                           ', '.join(display_name(n) for n in ignored[:5]))
    no_twin = sorted(set(gan) - set(mse))
    if no_twin:
        raise DataError(f"input.gan_sr: {len(no_twin)} GAN-SR image(s) have no MSE-SR twin in {mse_root}: "
                        + ', '.join(display_name(gan[n]) for n in no_twin[:5]) + (' ...' if len(no_twin) > 5 else ''))
    extra = sorted(set(mse) - set(gan))
    if extra:
        logger.warning('%d MSE-SR image(s) have no GAN-SR twin and are not used: %s', len(extra),
                       ', '.join(display_name(n) for n in extra[:5]))
    return sorted(gan), mse, gan


# --------------------------------------------------------------------------------------------- preflight
def detector_min_size(det_opt: dict) -> int:
    """Smallest SR image side the detector can process: its window (DeSRA's 11, LDL*'s 7, NIQE's block)."""
    typ = det_opt.get('type')
    if typ == 'desra':
        return int(det_opt.get('window_size', 11))
    if typ == 'ldl_star':
        return int(det_opt.get('kernel_size', 7))
    if typ == 'niqe':
        return int(det_opt.get('window', 96))
    return 1


def _checked_size(path: str) -> tuple[int, int] | None:
    """(height, width) as the readers will see it (after EXIF orientation); DataError above the pixel limit."""
    header = image_header(path)
    check_pixel_limit(header, path)
    return None if header is None else header.display_size


def _too_small(path: str, hw, min_size: int, what: str) -> DataError:
    return DataError(f"{display_name(path)} is {hw[1]}x{hw[0]} (WxH){what}, smaller than the detector's "
                     f"{min_size}x{min_size} window; remove it or use larger images")


def preflight(opt: dict) -> dict:
    """List and check every input image from its header (no decoding, no torch); returns the input plan.

    Checks: the pixel limit, that MSE-SR and GAN-SR twins have the same size, and that the SR images are at
    least the detector's window (:func:`detector_min_size`). Returns ``{'mode', 'names', 'sources'}`` with
    ``sources[name]`` = ``{'lr': path}`` (mode a), ``{'mse_sr': path, 'gan_sr': path}`` (mode b) or
    ``{'gan_sr': path}`` (mode c).
    """
    inp = opt['input']
    ckpt = opt['detector'].get('checkpoint')
    if isinstance(ckpt, str) and not os.path.isfile(ckpt):
        raise DataError(f'detector.checkpoint: file does not exist: {os.path.abspath(ckpt)}')
    min_size = detector_min_size(opt['detector'])
    sources = {}
    if inp.get('lr'):
        lr_images, ignored = list_images(inp['lr'], 'input.lr')
        if ignored:
            logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), inp['lr'],
                           ', '.join(display_name(n) for n in ignored[:5]))
        scale = opt['scale']
        for name in sorted(lr_images):
            hw = _checked_size(lr_images[name])
            if hw is not None and min(hw) * scale < min_size:
                raise _too_small(lr_images[name], hw, min_size, f' (x{scale}: {hw[1] * scale}x{hw[0] * scale})')
            sources[name] = {'lr': lr_images[name]}
        return {'mode': 'lr', 'names': sorted(lr_images), 'sources': sources}
    if inp.get('images'):
        images, ignored = list_images(inp['images'], 'input.images')
        if ignored:
            logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), inp['images'],
                           ', '.join(display_name(n) for n in ignored[:5]))
        for name in sorted(images):
            hw = _checked_size(images[name])
            if hw is not None and min(hw) < min_size:
                raise _too_small(images[name], hw, min_size, '')
            sources[name] = {'gan_sr': images[name]}
        return {'mode': 'images', 'names': sorted(images), 'sources': sources}
    names, mse_paths, gan_paths = pair_sr_folders(inp['mse_sr'], inp['gan_sr'])
    for name in names:
        m_hw, g_hw = _checked_size(mse_paths[name]), _checked_size(gan_paths[name])
        if m_hw is not None and g_hw is not None and m_hw != g_hw:
            raise _pair_size_error(mse_paths[name], m_hw, gan_paths[name], g_hw)
        if g_hw is not None and min(g_hw) < min_size:
            raise _too_small(gan_paths[name], g_hw, min_size, '')
        sources[name] = {'mse_sr': mse_paths[name], 'gan_sr': gan_paths[name]}
    return {'mode': 'sr', 'names': names, 'sources': sources}


def _pair_size_error(mse_path, m_hw, gan_path, g_hw) -> DataError:
    return DataError(f"MSE-SR {display_name(mse_path)} is {m_hw[1]}x{m_hw[0]} but GAN-SR {display_name(gan_path)} "
                     f"is {g_hw[1]}x{g_hw[0]} (WxH); the pair must match")


# ------------------------------------------------------------------------------------------------ output
def overlay_mask(gan_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The mask in red over the GAN-SR image (uint8 BGR), with the region outlines drawn solid."""
    import cv2

    img = np.clip(gan_bgr, 0, 255).astype(np.uint8)
    out = img.copy()
    sel = mask > 0
    red = np.array([0, 0, 255], np.float32)
    out[sel] = (img[sel].astype(np.float32) * (1 - alpha) + red * alpha).round().astype(np.uint8)
    contours, _ = cv2.findContours(sel.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 0, 255), 1)
    return out


def map_to_color(score: np.ndarray, artifact_low: bool) -> np.ndarray:
    """A colour picture of a score map: red where the detector sees artifacts (low D, or high baseline score)."""
    import cv2

    s = np.asarray(score, np.float64)
    if artifact_low:
        v = 1.0 - np.clip(s, 0, 1)
    else:
        lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
        v = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    return cv2.applyColorMap((v * 255).round().astype(np.uint8), cv2.COLORMAP_JET)


def probability_to_color(prob: np.ndarray) -> np.ndarray:
    """A colour picture of a probability map on a fixed scale: blue 0, red 1 (JET)."""
    import cv2

    v = np.clip(np.nan_to_num(np.asarray(prob, np.float64)), 0, 1)
    return cv2.applyColorMap((v * 255).round().astype(np.uint8), cv2.COLORMAP_JET)


class DetectionWriter(RecordedOutputs):
    """Writes one image's outputs under ``root`` as one durable commit, record last; knows what a record must match.

    ``png_compression``: the zlib level (0-9) of every PNG written; it changes file sizes, never pixels, so it is
    stored in the record (``png_compression``) but not in the fingerprint. ``picture_format``: ``jpg`` or ``png``
    for ``vis/`` and ``overlays/`` (part of the settings: other files).
    """

    #: Outputs an earlier run with other output settings may have left (removed when this run does not write them).
    OPTIONAL = (('MSE-SR', '.png'), ('GAN-SR', '.png'), ('maps/D', '.npy'), ('maps/S', '.npy'), ('maps/P', '.npy'),
                ('labels', '.png'), ('overlays', '.png'), ('overlays', '.jpg'), ('vis/D', '.png'), ('vis/D', '.jpg'),
                ('vis/P', '.png'), ('vis/P', '.jpg'))

    def __init__(self, root: str, save_maps: bool, save_overlays: bool, save_sr: bool, settings: dict | None = None,
                 png_compression: int = PNG_COMPRESSION_DEFAULT, picture_format_: str = PICTURE_FORMAT_DEFAULT):
        super().__init__(root, settings)
        self.save_maps, self.save_overlays, self.save_sr = save_maps, save_overlays, save_sr
        self.png_compression = png_level(png_compression, 'output.png_compression')
        self._png = png_params(self.png_compression)
        self.picture_ext = '.' + picture_format(picture_format_, 'output.picture_format')
        self._picture = self._png if self.picture_ext == '.png' else [cv2_jpeg_quality(), JPEG_QUALITY]

    def reason_to_compute(self, name: str, inputs: dict) -> str | None:
        """None when ``name``'s record matches the settings and inputs and its files exist; else why not."""
        rec = self.read_record(name)
        needed = []
        if rec is not None:
            needed = [rec.get('mask'), rec.get('d_map'), rec.get('overlay') if self.save_overlays else None]
            if self.save_sr:
                needed += [rec.get('gan_sr')] + ([rec.get('mse_sr')] if 'mse_sr' in inputs else [])
        return self.stale_reason(rec, inputs, needed)

    def write(self, name: str, mask: np.ndarray, maps: dict, mse: np.ndarray, gan: np.ndarray, sources: dict,
              artifact_low: bool) -> dict:
        """``sources``: paths of the ``lr`` / ``mse_sr`` / ``gan_sr`` inputs (None where there is no file).

        Every file is encoded in memory first; then :func:`~desra.atomic.commit_files` writes them all with one
        fsync pass and one fsync per folder, and the record only after them.
        """
        import cv2

        rec_path = self.path('records', name, '.json')
        if os.path.exists(rec_path):
            # an interrupted recompute must not leave the old record over new files: the removal is made
            # durable before any new file can be
            os.remove(rec_path)
            fsync_dir(os.path.dirname(rec_path))
        files, written = [], set()

        def png(kind: str, img: np.ndarray) -> None:
            path = self.path(kind, name)
            files.append((path, imencode(img, path, self._png)))
            written.add(path)

        def picture(kind: str, img: np.ndarray) -> str:
            path = self.path(kind, name, self.picture_ext)
            files.append((path, imencode(img, path, self._picture)))
            written.add(path)
            return path

        if self.save_sr:
            if mse is not None:
                png('MSE-SR', np.clip(mse, 0, 255).round().astype(np.uint8))
            png('GAN-SR', np.clip(gan, 0, 255).round().astype(np.uint8))
        map_key = 'D' if maps.get('D') is not None else 'P'
        if self.save_maps:
            for key in ('D', 'S', 'P'):
                if maps.get(key) is not None:
                    buf = io.BytesIO()
                    np.save(buf, np.asarray(maps[key], np.float32))
                    files.append((self.path(f'maps/{key}', name, '.npy'), buf.getbuffer()))
                    written.add(self.path(f'maps/{key}', name, '.npy'))
            if maps.get('labels') is not None:
                png('labels', np.asarray(maps['labels']).astype(np.uint8))
        vis_path = picture(f'vis/{map_key}', map_to_color(maps['D'], artifact_low) if map_key == 'D'
                           else probability_to_color(maps['P']))
        overlay_path = picture('overlays', overlay_mask(gan, mask)) if self.save_overlays else None
        png('masks', mask)
        for kind, ext in self.OPTIONAL:  # outputs of an earlier run with other output settings
            stale = self.path(kind, name, ext)
            if stale not in written and os.path.isfile(stale):
                os.remove(stale)
        n_regions = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
        inputs = {k: file_identity(v) for k, v in sources.items() if v}
        record = {'name': name, 'height': int(mask.shape[0]), 'width': int(mask.shape[1]),
                  'artifact_pixels': int((mask > 0).sum()), 'artifact_fraction': float((mask > 0).mean()),
                  'regions': int(n_regions), 'lr': sources.get('lr'),
                  'mse_sr': (self.path('MSE-SR', name) if self.save_sr and mse is not None else sources.get('mse_sr')),
                  'gan_sr': self.path('GAN-SR', name) if self.save_sr else sources.get('gan_sr'),
                  'mask': self.path('masks', name), 'd_map': vis_path, 'map': map_key, 'overlay': overlay_path,
                  'png_compression': self.png_compression,
                  'fingerprint': {'settings': self.settings_fp, 'inputs': settings_hash(inputs)},
                  'settings': self.settings, 'inputs': inputs}
        commit_files(files, last=(rec_path, json.dumps(record).encode('utf-8', 'surrogateescape')))
        return record


# ------------------------------------------------------------------------------------------------ options
DETECT_DESCRIPTION = 'Detect GAN-SR artifacts (DeSRA).'


def parse_detect_options(argv=None, args=None) -> dict:
    """Options of ``detect.py``, checked, with every input image's header (``args``: already parsed ``argv``)."""
    if args is None:
        args = build_arg_parser(DETECT_DESCRIPTION, is_train=False).parse_args(argv)
    get_root_logger(None, int(os.environ.get('RANK', '0') or 0))
    warnings: list[str] = []
    opt = read_checked_options(args.opt, args.force_yml, validate_detect_options, warnings)
    report_warnings(warnings)
    opt['_plan'] = preflight(opt)  # every input checked before torch is imported
    rank, world = 0, 1
    if args.launcher != 'none':
        from desra.engine import dist as dist_utils

        rank, world = dist_utils.init_dist(args.launcher, opt.get('dist_params') or {})
    opt['rank'], opt['world_size'] = rank, world
    return opt


def validate_detect_options(opt: dict, warnings: list | None = None) -> None:
    check_schema(opt, DETECT_SCHEMA, '', warnings)
    import desra.detection.detectors  # noqa: F401  (torch-free: registers the detectors)

    import_user_modules(opt.get('import_modules'))
    inp = opt['input']
    modes = [m for m, on in (('lr', inp.get('lr')), ('sr', inp.get('mse_sr') or inp.get('gan_sr')),
                             ('images', inp.get('images'))) if on]
    if len(modes) != 1:
        raise ConfigError('input: set one of input.lr (run the generators), input.mse_sr + input.gan_sr (existing SR '
                          'folders) or input.images (restored images alone, for detector.type: localizer)')
    det_cls = DETECTOR_REGISTRY.get(opt['detector'].get('type'), 'detector.type')
    needs_mse = getattr(det_cls, 'needs_mse', True)
    if modes[0] == 'sr' and not (inp.get('mse_sr') and inp.get('gan_sr')):
        missing = 'mse_sr' if not inp.get('mse_sr') else 'gan_sr'
        raise ConfigError(f'input.{missing}: missing; mode (b) needs both input.mse_sr and input.gan_sr')
    if modes[0] == 'images' and needs_mse:
        raise ConfigError(f"input.images: detector.type {opt['detector']['type']} compares MSE-SR with GAN-SR; "
                          'give input.mse_sr + input.gan_sr, or use detector.type: localizer')
    if modes[0] == 'lr':
        for key in ('mse_model', 'gan_model') if needs_mse else ('gan_model',):
            if key not in opt:
                raise ConfigError(f'{key}: missing required key for input.lr (network + path of the generator)')
        if 'scale' not in opt:
            raise ConfigError('scale: missing required key for input.lr (the generators\' upscaling factor)')
    if needs_mse:
        DETECTOR_REGISTRY.build(dict(opt['detector']), 'detector')  # type and arguments, before any input is read
    else:
        _check_signature(opt['detector'])  # building it would load its network: only the arguments here


def _check_signature(det_opt: dict) -> None:
    """The detector's arguments are known keys (for detectors whose construction loads a network)."""
    import inspect

    from desra.config import unknown_key_error

    cls = DETECTOR_REGISTRY.get(det_opt['type'], 'detector.type')
    params = inspect.signature(cls).parameters
    for key in det_opt:
        if key != 'type' and key not in params:
            raise unknown_key_error('detector', key, {k: None for k in params})
    for key in ('network', 'checkpoint'):
        if key in params and params[key].default is None and not det_opt.get(key):
            raise ConfigError(f'detector.{key}: missing required key for detector.type {det_opt["type"]}')


def output_root(opt: dict) -> str:
    return (opt.get('output') or {}).get('root') or os.path.join('results', opt['name'])


# ------------------------------------------------------------------------------------------------ fingerprint
def _model_identity(model_opt: dict) -> dict:
    return {'network': model_opt['network'], 'param_key': model_opt.get('param_key', 'params_ema'),
            'strict': model_opt.get('strict', True), 'weights': weights_identity(model_opt['path'])}


def detection_settings(opt: dict, mode: str, uses_semantics: bool) -> dict:
    """Everything besides the input files that decides a record's outputs (hashed into its fingerprint)."""
    out_opt = opt.get('output') or {}
    settings = {'version': RECORD_VERSION, 'mode': mode, 'detector': dict(opt['detector']),
                'outputs': {'save_sr': out_opt.get('save_sr', mode == 'lr'),
                            'save_maps': out_opt.get('save_maps', False),
                            'save_overlays': out_opt.get('save_overlays', True),
                            'picture_format': out_opt.get('picture_format', PICTURE_FORMAT_DEFAULT)}}
    if mode == 'lr':
        settings.update(scale=opt['scale'], tile_size=opt.get('tile_size', 0),
                        tile_pad=opt.get('tile_pad', DEFAULT_TILE_PAD), gan_model=_model_identity(opt['gan_model']))
        if opt.get('mse_model'):
            settings['mse_model'] = _model_identity(opt['mse_model'])
    ckpt = opt['detector'].get('checkpoint')
    if isinstance(ckpt, str) and os.path.isfile(ckpt):
        settings['detector']['checkpoint'] = weights_identity(ckpt)  # a retrained localiser counts by content
    if uses_semantics:
        seg = opt.get('segmenter')
        seg = dict(seg) if isinstance(seg, dict) else {'type': 'none'}
        if isinstance(seg.get('model'), str) and os.path.exists(seg['model']):
            seg['model'] = weights_identity(seg['model'])  # a local folder counts by its content, not its path
        settings['segmenter'] = seg
        cw = opt.get('class_weights')
        settings['class_weights'] = weights_identity(cw) if isinstance(cw, str) and os.path.isfile(cw) else cw
    return settings


# ------------------------------------------------------------------------------------------------ pipeline
def _load_generator(model_opt: dict, key: str, device, scale: int | None = None):
    from desra.models.base_model import build_network, check_network_scale, load_pretrained

    net = build_network(model_opt['network'], f'{key}.network').to(device).eval()
    if scale is not None:
        check_network_scale(net, scale, f'{key}.network')
    load_pretrained(net, model_opt['path'], model_opt.get('param_key', 'params_ema'), model_opt.get('strict', True),
                    f'{key}.path')
    return net


def _lr_batches(names: list[str], paths: dict, batch_size: int):
    """Read each LR image once and group consecutive same-size images, at most ``batch_size`` at a time."""
    batch, imgs = [], []
    for name in names:
        img = read_sr_image(paths[name])
        if batch and (len(batch) == batch_size or img.shape != imgs[0].shape):
            yield batch, imgs
            batch, imgs = [], []
        batch.append(name)
        imgs.append(img)
    if batch:
        yield batch, imgs


def _summarise_reasons(reasons: dict[str, str]) -> str:
    counts = Counter(reasons.values())
    return '; '.join(f'{n} {why}' for why, n in counts.most_common())


def _plain_none_segmenter(seg_opt) -> bool:
    """``segmenter`` is absent, null or ``{type: none}``: no labels, so no segmenter (and no torch) is needed."""
    return seg_opt is None or (isinstance(seg_opt, dict) and seg_opt.get('type') == 'none'
                               and set(seg_opt) <= {'type', 'device'})


class _Timer:
    """Seconds the per-image loop spends per stage, for the closing ``Timing:`` log line.

    ``read`` and ``write`` are the waits for the reading and writing threads (the time they did not hide behind
    the detection); ``generate`` is mode (a)'s LR reading and generators.
    """

    def __init__(self):
        self.total = {}
        self.start = time.perf_counter()

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.total[stage] = self.total.get(stage, 0.0) + now - t0
        return now

    def line(self, n: int) -> str:
        wall = time.perf_counter() - self.start
        per = ', '.join(f'{k} {v / n * 1000:.1f}' for k, v in self.total.items())
        return f'Timing: {n} image(s) in {wall:.2f} s, {wall / n * 1000:.1f} ms per image (waits and work: {per} ms)'


def _read_inputs(src: dict) -> tuple:
    mse = read_sr_image(src['mse_sr']) if src.get('mse_sr') else None
    gan = read_sr_image(src['gan_sr'])
    if mse is not None and mse.shape != gan.shape:  # headers Pillow could not read are checked here
        raise _pair_size_error(src['mse_sr'], mse.shape[:2], src['gan_sr'], gan.shape[:2])
    return mse, gan


def _prefetched(names: list[str], sources: dict):
    """``(name, (mse, gan))`` in order; the next pair is decoded in a thread while the caller works on this one.

    A read error is raised when its image's turn comes, as without the prefetch.
    """
    if not names:
        return
    with ThreadPoolExecutor(1, thread_name_prefix='desra-read') as ex:
        nxt = ex.submit(_read_inputs, sources[names[0]])
        for i, name in enumerate(names):
            pair = nxt.result()
            nxt = ex.submit(_read_inputs, sources[names[i + 1]]) if i + 1 < len(names) else None
            yield name, pair


def detect_pipeline(opt: dict) -> dict:
    """Run detection as the options say; returns ``{'processed', 'skipped', 'records', 'root', 'reasons'}``."""
    import desra.detection.detectors  # noqa: F401  (registers the detectors)

    rank, world = opt.get('rank', 0), opt.get('world_size', 1)
    get_root_logger(None, rank)
    import_user_modules(opt.get('import_modules'))
    plan = opt.get('_plan') or preflight(opt)
    root = output_root(opt)
    out_opt = opt.get('output') or {}
    mode_a = plan['mode'] == 'lr'
    names, sources = plan['names'], plan['sources']
    if world > 1:
        from desra.engine import dist as dist_utils

        on_rank0, barrier = dist_utils.call_on_rank0, dist_utils.barrier
    else:  # one process: no torch.distributed (nor torch) needed
        def on_rank0(fn):
            return fn()

        def barrier():
            return None

    # ---- everything that can fail on user input, before the output root is touched
    det_opt = dict(opt['detector'])
    detector = DETECTOR_REGISTRY.build(det_opt, 'detector')
    if getattr(detector, 'needs_mse', True) and (plan['mode'] == 'images' or (mode_a and not opt.get('mse_model'))):
        raise ConfigError('detector: this localiser was trained with MSE-SR channels (in_channels 6); give '
                          'input.mse_sr + input.gan_sr, or mse_model with input.lr')
    artifact_low = det_opt['type'] == 'desra'
    uses_semantics = getattr(detector, 'uses_semantics', False)
    needs_segmenter = uses_semantics and not _plain_none_segmenter(opt.get('segmenter'))
    device = None
    if mode_a or needs_segmenter:
        from desra.engine import dist as dist_utils

        device = dist_utils.get_device(opt.get('num_gpu', 'auto'))
    segmenter, class_weights = None, None
    if needs_segmenter:
        from desra.detection.segmenters import build_segmenter

        segmenter = build_segmenter(opt.get('segmenter'), device, key_path='segmenter')
        if _is_none_segmenter(segmenter):
            segmenter = None
    if uses_semantics:
        if opt.get('class_weights') is not None:
            from desra.detection.semantics import load_class_weights

            class_weights = load_class_weights(opt['class_weights'])
        elif segmenter is not None:
            logger.warning('class_weights is not set: every class gets weight 1')
    if mode_a:
        mse_net = _load_generator(opt['mse_model'], 'mse_model', device, opt['scale']) if opt.get('mse_model') \
            else None
        gan_net = _load_generator(opt['gan_model'], 'gan_model', device, opt['scale'])
    settings = detection_settings(opt, plan['mode'], uses_semantics)
    writer = DetectionWriter(root, out_opt.get('save_maps', False), out_opt.get('save_overlays', True),
                             out_opt.get('save_sr', mode_a), settings,
                             out_opt.get('png_compression', PNG_COMPRESSION_DEFAULT),
                             out_opt.get('picture_format', PICTURE_FORMAT_DEFAULT))

    lock = FolderLock(root, 'detection output root')
    on_rank0(lock.acquire)
    log_file = os.path.join(root, f"detect_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    out = None
    try:
        if rank == 0:
            get_root_logger(log_file, rank)
            removed = remove_stale_temp_files(root)
            if removed:
                logger.info('Removed %d temporary file(s) left by an interrupted run in %s', len(removed), root)
        barrier()

        mine = names[rank::world]
        reasons = {}
        for n in mine:
            why = writer.reason_to_compute(n, {k: file_identity(v) for k, v in sources[n].items()})
            if why is not None:
                reasons[n] = why
        todo = [n for n in mine if n in reasons]
        skipped = len(mine) - len(todo)
        if todo:
            logger.info('Computing %d of %d image(s) in %s (%s)%s', len(todo), len(mine), root,
                        _summarise_reasons(reasons), f'; {skipped} unchanged, skipped' if skipped else '')
        elif skipped:
            logger.info('All %d image(s) are up to date in %s (same settings and inputs): skipped', skipped, root)

        progress = Progress(len(todo), 'detect', unit='img', enabled=rank == 0)
        timer = _Timer()
        out = _WriteBehind(writer, timer, progress)
        if mode_a:
            import torch

            from desra.inference import tiled_forward

            lr_paths = {n: sources[n]['lr'] for n in todo}
            t0 = time.perf_counter()
            for batch, lrs in _lr_batches(todo, lr_paths, opt.get('batch_size', 1)):
                lq = torch.from_numpy(np.stack([lr[..., ::-1] for lr in lrs]).copy()).permute(0, 3, 1, 2) / 255.0
                srs = [None]
                for net in (mse_net, gan_net):
                    if net is None:
                        continue
                    sr = tiled_forward(net, lq.to(device), opt['scale'], tile_size=opt.get('tile_size', 0),
                                       tile_pad=opt.get('tile_pad', DEFAULT_TILE_PAD),
                                       mod_pad=getattr(net, 'mod_pad', 1))
                    # rounded to uint8 as saved SR images are, so mode (a) and mode (b) see the same numbers
                    srs.append((sr.float().clamp(0, 1) * 255).round().permute(0, 2, 3, 1).cpu().numpy()[..., ::-1])
                mse_srs, gan_srs = (srs[1], srs[2]) if mse_net is not None else ([None] * len(batch), srs[1])
                t0 = timer.add('generate', t0)
                labels = _segment(segmenter, list(gan_srs), device)
                for i, name in enumerate(batch):
                    mask, maps = _detect_one(mse_srs[i], gan_srs[i], labels[i], detector, class_weights)
                    t0 = timer.add('detect', t0)
                    out.submit(name, mask, maps, mse_srs[i], gan_srs[i], sources[name], artifact_low)
                    t0 = time.perf_counter()
        else:
            t0 = time.perf_counter()
            for name, (mse, gan) in _prefetched(todo, sources):
                t0 = timer.add('read', t0)
                labels = _segment(segmenter, [gan], device)[0]
                mask, maps = _detect_one(mse, gan, labels, detector, class_weights)
                timer.add('detect', t0)
                out.submit(name, mask, maps, mse, gan, sources[name], artifact_low)
                t0 = time.perf_counter()
        records = out.finish()
        progress.close()
        if todo:
            logger.info(timer.line(len(todo)))
        barrier()
        if rank == 0:
            all_records = [r for r in (writer.read_record(n) for n in names) if r is not None]
            write_summary(root, all_records)
            if out_opt.get('html', True):
                from desra.detection.gallery import write_gallery

                columns, intro = None, None
                if det_opt['type'] == 'localizer':
                    from desra.detection.gallery import DETECTION_COLUMNS

                    columns = [(('P: artifact probability (red = 1)' if k == 'd_map' else t), k)
                               for t, k in DETECTION_COLUMNS]
                    if not writer.save_overlays:
                        columns[-1] = ('mask', 'mask')
                    flagged = sum(1 for r in all_records if r['artifact_pixels'] > 0)
                    intro = (f'{len(all_records)} image(s); {flagged} with artifacts. Sorted by artifact area. P: the '
                             f'localiser\'s artifact probability (blue 0, red 1), thresholded at '
                             f'{detector.threshold:g}.')
                html = write_gallery(root, all_records, title=f"{opt['name']}: {det_opt['type']} detections",
                                     overlays=writer.save_overlays, columns=columns, intro=intro)
                logger.info('Gallery: %s', html)
            logger.info('%d image(s) processed, %d skipped; results in %s', len(todo), skipped, root)
        barrier()
    finally:
        if out is not None:
            out.abandon()  # a write still in flight ends before the lock is released
        detach_log_file(log_file)
        lock.release()
    return {'processed': len(todo), 'skipped': skipped, 'records': records, 'root': root, 'reasons': reasons}


def _is_none_segmenter(segmenter) -> bool:
    return type(segmenter).__name__ == 'NoSegmenter'


def _segment(segmenter, gans: list[np.ndarray], device) -> list:
    """Label maps of GAN-SR images (H x W x 3 BGR, uint8 range), one segmenter call for the whole batch."""
    if segmenter is None:
        return [None] * len(gans)
    import torch

    rgb = torch.from_numpy(np.stack([g[..., ::-1] for g in gans]) / 255.0).permute(0, 3, 1, 2).float()
    out = segmenter(rgb.to(device))
    if out is None:
        return [None] * len(gans)
    return [np.asarray(o.cpu().numpy() if torch.is_tensor(o) else o) for o in out]


def _detect_one(mse, gan, labels, detector, class_weights) -> tuple[np.ndarray, dict]:
    """The detector's uint8 mask and its maps as numpy arrays (``labels`` added when there are any)."""
    mask, maps = detector(mse, gan, labels=labels, class_weights=class_weights)
    mask = np.asarray(mask, np.uint8)
    maps = {k: (v.cpu().numpy() if is_tensor(v) else v) for k, v in (maps or {}).items()}
    if maps.get('D') is not None:
        maps['D'] = np.squeeze(maps['D'])
    if maps.get('S') is not None:
        maps['S'] = np.squeeze(maps['S'])
    if labels is not None:
        maps['labels'] = labels
    return mask, maps


class _WriteBehind:
    """Writes image i (encoding, the durable commit) in a thread while image i + 1 is computed.

    At most one write is in flight; it is waited for before the next is submitted, so a write error stops the
    run at the next image with the same one-line message. Each image is still its own commit, record last.
    """

    def __init__(self, writer: DetectionWriter, timer: _Timer, progress: Progress):
        self.writer, self.timer, self.progress = writer, timer, progress
        self.pool = ThreadPoolExecutor(1, thread_name_prefix='desra-write')
        self.pending = None
        self.records = []

    def submit(self, *args) -> None:
        self.wait()
        self.pending = self.pool.submit(self.writer.write, *args)

    def wait(self) -> None:
        if self.pending is None:
            return
        t0 = time.perf_counter()
        try:
            self.records.append(self.pending.result())
        finally:
            self.pending = None
            self.timer.add('write', t0)
        self.progress.update(1)

    def finish(self) -> list[dict]:
        self.wait()
        self.pool.shutdown()
        return self.records

    def abandon(self) -> None:
        """After an error elsewhere: let a write in flight end (its own error, if any, is not raised)."""
        self.pool.shutdown(wait=True)


SUMMARY_COLUMNS = ('name', 'height', 'width', 'artifact_pixels', 'artifact_fraction', 'regions')


def write_summary(root: str, records: list[dict]) -> None:
    """``summary.csv`` (RFC 4180 quoting; names not valid UTF-8 are shown with ``\\xNN`` escapes)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(SUMMARY_COLUMNS)
    for r in records:
        w.writerow([display_name(r['name']), r['height'], r['width'], r['artifact_pixels'],
                    f"{r['artifact_fraction']:.6f}", r['regions']])
    with atomic_open(os.path.join(root, 'summary.csv'), 'w') as f:
        f.write(buf.getvalue())
