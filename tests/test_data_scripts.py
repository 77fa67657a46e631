"""Data preparation scripts: sub-images (BasicSR's rule), meta_info files (Real-ESRGAN's formats), LMDB."""
import os

import cv2
import numpy as np
import pytest

from conftest import cli_main


def test_sub_image_starts_is_basicsr_rule():
    extract = cli_main('scripts/extract_subimages.py')
    import importlib.util

    spec = importlib.util.spec_from_file_location('extract', os.path.join(os.path.dirname(__file__), '..', 'scripts',
                                                                          'extract_subimages.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.sub_image_starts(1000, 480, 240, 0) == [0, 240, 480, 520]   # a flush last crop when pixels remain
    assert mod.sub_image_starts(960, 480, 240, 0) == [0, 240, 480]
    assert mod.sub_image_starts(1000, 480, 240, 100) == [0, 240, 480]      # 40 px left <= threshold: no extra crop
    assert mod.sub_image_starts(300, 480, 240, 0) == []
    assert extract is not None


def test_extract_subimages_crops_and_names(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'in').mkdir()
    img = rng.integers(0, 256, (100, 130, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'in' / '0001x4.png'), img)
    cv2.imwrite(str(tmp_path / 'in' / 'small.png'), img[:20, :20])
    out = cli_main('scripts/extract_subimages.py')(['--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'),
                                                    '--crop-size', '60', '--step', '30'])
    names = sorted(os.listdir(tmp_path / 'out'))
    # rows 0, 30, 40 (flush); columns 0, 30, 60, 70 (flush): 12 crops, "x4" removed from the name
    assert names == [f'0001_s{i:03d}.png' for i in range(1, 13)] and out['skipped'] == ['small.png']
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / '0001_s004.png')), img[0:60, 70:130])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / '0001_s012.png')), img[40:100, 70:130])


def test_generate_meta_info_formats(tmp_path):
    for sub in ('HR', 'LR', 'OST'):
        (tmp_path / sub).mkdir()
    for i in range(3):
        for sub, size in (('HR', 16), ('LR', 4), ('OST', 16)):
            cv2.imwrite(str(tmp_path / sub / f'{i}.png'), np.zeros((size, size, 3), np.uint8))
    (tmp_path / 'OST' / 'broken.png').write_bytes(b'not an image')
    gen = cli_main('scripts/generate_meta_info.py')
    lines = gen(['--input', str(tmp_path / 'HR'), str(tmp_path / 'OST'), '--root', str(tmp_path), str(tmp_path),
                 '--meta-info', str(tmp_path / 'meta.txt'), '--check'])
    assert lines == ['HR/0.png', 'HR/1.png', 'HR/2.png', 'OST/0.png', 'OST/1.png', 'OST/2.png']
    assert (tmp_path / 'meta.txt').read_text().splitlines() == lines
    pairs = gen(['--pair', '--input', str(tmp_path / 'HR'), str(tmp_path / 'LR'), '--root', str(tmp_path),
                 str(tmp_path), '--meta-info', str(tmp_path / 'pair.txt')])
    assert pairs == ['HR/0.png, LR/0.png', 'HR/1.png, LR/1.png', 'HR/2.png, LR/2.png']
    from desra.data.realesrgan_dataset import RealESRGANPairedDataset

    ds = RealESRGANPairedDataset({'phase': 'val', 'scale': 4, 'dataroot_gt': str(tmp_path),
                                  'dataroot_lq': str(tmp_path), 'meta_info': str(tmp_path / 'pair.txt')})
    assert len(ds) == 3 and tuple(ds[0]['gt'].shape) == (3, 16, 16) and tuple(ds[0]['lq'].shape) == (3, 4, 4)


def test_create_lmdb_refuses_an_existing_output(tmp_path, tiny_data):
    from desra.errors import ConfigError

    create = cli_main('scripts/create_lmdb.py')
    create(['--input', os.path.join(tiny_data, 'HR'), '--output', str(tmp_path / 'x.lmdb')])
    assert sorted(os.listdir(tmp_path / 'x.lmdb')) == ['data.mdb', 'lock.mdb', 'meta_info.txt']
    with pytest.raises(ConfigError, match='already exists'):
        create(['--input', os.path.join(tiny_data, 'HR'), '--output', str(tmp_path / 'x.lmdb')])
