"""YAML options: loading, ``--force_yml`` overrides, validation with key paths, derived paths.

The option vocabulary is BasicSR's (``name``, ``model_type``, ``scale``, ``datasets.train``, ``network_g``,
``path.pretrain_network_g``, ``train.optim_g``, ``train.*_opt``, ``val``, ``logger``, ``dist_params``, ...),
so an LDL or Real-ESRGAN option file runs after changing paths and the few type names that differ
(README, "Option files").

Differences from BasicSR, on purpose:

* ``--force_yml a:b=c`` parses ``c`` as YAML; nothing is ever ``exec``-ed or ``eval``-ed.
* Floats such as ``1e-4`` are read as floats (YAML 1.2), so ``!!float`` is not needed (but still accepted).
* Every option is checked on load: unknown-type values and missing required keys are reported with
  their key path (``train.optim_g.lr: expected a number, got 'fast'``).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import re
import time
from typing import Any

import yaml

from desra.errors import ConfigError, DataError
from desra.tile_options import tile_size_option


# ----------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """Safe loader that reads YAML-1.2 floats without a dot (``1e-4``) as floats and refuses duplicate keys.

    PyYAML silently keeps the last of two equal keys in a mapping; a duplicated ``lr`` or ``total_iter`` then
    changes a run without a word, so it is an error naming the key and both lines.
    """

    source = '<string>'

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{self.source}: duplicate key '{key}' on lines {seen[key]} and {line} (YAML "
                                      f"would silently keep the last value); remove one of them")
                seen[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def yaml_load(text: str, source: str = '<string>') -> Any:
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"option file not found: {path}")
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read option file {path}: {e}") from None
    opt = yaml_load(text, path)
    if not isinstance(opt, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(opt).__name__}")
    return opt


def dump_yaml(opt: dict) -> str:
    return yaml.safe_dump(opt, sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------- --force_yml
def apply_force_yml(opt: dict, overrides: list[str] | None) -> dict:
    """Apply ``a:b:c=value`` overrides in place; ``value`` is parsed as YAML, keys may be new.

    >>> apply_force_yml({'train': {'total_iter': 10}}, ['train:total_iter=20', 'logger:print_freq=1'])
    {'train': {'total_iter': 20}, 'logger': {'print_freq': 1}}
    """
    for item in overrides or []:
        if '=' not in item:
            raise ConfigError(f"--force_yml '{item}': expected KEY:SUBKEY=VALUE (e.g. train:total_iter=1000)")
        key_str, value_str = item.split('=', 1)
        keys = key_str.split(':')
        if any(not k.strip() for k in keys):
            raise ConfigError(f"--force_yml '{item}': empty key in '{key_str}'; expected KEY:SUBKEY=VALUE")
        try:
            value = yaml.load(value_str, Loader=_Loader) if value_str.strip() else None
        except yaml.YAMLError as e:
            msg = str(e).splitlines()[0]
            raise ConfigError(f"--force_yml '{item}': the value '{value_str}' is not valid YAML ({msg})") from None
        node = opt
        for depth, k in enumerate(keys[:-1]):
            child = node.get(k) if isinstance(node, dict) else None
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--force_yml '{item}': '{':'.join(keys[:depth + 1])}' is a "
                                  f"{type(child).__name__}, not a mapping")
            node = child
        node[keys[-1]] = value
    return opt


# ----------------------------------------------------------------------------------------- validation
NUMBER = (int, float)
NONE = type(None)


class Spec:
    """What one option may hold.

    Args:
        types: accepted python types.
        required: a missing key is an error.
        children: specs of the known keys of a mapping.
        any_child: spec applied to every key of a mapping that ``children`` does not name (``datasets.*``).
        closed: a key of a mapping that is neither in ``children`` nor covered by ``any_child`` is an error with
            the closest known key suggested. Default: closed when ``children`` are given and ``any_child`` is
            not. Blocks whose keys are constructor arguments (``network_g``, losses) stay open: the registry
            checks them against the constructor's signature.
        check: ``check(value, key_path) -> value`` for range checks; may normalise (``5e3`` -> ``5000``).
        ignored: accepted for compatibility and ignored; the text says why (one warning line).
    """

    def __init__(self, types, required=False, children=None, any_child=None, name=None, closed=None, check=None,
                 ignored=None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.required = required
        self.children = children or {}
        self.any_child = any_child
        self.name = name
        self.closed = bool(self.children) and any_child is None if closed is None else closed
        self.check = check
        self.ignored = ignored


def _type_name(types) -> str:
    names = {bool: 'true/false', int: 'an integer', float: 'a number', str: 'a string', dict: 'a mapping',
             list: 'a list', type(None): 'null'}
    uniq = []
    for t in types:
        n = names.get(t, t.__name__)
        if t is int and float in types:
            continue
        if n not in uniq:
            uniq.append(n)
    return ' or '.join(uniq)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def unknown_key_error(path: str, key, known) -> ConfigError:
    import difflib

    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f'did you mean {close[0]}?' if close else f"known keys here: {', '.join(known)}"
    return ConfigError(f"{_join(path, key)}: unknown key; {hint}")


def check_schema(value, spec: Spec, path: str, warnings: list | None = None):
    """Check ``value`` against ``spec``; returns it, normalised where a ``check`` does so (mappings in place).

    Raises :class:`ConfigError` naming the key path of the first unknown, missing, mistyped or out-of-range
    option. Keys marked ``ignored`` add one line each to ``warnings``.
    """
    ok = isinstance(value, spec.types)
    if isinstance(value, bool) and bool not in spec.types:
        ok = False  # True is an int in Python, but not an acceptable iteration count
    if isinstance(value, float) and float not in spec.types and int in spec.types and spec.check is not None:
        ok = True  # BasicSR files write counts as floats (val_freq: !!float 5e3); the check makes them ints
    if not ok:
        raise ConfigError(f"{path or 'top level'}: expected {_type_name(spec.types)}, "
                          f"got {value!r} ({type(value).__name__})")
    if spec.check is not None and value is not None:
        value = spec.check(value, path or 'top level')
    if isinstance(value, dict):
        if spec.closed:
            for key in value:
                if key not in spec.children and spec.any_child is None:
                    raise unknown_key_error(path, key, spec.children)
        for key, child in spec.children.items():
            if key not in value or value[key] is None and type(None) not in child.types:
                if child.required:
                    raise ConfigError(f"{_join(path, key)}: missing required key "
                                      f"(expected {_type_name(child.types)})")
                continue
            if child.ignored and warnings is not None:
                warnings.append(f"{_join(path, key)}: accepted and ignored ({child.ignored})")
            value[key] = check_schema(value[key], child, _join(path, key), warnings)
        if spec.any_child is not None:
            for key, v in value.items():
                if key not in spec.children:
                    value[key] = check_schema(v, spec.any_child, _join(path, key), warnings)
    return value


# ---- range checks (used as Spec(check=...)); each message names the key and what was expected
def _as_int(value, path: str, what: str = 'an integer') -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{path}: expected {what}, got {value!r} (float)")
        value = int(value)
    return value


def positive_int(value, path: str) -> int:
    value = _as_int(value, path, 'a positive integer (>= 1)')
    if value < 1:
        raise ConfigError(f"{path}: expected a positive integer (>= 1), got {value!r}")
    return value


def nonneg_int(value, path: str) -> int:
    value = _as_int(value, path, 'an integer >= 0')
    if value < 0:
        raise ConfigError(f"{path}: expected an integer >= 0, got {value!r}")
    return value


def any_int(value, path: str) -> int:
    return _as_int(value, path)


def positive_number(value, path: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: expected a positive finite number, got {value!r}")
    return value


def nonneg_number(value, path: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{path}: expected a finite number >= 0, got {value!r}")
    return value


def finite_number(value, path: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    return value


def _probability(value, path: str) -> float:
    if not (math.isfinite(value) and 0 < value < 1):
        raise ConfigError(f"{path}: expected a probability in (0, 1), got {value!r}")
    return value


def ema_decay(value, path: str) -> float:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"{path}: expected a number in [0, 1) (0 = no EMA; LDL uses 0.999), got {value!r}")
    return value


def num_gpu(value, path: str):
    if isinstance(value, str):
        if value != 'auto':
            raise ConfigError(f"{path}: expected 'auto' or an integer >= 0 (0 = CPU), got {value!r}")
        return value
    return nonneg_int(value, path)


def positive_int_list(value, path: str) -> list:
    return [positive_int(check_schema(v, Spec(int), f'{path}[{i}]'), f'{path}[{i}]') for i, v in enumerate(value)]


def _speed_option(value, path: str):
    from desra.engine.speed import check_speed_option

    return check_speed_option(value, path)


def run_name(value, path: str) -> str:
    """``name`` becomes a folder under ``experiments/`` or ``results/``: one plain path component."""
    bad = (not value.strip() or value in ('.', '..') or '/' in value or '\\' in value or '\x00' in value
           or os.path.isabs(value) or value != value.strip())
    if bad:
        raise ConfigError(f"{path}: expected a plain folder name (no '/', '\\', '..', surrounding spaces or "
                          f"absolute path; it names experiments/<name>), got {value!r}")
    return value


def _typed(required=False, **extra):
    """A ``{type: Name, ...}`` block (network, loss, optimizer, scheduler): its other keys are the constructor's."""
    return Spec(dict, required, {'type': Spec(str, True), **extra}, closed=False)


