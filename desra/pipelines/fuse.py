"""``scripts/fuse.py -opt options/fuse_*.yml``: fuse K restorations of each input by their artifact maps.

The localise-and-fuse method (``shared/papers/artifact_localization_deraining.txt``, Sec. 2.2, Fig. 4): K models
restore every input (precomputed folders, or generators run here), an artifact map gives each output a
per-pixel artifact probability, and :func:`desra.fusion.fuse` combines the K outputs (rules and formulas there).
With GT, PSNR / SSIM (and LPIPS when its files are found) of each model alone and of the fused result.

Options (a closed schema: an unknown key is a one-line error with the closest known key)::

    name: fuse_sr_photos              # plain folder name
    scale: 4                          # output size / input size (1 for deraining)
    num_gpu: auto                     # 0 = CPU
    inputs: LR-or-rainy folder        # needed when a model is a generator; optional when all are folders
    gt: HR-or-clean folder            # optional: metrics
    models:                           # K >= 1 entries, each one of
      - {name: A, folder: dir}        #   precomputed outputs, paired by file name without extension
                                      #   (suffix: _x strips '_x' first, for test.py's <name>_<suffix>.png)
      - name: B                       #   a generator run on the inputs (tiled)
        network: {type: RRDBNet, ...}
        checkpoint: pretrained/x.safetensors
        param_key: params_ema         # (default; falls back to params)   strict: true
        scale: 4                      # optional; must equal the top-level scale
        tile: 128                     # input pixels per tile (0 = whole image, default)   tile_pad: 10
    artifact_map:                     # one of
      type: localizer                 #   a trained localiser (desra.detection.localizer.predict_probability)
      network: {type: DeepLabV3Plus, encoder_name: resnet18}
      checkpoint: experiments/<name>/models/net_g_<iter>.pth
      param_key: params_ema           # threshold: 0.5 (artifact area, pictures)   tile: 512   overlap: 64
      divisor: 32                     # batch_size: 4   mse_folder: only for a 6-channel localiser
    # or
      type: desra                     #   DeSRA's detector on (MSE-SR, output)
      mse_folder: dir                 #   MSE-SR images at output size, paired by name
      smooth: 0                       #   p = G_smooth * mask (mask in {0, 1}); 0 = the binary mask itself
      threshold: 0.7 ...              #   any other DeSRADetector option (min_area, erode, ...)
    fusion: {rule: select, base: 0, feather: 2.0, gamma: 1.0, tie_tol: 0.02}   # base: index or model name
    metrics: {crop_border: ~, test_y_channel: true, lpips: auto, lpips_net: alex, fused_map: inherited}
    output: results/fuse/<name>       # default
    html: true

``metrics.crop_border`` defaults to ``scale`` (0 at scale 1); ``metrics.lpips``: ``auto`` computes LPIPS when its
files are found (else the column says why not), ``true`` requires them, ``false`` skips it.
``metrics.fused_map``: the artifact map of the fused image, ``inherited`` = ``sum_k W_k p_k`` (free) or ``detect``
(the artifact map run on the fused image). The artifact area is the fraction of pixels with ``p > threshold``
(``artifact_map.threshold`` for a localiser, 0.5 for ``desra``).

Output under ``output``::

    fused/<stem>.png            the fused image
    maps/<model>/<stem>.png     each model's artifact probability, 8-bit (p * 255 rounded)
    maps/fused/<stem>.png       the fused image's map (see metrics.fused_map)
    weights/<stem>.png          the fusion weights in colour (one colour per model, legend in index.html)
    outputs/<model>/<stem>.png  the outputs of the generator models (folder models are referenced in place)
    records/<stem>.json         per-image record: files, metrics, fingerprint (written last)
    metrics.md, metrics.json    per model and fused: PSNR / SSIM / LPIPS (with GT) and artifact area, mean and per image
    index.html                  input | each output and its map | fused | its map | weights | GT
    fuse_<name>_<time>.log

The probabilities are quantised to the saved 8 bits before fusing, so ``fused`` can be recomputed exactly from
the saved maps and outputs; generator outputs are rounded to uint8 as saved (16-bit folder images are rounded
too). Order of work: options and every image header are checked without torch; the generators, the artifact
map and LPIPS are loaded; only then is the output folder locked and written. Each file is written atomically and
the record last; a rerun skips an image whose record carries the fingerprint of the same settings and input files
(see :mod:`desra.utils.fingerprint`) and whose files exist, and says why it recomputes the others.
"""
from __future__ import annotations

import difflib
import html
import json
import logging
import math
import os
import time
from collections import Counter

import numpy as np

from desra.atomic import atomic_open, remove_stale_temp_files
from desra.config import (NONE, NUMBER, Spec, _typed, check_schema, read_checked_options,
                          nonneg_int, nonneg_number, num_gpu, positive_int, positive_number,
                          report_warnings, run_name, unknown_key_error)
from desra.data.io import imwrite_atomic
from desra.errors import ConfigError, DataError
from desra.fusion import DEFAULT_FEATHER, DEFAULT_TIE_TOL, FUSION_RULES
from desra.tile_options import DEFAULT_TILE_PAD, tile_size_option
from desra.utils.fingerprint import RecordedOutputs, file_identity, settings_hash, weights_identity
from desra.utils.images import check_pixel_limit, display_name, image_header

logger = logging.getLogger('desra')

#: Bumped when the outputs change for the same settings, so old records are recomputed.
RECORD_VERSION = 2  # 2: seamless tiles (blended windows, tile_pad 40 by default)
#: Model names that would collide with the output layout.
RESERVED_NAMES = ('fused',)
MAP_TYPES = ('localizer', 'desra')
FUSED_MAPS = ('inherited', 'detect')

#: BGR colours of the models in ``weights/`` (matplotlib's tab10), cycled when K > 10.
PALETTE = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23))


