"""``detect.py``: find the artifacts of a GAN-SR model on real images (DeSRA Sec. 3.1-3.2) and write them out.

Two input modes:

(a) ``input.lr``: a folder of real LR images; the MSE-SR and GAN-SR generators (``mse_model``, ``gan_model``,
    any registered arch, official checkpoint formats) are run on them, tiled so memory stays bounded.
(b) ``input.mse_sr`` + ``input.gan_sr``: folders of SR results that already exist (flat, or the released
    two-level ``root/<sub>/<img>`` layout), paired by relative path.

For each image: SR pair -> (segmenter labels) -> detector -> mask (+ maps) -> files. Per image, every file is
written atomically and a small JSON record is written last; an image whose record exists is skipped on the
next run, so an interrupted run resumes where it stopped. With torchrun, each rank takes every N-th image.

Input images are read as documented in :func:`read_sr_image` (grayscale, RGBA and 16-bit PNGs are accepted).
"""
from __future__ import annotations

import json
import logging
import os
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

from desra.atomic import atomic_open
from desra.config import NUMBER, Spec, apply_force_yml, build_arg_parser, check_schema, load_yaml_file
from desra.data.io import IMG_EXTENSIONS, imread, imwrite_atomic
from desra.engine import dist as dist_utils
from desra.engine.logger import get_root_logger
from desra.errors import ConfigError, DataError
from desra.registry import DETECTOR_REGISTRY, import_user_modules

logger = logging.getLogger('desra')

_MODEL = Spec(dict, False, {'network': Spec(dict, True, {'type': Spec(str, True)}), 'path': Spec(str, True),
                            'param_key': Spec((str, type(None))), 'strict': Spec(bool)})