_STR_OR_NONE = (str, NONE)
_LOSS = _typed()
_OPTIM = _typed(True, lr=Spec(NUMBER, True, check=positive_number), weight_decay=Spec(NUMBER, check=nonneg_number),
                betas=Spec(list))

#: Keys of a ``datasets.*`` block that the data loader reads (the dataset class checks its own keys).
LOADER_KEYS = {'name', 'type', 'phase', 'scale', 'key_path', 'batch_size_per_gpu', 'num_worker_per_gpu',
               'dataset_enlarge_ratio', 'use_shuffle', 'pin_memory', 'prefetch_mode', 'num_prefetch_queue'}

_DATASET = Spec(dict, False, {
    'type': Spec(str, True), 'name': Spec(str), 'dataroot_gt': Spec((str, list)),
    'dataroot_lq': Spec((str, list)), 'meta_info_file': Spec(_STR_OR_NONE), 'meta_info': Spec(_STR_OR_NONE),
    'gt_size': Spec(int, check=positive_int), 'use_hflip': Spec(bool), 'use_rot': Spec(bool),
    'use_shuffle': Spec(bool), 'pin_memory': Spec(bool),
    'num_worker_per_gpu': Spec(int, check=nonneg_int), 'batch_size_per_gpu': Spec(int, check=positive_int),
    'dataset_enlarge_ratio': Spec(int, check=positive_int),
    'io_backend': Spec(dict, False, {'type': Spec(str, True)}, closed=False),
    'prefetch_mode': Spec((str, NONE), ignored='data are loaded by DataLoader workers; set num_worker_per_gpu'),
    'num_prefetch_queue': Spec(int, ignored='data are loaded by DataLoader workers; set num_worker_per_gpu'),
}, closed=False)  # the dataset class checks its own keys when it is built (still before anything is written)

