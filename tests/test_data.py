"""Image I/O, transforms and the paired/single image datasets, on real PNG files in tmp_path."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from desra.data import (PairedImageDataset, SingleImageDataset, augment, img2tensor, imread, imwrite_atomic,
                        mod_crop, paired_random_crop, scandir, tensor2img)
from desra.errors import ConfigError, DataError
from desra.registry import DATASET_REGISTRY

SCALE = 4


def _write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _lq_image(seed, h=12, w=10):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _up(lq):
    """Nearest-neighbour x4: any aligned crop/flip/transpose keeps gt[::4, ::4] == lq."""
    return np.kron(lq, np.ones((SCALE, SCALE, 1), np.uint8))


def _make_pairs(root, names=('0001', '0002', '0003'), h=12, w=10, lq_tmpl='{}'):
    gt_dir, lq_dir = root / 'gt', root / 'lq'
    for i, n in enumerate(names):
        lq = _lq_image(i, h, w)
        _write(gt_dir / f'{n}.png', _up(lq))
        _write(lq_dir / f'{lq_tmpl.format(n)}.png', lq)
    return gt_dir, lq_dir


def _opt(gt_dir, lq_dir, phase='train', **kw):
    opt = {'name': 'toy', 'type': 'PairedImageDataset', 'phase': phase, 'scale': SCALE,
           'dataroot_gt': str(gt_dir), 'dataroot_lq': str(lq_dir), 'io_backend': {'type': 'disk'},
           'gt_size': 16, 'use_hflip': True, 'use_rot': True}
    opt.update(kw)
    return opt


# ---------------------------------------------------------------------------------------------------- io

def test_imread_roundtrip_non_ascii(tmp_path):
    img = _lq_image(0, 9, 7)
    path = tmp_path / 'données' / 'bild_ü.png'
    imwrite_atomic(img, path)  # creates the parent folder
    out = imread(path)
    assert out.dtype == np.uint8 and out.shape == (9, 7, 3)
    np.testing.assert_array_equal(out, img)
    assert imread(path, 'grayscale').shape == (9, 7)
    f = imread(path, float32=True)
    assert f.dtype == np.float32 and f.max() <= 1.0
    assert os.listdir(path.parent) == ['bild_ü.png']  # no temporary file left behind


def test_imread_16bit_unchanged(tmp_path):
    img = (np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 1000)
    imwrite_atomic(img, tmp_path / 'a.png')
    out = imread(tmp_path / 'a.png', 'unchanged')
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def test_imread_errors(tmp_path):
    missing = tmp_path / 'nope.png'
    with pytest.raises(DataError, match=re.escape(f'image file does not exist: {missing}')):
        imread(missing)

    ok, buf = cv2.imencode('.png', _lq_image(1, 64, 64))
    trunc = tmp_path / 'trunc.png'
    trunc.write_bytes(buf.tobytes()[:len(buf) // 2])
    with pytest.raises(DataError, match=re.escape(f'cannot read image {trunc}: truncated PNG')):
        imread(trunc)
    # a single flipped byte inside the data is caught by the chunk CRC
    corrupt = bytearray(buf.tobytes())
    corrupt[60] ^= 0xFF
    (tmp_path / 'crc.png').write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match='crc.png: corrupt PNG: CRC mismatch'):
        imread(tmp_path / 'crc.png')

    text = tmp_path / 'notes.png'
    text.write_text('this is not an image\n')
    with pytest.raises(DataError, match=re.escape(f'cannot read image {text}: not a valid image file')):
        imread(text)

    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(DataError, match='empty.png: the file is empty'):
        imread(tmp_path / 'empty.png')

    ok, jbuf = cv2.imencode('.jpg', _lq_image(2, 64, 64))
    (tmp_path / 'half.jpg').write_bytes(jbuf.tobytes()[:len(jbuf) // 2])
    with pytest.raises(DataError, match='half.jpg: truncated JPEG'):
        imread(tmp_path / 'half.jpg')
    (tmp_path / 'full.jpg').write_bytes(jbuf.tobytes())
    assert imread(tmp_path / 'full.jpg').shape == (64, 64, 3)

    with pytest.raises(DataError, match='expected an image file but found a folder'):
        imread(tmp_path)


def test_imwrite_atomic_overwrite_and_errors(tmp_path):
    path = tmp_path / 'sub' / 'x.png'
    imwrite_atomic(np.zeros((4, 4, 3), np.uint8), path)
    imwrite_atomic(np.full((5, 6, 3), 7, np.uint8), path)
    np.testing.assert_array_equal(imread(path), np.full((5, 6, 3), 7, np.uint8))
    imwrite_atomic(np.full((8, 8, 3), 9, np.uint8), tmp_path / 'q.jpg', [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert imread(tmp_path / 'q.jpg').shape == (8, 8, 3)
    with pytest.raises(DataError, match=r'cannot (encode|write) image .*x\.notaformat'):
        imwrite_atomic(np.zeros((4, 4, 3), np.uint8), tmp_path / 'x.notaformat')
    assert sorted(os.listdir(tmp_path)) == ['q.jpg', 'sub']
    assert os.listdir(tmp_path / 'sub') == ['x.png']


def test_img2tensor_tensor2img():
    img = _lq_image(3, 5, 6)
    t = img2tensor(img.astype(np.float32) / 255.)
    assert t.shape == (3, 5, 6) and t.dtype == torch.float32
    assert torch.equal(t[0], torch.from_numpy(img[..., 2].astype(np.float32) / 255.))  # BGR -> RGB
    ts = img2tensor([img, img], bgr2rgb=False, float32=False)
    assert isinstance(ts, list) and ts[1].dtype == torch.uint8 and torch.equal(ts[1][0], torch.from_numpy(img[..., 0]))
    assert img2tensor(img[..., 0]).shape == (1, 5, 6)

    np.testing.assert_array_equal(tensor2img(t), img)  # RGB -> BGR, uint8 round trip
    np.testing.assert_array_equal(tensor2img(t[None]), img)  # batch of one
    # rounding after * 255, clamping to min_max
    v = torch.tensor([[[0.6 / 255, 0.4 / 255, 1.7, -0.2, 127.6 / 255, 127.4 / 255]]])  # 1 x 1 x 6
    assert tensor2img(v).tolist() == [[1, 0, 255, 0, 128, 127]]
    assert tensor2img(torch.zeros(1, 4, 5)).shape == (4, 5)  # single channel -> H x W
    assert tensor2img(torch.tensor([[[-1.0, 0.0, 1.0]]]), min_max=(-1, 1)).tolist() == [[0, 128, 255]]
    f = tensor2img(t, out_type=np.float32)
    assert f.dtype == np.float32 and f.max() <= 1.0
    np.testing.assert_allclose(f, img / 255., atol=1e-6)
    grid = tensor2img(torch.ones(4, 3, 5, 6))
    assert grid.shape == (2 + 2 * 7, 2 + 2 * 8, 3)


def test_scandir(tmp_path):
    for rel in ['b.png', 'a.png', 'c.txt', '.hidden.png', 'sub/d.png', 'sub/e.jpg']:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'x')
    assert scandir(tmp_path) == ['a.png', 'b.png', 'c.txt']
    assert scandir(tmp_path, suffix='.png') == ['a.png', 'b.png']
    assert scandir(tmp_path, suffix=('.png', '.jpg'), recursive=True) == [
        'a.png', 'b.png', os.path.join('sub', 'd.png'), os.path.join('sub', 'e.jpg')]
    assert scandir(tmp_path / 'sub', full_path=True) == [str(tmp_path / 'sub' / 'd.png'), str(tmp_path / 'sub' / 'e.jpg')]
    with pytest.raises(DataError, match=re.escape(f'folder does not exist: {tmp_path / "zz"}')):
        scandir(tmp_path / 'zz')


# ---------------------------------------------------------------------------------------------- transforms

def test_mod_crop():
    assert mod_crop(np.zeros((13, 10, 3)), 4).shape == (12, 8, 3)
    assert mod_crop(np.zeros((13, 10)), 3).shape == (12, 9)


def test_paired_random_crop_alignment_and_errors():
    lq = _lq_image(4, 20, 24)
    gt = _up(lq)
    seen = set()
    for seed in range(20):
        g, q = paired_random_crop(gt, lq, 32, SCALE, rng=np.random.default_rng(seed))
        assert g.shape == (32, 32, 3) and q.shape == (8, 8, 3)
        np.testing.assert_array_equal(g[::SCALE, ::SCALE], q)
        pos = np.argwhere((lq == q[0, 0]).all(-1))
        seen.add(tuple(pos[0]))
    assert len(seen) > 5  # positions really vary
    g1, _ = paired_random_crop(gt, lq, 32, SCALE, rng=np.random.default_rng(7))
    g2, _ = paired_random_crop(gt, lq, 32, SCALE, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(g1, g2)
    # tensors (B x C x H x W) are cropped on their last two axes
    tg, tq = paired_random_crop(torch.from_numpy(gt).permute(2, 0, 1)[None], torch.from_numpy(lq).permute(2, 0, 1)[None],
                                32, SCALE, rng=np.random.default_rng(0))
    assert tg.shape == (1, 3, 32, 32) and torch.equal(tg[..., ::SCALE, ::SCALE], tq)

    with pytest.raises(DataError, match=re.escape('GT is 81x96 but LQ is 20x24 at scale 4: expected GT 80x96 '
                                                  '(GT /x/0001.png)')):
        paired_random_crop(np.zeros((81, 96, 3)), lq, 32, SCALE, gt_path='/x/0001.png')
    with pytest.raises(DataError, match=re.escape('LQ is 20x24, smaller than the LQ patch 32x32 (gt_size 128 / '
                                                  'scale 4) (GT /x/0002.png)')):
        paired_random_crop(gt, lq, 128, SCALE, gt_path='/x/0002.png')


def test_augment_consistent_and_seeded():
    lq = _lq_image(5, 6, 6)
    gt = _up(lq)
    statuses = set()
    for seed in range(40):
        (g, q), status = augment([gt, lq], rng=np.random.default_rng(seed), return_status=True)
        statuses.add(status)
        np.testing.assert_array_equal(g[::SCALE, ::SCALE], q)
        h, v, r = status
        ref = lq[:, ::-1] if h else lq
        ref = ref[::-1] if v else ref
        ref = ref.transpose(1, 0, 2) if r else ref
        np.testing.assert_array_equal(q, ref)
        assert q.flags['C_CONTIGUOUS']
    assert len(statuses) == 8  # all flip/rotation combinations occur
    # rotation=False never flips vertically or transposes; hflip=False never flips horizontally
    for seed in range(16):
        _, (h, v, r) = augment(lq, hflip=False, rotation=False, rng=np.random.default_rng(seed), return_status=True)
        assert (h, v, r) == (False, False, False)
    np.random.seed(3)
    a = augment(lq)
    np.random.seed(3)
    np.testing.assert_array_equal(a, augment(lq))


# ------------------------------------------------------------------------------------------------ datasets

def test_paired_train_crops_and_seeds(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, h=20, w=18)
    ds = DATASET_REGISTRY.get('PairedImageDataset')(_opt(gt_dir, lq_dir))
    assert len(ds) == 3
    s = ds[1]
    assert set(s) == {'lq', 'gt', 'lq_path', 'gt_path'}
    assert s['gt'].shape == (3, 16, 16) and s['lq'].shape == (3, 4, 4)
    assert s['gt'].dtype == torch.float32 and 0 <= s['gt'].min() and s['gt'].max() <= 1
    assert s['gt_path'] == str(gt_dir / '0002.png') and s['lq_path'] == str(lq_dir / '0002.png')
    np.testing.assert_array_equal(s['gt'][:, ::SCALE, ::SCALE].numpy(), s['lq'].numpy())

    state = np.random.get_state()
    a, b = ds[(2, 123)], ds[(2, 123)]
    assert np.array_equal(np.random.get_state()[1], state[1])  # seeded keys leave the global RNG alone
    assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])
    others = [ds[(2, seed)]['lq'] for seed in range(124, 130)]
    assert any(not torch.equal(a['lq'], o) for o in others)
    for seed in range(6):
        x = ds[(0, seed)]
        np.testing.assert_array_equal(x['gt'][:, ::SCALE, ::SCALE].numpy(), x['lq'].numpy())
    # without augmentation the LQ patch is a crop of the file, converted to RGB and scaled to [0, 1]
    lq_rgb = torch.from_numpy(_lq_image(2, 20, 18)[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    plain = PairedImageDataset(_opt(gt_dir, lq_dir, use_hflip=False, use_rot=False))
    p = plain[(2, 5)]['lq']
    assert any(torch.equal(p, lq_rgb[:, t:t + 4, l:l + 4]) for t in range(17) for l in range(15))
    assert ds[-1]['gt_path'].endswith('0003.png')
    with pytest.raises(IndexError):
        ds[3]


def test_paired_val_whole_images_and_size_rules(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, names=('a', 'b'), h=7, w=9)
    # GT 3 rows / 2 columns larger than 4 x LQ: a floor-rounding downscaler's surplus, cropped
    gt_b = _up(_lq_image(1, 7, 9))
    _write(gt_dir / 'b.png', np.pad(gt_b, ((0, 3), (0, 2), (0, 0))))
    ds = PairedImageDataset(_opt(gt_dir, lq_dir, phase='val', gt_size=None))
    for i in range(2):
        s = ds[i]
        assert s['gt'].shape == (3, 28, 36) and s['lq'].shape == (3, 7, 9)
        np.testing.assert_array_equal(s['gt'][:, ::SCALE, ::SCALE].numpy(), s['lq'].numpy())
    assert torch.equal(ds[(0, 1)]['gt'], ds[(0, 2)]['gt'])  # no randomness outside training

    _write(gt_dir / 'b.png', np.pad(gt_b, ((0, 4), (0, 0), (0, 0))))
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    for piece in [f'GT {gt_dir / "b.png"} is 32x36', f'LQ {lq_dir / "b.png"} is 7x9', 'at scale 4',
                  'expected GT 28x36']:
        assert piece in msg
    _write(gt_dir / 'b.png', gt_b[:-1])
    with pytest.raises(DataError, match=re.escape('is 27x36 (HxW) but LQ')):
        ds[1]


def test_paired_train_errors_at_load(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, names=('0001', '0002'), h=20, w=20)
    ds = PairedImageDataset(_opt(gt_dir, lq_dir, gt_size=96))
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    for piece in [f'LQ {lq_dir / "0001.png"} is 20x20', '24x24 LQ patch', 'datasets.train.gt_size 96',
                  'scale 4', f'GT {gt_dir / "0001.png"}']:
        assert piece in msg
    ds = PairedImageDataset(_opt(gt_dir, lq_dir))
    _write(gt_dir / '0002.png', np.zeros((84, 80, 3), np.uint8))  # 4 surplus rows: not a rounding remainder
    with pytest.raises(DataError, match=re.escape(f'GT {gt_dir / "0002.png"} is 84x80 (HxW) but LQ '
                                                  f'{lq_dir / "0002.png"} is 20x20 at scale 4: expected GT 80x80')):
        ds[1]
    (gt_dir / '0001.png').write_bytes((gt_dir / '0001.png').read_bytes()[:200])
    with pytest.raises(DataError, match=re.escape(f'cannot read image {gt_dir / "0001.png"}: truncated PNG')):
        ds[(0, 1)]


def test_paired_construction_errors(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, names=('0001', '0002', '0003', '0004'))
    missing = tmp_path / 'missing'
    with pytest.raises(DataError, match=re.escape(f'datasets.train.dataroot_gt: folder does not exist: {missing}')):
        PairedImageDataset(_opt(missing, lq_dir))
    with pytest.raises(DataError, match=re.escape(f'datasets.val.dataroot_lq: folder does not exist: {missing}')):
        PairedImageDataset(_opt(gt_dir, missing, phase='val'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no images')
    with pytest.raises(DataError, match=re.escape('datasets.train.dataroot_lq: no image files (.png')) as e:
        PairedImageDataset(_opt(gt_dir, empty))
    assert str(empty) in str(e.value)
    with pytest.raises(ConfigError, match=r'datasets\.train\.dataroot_gt: missing required key'):
        PairedImageDataset({k: v for k, v in _opt(gt_dir, lq_dir).items() if k != 'dataroot_gt'})

    # unpaired: two GT without LQ, one LQ without GT
    os.remove(lq_dir / '0002.png')
    os.remove(lq_dir / '0004.png')
    _write(lq_dir / 'extra.png', _lq_image(9))
    with pytest.raises(DataError) as e:
        PairedImageDataset(_opt(gt_dir, lq_dir))
    msg = str(e.value)
    assert 'datasets.train: GT and LQ files do not pair up' in msg
    assert f'2 of 4 GT file(s) in {gt_dir} have no LQ partner in {lq_dir}: 0002.png, 0004.png' in msg
    assert f'1 of 3 LQ file(s) in {lq_dir} have no GT partner in {gt_dir}: extra.png' in msg

    with pytest.raises(ConfigError, match=r"datasets\.train\.dataroot_gt: an lmdb data root must end with '\.lmdb'"):
        PairedImageDataset(_opt(gt_dir, lq_dir, io_backend={'type': 'lmdb'}))
    with pytest.raises(ConfigError, match=r"datasets\.train\.io_backend\.type: expected 'disk' or 'lmdb', got 'ceph'"):
        PairedImageDataset(_opt(gt_dir, lq_dir, io_backend={'type': 'ceph'}))
    with pytest.raises(ConfigError, match=r'datasets\.train\.gt_size: missing required key'):
        PairedImageDataset(_opt(gt_dir, lq_dir, gt_size=None))
    with pytest.raises(ConfigError, match=r'datasets\.train\.gt_size: 18 is not a multiple of scale 4'):
        PairedImageDataset(_opt(gt_dir, lq_dir, gt_size=18))
    with pytest.raises(ConfigError, match=r'datasets\.train\.mean: expected 3 numbers'):
        PairedImageDataset(_opt(gt_dir, lq_dir, mean=[0.5, 0.5], std=[0.5, 0.5]))
    with pytest.raises(ConfigError, match=r"datasets\.train\.filename_tmpl"):
        PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='x4'))


def test_paired_filename_tmpl_meta_info_and_options(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, names=('0001', '0002'), lq_tmpl='{}x4', h=8, w=8)
    ds = PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='{}x4', phase='val'))
    assert [p['lq_path'] for p in ds.paths] == [str(lq_dir / '0001x4.png'), str(lq_dir / '0002x4.png')]

    # meta info: names relative to dataroot_gt, sub-folders kept for the LQ, shape suffix optional
    lq = _lq_image(7, 8, 8)
    _write(gt_dir / 'sub' / 'my img.png', _up(lq))
    _write(lq_dir / 'sub' / 'my imgx4.png', lq)
    meta = tmp_path / 'meta.txt'
    meta.write_text('sub/my img.png (32,32,3)\n\n0002.png\n')
    ds = PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='{}x4', meta_info_file=str(meta)))
    assert len(ds) == 2
    assert ds[0]['lq_path'] == str(lq_dir / 'sub' / 'my imgx4.png')
    assert ds[0]['gt'].shape == (3, 16, 16)

    with pytest.raises(DataError, match=re.escape(f'datasets.train.meta_info_file: file does not exist: '
                                                  f'{tmp_path / "nometa.txt"}')):
        PairedImageDataset(_opt(gt_dir, lq_dir, meta_info_file=str(tmp_path / 'nometa.txt')))
    meta.write_text('0001.png (32,32,3)\n0009.png (32,32,3)\n')
    with pytest.raises(DataError) as e:
        PairedImageDataset(_opt(gt_dir, lq_dir, meta_info_file=str(meta)))
    msg = str(e.value)
    assert f'datasets.train.meta_info_file: {meta} lists 2 image(s)' in msg
    assert f'1 GT file(s) not in {gt_dir}: 0009.png' in msg
    assert f'2 LQ file(s) not in {lq_dir}: 0001.png, 0009.png' in msg  # default filename_tmpl '{}'

    # Y channel and mean/std normalisation
    y = PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='{}x4', color='y', phase='val'))[0]
    assert y['lq'].shape == (1, 8, 8)
    assert 16 / 255 - 1e-6 <= y['lq'].min() and y['lq'].max() <= 235 / 255 + 1e-6
    base = PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='{}x4', phase='val'))[0]['lq']
    norm = PairedImageDataset(_opt(gt_dir, lq_dir, filename_tmpl='{}x4', phase='val',
                                   mean=[0.5, 0.4, 0.3], std=[0.5, 0.5, 0.25]))[0]['lq']
    torch.testing.assert_close(norm, (base - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) /
                               torch.tensor([0.5, 0.5, 0.25]).view(3, 1, 1))


def test_paired_dataloader_collates(tmp_path):
    gt_dir, lq_dir = _make_pairs(tmp_path, h=8, w=8)
    ds = PairedImageDataset(_opt(gt_dir, lq_dir))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, sampler=[(0, 1), (1, 2), (2, 3)])))
    assert batch['gt'].shape == (3, 3, 16, 16) and len(batch['gt_path']) == 3
    assert torch.equal(batch['lq'][1], ds[(1, 2)]['lq'])


def test_single_image_dataset(tmp_path):
    folder = tmp_path / 'in'
    for i, n in enumerate(['b', 'a', 'c']):
        _write(folder / f'{n}.png', _lq_image(i, 5 + i, 6))
    (folder / 'notes.txt').write_text('ignored')
    ds = DATASET_REGISTRY.get('SingleImageDataset')({'name': 't', 'phase': 'test', 'scale': 4,
                                                      'dataroot_lq': str(folder), 'io_backend': {'type': 'disk'}})
    assert [os.path.basename(p) for p in ds.paths] == ['a.png', 'b.png', 'c.png']
    s = ds[(0, 99)]
    assert set(s) == {'lq', 'lq_path'} and s['lq'].shape == (3, 6, 6) and s['lq_path'] == str(folder / 'a.png')
    np.testing.assert_array_equal(tensor2img(s['lq']), _lq_image(1, 6, 6))

    meta = tmp_path / 'meta.txt'
    meta.write_text('c.png (7,6,3)\nzz.png (7,6,3)\n')
    with pytest.raises(DataError, match=re.escape(f'datasets.test.meta_info_file: {meta} lists 2 image(s) but 1 '
                                                  f'are not in {folder}: zz.png')):
        SingleImageDataset({'phase': 'test', 'scale': 4, 'dataroot_lq': str(folder), 'meta_info_file': str(meta)})
    meta.write_text('c.png (7,6,3)\n')
    ds = SingleImageDataset({'phase': 'test', 'scale': 4, 'dataroot_lq': str(folder), 'meta_info_file': str(meta)})
    assert len(ds) == 1 and ds[0]['lq'].shape == (3, 7, 6)
    with pytest.raises(DataError, match=re.escape(f'datasets.test.dataroot_lq: folder does not exist: {tmp_path / "x"}')):
        SingleImageDataset({'phase': 'test', 'scale': 4, 'dataroot_lq': str(tmp_path / 'x')})
    (folder / 'a.png').write_text('garbage')
    with pytest.raises(DataError, match=re.escape(f'cannot read image {folder / "a.png"}')):
        SingleImageDataset({'phase': 'test', 'scale': 4, 'dataroot_lq': str(folder)})[0]