DETECT_SCHEMA = Spec(dict, True, {
    'name': Spec(str, True),
    'scale': Spec(int),
    'num_gpu': Spec((int, str)),
    'import_modules': Spec(list),
    'input': Spec(dict, True, {'lr': Spec((str, type(None))), 'mse_sr': Spec((str, type(None))),
                               'gan_sr': Spec((str, type(None)))}),
    'mse_model': _MODEL,
    'gan_model': _MODEL,
    'tile_size': Spec(int), 'tile_pad': Spec(int), 'batch_size': Spec(int),
    'segmenter': Spec((dict, type(None)), False, {'type': Spec(str, True)}),
    'class_weights': Spec((str, list, type(None))),
    'detector': Spec(dict, True, {'type': Spec(str, True), 'threshold': Spec(NUMBER),
                                  'min_area': Spec(NUMBER)}),
    'output': Spec(dict, False, {'root': Spec(str), 'save_maps': Spec(bool), 'save_overlays': Spec(bool),
                                 'save_sr': Spec(bool), 'html': Spec(bool)}),
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
                raise DataError(f"{key_path}: two images share the name '{stem}': {images[stem]} and "
                                f"{os.path.join(root, rel)}")
            images[stem] = os.path.join(root, rel)
    if not images:
        raise DataError(f"{key_path}: no images ({', '.join(IMG_EXTENSIONS)}) in {os.path.abspath(root)}")
    return images, ignored


def read_sr_image(path: str) -> np.ndarray:
    """Read an image as H x W x 3 float32 BGR in the uint8 range [0, 255].

    Grayscale is replicated to three channels; the alpha channel of RGBA/BGRA images is dropped (SR models
    and the indicator work on colour only); 16-bit images are scaled by 255 / 65535.
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
        raise DataError(f"{path}: unsupported image dtype {img.dtype}; expected 8- or 16-bit")
    return img.astype(np.float32)


def pair_sr_folders(mse_root: str, gan_root: str) -> tuple[list[str], dict, dict]:
    """Pair MSE-SR and GAN-SR images by relative name; a GAN-SR image with no MSE-SR twin is an error."""
    mse, ignored_m = list_images(mse_root, 'input.mse_sr')
    gan, ignored_g = list_images(gan_root, 'input.gan_sr')
    for root, ignored in ((mse_root, ignored_m), (gan_root, ignored_g)):
        if ignored:
            logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), root, ', '.join(ignored[:5]))
    no_twin = sorted(set(gan) - set(mse))
    if no_twin:
        raise DataError(f"input.gan_sr: {len(no_twin)} GAN-SR image(s) have no MSE-SR twin in {mse_root}: "
                        + ', '.join(gan[n] for n in no_twin[:5]) + (' ...' if len(no_twin) > 5 else ''))
    extra = sorted(set(mse) - set(gan))
    if extra:
        logger.warning('%d MSE-SR image(s) have no GAN-SR twin and are not used: %s', len(extra),
                       ', '.join(extra[:5]))
    return sorted(gan), mse, gan


# ------------------------------------------------------------------------------------------------ output
def overlay_mask(gan_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The mask in red over the GAN-SR image (uint8 BGR), with the region outlines drawn solid."""
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
    s = np.asarray(score, np.float64)
    if artifact_low:
        v = 1.0 - np.clip(s, 0, 1)
    else:
        lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
        v = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    return cv2.applyColorMap((v * 255).round().astype(np.uint8), cv2.COLORMAP_JET)


class DetectionWriter:
    """Writes one image's outputs under ``root`` (atomically), record last."""

    def __init__(self, root: str, save_maps: bool, save_overlays: bool, save_sr: bool):
        self.root, self.save_maps, self.save_overlays, self.save_sr = root, save_maps, save_overlays, save_sr

    def path(self, kind: str, name: str, ext: str = '.png') -> str:
        return os.path.join(self.root, kind, name + ext)

    def is_done(self, name: str) -> bool:
        return os.path.isfile(self.path('records', name, '.json')) and os.path.isfile(self.path('masks', name))

    def write(self, name: str, mask: np.ndarray, maps: dict, mse: np.ndarray, gan: np.ndarray, sources: dict,
              artifact_low: bool) -> dict:
        """``sources``: paths of the ``lr`` / ``mse_sr`` / ``gan_sr`` inputs (None where there is no file)."""
        if self.save_sr:
            imwrite_atomic(np.clip(mse, 0, 255).round().astype(np.uint8), self.path('MSE-SR', name))
            imwrite_atomic(np.clip(gan, 0, 255).round().astype(np.uint8), self.path('GAN-SR', name))
        if self.save_maps:
            for key in ('D', 'S'):
                if maps.get(key) is not None:
                    with atomic_open(self.path(f'maps/{key}', name, '.npy')) as f:
                        np.save(f, np.asarray(maps[key], np.float32))
            if maps.get('labels') is not None:
                imwrite_atomic(np.asarray(maps['labels']).astype(np.uint8), self.path('labels', name))
        imwrite_atomic(map_to_color(maps['D'], artifact_low), self.path('vis/D', name))
        if self.save_overlays:
            imwrite_atomic(overlay_mask(gan, mask), self.path('overlays', name))
        imwrite_atomic(mask, self.path('masks', name))
        n_regions = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
        record = {'name': name, 'height': int(mask.shape[0]), 'width': int(mask.shape[1]),
                  'artifact_pixels': int((mask > 0).sum()), 'artifact_fraction': float((mask > 0).mean()),
                  'regions': int(n_regions), 'lr': sources.get('lr'),
                  'mse_sr': self.path('MSE-SR', name) if self.save_sr else sources.get('mse_sr'),
                  'gan_sr': self.path('GAN-SR', name) if self.save_sr else sources.get('gan_sr'),
                  'mask': self.path('masks', name), 'd_map': self.path('vis/D', name),
                  'overlay': self.path('overlays', name) if self.save_overlays else None}
        with atomic_open(self.path('records', name, '.json'), 'w') as f:
            json.dump(record, f)
        return record


# ------------------------------------------------------------------------------------------------ options
def parse_detect_options(argv=None) -> dict:
    args = build_arg_parser('Detect GAN-SR artifacts (DeSRA).', is_train=False).parse_args(argv)
    opt = load_yaml_file(args.opt)
    apply_force_yml(opt, args.force_yml)
    validate_detect_options(opt)
    rank, world = dist_utils.init_dist(args.launcher, opt.get('dist_params') or {})
    opt['rank'], opt['world_size'] = rank, world
    return opt


def validate_detect_options(opt: dict) -> None:
    check_schema(opt, DETECT_SCHEMA, '')
    inp = opt['input']
    mode_a, mode_b = bool(inp.get('lr')), bool(inp.get('mse_sr') or inp.get('gan_sr'))
    if mode_a == mode_b:
        raise ConfigError('input: set either input.lr (run the MSE-SR and GAN-SR models) or both input.mse_sr '
                          'and input.gan_sr (existing SR folders), not both and not neither')
    if mode_b and not (inp.get('mse_sr') and inp.get('gan_sr')):
        missing = 'mse_sr' if not inp.get('mse_sr') else 'gan_sr'
        raise ConfigError(f'input.{missing}: missing; mode (b) needs both input.mse_sr and input.gan_sr')
    if mode_a:
        for key in ('mse_model', 'gan_model'):
            if key not in opt:
                raise ConfigError(f'{key}: missing required key for input.lr (network + path of the generator)')
        if 'scale' not in opt:
            raise ConfigError('scale: missing required key for input.lr (the generators\' upscaling factor)')


# ------------------------------------------------------------------------------------------------ pipeline
def _load_generator(model_opt: dict, key: str, device):
    from desra.models.base_model import build_network, load_pretrained

    net = build_network(model_opt['network'], f'{key}.network').to(device).eval()
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


def detect_pipeline(opt: dict) -> dict:
    """Run detection as the options say; returns ``{'processed', 'skipped', 'records', 'root'}``."""
    import desra.detection.detectors  # noqa: F401  (registers the detectors)
    from desra.detection.segmenters import build_segmenter
    from desra.detection.semantics import load_class_weights
    from desra.inference import tiled_forward

    rank, world = opt.get('rank', 0), opt.get('world_size', 1)
    import_user_modules(opt.get('import_modules'))
    out_opt = opt.get('output') or {}
    root = out_opt.get('root') or os.path.join('results', opt['name'])
    get_root_logger(os.path.join(root, f"detect_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log"), rank)
    device = dist_utils.get_device(opt.get('num_gpu', 'auto'))
    inp = opt['input']
    mode_a = bool(inp.get('lr'))

    det_opt = dict(opt['detector'])
    detector = DETECTOR_REGISTRY.build(det_opt, 'detector')
    artifact_low = det_opt['type'] == 'desra'
    segmenter, class_weights = None, None
    if getattr(detector, 'uses_semantics', False):
        segmenter = build_segmenter(opt.get('segmenter'), device, key_path='segmenter')
        if opt.get('class_weights') is not None:
            class_weights = load_class_weights(opt['class_weights'])
        elif segmenter is not None and not _is_none_segmenter(segmenter):
            logger.warning('class_weights is not set: every class gets weight 1')

    if mode_a:
        lr_images, ignored = list_images(inp['lr'], 'input.lr')
        if ignored:
            logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), inp['lr'], ', '.join(ignored[:5]))
        names = sorted(lr_images)
    else:
        names, mse_paths, gan_paths = pair_sr_folders(inp['mse_sr'], inp['gan_sr'])
    writer = DetectionWriter(root, out_opt.get('save_maps', False), out_opt.get('save_overlays', True),
                             out_opt.get('save_sr', mode_a))
    mine = names[rank::world]
    todo = [n for n in mine if not writer.is_done(n)]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info('Skipping %d image(s) already done in %s', skipped, root)

    if mode_a and todo:
        mse_net = _load_generator(opt['mse_model'], 'mse_model', device)
        gan_net = _load_generator(opt['gan_model'], 'gan_model', device)

    records = []
    progress = tqdm(total=len(todo), desc='detect', unit='img', disable=rank != 0 or None)
    if mode_a:
        for batch, lrs in _lr_batches(todo, lr_images, opt.get('batch_size', 1)):
            lq = torch.from_numpy(np.stack([lr[..., ::-1] for lr in lrs]).copy()).permute(0, 3, 1, 2) / 255.0
            srs = []
            for net in (mse_net, gan_net):
                sr = tiled_forward(net, lq.to(device), opt['scale'], tile_size=opt.get('tile_size', 0),
                                   tile_pad=opt.get('tile_pad', 10), mod_pad=getattr(net, 'mod_pad', 1))
                # rounded to uint8 as saved SR images are, so mode (a) and mode (b) see the same numbers
                srs.append((sr.float().clamp(0, 1) * 255).round().permute(0, 2, 3, 1).cpu().numpy()[..., ::-1])
            labels = _segment(segmenter, list(srs[1]), device)
            for i, name in enumerate(batch):
                records.append(_detect_one(name, srs[0][i], srs[1][i], labels[i], {'lr': lr_images[name]},
                                           detector, class_weights, writer, artifact_low))
                progress.update(1)
    else:
        for name in todo:
            mse, gan = read_sr_image(mse_paths[name]), read_sr_image(gan_paths[name])
            if mse.shape != gan.shape:
                raise DataError(f"MSE-SR {mse_paths[name]} is {mse.shape[1]}x{mse.shape[0]} but GAN-SR "
                                f"{gan_paths[name]} is {gan.shape[1]}x{gan.shape[0]} (WxH); the pair must match")
            sources = {'mse_sr': mse_paths[name], 'gan_sr': gan_paths[name]}
            labels = _segment(segmenter, [gan], device)[0]
            records.append(_detect_one(name, mse, gan, labels, sources, detector, class_weights, writer,
                                       artifact_low))
            progress.update(1)
    progress.close()
    dist_utils.barrier()
    if rank == 0:
        all_records = [_read_record(writer.path('records', n, '.json')) for n in names
                       if os.path.isfile(writer.path('records', n, '.json'))]
        _write_summary(root, all_records)
        if out_opt.get('html', True):
            from desra.detection.gallery import write_gallery

            html = write_gallery(root, all_records, title=f"{opt['name']}: {det_opt['type']} detections",
                                 overlays=writer.save_overlays)
            logger.info('Gallery: %s', html)
        logger.info('%d image(s) processed, %d skipped; results in %s', len(todo), skipped, root)
    return {'processed': len(todo), 'skipped': skipped, 'records': records, 'root': root}