_TRAIN_DATASET = Spec(dict, True, {**_DATASET.children, 'batch_size_per_gpu': Spec(int, True, check=positive_int)},
                      closed=False)

#: Real-ESRGAN's top-level keys (used by RealESRGANModel with high_order_degradation: true).
REALESRGAN_KEYS = (
    'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range', 'gray_noise_prob',
    'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2', 'gaussian_noise_prob2', 'noise_range2',
    'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2', 'gt_size', 'queue_size')

#: Keys the command-line front end fills in; accepted in files for BasicSR compatibility.
RUNTIME_KEYS = ('is_train', 'opt_path', 'auto_resume', 'launcher', 'dist', 'rank', 'world_size', 'root_path')

_COMMON_TOP = {
    'name': Spec(str, True, check=run_name),
    'model_type': Spec(str, True),
    'scale': Spec(int, True, check=positive_int),
    'num_gpu': Spec((int, str), check=num_gpu),
    'manual_seed': Spec(int, check=any_int),
    'import_modules': Spec(list),
    'max_image_pixels': Spec(int, check=nonneg_int),
    'deterministic': Spec(bool),
    'find_unused_parameters': Spec(bool),
    **{k: Spec(object) for k in RUNTIME_KEYS},
}

_TRAIN_SCHEMA = Spec(dict, True, {
    **_COMMON_TOP,
    'datasets': Spec(dict, True, {'train': _TRAIN_DATASET}, any_child=_DATASET),
    'network_g': _typed(True),
    'network_d': _typed(),
    'path': Spec(dict, False, {
        'pretrain_network_g': Spec(_STR_OR_NONE), 'param_key_g': Spec(str), 'strict_load_g': Spec(bool),
        'pretrain_network_d': Spec(_STR_OR_NONE), 'param_key_d': Spec(str), 'strict_load_d': Spec(bool),
        'resume_state': Spec(_STR_OR_NONE), 'experiments_root': Spec(str), 'root': Spec(str),
        'ignore_resume_networks': Spec((list, NONE), ignored='every network is restored on resume'),
        # BasicSR's older names, read as the current ones
        'pretrain_model_g': Spec(_STR_OR_NONE), 'pretrain_model_d': Spec(_STR_OR_NONE), 'strict_load': Spec(bool),
    }),
    'train': Spec(dict, True, {
        'total_iter': Spec(int, True, check=positive_int),
        'warmup_iter': Spec(int, check=any_int),
        'ema_decay': Spec(NUMBER, check=ema_decay),
        'optim_g': _OPTIM,
        'optim_d': _typed(False, lr=Spec(NUMBER, True, check=positive_number),
                          weight_decay=Spec(NUMBER, check=nonneg_number), betas=Spec(list)),
        'scheduler': _typed(),
        'pixel_opt': Spec((dict, NONE), children=_LOSS.children, closed=False),
        'perceptual_opt': Spec((dict, NONE), children=_LOSS.children, closed=False),
        'gan_opt': Spec((dict, NONE), children=_LOSS.children, closed=False),
        'artifacts_opt': Spec((dict, NONE), children=_LOSS.children, closed=False),
        'ldl_opt': Spec((dict, NONE), children=_LOSS.children, closed=False),
        'seg_opt': Spec((dict, NONE), children=_LOSS.children, closed=False), 'sync_bn': Spec(bool),
        'net_d_iters': Spec(int, check=positive_int), 'net_d_init_iters': Spec(int, check=nonneg_int),
        'relativistic_gan': Spec(bool),
        'use_amp': Spec(bool), 'amp_dtype': Spec(str),
        # desra.engine.speed: 'auto' (absent) = the device's measured default
        'compile': Spec((bool, str, dict, NONE), check=_speed_option),
        **{k: Spec((bool, str), check=_speed_option) for k in ('channels_last', 'fused_optim', 'cudnn_benchmark',
                                                              'tf32')},
    }),
    'val': Spec(dict, False, {
        'val_freq': Spec(int, check=positive_int), 'save_img': Spec(bool), 'suffix': Spec(_STR_OR_NONE),
        'tile_size': Spec((int, str), check=tile_size_option), 'tile_pad': Spec(int, check=nonneg_int),
        'tb_images': Spec(int, check=nonneg_int),
        'metrics': Spec((dict, NONE), any_child=_typed()),
        'pbar': Spec(bool, ignored='progress is always shown: a bar on a terminal, log lines otherwise'),
        # LocalizerModel: masks from probability > threshold, then the detection morphology
        'threshold': Spec(NUMBER, check=_probability), 'morphology': Spec(dict, False, {
            k: Spec(int, check=nonneg_int) for k in ('erode', 'dilate', 'dilate_iterations', 'fill_holes',
                                                     'min_area')}),
        'tile': Spec(int, check=positive_int), 'overlap': Spec(int, check=nonneg_int),
    }),
    'logger': Spec(dict, False, {
        'print_freq': Spec(int, check=positive_int), 'save_checkpoint_freq': Spec(int, check=positive_int),
        'save_checkpoint_iters': Spec(list, check=positive_int_list), 'use_tb_logger': Spec(bool),
        'wandb': Spec((dict, NONE), ignored='Weights & Biases logging is not built in; use TensorBoard'),
    }),
    'dist_params': Spec(dict, False, {'backend': Spec(_STR_OR_NONE), 'port': Spec(int, check=positive_int)}),
    'high_order_degradation': Spec(bool),
    'l1_gt_usm': Spec(bool), 'percep_gt_usm': Spec(bool), 'gan_gt_usm': Spec(bool), 'gt_usm': Spec(bool),
    **{k: Spec(object) for k in REALESRGAN_KEYS},
})

