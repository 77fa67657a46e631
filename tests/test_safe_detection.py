"""detect.py reruns keyed by their settings, one writer per output root, input limits, one image policy
(EXIF orientation), file names that are not UTF-8, CSV quoting and URL-encoded gallery links."""
import csv
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import zlib
from urllib.parse import unquote_to_bytes

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import (REPO, SHARED, cli_env, cli_main, make_mse_gan_pairs, run_script, tree_snapshot,
                      user_error_in_process, write_opt)
from desra.utils.lock import FolderLock

PHOTOS = os.path.join(SHARED, 'data', 'photos')


def mode_b(mse, gan, root, **detector):
    return {'name': 'det', 'input': {'mse_sr': str(mse), 'gan_sr': str(gan)}, 'segmenter': {'type': 'none'},
            'detector': {'type': 'desra', 'min_area': 20, **detector}, 'output': {'root': str(root)}}


def make_pairs(root, names, size=(48, 64), seed=0):
    return make_mse_gan_pairs(root, names, size, seed, patch='noise')


def masks(root):
    folder = os.path.join(root, 'masks')
    return {f: cv2.imread(os.path.join(folder, f), cv2.IMREAD_UNCHANGED) for f in sorted(os.listdir(folder))}


def detect(tmp_path, opt, name='det.yml'):
    return run_script('detect.py', ['-opt', write_opt(tmp_path / name, opt)], tmp_path)