def _unit_open(value, path):
    if not 0.0 < value < 1.0:
        raise ConfigError(f'{path}: expected a probability in (0, 1), got {value!r}')
    return value


_NAME = Spec(str, True, check=run_name)
FOLDER_MODEL = Spec(dict, False, {'name': _NAME, 'folder': Spec(str, True), 'suffix': Spec((str, NONE))})
GENERATOR_MODEL = Spec(dict, False, {
    'name': _NAME, 'network': _typed(True), 'checkpoint': Spec(str, True), 'param_key': Spec((str, NONE)),
    'strict': Spec(bool), 'scale': Spec(int, check=positive_int), 'tile': Spec((int, str), check=tile_size_option),
    'tile_pad': Spec(int, check=nonneg_int)})
LOCALIZER_MAP = Spec(dict, True, {
    'type': Spec(str, True), 'network': _typed(True), 'checkpoint': Spec(str, True), 'param_key': Spec((str, NONE)),
    'threshold': Spec(NUMBER, check=_unit_open), 'tile': Spec(int, check=positive_int),
    'overlap': Spec(int, check=nonneg_int), 'divisor': Spec(int, check=positive_int),
    'batch_size': Spec(int, check=positive_int), 'mse_folder': Spec((str, NONE))})
#: DeSRA's own options (threshold, min_area, ...) are checked against DeSRADetector's signature.
DESRA_MAP = Spec(dict, True, {'type': Spec(str, True), 'mse_folder': Spec(str, True),
                              'smooth': Spec(NUMBER, check=nonneg_number)}, closed=False)
FUSE_SCHEMA = Spec(dict, True, {
    'name': _NAME,
    'scale': Spec(int, True, check=positive_int),
    'num_gpu': Spec((int, str), check=num_gpu),
    'import_modules': Spec(list),
    'max_image_pixels': Spec(int, check=nonneg_int),
    'inputs': Spec((str, NONE)),
    'gt': Spec((str, NONE)),
    'models': Spec(list, True),
    'artifact_map': Spec(dict, True, {'type': Spec(str, True)}, closed=False),
    'fusion': Spec(dict, False, {'rule': Spec(str), 'base': Spec((int, str)),
                                 'feather': Spec(NUMBER, check=nonneg_number),
                                 'gamma': Spec(NUMBER, check=positive_number),
                                 'tie_tol': Spec(NUMBER, check=nonneg_number)}),
    'metrics': Spec(dict, False, {'crop_border': Spec((int, NONE), check=nonneg_int), 'test_y_channel': Spec(bool),
                                  'lpips': Spec((bool, str)), 'lpips_net': Spec(str), 'fused_map': Spec(str)}),
    'output': Spec(str),
    'html': Spec(bool),
})


# ------------------------------------------------------------------------------------------------ options
def _choice(value, choices, path: str):
    if value in choices:
        return value
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    hint = f'did you mean {close[0]}? ' if close else ''
    raise ConfigError(f"{path}: unknown value {value!r}; {hint}expected one of {', '.join(names)}")


def is_generator(model: dict) -> bool:
    return 'folder' not in model


def validate_fuse_options(opt: dict, warnings: list | None = None) -> dict:
    """Check ``opt`` in place without torch (the schema, the models, the artifact map, fusion and metrics).

    Fills ``opt['fusion']`` and ``opt['metrics']`` with their defaults (``fusion.base`` as an index).
    """
    check_schema(opt, FUSE_SCHEMA, '', warnings)
    models = opt['models']
    if not models:
        raise ConfigError('models: empty; give K >= 1 entries ({name, folder} or {name, network, checkpoint})')
    seen = {}
    for i, m in enumerate(models):
        path = f'models[{i}]'
        if not isinstance(m, dict):
            raise ConfigError(f'{path}: expected a mapping ({{name, folder}} or {{name, network, checkpoint}}), '
                              f'got {m!r}')
        if 'folder' in m and ('network' in m or 'checkpoint' in m):
            raise ConfigError(f'{path}: give either folder (precomputed outputs) or network + checkpoint (a '
                              f'generator run on the inputs), not both')
        if 'folder' not in m and 'network' not in m and 'checkpoint' not in m:
            known = sorted(set(FOLDER_MODEL.children) | set(GENERATOR_MODEL.children))
            for key in m:
                if key not in known:
                    raise unknown_key_error(path, key, known)
            raise ConfigError(f'{path}: give folder (precomputed outputs) or network + checkpoint (a generator '
                              f'run on the inputs)')
        check_schema(m, FOLDER_MODEL if 'folder' in m else GENERATOR_MODEL, path, warnings)
        name = m['name']
        if name in RESERVED_NAMES:
            raise ConfigError(f"{path}.name: '{name}' is reserved (it names the fused result); choose another name")
        if name in seen:
            raise ConfigError(f"{path}.name: '{name}' is also the name of models[{seen[name]}]; names must be unique")
        seen[name] = i
        if is_generator(m):
            if m.get('scale') is not None and m['scale'] != opt['scale']:
                raise ConfigError(f"{path}.scale: {m['scale']}, but scale is {opt['scale']}; every model must "
                                  f"restore at the top-level scale")
            if not opt.get('inputs'):
                raise ConfigError(f"inputs: missing; {path} ({name}) is a generator run on the inputs, which needs "
                                  f"the folder of degraded inputs (LR / rainy images)")

    amap = opt['artifact_map']
    _choice(amap['type'], MAP_TYPES, 'artifact_map.type')
    if amap['type'] == 'localizer':
        check_schema(amap, LOCALIZER_MAP, 'artifact_map', warnings)
        if amap.get('overlap', 64) >= amap.get('tile', 512):
            raise ConfigError(f"artifact_map.overlap: {amap.get('overlap', 64)} must be smaller than "
                              f"artifact_map.tile ({amap.get('tile', 512)})")
    else:
        check_schema(amap, DESRA_MAP, 'artifact_map', warnings)
        if amap.get('official_crop'):
            raise ConfigError('artifact_map.official_crop: fusion needs maps at the outputs\' full size; '
                              'remove it (or set false)')
        import desra.detection.detectors  # noqa: F401  (torch-free: registers the detectors)
        from desra.registry import DETECTOR_REGISTRY

        DETECTOR_REGISTRY.build(desra_detector_options(amap), 'artifact_map')

    fusion = opt.get('fusion') or {}
    opt['fusion'] = fusion
    fusion['rule'] = _choice(fusion.get('rule', 'select'), FUSION_RULES, 'fusion.rule')
    base = fusion.get('base', 0)
    if isinstance(base, str):
        if base not in seen:
            raise ConfigError(f"fusion.base: '{base}' is not a model name; models: {', '.join(seen)}")
        base = seen[base]
    elif not 0 <= base < len(models):
        raise ConfigError(f'fusion.base: {base} is not a model index (0..{len(models) - 1}) or name')
    fusion['base'] = base
    fusion.setdefault('feather', DEFAULT_FEATHER)
    fusion.setdefault('gamma', 1.0)
    fusion.setdefault('tie_tol', DEFAULT_TIE_TOL)

    metrics = opt.get('metrics') or {}
    opt['metrics'] = metrics
    if metrics.get('crop_border') is None:
        metrics['crop_border'] = opt['scale'] if opt['scale'] > 1 else 0
    metrics.setdefault('test_y_channel', True)
    lp = metrics.setdefault('lpips', 'auto')
    if not (lp is True or lp is False or lp == 'auto'):
        raise ConfigError(f"metrics.lpips: expected auto, true or false, got {lp!r}")
    _choice(metrics.setdefault('lpips_net', 'alex'), ('alex', 'vgg'), 'metrics.lpips_net')
    _choice(metrics.setdefault('fused_map', 'inherited'), FUSED_MAPS, 'metrics.fused_map')
    return opt