_TEST_SCHEMA = Spec(dict, True, {
    **_COMMON_TOP,
    'model_type': Spec(str),
    'datasets': Spec(dict, True, any_child=_DATASET),
    'network_g': _typed(True),
    'path': Spec(dict, False, {'pretrain_network_g': Spec(_STR_OR_NONE), 'param_key_g': Spec(str),
                                'strict_load_g': Spec(bool), 'results_root': Spec(str), 'root': Spec(str)}),
    'val': Spec(dict, False, {
        'save_img': Spec(bool), 'suffix': Spec(_STR_OR_NONE), 'metrics': Spec((dict, NONE), any_child=_typed()),
        'tile_size': Spec((int, str), check=tile_size_option), 'tile_pad': Spec(int, check=nonneg_int),
        'pbar': Spec(bool, ignored='progress is always shown: a bar on a terminal, log lines otherwise')}),
    'dist_params': Spec(dict, False, {'backend': Spec(_STR_OR_NONE), 'port': Spec(int, check=positive_int)}),
})


def validate_options(opt: dict, is_train: bool = True, warnings: list | None = None) -> dict:
    """Raise :class:`ConfigError` naming the key path of the first unknown, missing, mistyped or out-of-range
    option; returns ``opt`` with counts normalised to integers. Ignored BasicSR keys add lines to ``warnings``."""
    check_schema(opt, _TRAIN_SCHEMA if is_train else _TEST_SCHEMA, '', warnings)
    path = opt.get('path') or {}
    for old, new in (('pretrain_model_g', 'pretrain_network_g'), ('pretrain_model_d', 'pretrain_network_d'),
                     ('strict_load', 'strict_load_g')):
        if old in path:
            value = path.pop(old)
            if new in path and path[new] != value:
                raise ConfigError(f'path.{old}: BasicSR\'s old name of path.{new}, which is also set; keep one')
            path[new] = value
    if is_train:
        freq = opt.get('val', {}) or {}
        if freq and 'val_freq' in freq and not any(k.startswith('val') for k in opt['datasets']):
            raise ConfigError("val.val_freq is set but datasets has no 'val' entry; add datasets.val or remove val")
    return opt