def _is_none_segmenter(segmenter) -> bool:
    return type(segmenter).__name__ == 'NoSegmenter'


def _segment(segmenter, gans: list[np.ndarray], device) -> list:
    """Label maps of GAN-SR images (H x W x 3 BGR, uint8 range), one segmenter call for the whole batch."""
    if segmenter is None:
        return [None] * len(gans)
    rgb = torch.from_numpy(np.stack([g[..., ::-1] for g in gans]) / 255.0).permute(0, 3, 1, 2).float()
    out = segmenter(rgb.to(device))
    if out is None:
        return [None] * len(gans)
    return [np.asarray(o.cpu().numpy() if torch.is_tensor(o) else o) for o in out]


def _detect_one(name, mse, gan, labels, sources, detector, class_weights, writer, artifact_low):
    mask, maps = detector(mse, gan, labels=labels, class_weights=class_weights)
    mask = np.asarray(mask, np.uint8)
    maps = {k: (v.cpu().numpy() if torch.is_tensor(v) else v) for k, v in (maps or {}).items()}
    if maps.get('D') is not None:
        maps['D'] = np.squeeze(maps['D'])
    if maps.get('S') is not None:
        maps['S'] = np.squeeze(maps['S'])
    if labels is not None:
        maps['labels'] = labels
    return writer.write(name, mask, maps, mse, gan, sources, artifact_low)


def _read_record(path: str) -> dict:
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _write_summary(root: str, records: list[dict]) -> None:
    with atomic_open(os.path.join(root, 'summary.csv'), 'w') as f:
        f.write('name,height,width,artifact_pixels,artifact_fraction,regions\n')
        for r in records:
            f.write(f"{r['name']},{r['height']},{r['width']},{r['artifact_pixels']},{r['artifact_fraction']:.6f},"
                    f"{r['regions']}\n")
