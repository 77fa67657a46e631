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
import os
import re
import time
from typing import Any

import yaml

from desra.errors import ConfigError


# ----------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """Safe loader that also reads YAML-1.2 floats without a dot (``1e-4``) as floats."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def yaml_load(text: str, source: str = '<string>') -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


def load_yaml_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"option file not found: {path}")
    with open(path, encoding='utf-8') as f:
        opt = yaml_load(f.read(), path)
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


class Spec:
    """Expected type of one option: python types, required flag, nested specs (``children``), and a spec for
    every other child of a mapping (``any_child``)."""

    def __init__(self, types, required=False, children=None, any_child=None, name=None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.required = required
        self.children = children or {}
        self.any_child = any_child  # spec applied to every child of a mapping (e.g. datasets.*)
        self.name = name


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


def check_schema(value, spec: Spec, path: str) -> None:
    """Raise :class:`ConfigError` naming the key path of the first missing or mistyped option under ``path``."""
    ok = isinstance(value, spec.types)
    if isinstance(value, bool) and bool not in spec.types:
        ok = False  # True is an int in Python, but not an acceptable iteration count
    if not ok:
        raise ConfigError(f"{path or 'top level'}: expected {_type_name(spec.types)}, "
                          f"got {value!r} ({type(value).__name__})")
    if isinstance(value, dict):
        for key, child in spec.children.items():
            if key not in value or value[key] is None and type(None) not in child.types:
                if child.required:
                    raise ConfigError(f"{_join(path, key)}: missing required key "
                                      f"(expected {_type_name(child.types)})")
                continue
            check_schema(value[key], child, _join(path, key))
        if spec.any_child is not None:
            for key, v in value.items():
                if key not in spec.children:
                    check_schema(v, spec.any_child, _join(path, key))


def _typed(required=False):
    """A ``{type: Name, ...}`` block (network, loss, optimizer, scheduler)."""
    return Spec(dict, required, {'type': Spec(str, True)})


_LOSS = _typed()
_DATASET = Spec(dict, False, {
    'type': Spec(str, True), 'name': Spec(str), 'dataroot_gt': Spec((str, list)),
    'dataroot_lq': Spec((str, list)), 'meta_info_file': Spec((str, type(None))),
    'gt_size': Spec(int), 'use_hflip': Spec(bool), 'use_rot': Spec(bool),
    'num_worker_per_gpu': Spec(int), 'batch_size_per_gpu': Spec(int), 'dataset_enlarge_ratio': Spec(int),
    'io_backend': Spec(dict, False, {'type': Spec(str, True)}),
})

_TRAIN_SCHEMA = Spec(dict, True, {
    'name': Spec(str, True),
    'model_type': Spec(str, True),
    'scale': Spec(int, True),
    'num_gpu': Spec((int, str)),
    'manual_seed': Spec(int),
    'import_modules': Spec(list),
    'datasets': Spec(dict, True, {'train': Spec(dict, True, _DATASET.children)}, any_child=_DATASET),
    'network_g': _typed(True),
    'network_d': _typed(),
    'path': Spec(dict, False, {
        'pretrain_network_g': Spec((str, type(None))), 'param_key_g': Spec(str), 'strict_load_g': Spec(bool),
        'pretrain_network_d': Spec((str, type(None))), 'param_key_d': Spec(str), 'strict_load_d': Spec(bool),
        'resume_state': Spec((str, type(None))), 'experiments_root': Spec(str),
    }),
    'train': Spec(dict, True, {
        'total_iter': Spec(int, True),
        'warmup_iter': Spec(int),
        'ema_decay': Spec(NUMBER),
        'optim_g': Spec(dict, True, {'type': Spec(str, True), 'lr': Spec(NUMBER, True),
                                      'weight_decay': Spec(NUMBER), 'betas': Spec(list)}),
        'optim_d': Spec(dict, False, {'type': Spec(str, True), 'lr': Spec(NUMBER, True),
                                       'weight_decay': Spec(NUMBER), 'betas': Spec(list)}),
        'scheduler': Spec(dict, False, {'type': Spec(str, True)}),
        'net_d_iters': Spec(int), 'net_d_init_iters': Spec(int),
        'use_amp': Spec(bool), 'amp_dtype': Spec(str),
    }),
    'val': Spec(dict, False, {'val_freq': Spec(NUMBER), 'save_img': Spec(bool), 'metrics': Spec(dict)}),
    'logger': Spec(dict, False, {'print_freq': Spec(int), 'save_checkpoint_freq': Spec(NUMBER),
                                 'save_checkpoint_iters': Spec(list),
                                  'use_tb_logger': Spec(bool)}),
    'dist_params': Spec(dict, False, {'backend': Spec(str), 'port': Spec(int)}),
})

_TEST_SCHEMA = Spec(dict, True, {
    'name': Spec(str, True),
    'model_type': Spec(str),
    'scale': Spec(int, True),
    'num_gpu': Spec((int, str)),
    'import_modules': Spec(list),
    'datasets': Spec(dict, True, any_child=_DATASET),
    'network_g': _typed(True),
    'path': Spec(dict, False, {'pretrain_network_g': Spec((str, type(None))), 'param_key_g': Spec(str),
                                'strict_load_g': Spec(bool)}),
    'val': Spec(dict, False, {'save_img': Spec(bool), 'metrics': Spec(dict)}),
})


def _check_losses(train: dict) -> None:
    for key, value in train.items():
        if key.endswith('_opt') and value is not None:
            check_schema(value, _LOSS, f"train.{key}")


def validate_options(opt: dict, is_train: bool = True) -> None:
    """Raise :class:`ConfigError` naming the key path of the first missing or mistyped option."""
    check_schema(opt, _TRAIN_SCHEMA if is_train else _TEST_SCHEMA, '')
    if is_train:
        _check_losses(opt['train'])
        freq = opt.get('val', {}) or {}
        if freq and 'val_freq' in freq and 'val' not in opt['datasets'] and not any(
                k.startswith('val') for k in opt['datasets']):
            raise ConfigError("val.val_freq is set but datasets has no 'val' entry; add datasets.val or remove val")


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


def parse_options(argv: list[str] | None = None, is_train: bool = True) -> tuple[dict, argparse.Namespace]:
    """Parse the CLI, load and validate the YAML, and derive the runtime fields.

    Returns the option dict (with ``is_train``, ``auto_resume``, ``dist``, ``rank``, ``world_size`` and
    ``path.*`` folders filled in) and the argparse namespace. Distributed init happens here, as in BasicSR,
    so that ``rank`` is known when the paths are made.
    """
    from desra.engine.dist import init_dist  # local: keeps `import desra.config` free of torch.distributed

    args = build_arg_parser(is_train=is_train).parse_args(argv)
    opt = load_yaml_file(args.opt)
    apply_force_yml(opt, args.force_yml)
    validate_options(opt, is_train=is_train)

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