def check_data_paths(opt: dict) -> None:
    """Refuse missing ``dataroot_*`` folders and ``meta_info*`` files of every data set (no torch needed)."""
    for phase, ds in (opt.get('datasets') or {}).items():
        kp = f'datasets.{phase}'
        backend = (ds.get('io_backend') or {}).get('type', 'disk') if isinstance(ds.get('io_backend'), dict) \
            else 'disk'
        if backend != 'disk':
            continue
        for key, value in ds.items():
            if key.startswith('dataroot_') and isinstance(value, str) and value:
                folder = os.path.abspath(os.path.expanduser(value))
                if not os.path.isdir(folder):
                    what = 'expected a folder but found a file' if os.path.exists(folder) else 'folder does not exist'
                    raise DataError(f'{kp}.{key}: {what}: {folder}')
            if key in ('meta_info_file', 'meta_info') and isinstance(value, str) and value:
                path = os.path.abspath(os.path.expanduser(value))
                if not os.path.isfile(path):
                    raise DataError(f'{kp}.{key}: file does not exist: {path}')


# ------------------------------------------------------------------------------------------------ CLI
def build_arg_parser(description: str = 'Train a super-resolution model.', is_train: bool = True):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('-opt', '--opt', dest='opt', required=True, help='path to the option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher: none (single process), pytorch (torchrun) or slurm')
    if is_train:
        parser.add_argument('--auto_resume', action='store_true',
                            help='resume from the latest training state in experiments/<name>/training_states')
        parser.add_argument('--debug', action='store_true',
                            help='debug mode: name prefixed with debug_, frequent logging/validation/saving')
    parser.add_argument('--local_rank', '--local-rank', dest='local_rank', type=int, default=0,
                        help='set by old torch.distributed.launch; torchrun uses LOCAL_RANK')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUBKEY=VALUE',
                        help='override options, e.g. train:total_iter=1000 (value parsed as YAML)')
    return parser


def load_options(argv: list[str] | None = None, is_train: bool = True,
                 description: str | None = None) -> tuple[dict, argparse.Namespace, list[str]]:
    """Parse the command line, read the YAML, apply ``--force_yml`` and validate everything that needs no torch.

    Returns ``(opt, args, warnings)``; ``warnings`` lists the BasicSR keys that are accepted and ignored.
    Raises :class:`ConfigError` for unknown, duplicate, missing, mistyped or out-of-range keys, before torch is
    imported.
    """
    parser = build_arg_parser(description or ('Train a super-resolution model.' if is_train
                                              else 'Test a super-resolution model.'), is_train=is_train)
    args = parser.parse_args(argv)
    warnings: list[str] = []
    opt = read_checked_options(args.opt, args.force_yml,
                               lambda o, w: validate_options(o, is_train=is_train, warnings=w), warnings)
    return opt, args, warnings