def desra_detector_options(amap: dict) -> dict:
    """The ``detector`` block of DeSRA's detector from an ``artifact_map`` of type ``desra``."""
    return {k: v for k, v in amap.items() if k not in ('mse_folder', 'smooth')}


def area_threshold(opt: dict) -> float:
    amap = opt['artifact_map']
    return float(amap.get('threshold', 0.5)) if amap['type'] == 'localizer' else 0.5


def output_root(opt: dict) -> str:
    return opt.get('output') or os.path.join('results', 'fuse', opt['name'])


def model_label(opt: dict, i: int) -> str:
    return f"models[{i}] ({opt['models'][i]['name']})"


# ------------------------------------------------------------------------------------------------ preflight
def _size(path: str) -> tuple[int, int] | None:
    """(height, width) from the header (EXIF orientation applied); DataError above the pixel limit."""
    header = image_header(path)
    check_pixel_limit(header, path)
    return None if header is None else header.display_size


def _wh(hw) -> str:
    return f'{hw[1]}x{hw[0]} (WxH)'


def _list_folder(folder: str, key: str) -> dict[str, str]:
    from desra.detection.pipeline import list_images

    images, ignored = list_images(folder, key)
    if ignored:
        logger.warning('Ignoring %d non-image file(s) in %s: %s', len(ignored), folder,
                       ', '.join(display_name(n) for n in ignored[:5]))
    return images


def _strip_suffix(images: dict[str, str], suffix: str | None, key: str) -> dict[str, str]:
    """Key ``<stem><suffix>`` images by ``<stem>`` (``test.py`` saves ``<name>_<suffix>.png``); others are ignored."""
    if not suffix:
        return images
    out = {n[:-len(suffix)]: p for n, p in images.items() if n.endswith(suffix) and len(n) > len(suffix)}
    if not out:
        raise DataError(f"{key}: no image name in the folder ends with '{suffix}' (before the extension)")
    if len(out) < len(images):
        logger.warning("%s: %d image(s) whose name does not end with '%s' are ignored", key, len(images) - len(out),
                       suffix)
    return out


def _missing_error(key: str, folder: str, missing: list[str], names: list[str], ref: dict[str, str],
                   ref_what: str, what: str) -> DataError:
    shown = ', '.join(f"'{display_name(n)}' ({ref_what} {display_name(ref[n])})" for n in missing[:3])
    more = f' and {len(missing) - 3} more' if len(missing) > 3 else ''
    return DataError(f'{key}: {len(missing)} of {len(names)} image(s) have no {what} in {os.path.abspath(folder)}: '
                     f'{shown}{more}; images are paired by file name without extension')


