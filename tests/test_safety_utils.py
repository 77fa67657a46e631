"""The torch-free helpers behind safe reruns: fingerprints, locks, progress lines, atomic writes, orientation."""
import hashlib
import logging
import os

import numpy as np
import pytest

from conftest import run_script
from desra.atomic import atomic_open, atomic_write_bytes, remove_stale_temp_files
from desra.utils.fingerprint import changed_keys, file_sha256, settings_hash, weights_identity
from desra.utils.images import apply_orientation, display_name
from desra.utils.lock import FolderLock
from desra.utils.progress import Progress


def test_settings_hash_ignores_key_order_and_sees_values():
    a = {'detector': {'type': 'desra', 'threshold': 0.7, 'min_area': 10}, 'tile': [0, 10]}
    b = {'tile': [0, 10], 'detector': {'min_area': 10, 'threshold': 0.7, 'type': 'desra'}}
    assert settings_hash(a) == settings_hash(b)
    c = {'tile': [0, 10], 'detector': {'min_area': 10, 'threshold': 0.95, 'type': 'desra'}}
    assert settings_hash(a) != settings_hash(c)
    assert changed_keys(a, c) == ['detector.threshold']
    assert changed_keys(a, {**a, 'extra': 1}) == ['extra']
    assert changed_keys(a, a) == []


def test_weights_identity_is_the_content(tmp_path):
    data = os.urandom(3000)
    (tmp_path / 'w.pth').write_bytes(data)
    (tmp_path / 'copy.pth').write_bytes(data)
    assert file_sha256(str(tmp_path / 'w.pth')) == hashlib.sha256(data).hexdigest()
    assert weights_identity(str(tmp_path / 'w.pth')) == weights_identity(str(tmp_path / 'copy.pth'))
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'folder' / 'config.json').write_text('{}')
    first = weights_identity(str(tmp_path / 'folder'))
    (tmp_path / 'folder' / 'config.json').write_text('{"a": 1}')
    assert weights_identity(str(tmp_path / 'folder')) != first
    assert weights_identity('nvidia/segformer-b5') == 'nvidia/segformer-b5'  # a hub id stays as given


def test_lock_refuses_a_second_holder_and_check_creates_nothing(tmp_path):
    folder = tmp_path / 'root'
    FolderLock(str(folder)).check()
    assert not folder.exists()
    with FolderLock(str(folder), 'detection output root'):
        other = FolderLock(str(folder), 'detection output root')
        with pytest.raises(Exception) as e:
            other.acquire()
        assert type(e.value).__name__ == 'FolderInUseError'
        assert str(e.value).startswith(f'detection output root {folder} is in use by pid {os.getpid()} on ')
    FolderLock(str(folder)).acquire().release()


def test_progress_log_lines(caplog):
    log = logging.getLogger('test.progress')
    with caplog.at_level(logging.INFO, logger='test.progress'):
        os.environ['DESRA_PROGRESS'] = 'log'
        try:
            p = Progress(4, 'detect', unit='img', interval=3600, logger=log)
            for _ in range(4):
                p.update()
            p.close()
        finally:
            del os.environ['DESRA_PROGRESS']
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first item and the end (the interval is an hour)
    assert lines[0].startswith('detect: 1/4 img (') and 'ETA' in lines[0]
    assert lines[1].startswith('detect: 4/4 img (') and 'ETA' not in lines[1]


def test_atomic_write_leaves_no_temp_and_cleanup_is_selective(tmp_path):
    atomic_write_bytes(str(tmp_path / 'a.bin'), b'abc')
    with atomic_open(str(tmp_path / 'b.txt'), 'w') as f:
        f.write('caf' + os.fsdecode(b'\xe9'))  # a surrogate-escaped name is written back as its bytes
    assert (tmp_path / 'b.txt').read_bytes() == b'caf\xe9'
    with pytest.raises(RuntimeError):
        with atomic_open(str(tmp_path / 'a.bin')) as f:
            f.write(b'new')
            raise RuntimeError('boom')
    assert (tmp_path / 'a.bin').read_bytes() == b'abc' and sorted(os.listdir(tmp_path)) == ['a.bin', 'b.txt']
    (tmp_path / '.a.bin.k3j_x9z0.tmp').write_bytes(b'left by a kill')
    (tmp_path / '.hidden.tmp').write_bytes(b'not ours')
    (tmp_path / 'user.tmp').write_bytes(b'not ours')
    assert remove_stale_temp_files(str(tmp_path)) == [str(tmp_path / '.a.bin.k3j_x9z0.tmp')]
    assert sorted(os.listdir(tmp_path)) == ['.hidden.tmp', 'a.bin', 'b.txt', 'user.tmp']


def test_apply_orientation_against_pillow():
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for orientation in range(1, 9):
        pil = Image.fromarray(img)
        exif = pil.getexif()
        exif[0x0112] = orientation
        pil.info['exif'] = exif.tobytes()
        reference = np.asarray(ImageOps.exif_transpose(pil))
        assert np.array_equal(apply_orientation(img, orientation), reference), orientation


def test_display_name():
    assert display_name('plain.png') == 'plain.png'
    assert display_name(os.fsdecode(b'caf\xe9.png')) == 'caf\\xe9.png'
    assert display_name('café.png') == 'café.png'


def test_test_py_shows_progress_off_a_terminal(tmp_path, tiny_data):
    import yaml

    opt = {'name': 'probe', 'model_type': 'SRModel', 'scale': 4,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'PairedImageDataset',
                                   'dataroot_gt': os.path.join(tiny_data, 'HR'),
                                   'dataroot_lq': os.path.join(tiny_data, 'LR')}},
           'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                         'num_grow_ch': 4},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}}}}
    (tmp_path / 't.yml').write_text(yaml.safe_dump(opt))
    out = run_script('test.py', ['-opt', str(tmp_path / 't.yml')], tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'test tiny: 1/8 img (' in out.stdout and 'test tiny: 8/8 img (' in out.stdout