def read_checked_options(path: str, overrides: list[str] | None, validate, warnings: list[str]) -> dict:
    """The YAML at ``path`` with the ``--force_yml`` ``overrides``, checked by ``validate(opt, warnings)`` (which
    appends the accepted-and-ignored keys to ``warnings``), and its ``max_image_pixels`` in force."""
    opt = load_yaml_file(path)
    apply_force_yml(opt, overrides)
    validate(opt, warnings)
    apply_image_limit(opt)
    return opt


def apply_image_limit(opt: dict) -> None:
    """``max_image_pixels`` for this process and the data-loader workers it starts."""
    if opt.get('max_image_pixels') is not None:
        from desra.utils.images import set_max_image_pixels

        set_max_image_pixels(opt['max_image_pixels'])
        os.environ['DESRA_MAX_IMAGE_PIXELS'] = str(int(opt['max_image_pixels']))


def report_warnings(warnings: list[str]) -> None:
    """One warning line each, on the first process only."""
    if not warnings or int(os.environ.get('RANK', '0') or 0) != 0:
        return
    from desra.engine.logger import get_root_logger

    log = get_root_logger()
    for w in warnings:
        log.warning(w)


def parse_options(argv: list[str] | None = None, is_train: bool = True,
                  check_paths: bool = False) -> tuple[dict, argparse.Namespace]:
    """Parse the CLI, load and validate the YAML, and derive the runtime fields.

    Returns the option dict (with ``is_train``, ``auto_resume``, ``dist``, ``rank``, ``world_size`` and
    ``path.*`` folders filled in) and the argparse namespace. Everything that can be checked without torch is
    checked first (:func:`load_options`, and with ``check_paths`` the data folders); distributed init happens
    after, as in BasicSR, so that ``rank`` is known when the paths are made.
    """
    opt, args, warnings = load_options(argv, is_train)
    if check_paths:
        check_data_paths(opt)
    report_warnings(warnings)
    from desra.engine.dist import init_dist  # the first torch import of train.py / test.py

    opt['is_train'] = is_train
    opt['opt_path'] = os.path.abspath(args.opt)
    opt['auto_resume'] = bool(getattr(args, 'auto_resume', False))
    rank, world_size = init_dist(args.launcher, opt.get('dist_params') or {})
    opt['launcher'] = args.launcher
    opt['dist'] = args.launcher != 'none'
    opt['rank'], opt['world_size'] = rank, world_size

    if is_train and getattr(args, 'debug', False) and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    if is_train and 'debug' in opt['name']:
        # BasicSR's debug behaviour: exercise every periodic path within the first few iterations
        if opt.get('val'):
            opt['val']['val_freq'] = 8
        opt.setdefault('logger', {}).update(print_freq=1, save_checkpoint_freq=8)
    finalize_options(opt)
    return opt, args


def finalize_options(opt: dict, root: str | None = None) -> dict:
    """Fill defaults and derived fields in place (dataset phases, experiment folders, seed)."""
    root = os.path.abspath(root or os.getcwd())
    opt.setdefault('num_gpu', 'auto')
    opt.setdefault('dist', False)
    opt.setdefault('rank', 0)
    opt.setdefault('world_size', 1)
    if opt.get('manual_seed') is None:
        # one seed for every rank: rank-specific streams are derived from it
        opt['manual_seed'] = int(time.time() * 1000) % (2 ** 31) if opt['world_size'] == 1 else 0
    for phase_key, dataset in (opt.get('datasets') or {}).items():
        phase = phase_key.split('_')[0]
        dataset['phase'] = phase
        dataset.setdefault('name', phase_key)
        dataset['scale'] = opt['scale']
    path = opt.setdefault('path', {})
    path.setdefault('param_key_g', 'params')
    path.setdefault('strict_load_g', True)
    path.setdefault('param_key_d', 'params')
    path.setdefault('strict_load_d', True)
    path['root'] = root
    if opt.get('is_train', True):
        exp_root = path.get('experiments_root') or os.path.join(root, 'experiments', opt['name'])
        path['experiments_root'] = exp_root
        path['models'] = os.path.join(exp_root, 'models')
        path['training_states'] = os.path.join(exp_root, 'training_states')
        path['log'] = exp_root
        path['visualization'] = os.path.join(exp_root, 'visualization')
        path['tb_logger'] = os.path.join(root, 'tb_logger', opt['name'])
    else:
        results_root = path.get('results_root') or os.path.join(root, 'results', opt['name'])
        path['results_root'] = results_root
        path['log'] = results_root
        path['visualization'] = os.path.join(results_root, 'visualization')
    return opt


def copy_opt(opt: dict) -> dict:
    return copy.deepcopy(opt)