def preflight(opt: dict) -> dict:
    """List and pair every image and check the sizes from the headers (nothing decoded, no torch).

    Returns ``{'names', 'sources', 'sizes'}``: ``sources[name]`` = ``{'input', 'gt', 'mse', 'models': {model name:
    folder image}}`` (None where absent), ``sizes[name]`` the outputs' (height, width) where known.
    """
    scale = opt['scale']
    models = opt['models']
    inputs = _list_folder(opt['inputs'], 'inputs') if opt.get('inputs') else None
    folders = {m['name']: _strip_suffix(_list_folder(m['folder'], f'models[{i}].folder'), m.get('suffix'),
                                        f'models[{i}].suffix')
               for i, m in enumerate(models) if not is_generator(m)}
    if inputs is not None:
        names, ref, ref_what = sorted(inputs), inputs, 'input'
    else:
        first = models[0]['name']
        names, ref, ref_what = sorted(folders[first]), folders[first], f'{model_label(opt, 0)} output'
    for i, m in enumerate(models):
        if is_generator(m):
            continue
        imgs = folders[m['name']]
        missing = [n for n in names if n not in imgs]
        if missing:
            raise _missing_error(f'{model_label(opt, i)}.folder', m['folder'], missing, names, ref, ref_what,
                                 'output')
        extra = sorted(set(imgs) - set(names))
        if extra:
            logger.warning('%s: %d image(s) without an input are not used: %s', model_label(opt, i), len(extra),
                           ', '.join(display_name(n) for n in extra[:5]))
    gt = _list_folder(opt['gt'], 'gt') if opt.get('gt') else None
    if gt is not None:
        missing = [n for n in names if n not in gt]
        if missing:
            raise _missing_error('gt', opt['gt'], missing, names, ref, ref_what, 'GT')
    amap = opt['artifact_map']
    mse = _list_folder(amap['mse_folder'], 'artifact_map.mse_folder') if amap.get('mse_folder') else None
    if mse is not None:
        missing = [n for n in names if n not in mse]
        if missing:
            raise _missing_error('artifact_map.mse_folder', amap['mse_folder'], missing, names, ref, ref_what,
                                 'MSE-SR image')

    crop = opt['metrics']['crop_border']
    min_side = int(amap.get('window_size', 11)) if amap['type'] == 'desra' else 1
    sources, sizes = {}, {}
    for name in names:
        src = {'input': inputs[name] if inputs else None, 'gt': gt[name] if gt else None,
               'mse': mse[name] if mse else None,
               'models': {mn: imgs[name] for mn, imgs in folders.items()}}
        sources[name] = src
        hw, hw_from = None, None
        if src['input']:
            in_hw = _size(src['input'])
            if in_hw is not None:
                hw, hw_from = (in_hw[0] * scale, in_hw[1] * scale), 'input'
        for i, m in enumerate(models):
            if is_generator(m):
                continue
            path = src['models'][m['name']]
            o_hw = _size(path)
            if o_hw is None:
                continue
            if hw is None:
                hw, hw_from = o_hw, (i, path)
            elif o_hw != hw:
                raise size_error(opt, i, path, o_hw, hw_from, hw, src['input'], scale)
        sizes[name] = hw
        if hw is None:
            continue
        for key, what in (('gt', 'GT'), ('mse', 'MSE-SR')):
            if src[key]:
                s_hw = _size(src[key])
                if s_hw is not None and s_hw != hw:
                    raise DataError(f'{what} {display_name(src[key])} is {_wh(s_hw)} but the outputs of '
                                    f"'{display_name(name)}' are {_wh(hw)}; they must have the same size")
        if min(hw) < min_side:
            raise DataError(f"the outputs of '{display_name(name)}' are {_wh(hw)}, smaller than the DeSRA "
                            f"detector's {min_side}x{min_side} window; remove the image or use larger ones")
        if src['gt'] and min(hw) - 2 * crop < 11:
            raise DataError(f"the outputs of '{display_name(name)}' are {_wh(hw)}: SSIM needs at least 11x11 "
                            f"pixels after removing metrics.crop_border ({crop}) from each side; lower "
                            f"metrics.crop_border or remove the image")
    return {'names': names, 'sources': sources, 'sizes': sizes}


def size_error(opt: dict, i: int, path: str, o_hw, ref_from, ref_hw, input_path: str | None, scale: int):
    """Two outputs of one input (or an output and input x scale) that differ in size."""
    if ref_from == 'input':
        in_hw = (ref_hw[0] // scale, ref_hw[1] // scale)
        return DataError(f'{model_label(opt, i)}: {display_name(path)} is {_wh(o_hw)} but the input '
                         f'{display_name(input_path)} is {_wh(in_hw)}, x{scale} = {_wh(ref_hw)}; outputs must be the '
                         f'input size times scale')
    j, ref_path = ref_from
    return DataError(f'{model_label(opt, i)}: {display_name(path)} is {_wh(o_hw)} but {model_label(opt, j)}: '
                     f'{display_name(ref_path)} is {_wh(ref_hw)}; the K outputs of one input must have the same size')


def parse_fuse_options(argv=None) -> dict:
    """Command line -> checked options with the input plan (``opt['_plan']``), all before torch is imported."""
    import argparse

    from desra.engine.logger import get_root_logger

    parser = argparse.ArgumentParser(description='Fuse K restorations of each input by their artifact maps.')
    parser.add_argument('-opt', '--opt', dest='opt', required=True, help='path to the option YAML file')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUBKEY=VALUE',
                        help='override options, e.g. fusion:feather=4 (value parsed as YAML)')
    args = parser.parse_args(argv)
    get_root_logger()
    warnings: list[str] = []
    opt = read_checked_options(args.opt, args.force_yml, validate_fuse_options, warnings)
    report_warnings(warnings)
    opt['_plan'] = preflight(opt)
    return opt


# ------------------------------------------------------------------------------------------------ components
def lpips_status(metrics: dict) -> dict:
    """``{'available', 'net', 'reason', 'files'}``: whether LPIPS can be computed (its files found), and why not."""
    from desra.metrics.lpips import LPIPS_NETS
    from desra.weights import locate

    net = metrics.get('lpips_net', 'alex')
    mode = metrics.get('lpips', 'auto')
    if mode is False:
        return {'available': False, 'net': net, 'reason': 'metrics.lpips is false', 'how': None, 'files': None}
    specs = (LPIPS_NETS[net]['file'], locate.LPIPS_HEADS[net])
    found, missing = [], []
    for spec in specs:
        if mode is True:
            found.append(locate.find_weight_file(spec, f'metrics.lpips (LPIPS-{net})'))
            continue
        p = locate.find_weight_file(spec, f'LPIPS-{net}', required=False)  # a bad $DESRA_* path still raises
        (found.append(p) if p is not None else missing.append(spec))
    if missing:
        reason = ', '.join(s.filename for s in missing) + ' not found'
        how = '; '.join(f'`{s.how}`' for s in missing)
        return {'available': False, 'net': net, 'reason': reason, 'how': how, 'files': None}
    return {'available': True, 'net': net, 'reason': None, 'how': None, 'files': [str(p) for p in found]}


