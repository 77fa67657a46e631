"""detect.py I/O and start-up: one durable commit per image with the record last (crash and failure leave no
record over missing files, a rerun recomputes exactly those images), output.png_compression, no .npy unless
asked, and torch-free --help and mode (b) without a segmenter."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

import desra.atomic as atomic
from conftest import REPO, cli_env, cli_main, run_script, user_error_in_process, write_opt
from conftest import make_mse_gan_pairs as make_pairs
from desra.atomic import commit_files
from desra.detection.pipeline import validate_detect_options
from desra.errors import ConfigError, OutputError

needs_proc = pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc to name the file written')


def mode_b(mse, gan, root, output=None, **extra):
    return {'name': 'det', 'input': {'mse_sr': str(mse), 'gan_sr': str(gan)}, 'segmenter': {'type': 'none'},
            'detector': {'type': 'desra', 'min_area': 20}, 'output': {'root': str(root), **(output or {})}, **extra}


def detect(tmp_path, opt, name='det.yml', **kw):
    return run_script('detect.py', ['-opt', write_opt(tmp_path / name, opt)], tmp_path, **kw)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def pixels(root, kind, name):
    """The image ``<root>/<kind>/<name>.*`` (masks are PNG; pictures JPEG by default, PNG on request)."""
    (path,) = [p for p in (os.path.join(root, kind, name + e) for e in ('.png', '.jpg')) if os.path.isfile(p)]
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


# ------------------------------------------------------------------------------------------- commit_files
def test_commit_files_syncs_all_then_renames_then_the_last_file(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace, real_dir = atomic._fsync_fd, os.replace, atomic.fsync_dir
    monkeypatch.setattr(atomic, '_fsync_fd', lambda fd: (events.append(('fsync', fd)), real_fsync(fd)))
    monkeypatch.setattr(os, 'replace', lambda a, b: (events.append(('rename', os.path.relpath(b, tmp_path))),
                                                     real_replace(a, b)))
    monkeypatch.setattr(atomic, 'fsync_dir', lambda d: (events.append(('dir', os.path.relpath(d, tmp_path))),
                                                        real_dir(d)))
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / 'x.png').write_bytes(b'old')
    n = commit_files([(tmp_path / 'm' / 'x.png', b'mask'), (tmp_path / 'v' / 'D' / 'x.png', b'vis')],
                     last=(tmp_path / 'records' / 'x.json', b'{}'))
    assert n == len(b'mask') + len(b'vis') + len(b'{}')
    assert files_under(tmp_path) == ['m/x.png', 'records/x.json', 'v/D/x.png']  # no temporary file left
    assert (tmp_path / 'm' / 'x.png').read_bytes() == b'mask'
    kinds = [e[0] for e in events]
    assert kinds[:3] == ['fsync'] * 3  # one pass over the three temporary files (the record's too), first
    assert sorted(e[1] for e in events[3:5]) == ['m/x.png', 'v/D/x.png']
    assert sorted(events[5:7]) == [('dir', 'm'), ('dir', 'v/D')]  # one fsync per folder touched
    assert events[7:] == [('rename', 'records/x.json'), ('dir', 'records')]  # the record only after all that


@needs_proc
def test_commit_files_failure_renames_nothing(tmp_path, monkeypatch):
    real = atomic._fsync_fd

    def failing(fd):
        if '.vis.png.' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.EIO, 'Input/output error')
        real(fd)

    monkeypatch.setattr(atomic, '_fsync_fd', failing)
    (tmp_path / 'mask.png').write_bytes(b'old')
    with pytest.raises(OutputError) as e:
        commit_files([(tmp_path / 'mask.png', b'new'), (tmp_path / 'vis.png', b'vis')],
                     last=(tmp_path / 'rec.json', b'{}'))
    assert str(e.value) == f'cannot write {tmp_path / "vis.png"}: Input/output error'
    assert files_under(tmp_path) == ['mask.png'] and (tmp_path / 'mask.png').read_bytes() == b'old'


# ------------------------------------------------------------------------------------------- crash safety
KILLER = textwrap.dedent('''
    """Test plugin (import_modules): SIGKILL detect.py at $DESRA_TEST_KILL = 'rename:<path end>' (just before
    that file is renamed into place) or 'write:<file name>' (half of that file's bytes written)."""
    import os, signal
    import desra.atomic as atomic

    WHEN, WHAT = os.environ['DESRA_TEST_KILL'].split(':', 1)
    _rename, _write = atomic._rename, atomic._write_file

    def _rename_or_die(t):
        if WHEN == 'rename' and t[2].endswith(WHAT):
            os.kill(os.getpid(), signal.SIGKILL)
        return _rename(t)

    def _write_or_die(fd, data):
        if WHEN == 'write' and WHAT in os.readlink(f'/proc/self/fd/{fd}'):
            os.write(fd, bytes(data)[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return _write(fd, data)

    atomic._rename, atomic._write_file = _rename_or_die, _write_or_die
''')


@needs_proc
@pytest.mark.parametrize('kill_at', ['rename:records/b.json', 'write:overlays/.b.jpg.'])
def test_killed_mid_image_leaves_no_record_and_the_rerun_recomputes_it(tmp_path, kill_at):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    plugin = tmp_path / 'plugin'
    plugin.mkdir()
    (plugin / 'killer.py').write_text(KILLER)
    root = tmp_path / 'out'
    env = {**cli_env(str(plugin)), 'DESRA_TEST_KILL': kill_at}
    cmd = [sys.executable, os.path.join(REPO, 'detect.py'), '-opt',
           write_opt(tmp_path / 'kill.yml', mode_b(mse, gan, root, import_modules=['killer']))]
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    records = sorted(f for f in os.listdir(root / 'records') if not f.startswith('.'))
    assert records[:1] == ['a.json'] and 'b.json' not in records and 'c.json' not in records
    finals = [f for f in files_under(root) if not os.path.basename(f).startswith('.')]
    if kill_at.startswith('rename'):  # b's files were all durable under their names; only its record is missing
        assert {'masks/b.png', 'vis/D/b.jpg', 'overlays/b.jpg'} <= set(finals)
    else:  # killed while writing b's overlay: nothing of b is under a final name, only temporary files
        assert not any(os.path.basename(f).startswith('b.') for f in finals)
        assert any(f.startswith('overlays/.b.jpg.') for f in files_under(root))
    for rec in records:  # every record that exists stands over complete files
        r = json.load(open(root / 'records' / rec))
        for key in ('mask', 'd_map', 'overlay'):
            assert cv2.imread(r[key], cv2.IMREAD_UNCHANGED) is not None

    again = detect(tmp_path, mode_b(mse, gan, root))
    assert again.returncode == 0, again.stderr
    assert re.search(r'Removed \d+ temporary file\(s\) left by an interrupted run', again.stdout)
    assert 'Computing 2 of 3 image(s)' in again.stdout and '(2 new); 1 unchanged, skipped' in again.stdout
    fresh = detect(tmp_path, mode_b(mse, gan, tmp_path / 'fresh'), 'fresh.yml')
    assert fresh.returncode == 0, fresh.stderr
    assert files_under(root / 'masks') == files_under(tmp_path / 'fresh' / 'masks') == ['a.png', 'b.png', 'c.png']
    assert not [f for f in files_under(root) if f.endswith('.tmp')]
    for name in 'abc':
        for kind in ('masks', 'vis/D', 'overlays'):
            assert np.array_equal(pixels(root, kind, name), pixels(tmp_path / 'fresh', kind, name)), (kind, name)


@needs_proc
def test_write_failure_mid_image_is_one_line_and_the_rerun_recomputes(tmp_path, monkeypatch):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    root = tmp_path / 'out'
    path = write_opt(tmp_path / 'det.yml', mode_b(mse, gan, root))
    real = atomic._fsync_fd

    def disk_full_at_b_overlay(fd):
        if os.path.join('overlays', '.b.jpg.') in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        real(fd)

    monkeypatch.setattr(atomic, '_fsync_fd', disk_full_at_b_overlay)
    msg = user_error_in_process(cli_main('detect.py'), ['-opt', path], tmp_path, monkeypatch)
    assert msg.startswith(f'cannot write {root / "overlays" / "b.jpg"}: no space left on the device (')
    assert msg.endswith('earlier files are intact. Free some space and run the command again')
    assert sorted(os.listdir(root / 'records')) == ['a.json']
    assert not any(os.path.basename(f).startswith(('b.', '.b.')) for f in files_under(root))  # nor temporaries
    monkeypatch.setattr(atomic, '_fsync_fd', real)
    again = run_script('detect.py', ['-opt', path], tmp_path)
    assert again.returncode == 0, again.stderr
    assert 'Computing 2 of 3 image(s)' in again.stdout and '(2 new); 1 unchanged, skipped' in again.stdout
    assert sorted(os.listdir(root / 'records')) == ['a.json', 'b.json', 'c.json']


# ------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize('value, message', [
    (12, 'output.png_compression: expected an integer from 0 (no compression, fastest) to 9 (smallest files), '
         'got 12'),
    (1.5, 'output.png_compression: expected an integer from 0 (no compression, fastest) to 9 (smallest files), '
          'got 1.5'),
    ('fast', "output.png_compression: expected an integer, got 'fast' (str)"),
])
def test_png_compression_is_validated(tmp_path, value, message):
    opt = mode_b(tmp_path, tmp_path, tmp_path / 'out', output={'png_compression': value})
    with pytest.raises(ConfigError) as e:
        validate_detect_options(opt)
    assert str(e.value) == message


def test_png_compression_error_from_the_cli_touches_nothing(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'), names=('a',))
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out', output={'png_compression': -1}))
    assert out.returncode == 2 and out.stdout == ''
    assert out.stderr == ('error: output.png_compression: expected an integer from 0 (no compression, fastest) to 9 '
                          '(smallest files), got -1\n')
    assert not (tmp_path / 'out').exists()


def test_png_compression_changes_bytes_not_pixels_nor_the_fingerprint(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    for level in (0, 9):
        out = detect(tmp_path, mode_b(mse, gan, tmp_path / f'l{level}',
                                      output={'png_compression': level, 'picture_format': 'png'}))
        assert out.returncode == 0, out.stderr
    small, big = tmp_path / 'l9', tmp_path / 'l0'
    for name in 'abc':
        for kind in ('masks', 'vis/D', 'overlays'):
            assert np.array_equal(pixels(small, kind, name), pixels(big, kind, name))
            assert os.path.getsize(small / kind / f'{name}.png') < os.path.getsize(big / kind / f'{name}.png')
        r9, r0 = (json.load(open(r / 'records' / f'{name}.json')) for r in (small, big))
        assert (r9['png_compression'], r0['png_compression']) == (9, 0)
        assert r9['fingerprint']['settings'] == r0['fingerprint']['settings']
    again = detect(tmp_path, mode_b(mse, gan, small, output={'png_compression': 0, 'picture_format': 'png'}))
    assert 'All 3 image(s) are up to date' in again.stdout and '0 image(s) processed, 3 skipped' in again.stdout


def test_default_outputs_have_no_npy_and_save_maps_adds_them(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out'))
    assert out.returncode == 0, out.stderr
    assert re.search(r'Timing: 3 image\(s\) in [\d.]+ s, [\d.]+ ms per image \(waits and work: read [\d.]+, '
                     r'detect [\d.]+, write [\d.]+ ms\)', out.stdout), out.stdout
    names = [f for f in files_under(tmp_path / 'out') if not re.fullmatch(r'detect_det_\d{8}_\d{6}\.log', f)]
    assert names == ['index.html', 'masks/a.png', 'masks/b.png', 'masks/c.png', 'overlays/a.jpg', 'overlays/b.jpg',
                     'overlays/c.jpg', 'records/a.json', 'records/b.json', 'records/c.json', 'summary.csv',
                     'vis/D/a.jpg', 'vis/D/b.jpg', 'vis/D/c.jpg']
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'maps', output={'save_maps': True}))
    assert out.returncode == 0, out.stderr
    npy = [f for f in files_under(tmp_path / 'maps') if f.endswith('.npy')]
    assert npy == ['maps/D/a.npy', 'maps/D/b.npy', 'maps/D/c.npy', 'maps/S/a.npy', 'maps/S/b.npy', 'maps/S/c.npy']
    d = np.load(tmp_path / 'maps' / 'maps' / 'D' / 'a.npy')
    assert d.dtype == np.float32 and d.shape == (48 - 10, 64 - 10)


# ------------------------------------------------------------------------------------------- start-up
def _modules_after(script_args, tmp_path):
    code = textwrap.dedent(f'''
        import runpy, sys
        sys.argv = {script_args!r}
        try:
            runpy.run_path({os.path.join(REPO, 'detect.py')!r}, run_name='__main__')
        except SystemExit as e:
            print('exit', e.code)
        print('loaded:', *[m for m in ('torch', 'scipy', 'numpy', 'cv2') if m in sys.modules])
    ''')
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    return out.stdout.strip().splitlines()[-1], out  # 'loaded: <the modules of the four that were imported>'


def test_help_imports_neither_torch_nor_numpy(tmp_path):
    loaded, out = _modules_after(['detect.py', '--help'], tmp_path)
    assert 'usage:' in out.stdout and 'exit 0' in out.stdout
    assert loaded == 'loaded:'


def test_mode_b_without_segmenter_runs_without_torch_or_scipy(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    path = write_opt(tmp_path / 'det.yml', mode_b(mse, gan, tmp_path / 'out'))
    loaded, out = _modules_after(['detect.py', '-opt', path], tmp_path)
    assert '3 image(s) processed, 0 skipped' in out.stdout, out.stderr
    assert loaded == 'loaded: numpy cv2'


def test_indicator_pool_survives_fork():
    """The strip workers are kept for the process; a forked child (a DataLoader worker) must get its own."""
    import multiprocessing as mp

    from desra.detection.indicator import texture_similarity

    rng = np.random.default_rng(0)
    mse, gan = (rng.integers(0, 256, (300, 90, 3)).astype(np.float32) for _ in range(2))
    expected = texture_similarity(mse, gan)  # creates the pool in this process
    with mp.get_context('fork').Pool(1) as pool:
        got = pool.apply_async(texture_similarity, (mse, gan)).get(timeout=60)
    assert np.array_equal(got, expected)


def test_e2e_benchmark_skips_without_the_shared_photos(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location('bench_detect', os.path.join(REPO, 'benchmarks',
                                                                              'detect_indicator.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, 'PHOTOS', tmp_path / 'absent')
    bench.main(['--part', 'e2e'])
    assert capsys.readouterr().out == (f'end to end: skipped, the shared photos are not in {tmp_path / "absent"} '
                                       '(MSE-SR/ and GAN-SR/)\n')


def test_picture_format_png_replaces_the_jpeg_pictures_and_a_bad_value_is_one_line(tmp_path, monkeypatch):
    mse, gan = make_pairs(str(tmp_path / 'data'))
    root = tmp_path / 'out'
    assert detect(tmp_path, mode_b(mse, gan, root)).returncode == 0
    jpg_masks = {n: pixels(root, 'masks', n) for n in 'abc'}
    out = detect(tmp_path, mode_b(mse, gan, root, output={'picture_format': 'png'}))
    assert out.returncode == 0, out.stderr
    assert 'Computing 3 of 3 image(s)' in out.stdout and 'outputs.picture_format' in out.stdout
    names = [f for f in files_under(root) if f.startswith(('vis/', 'overlays/'))]
    assert names == ['overlays/a.png', 'overlays/b.png', 'overlays/c.png', 'vis/D/a.png', 'vis/D/b.png',
                     'vis/D/c.png']  # the JPEGs of the first run are gone
    for n in 'abc':
        rec = json.load(open(root / 'records' / f'{n}.json'))
        assert rec['overlay'] == str(root / 'overlays' / f'{n}.png')
        assert rec['d_map'] == str(root / 'vis/D' / f'{n}.png')
        assert np.array_equal(pixels(root, 'masks', n), jpg_masks[n])  # masks never depend on it
    path = write_opt(tmp_path / 'bad.yml', mode_b(mse, gan, tmp_path / 'bad', output={'picture_format': 'gif'}))
    msg = user_error_in_process(cli_main('detect.py'), ['-opt', path], tmp_path, monkeypatch)
    assert msg == "output.picture_format: expected 'jpg' or 'png', got 'gif'"
    assert not (tmp_path / 'bad').exists()