def test_rerun_with_another_threshold_equals_a_fresh_run(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'), ['a', 'b', 'c'])
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out', threshold=0.7))
    assert out.returncode == 0, out.stderr
    first = masks(tmp_path / 'out')
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out', threshold=0.95))
    assert out.returncode == 0, out.stderr
    assert 'Computing 3 of 3 image(s)' in out.stdout and '3 settings changed: detector.threshold' in out.stdout
    assert 'detect: 3/3 img (' in out.stdout  # progress off a terminal
    fresh = detect(tmp_path, mode_b(mse, gan, tmp_path / 'fresh', threshold=0.95), 'fresh.yml')
    assert fresh.returncode == 0, fresh.stderr
    rerun, new = masks(tmp_path / 'out'), masks(tmp_path / 'fresh')
    assert any(not np.array_equal(first[k], new[k]) for k in new)  # the threshold matters on these images
    assert all(np.array_equal(rerun[k], new[k]) for k in new)
    rec = json.load(open(tmp_path / 'out' / 'records' / 'a.json'))
    assert rec['settings']['detector']['threshold'] == 0.95
    # unchanged settings and inputs: everything skipped; one input rewritten: only that image
    again = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out', threshold=0.95))
    assert 'All 3 image(s) are up to date' in again.stdout and '0 image(s) processed, 3 skipped' in again.stdout
    time.sleep(0.01)
    img = cv2.imread(os.path.join(gan, 'b.png'))
    cv2.imwrite(os.path.join(gan, 'b.png'), 255 - img)
    again = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out', threshold=0.95))
    assert 'Computing 1 of 3 image(s)' in again.stdout and '1 input file changed' in again.stdout


def test_second_detect_on_a_held_root_refuses(tmp_path, monkeypatch):
    mse, gan = make_pairs(str(tmp_path / 'data'), ['a'])
    root = tmp_path / 'out'
    path = write_opt(tmp_path / 'det.yml', mode_b(mse, gan, root))
    with FolderLock(str(root), 'detection output root'):
        before = tree_snapshot(root)
        msg = user_error_in_process(cli_main('detect.py'), ['-opt', path], tmp_path, monkeypatch)
        assert tree_snapshot(root) == before
    assert msg.startswith(f'detection output root {root} is in use by pid {os.getpid()} on ')
    assert '\n' not in msg


def _bomb_png(path, side=20000):
    """A real 20000 x 20000 grayscale PNG of zeros (about 0.4 MB), written without holding its pixels."""
    def chunk(tag, data):
        return (len(data).to_bytes(4, 'big') + tag + data
                + (zlib.crc32(tag + data) & 0xFFFFFFFF).to_bytes(4, 'big'))

    comp = zlib.compressobj(1)  # about 1.7 MB, like the 1.17 MB file of the report
    row = bytes(side + 1)  # filter byte + pixels
    idat = b''.join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = side.to_bytes(4, 'big') * 2 + bytes([8, 0, 0, 0, 0])
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def test_decompression_bomb_is_refused_fast_and_small(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'), ['a'])
    _bomb_png(os.path.join(mse, 'bomb.png'))
    _bomb_png(os.path.join(gan, 'bomb.png'))
    path = write_opt(tmp_path / 'det.yml', mode_b(mse, gan, tmp_path / 'out'))
    # a wrapper reports the detect.py process's own peak memory
    code = textwrap.dedent(f'''
        import resource, subprocess, sys, time
        t = time.time()
        p = subprocess.run([sys.executable, {os.path.join(REPO, 'detect.py')!r}, '-opt', {path!r}],
                           capture_output=True, text=True)
        print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)
        sys.stderr.write(p.stderr)
    ''')
    res = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    seconds, peak_kib, rc = res.stdout.split()
    bomb = os.path.join(mse, 'bomb.png')  # the MSE-SR twin is read first
    assert int(rc) == 2
    assert res.stderr == (f'error: image {bomb} is 20000x20000 = 400,000,000 pixels, above the limit of 178,956,970 '
                          f'(a decompression bomb, or an image too large to process); raise the limit with '
                          f'max_image_pixels / DESRA_MAX_IMAGE_PIXELS if it is genuine\n')
    print(f'bomb refused in {float(seconds):.2f} s, peak {int(peak_kib) / 1024:.0f} MiB')
    assert float(seconds) < 2.0 and int(peak_kib) < 500 * 1024, (seconds, peak_kib)
    assert not (tmp_path / 'out').exists()


def test_pixel_limit_is_configurable_and_applies_to_every_reader(tmp_path, monkeypatch):
    from desra.data.io import imread
    from desra.errors import DataError
    from desra.utils.images import set_max_image_pixels

    path = tmp_path / 'x.png'
    cv2.imwrite(str(path), np.zeros((30, 40, 3), np.uint8))
    try:
        set_max_image_pixels(1000)
        with pytest.raises(DataError, match=r'is 40x30 = 1,200 pixels, above the limit of 1,000'):
            imread(str(path))
        set_max_image_pixels(0)  # no limit
        assert imread(str(path)).shape == (30, 40, 3)
        set_max_image_pixels(None)
        monkeypatch.setenv('DESRA_MAX_IMAGE_PIXELS', '1199')
        with pytest.raises(DataError, match=r'above the limit of 1,199'):
            imread(str(path), flag='unchanged')
    finally:
        set_max_image_pixels(None)


def test_image_smaller_than_the_window_is_named(tmp_path):
    mse, gan = make_pairs(str(tmp_path / 'data'), ['a'])
    cv2.imwrite(os.path.join(mse, 'tiny.png'), np.zeros((8, 30, 3), np.uint8))
    cv2.imwrite(os.path.join(gan, 'tiny.png'), np.zeros((8, 30, 3), np.uint8))
    out = detect(tmp_path, mode_b(mse, gan, tmp_path / 'out'))
    assert out.returncode == 2
    assert out.stderr == (f"error: {os.path.join(gan, 'tiny.png')} is 30x8 (WxH), smaller than the detector's 11x11 "
                          f"window; remove it or use larger images\n")
    assert not (tmp_path / 'out').exists()


def _with_orientation(rgb, orientation, fmt, **kw):
    """Encode ``rgb`` stored so that EXIF ``orientation`` turns it back upright (Pillow as the reference)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}
    stored = Image.fromarray(rgb)
    if orientation in inverse:
        stored = stored.transpose(inverse[orientation])
    buf = io.BytesIO()
    stored.save(buf, format=fmt, exif=exif.tobytes(), **kw)
    data = buf.getvalue()
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), rgb) or fmt == 'JPEG'
    return data


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_by_every_reader(tmp_path, orientation):
    from desra.data.io import imread
    from desra.detection.pipeline import read_sr_image

    rng = np.random.default_rng(orientation)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (24, 40, 3)).astype(np.uint8), (5, 5), 1)
    for fmt, ext in (('PNG', '.png'), ('JPEG', '.jpg')):
        path = tmp_path / f'o{orientation}{ext}'
        data = _with_orientation(rgb, orientation, fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
        path.write_bytes(data)
        reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert('RGB'))[..., ::-1]
        training = imread(str(path), 'color')          # PairedImageDataset / test.py
        detection = read_sr_image(str(path))           # detect.py / make_pseudo_gt.py
        assert training.shape == detection.shape == reference.shape == (24, 40, 3)
        assert np.array_equal(training.astype(np.float32), detection)
        tol = 0 if fmt == 'PNG' else 3  # decoders may differ by a rounding step on JPEG
        assert np.abs(training.astype(int) - reference).max() <= tol
        if fmt == 'JPEG':  # OpenCV's own orientation handling agrees with ours
            cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert np.array_equal(cv, training)


@pytest.mark.skipif(not os.path.isdir(os.path.join(PHOTOS, 'GAN-SR')), reason='shared photos absent')
def test_rotated_pair_gives_the_mask_of_the_upright_pair(tmp_path):
    name = sorted(os.listdir(os.path.join(PHOTOS, 'GAN-SR')))[0]
    mse = cv2.imread(os.path.join(PHOTOS, 'MSE-SR', name))[:200, :256]
    gan = cv2.imread(os.path.join(PHOTOS, 'GAN-SR', name))[:200, :256]
    for sub in ('up', 'rot'):
        for kind in ('MSE', 'GAN'):
            os.makedirs(tmp_path / sub / kind)
    cv2.imwrite(str(tmp_path / 'up' / 'MSE' / 'p.png'), mse)
    cv2.imwrite(str(tmp_path / 'up' / 'GAN' / 'p.png'), gan)
    (tmp_path / 'rot' / 'MSE' / 'p.png').write_bytes(_with_orientation(mse[..., ::-1].copy(), 6, 'PNG'))
    (tmp_path / 'rot' / 'GAN' / 'p.png').write_bytes(_with_orientation(gan[..., ::-1].copy(), 6, 'PNG'))
    for sub in ('up', 'rot'):
        out = detect(tmp_path, mode_b(tmp_path / sub / 'MSE', tmp_path / sub / 'GAN', tmp_path / f'out_{sub}',
                                      min_area=50), f'{sub}.yml')
        assert out.returncode == 0, out.stderr
    up, rot = masks(tmp_path / 'out_up')['p.png'], masks(tmp_path / 'out_rot')['p.png']
    assert up.shape == rot.shape == (200, 256) and (up > 0).any()
    assert np.array_equal(up, rot)


def test_odd_file_names_end_to_end(tmp_path):
    latin1 = os.fsdecode(b'caf\xe9')  # not valid UTF-8: a surrogate-escaped str on Linux
    names = [latin1, 'a,b #1?', 'plain']
    mse, gan = make_pairs(str(tmp_path / 'data'), names)
    root = tmp_path / 'out'
    opt = mode_b(mse, gan, root)
    opt['input'] = {'mse_sr': mse, 'gan_sr': gan}
    out = detect(tmp_path, opt)
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(os.path.join(str(root), 'records', latin1 + '.json'))
    # summary.csv: valid UTF-8, one row per image, the comma inside a quoted cell
    text = (root / 'summary.csv').read_bytes().decode('utf-8')
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ['name', 'height', 'width', 'artifact_pixels', 'artifact_fraction', 'regions']
    assert sorted(r[0] for r in rows[1:]) == sorted(['caf\\xe9', 'a,b #1?', 'plain'])
    assert all(len(r) == 6 for r in rows)
    # gallery: percent-encoded links that resolve to the files, valid UTF-8 text
    html = (root / 'index.html').read_bytes().decode('utf-8')
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(srcs) == 3 * 4
    for src in srcs:
        assert '#' not in src and '?' not in src and ',' not in src
        assert os.path.isfile(os.path.join(os.fsencode(str(root)), unquote_to_bytes(src))), src
    # the rerun reads the records back and skips everything
    again = detect(tmp_path, opt)
    assert again.returncode == 0 and '0 image(s) processed, 3 skipped' in again.stdout, again.stderr


def test_unwritable_output_root_is_one_line(tmp_path, monkeypatch):
    mse, gan = make_pairs(str(tmp_path / 'data'), ['a'])
    (tmp_path / 'afile').write_text('x')
    path = write_opt(tmp_path / 'det.yml', mode_b(mse, gan, tmp_path / 'afile' / 'out'))
    msg = user_error_in_process(cli_main('detect.py'), ['-opt', path], tmp_path, monkeypatch)
    assert msg.startswith(f"cannot create detection output root {tmp_path / 'afile' / 'out'}: ") and '\n' not in msg


def test_output_error_messages(tmp_path):
    import errno

    from desra.atomic import atomic_write_bytes, output_error

    target = str(tmp_path / 'sub' / 'f.bin')
    msg = str(output_error(target, OSError(errno.ENOSPC, 'No space left on device'), 3 * 1024 * 1024))
    assert msg.startswith(f'cannot write {target}: no space left on the device (3.0 MiB needed, ')
    assert str(output_error(target, OSError(errno.EACCES, 'Permission denied'))) == \
        f'cannot write {target}: permission denied; {tmp_path / "sub"} is not writable by this user'
    assert str(output_error(target, OSError(errno.EROFS, 'Read-only file system'))) == \
        f'cannot write {target}: {tmp_path / "sub"} is on a read-only file system'
    (tmp_path / 'plain').write_text('x')
    from desra.errors import OutputError

    with pytest.raises(OutputError, match='a part of the folder path .* is a file, not a folder'):
        atomic_write_bytes(str(tmp_path / 'plain' / 'x.png'), b'123')