class LocalizerMap:
    """``artifact_map.type: localizer``: p = sigmoid of a trained localiser, by sliding windows."""

    def __init__(self, amap: dict, device):
        from desra.detection.localizer import in_channels_of, load_localizer

        self.net = load_localizer(amap['network'], amap['checkpoint'], amap.get('param_key') or 'params_ema',
                                  device, key_path='artifact_map')
        self.needs_mse = in_channels_of(self.net) == 6
        if self.needs_mse and not amap.get('mse_folder'):
            raise ConfigError('artifact_map.mse_folder: missing; this localiser takes MSE-SR channels '
                              '(in_channels 6): give the folder of MSE-SR images at output size')
        self.kw = dict(tile=int(amap.get('tile', 512)), overlap=int(amap.get('overlap', 64)),
                       divisor=int(amap.get('divisor', 32)), batch_size=int(amap.get('batch_size', 4)), device=device)

    def __call__(self, img: np.ndarray, mse: np.ndarray | None) -> np.ndarray:
        from desra.detection.localizer import predict_probability

        return predict_probability(self.net, img, mse if self.needs_mse else None, **self.kw)


class DeSRAMap:
    """``artifact_map.type: desra``: ``p = G_smooth * (mask / 255)``, DeSRA's binary mask of (MSE-SR, output),
    optionally smoothed by a Gaussian of sigma ``smooth`` (no segmenter: every class weight 1)."""

    needs_mse = True

    def __init__(self, amap: dict):
        import desra.detection.detectors  # noqa: F401
        from desra.registry import DETECTOR_REGISTRY

        self.detector = DETECTOR_REGISTRY.build(desra_detector_options(amap), 'artifact_map')
        self.smooth = float(amap.get('smooth', 0))

    def __call__(self, img: np.ndarray, mse: np.ndarray | None) -> np.ndarray:
        from desra.fusion import gaussian_blur

        mask, _ = self.detector(mse, img)
        p = (np.asarray(mask) > 0).astype(np.float32)
        return np.clip(gaussian_blur(p, self.smooth), 0.0, 1.0) if self.smooth > 0 else p


def build_artifact_map(amap: dict, device):
    return LocalizerMap(amap, device) if amap['type'] == 'localizer' else DeSRAMap(amap)


def load_generators(opt: dict, device) -> dict:
    """``{model name: network}`` of the generator models, loaded strictly (one-line errors naming the key)."""
    from desra.models.base_model import build_network, check_network_scale, load_pretrained

    nets = {}
    for i, m in enumerate(opt['models']):
        if not is_generator(m):
            continue
        net = build_network(m['network'], f'models[{i}].network').to(device).eval()
        check_network_scale(net, opt['scale'], f'models[{i}].network')
        load_pretrained(net, m['checkpoint'], m.get('param_key') or 'params_ema', m.get('strict', True),
                        f'models[{i}].checkpoint')
        nets[m['name']] = net
    return nets


def run_generator(net, img: np.ndarray, model: dict, scale: int, device) -> np.ndarray:
    """Restore one BGR uint8-range image (H x W x 3) -> uint8 BGR (H*scale x W*scale x 3), rounded as saved."""
    import torch

    from desra.inference import tiled_forward

    lq = torch.from_numpy(np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    sr = tiled_forward(net, lq.to(device), scale, tile_size=model.get('tile', 0),
                       tile_pad=model.get('tile_pad', DEFAULT_TILE_PAD), mod_pad=getattr(net, 'mod_pad', 1))
    out = (sr.float().clamp(0, 1) * 255).round()[0].permute(1, 2, 0).cpu().numpy()[..., ::-1]
    return np.ascontiguousarray(out).astype(np.uint8)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def quantise(p: np.ndarray) -> np.ndarray:
    """A probability map as the saved 8-bit picture: ``round(255 p)`` (uint8)."""
    return np.rint(np.clip(np.asarray(p, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def weights_picture(weights: np.ndarray) -> np.ndarray:
    """K x H x W weights -> H x W x 3 uint8 BGR: ``sum_k W_k colour_k`` (:data:`PALETTE`)."""
    colours = np.array([PALETTE[k % len(PALETTE)] for k in range(weights.shape[0])], np.float32)
    return to_uint8(np.tensordot(weights, colours, axes=([0], [0])))


# ------------------------------------------------------------------------------------------------ metrics
def image_metrics(img: np.ndarray, gt: np.ndarray, metrics: dict, lpips: dict, device) -> dict:
    """PSNR / SSIM (and LPIPS when available) of one uint8 image against its GT (values in [0, 255])."""
    from desra.metrics import calculate_lpips, calculate_psnr, calculate_ssim

    crop, y = metrics['crop_border'], metrics['test_y_channel']
    out = {'psnr': calculate_psnr(img, gt, crop, test_y_channel=y),
           'ssim': calculate_ssim(img, gt, crop, test_y_channel=y)}
    if lpips['available']:
        backbone, heads = lpips['files']
        out['lpips'] = calculate_lpips(img, gt, crop, net=lpips['net'], backbone=backbone, heads=heads, device=device)
    return out


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def summarise(records: list[dict], methods: list[str]) -> dict:
    """Mean over images of every metric of every method (``None`` where a value is missing or not finite)."""
    means = {}
    for m in methods:
        keys = sorted({k for r in records for k in (r['metrics'].get(m) or {})})
        means[m] = {}
        for k in keys:
            vals = [r['metrics'][m].get(k) for r in records]
            means[m][k] = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
    return means


def write_metrics(root: str, opt: dict, records: list[dict], lpips: dict) -> dict:
    """``metrics.json`` and ``metrics.md`` (atomically); returns the JSON content."""
    from desra.engine.evaluate import format_markdown_table

    methods = [m['name'] for m in opt['models']] + ['fused']
    means = summarise(records, methods)
    has_gt = bool(opt.get('gt'))
    thr = area_threshold(opt)
    fusion = opt['fusion']
    info = {'name': opt['name'], 'images': len(records), 'scale': opt['scale'], 'methods': methods,
            'fusion': {**fusion, 'base': opt['models'][fusion['base']]['name']},
            'artifact_map': opt['artifact_map']['type'], 'area_threshold': thr,
            'fused_map': opt['metrics']['fused_map'],
            'gt': has_gt, 'crop_border': opt['metrics']['crop_border'],
            'test_y_channel': opt['metrics']['test_y_channel'],
            'lpips': {'available': lpips['available'], 'net': lpips['net'], 'reason': lpips['reason']},
            'mean': {m: {k: _finite(v) for k, v in vals.items()} for m, vals in means.items()},
            'per_image': {r['name']: {m: {k: _finite(v) for k, v in (r['metrics'].get(m) or {}).items()}
                                      for m in methods} for r in records}}
    with atomic_open(os.path.join(root, 'metrics.json'), 'w') as f:
        json.dump(info, f, indent=2, allow_nan=False)

    cols = [('psnr', 'PSNR (dB) ↑'), ('ssim', 'SSIM ↑')] if has_gt else []
    if has_gt:
        cols.append(('lpips', f"LPIPS-{lpips['net']} ↓" if lpips['available']
                     else f"LPIPS ↓ (n/a: {lpips['reason']})"))
    cols.append(('artifact_area', 'artifact area ↓'))

    def row(label, vals):
        r = {'method': label}
        for key, title in cols:
            v = vals.get(key)
            r[title] = 'n/a' if v is None else ('inf' if v == float('inf') else float(v))
        return r

    base = opt['models'][fusion['base']]['name']
    labels = {m: m + (' (base)' if m == base else '') for m in methods}
    labels['fused'] = f"fused ({fusion['rule']})"
    titles = ['method'] + [t for _, t in cols]
    table = format_markdown_table([row(labels[m], means[m]) for m in methods], titles)
    per_image = format_markdown_table([{'image': display_name(r['name']), **row(labels[m], r['metrics'][m])}
                                       for r in records for m in methods], ['image'] + titles)
    y = 'Y channel' if opt['metrics']['test_y_channel'] else 'RGB'
    fused_map = 'sum_k W_k p_k' if opt['metrics']['fused_map'] == 'inherited' else 'map of the fused image'
    lines = [f"# Fusion: {opt['name']}", '',
             f"{len(records)} image(s), {len(opt['models'])} model(s), x{opt['scale']}. Fusion: {fusion['rule']}, "
             f"base {base}, feather {fusion['feather']:g}, "
             + (f"tie_tol {fusion['tie_tol']:g}" if fusion['rule'] == 'select' else f"gamma {fusion['gamma']:g}")
             + f". Artifact map: {opt['artifact_map']['type']}; artifact area = fraction of pixels with p > {thr:g}"
             f" (fused: {fused_map})."]
    if has_gt:
        lines.append(f"PSNR / SSIM on the {y}, crop border {opt['metrics']['crop_border']}; mean over images."
                     + (f" LPIPS not computed: {lpips['reason']}" + (f" (get them: {lpips['how']})"
                                                                    if lpips['how'] else '') + '.'
                        if not lpips['available'] else ''))
    else:
        lines.append('No GT (gt not set): artifact areas only.')
    lines += ['', table, '', '## Per image', '', per_image, '']
    with atomic_open(os.path.join(root, 'metrics.md'), 'w') as f:
        f.write('\n'.join(lines))
    return info


# ------------------------------------------------------------------------------------------------ records
def fuse_settings(opt: dict, lpips: dict) -> dict:
    """Everything besides the input files that decides a record (hashed into its fingerprint)."""
    models = []
    for m in opt['models']:
        if is_generator(m):
            models.append({'name': m['name'], 'network': m['network'], 'param_key': m.get('param_key') or 'params_ema',
                           'strict': m.get('strict', True), 'weights': weights_identity(m['checkpoint']),
                           'tile': m.get('tile', 0), 'tile_pad': m.get('tile_pad', DEFAULT_TILE_PAD)})
        else:
            models.append({'name': m['name'], 'folder': os.path.abspath(m['folder'])})
    amap = {k: v for k, v in opt['artifact_map'].items() if k not in ('checkpoint', 'mse_folder')}
    if opt['artifact_map'].get('checkpoint'):
        amap['weights'] = weights_identity(opt['artifact_map']['checkpoint'])
    metrics = dict(opt['metrics'])
    metrics['lpips'] = ({'net': lpips['net'], 'files': [weights_identity(p) for p in lpips['files']]}
                        if lpips['available'] else None)
    return {'version': RECORD_VERSION, 'scale': opt['scale'], 'models': models, 'artifact_map': amap,
            'fusion': dict(opt['fusion']), 'metrics': metrics, 'area_threshold': area_threshold(opt),
            'gt': bool(opt.get('gt'))}


def _identities(src: dict) -> dict:
    ids = {k: file_identity(src[k]) for k in ('input', 'gt', 'mse') if src.get(k)}
    ids['models'] = {m: file_identity(p) for m, p in src['models'].items()}
    return ids


class FuseWriter(RecordedOutputs):
    """Writes one image's files under ``root`` (atomically), the record last; knows when a record is current."""

    def reason_to_compute(self, name: str, inputs: dict) -> str | None:
        rec = self.read_record(name)
        return self.stale_reason(rec, inputs, (rec or {}).get('written') or [])

    def write(self, name: str, files: dict[str, np.ndarray], record: dict, inputs: dict) -> dict:
        """``files``: ``{relative kind: image}`` (e.g. ``'maps/A'``); ``record``: the fields to store."""
        rec_path = self.path('records', name, '.json')
        old = self.read_record(name)
        if os.path.exists(rec_path):
            os.remove(rec_path)  # an interrupted recompute must not leave the old record over new files
        written = []
        for kind, img in files.items():
            p = self.path(kind, name)
            imwrite_atomic(img, p)
            written.append(p)
        for stale in (old or {}).get('written') or []:  # files of earlier settings (a model removed, ...)
            if stale not in written and os.path.isfile(stale) and _inside(stale, self.root):
                os.remove(stale)
        record = {**record, 'name': name, 'written': written,
                  'fingerprint': {'settings': self.settings_fp, 'inputs': settings_hash(inputs)},
                  'settings': self.settings, 'inputs': inputs}
        with atomic_open(rec_path, 'w') as f:
            json.dump(record, f, allow_nan=True)
        return record


def _inside(path: str, root: str) -> bool:
    root = os.path.abspath(root)
    return os.path.commonpath([os.path.abspath(path), root]) == root


# ------------------------------------------------------------------------------------------------ gallery
def write_fuse_gallery(root: str, opt: dict, records: list[dict]) -> str:
    from desra.detection.gallery import write_gallery

    models = [m['name'] for m in opt['models']]
    base = models[opt['fusion']['base']]
    columns = [('input', 'input')]
    for m in models:
        columns += [(m + (' (base)' if m == base else ''), f'output:{m}'), (f'{m}: artifact map', f'map:{m}')]
    columns += [(f"fused ({opt['fusion']['rule']})", 'fused'), ('fused: artifact map', 'map:fused'),
                ('weights', 'weights'), ('GT', 'gt')]
    rows = []
    for r in records:
        row = {'name': r['name'], 'width': r['width'], 'height': r['height'], 'metrics': r['metrics'],
               'input': r['paths'].get('input'), 'gt': r['paths'].get('gt'), 'fused': r['paths']['fused'],
               'map:fused': r['paths']['maps']['fused'], 'weights': r['paths']['weights']}
        for m in models:
            row[f'output:{m}'] = r['paths']['outputs'][m]
            row[f'map:{m}'] = r['paths']['maps'][m]
        rows.append(row)
    has_gt = bool(opt.get('gt'))
    methods = models + ['fused']

    def info(r):
        parts = []
        for m in methods:
            v = r['metrics'].get(m) or {}
            text = f"{html.escape(m)}: {100 * v['artifact_area']:.2f}%"
            if has_gt:
                text += f" · {v['psnr']:.2f} dB" if math.isfinite(v['psnr']) else ' · inf dB'
            parts.append(text)
        return '<td style="text-align:left">' + '<br>'.join(parts) + '</td>'

    swatches = ' '.join(
        f'<span style="background:rgb({c[2]},{c[1]},{c[0]});padding:0 8px">&nbsp;</span> {html.escape(m)}'
        for m, c in zip(models, [PALETTE[k % len(PALETTE)] for k in range(len(models))]))
    intro = (f"{len(records)} image(s). Artifact maps: white = artifact (probability x 255). Weights: each model's "
             f"colour, mixed by its weight: {swatches}. Text: artifact area (p &gt; {area_threshold(opt):g})"
             + (' and PSNR' if has_gt else '') + '.')
    return write_gallery(root, rows, title=f"{opt['name']}: fusion of {len(models)} model(s)", columns=columns,
                         info=info, info_title='artifact area' + (' · PSNR' if has_gt else ''), intro=intro,
                         sort_key=lambda r: r['name'])


# ------------------------------------------------------------------------------------------------ pipeline
def _read(path: str) -> np.ndarray:
    from desra.detection.pipeline import read_sr_image

    return read_sr_image(path)


def _summarise_reasons(reasons: dict[str, str]) -> str:
    return '; '.join(f'{n} {why}' for why, n in Counter(reasons.values()).most_common())


def fuse_one(name: str, src: dict, opt: dict, nets: dict, mapper, lpips: dict, device) -> tuple[dict, dict]:
    """Restore (or read), map and fuse one input; returns ``(files, record fields)``."""
    from desra.fusion import fuse

    scale, models = opt['scale'], opt['models']
    inp = _read(src['input']) if src.get('input') else None
    outs, out_paths, files = {}, {}, {}
    ref = None
    for i, m in enumerate(models):
        if is_generator(m):
            img = run_generator(nets[m['name']], inp, m, scale, device)
            files[f"outputs/{m['name']}"] = img
            out_paths[m['name']] = None  # filled in below, under root
            where = (i, f"(generated) outputs/{m['name']}/{name}.png")
        else:
            img = to_uint8(_read(src['models'][m['name']]))
            out_paths[m['name']] = os.path.abspath(src['models'][m['name']])
            where = (i, src['models'][m['name']])
        if inp is not None and img.shape[:2] != (inp.shape[0] * scale, inp.shape[1] * scale):
            raise size_error(opt, i, where[1], img.shape[:2], 'input', (inp.shape[0] * scale, inp.shape[1] * scale),
                             src['input'], scale)
        if ref is None:
            ref = (where, img.shape[:2])
        elif img.shape[:2] != ref[1]:
            raise size_error(opt, i, where[1], img.shape[:2], ref[0], ref[1], src.get('input'), scale)
        outs[m['name']] = img
    hw = ref[1]
    mse = None
    if src.get('mse') and getattr(mapper, 'needs_mse', False):
        mse = _read(src['mse'])
        if mse.shape[:2] != hw:
            raise DataError(f'MSE-SR {display_name(src["mse"])} is {_wh(mse.shape[:2])} but the outputs of '
                            f"'{display_name(name)}' are {_wh(hw)}; they must have the same size")
    probs = {}
    for m, img in outs.items():
        p8 = quantise(mapper(img.astype(np.float32), mse))
        files[f'maps/{m}'] = p8
        probs[m] = p8.astype(np.float32) / 255.0
    names = [m['name'] for m in models]
    fusion = opt['fusion']
    fused, weights = fuse([outs[m] for m in names], [probs[m] for m in names], rule=fusion['rule'],
                          base=fusion['base'], feather=fusion['feather'], gamma=fusion['gamma'],
                          tie_tol=fusion['tie_tol'], return_weights=True)
    if opt['metrics']['fused_map'] == 'detect':
        p_fused = quantise(mapper(fused.astype(np.float32), mse))
    else:
        p_fused = quantise(np.einsum('khw,khw->hw', weights, np.stack([probs[m] for m in names])))
    files['fused'] = fused
    files['maps/fused'] = p_fused
    files['weights'] = weights_picture(weights)

    thr = area_threshold(opt)
    metrics = {m: {'artifact_area': float((probs[m] > thr).mean())} for m in names}
    metrics['fused'] = {'artifact_area': float((p_fused.astype(np.float32) / 255.0 > thr).mean())}
    if src.get('gt'):
        gt = _read(src['gt'])
        if gt.shape[:2] != hw:
            raise DataError(f'GT {display_name(src["gt"])} is {_wh(gt.shape[:2])} but the outputs of '
                            f"'{display_name(name)}' are {_wh(hw)}; they must have the same size")
        for m in names:
            metrics[m].update(image_metrics(outs[m], gt, opt['metrics'], lpips, device))
        metrics['fused'].update(image_metrics(fused, gt, opt['metrics'], lpips, device))
    record = {'height': int(hw[0]), 'width': int(hw[1]), 'metrics': metrics,
              'mean_weights': {m: float(weights[k].mean()) for k, m in enumerate(names)},
              'out_paths': out_paths}
    return files, record


def fuse_pipeline(opt: dict) -> dict:
    """Run the fusion as the options say; returns ``{'processed', 'skipped', 'records', 'root', 'reasons',
    'metrics'}``."""
    from desra.engine import dist as dist_utils
    from desra.engine.logger import detach_log_file, get_root_logger
    from desra.registry import import_user_modules
    from desra.utils.lock import FolderLock
    from desra.utils.progress import Progress

    get_root_logger()
    import_user_modules(opt.get('import_modules'))
    plan = opt.get('_plan') or preflight(opt)
    names, sources = plan['names'], plan['sources']
    root = os.path.abspath(output_root(opt))
    device = dist_utils.get_device(opt.get('num_gpu', 'auto'))

    # ---- everything that can fail on user input, before the output folder is touched
    nets = load_generators(opt, device)
    mapper = build_artifact_map(opt['artifact_map'], device)
    lpips = (lpips_status(opt['metrics']) if opt.get('gt') else
             {'available': False, 'net': opt['metrics']['lpips_net'], 'reason': 'no GT', 'how': None, 'files': None})
    if opt.get('gt') and not lpips['available']:
        logger.warning('LPIPS is not computed: %s%s', lpips['reason'], f" (get them: {lpips['how']})"
                       if lpips['how'] else '')
    settings = fuse_settings(opt, lpips)
    writer = FuseWriter(root, settings)

    lock = FolderLock(root, 'fusion output folder')
    lock.acquire()
    log_file = os.path.join(root, f"fuse_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    try:
        get_root_logger(log_file)
        removed = remove_stale_temp_files(root)
        if removed:
            logger.info('Removed %d temporary file(s) left by an interrupted run in %s', len(removed), root)
        inputs = {n: _identities(sources[n]) for n in names}
        reasons = {}
        for n in names:
            why = writer.reason_to_compute(n, inputs[n])
            if why is not None:
                reasons[n] = why
        todo = [n for n in names if n in reasons]
        skipped = len(names) - len(todo)
        if todo:
            logger.info('Fusing %d of %d image(s) in %s (%s)%s', len(todo), len(names), root,
                        _summarise_reasons(reasons), f'; {skipped} unchanged, skipped' if skipped else '')
        else:
            logger.info('All %d image(s) are up to date in %s (same settings and inputs): skipped', skipped, root)
        progress = Progress(len(todo), 'fuse', unit='img')
        records = []
        for n in todo:
            files, fields = fuse_one(n, sources[n], opt, nets, mapper, lpips, device)
            fields['paths'] = _paths(writer, n, opt, sources[n], fields.pop('out_paths'))
            records.append(writer.write(n, files, fields, inputs[n]))
            progress.update()
        progress.close()
        all_records = [writer.read_record(n) for n in names]
        all_records = [r for r in all_records if r is not None]
        info = write_metrics(root, opt, all_records, lpips)
        if opt.get('html', True):
            page = write_fuse_gallery(root, opt, all_records)
            logger.info('Gallery: %s', page)
        _log_summary(opt, info)
        logger.info('%d image(s) fused, %d skipped; results in %s', len(todo), skipped, root)
    finally:
        detach_log_file(log_file)
        lock.release()
    return {'processed': len(todo), 'skipped': skipped, 'records': records, 'root': root, 'reasons': reasons,
            'metrics': info}


def _paths(writer: FuseWriter, name: str, opt: dict, src: dict, out_paths: dict) -> dict:
    models = [m['name'] for m in opt['models']]
    outputs = {m: out_paths[m] or os.path.abspath(writer.path(f'outputs/{m}', name)) for m in models}
    maps = {m: os.path.abspath(writer.path(f'maps/{m}', name)) for m in models + ['fused']}
    return {'input': os.path.abspath(src['input']) if src.get('input') else None,
            'gt': os.path.abspath(src['gt']) if src.get('gt') else None, 'outputs': outputs, 'maps': maps,
            'fused': os.path.abspath(writer.path('fused', name)),
            'weights': os.path.abspath(writer.path('weights', name))}


def _log_summary(opt: dict, info: dict) -> None:
    for m in info['methods']:
        v = info['mean'][m]
        parts = [f"area {100 * v['artifact_area']:.2f}%" if v.get('artifact_area') is not None else 'area n/a']
        if info['gt']:
            parts += [f"{k.upper()} {v[k]:.4f}" for k in ('psnr', 'ssim', 'lpips') if v.get(k) is not None]
        logger.info('%s: %s', m, ', '.join(parts))
