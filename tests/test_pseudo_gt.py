"""Pseudo-GT of DeSRA Sec. 3.3 (desra.finetune.pseudo_gt) and scripts/make_pseudo_gt.py."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import desra
from desra.errors import DataError
from desra.finetune.pseudo_gt import feather_mask, pseudo_gt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'make_pseudo_gt.py')


def _load_script():
    spec = importlib.util.spec_from_file_location('make_pseudo_gt', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_pseudo_gt = _load_script()


def _images(h=12, w=10, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return (rng.integers(0, 256, (h, w, c)).astype(np.uint8), rng.integers(0, 256, (h, w, c)).astype(np.uint8))
    return rng.random((h, w, c)).astype(dtype), rng.random((h, w, c)).astype(dtype)


def _blob_mask(h=12, w=10):
    m = np.zeros((h, w), bool)
    m[3:8, 2:6] = True
    m[10, 9] = True
    return m


MASK_FORMS = {
    'bool': lambda m: m,
    '0-255': lambda m: m.astype(np.uint8) * 255,
    '0-1 uint8': lambda m: m.astype(np.uint8),
    '0-1 float': lambda m: m.astype(np.float32),
    'float soft': lambda m: np.where(m, 0.8, 0.2),
}


# ------------------------------------------------------------------------------------------------ feather 0
@pytest.mark.parametrize('form', sorted(MASK_FORMS))
@pytest.mark.parametrize('dtype', [np.uint8, np.float32, np.float64])
def test_exact_selection_numpy(form, dtype):
    mse, gan = _images(dtype=dtype)
    m = _blob_mask()
    out = pseudo_gt(mse, gan, MASK_FORMS[form](m))
    assert out.dtype == dtype and out.shape == mse.shape
    np.testing.assert_array_equal(out, np.where(m[..., None], mse, gan))
    assert np.array_equal(out[m], mse[m]) and np.array_equal(out[~m], gan[~m])


def test_exact_selection_numpy_gray_and_hw1_mask():
    mse, gan = _images(c=1)
    mse, gan = mse[..., 0], gan[..., 0]
    m = _blob_mask()
    out = pseudo_gt(mse, gan, m[..., None].astype(np.uint8) * 255)
    np.testing.assert_array_equal(out, np.where(m, mse, gan))


@pytest.mark.parametrize('dtype', [torch.uint8, torch.float32])
@pytest.mark.parametrize('layout', ['HW', 'BHW', 'B1HW', 'numpy'])
def test_exact_selection_torch_batch(dtype, layout):
    rng = np.random.default_rng(1)
    b, h, w = 2, 12, 10
    masks = np.stack([_blob_mask(), ~_blob_mask()])
    if dtype == torch.uint8:
        mse = torch.from_numpy(rng.integers(0, 256, (b, 3, h, w)).astype(np.uint8))
        gan = torch.from_numpy(rng.integers(0, 256, (b, 3, h, w)).astype(np.uint8))
    else:
        mse, gan = torch.rand(b, 3, h, w), torch.rand(b, 3, h, w)
    if layout == 'HW':
        mask, m4 = torch.from_numpy(masks[0]), torch.from_numpy(masks[:1])[:, None]
    elif layout == 'BHW':
        mask, m4 = torch.from_numpy(masks.astype(np.uint8) * 255), torch.from_numpy(masks)[:, None]
    elif layout == 'B1HW':
        mask, m4 = torch.from_numpy(masks.astype(np.float32))[:, None], torch.from_numpy(masks)[:, None]
    else:
        mask, m4 = masks[0].astype(np.uint8), torch.from_numpy(masks[:1])[:, None]
    out = pseudo_gt(mse, gan, mask)
    assert out.dtype == dtype and out.shape == mse.shape
    assert torch.equal(out, torch.where(m4, mse, gan))


def test_exact_selection_torch_chw():
    mse, gan = torch.rand(3, 12, 10, dtype=torch.float64), torch.rand(3, 12, 10, dtype=torch.float64)
    m = torch.from_numpy(_blob_mask())
    for mask in (m, m[None], m.to(torch.uint8)):
        out = pseudo_gt(mse, gan, mask)
        assert out.dtype == torch.float64 and torch.equal(out, torch.where(m[None], mse, gan))


@pytest.mark.parametrize('feather', [0, 2.5])
def test_all_ones_and_all_zeros(feather):
    mse, gan = _images()
    ones, zeros = np.ones(mse.shape[:2], np.uint8) * 255, np.zeros(mse.shape[:2], bool)
    np.testing.assert_array_equal(pseudo_gt(mse, gan, ones, feather=feather), mse)
    np.testing.assert_array_equal(pseudo_gt(mse, gan, zeros, feather=feather), gan)
    tm, tg = torch.from_numpy(mse).permute(2, 0, 1)[None], torch.from_numpy(gan).permute(2, 0, 1)[None]
    assert torch.equal(pseudo_gt(tm, tg, torch.from_numpy(ones), feather=feather), tm)
    assert torch.equal(pseudo_gt(tm, tg, torch.from_numpy(zeros), feather=feather), tg)


# ------------------------------------------------------------------------------------------------ feather > 0
def _edge_case(h=24, w=40, edge=20):
    mse = np.full((h, w, 3), 200, np.uint8)
    gan = np.full((h, w, 3), 50, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[:, edge:] = 255
    return mse, gan, mask


def test_feather_is_continuous_across_the_edge():
    mse, gan, mask = _edge_case()
    hard = pseudo_gt(mse, gan, mask).astype(np.int32)
    assert np.abs(np.diff(hard[..., 0], axis=1)).max() == 150  # the step the feathering removes
    sigma = 3.0
    soft = pseudo_gt(mse, gan, mask, feather=sigma)
    assert soft.dtype == np.uint8
    diffs = np.abs(np.diff(soft.astype(np.int32)[..., 0], axis=1))
    # a Gaussian-blurred step has slope <= 1 / (sigma sqrt(2 pi)) ~ 0.133 of the step per pixel
    assert diffs.max() <= 0.15 * 150 + 1
    row = soft[0, :, 0].astype(np.int32)
    assert np.all(np.diff(row) >= 0)  # monotone ramp from GAN-SR to MSE-SR
    assert 50 < row[20] < 200 and 50 < row[19] < 200


def test_feather_equals_exact_far_from_edge_and_stays_within_bounds():
    sigma = 1.5
    r = int(np.ceil(4 * sigma))
    for dtype in (np.uint8, np.float32):
        mse, gan = _images(h=40, w=40, dtype=dtype, seed=3)
        m = np.zeros((40, 40), bool)
        m[12:28, 10:30] = True
        soft = pseudo_gt(mse, gan, m, feather=sigma)
        hard = pseudo_gt(mse, gan, m)
        assert soft.dtype == dtype
        # distance to the nearest pixel of the other label
        dist_in = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_C, 3)
        dist_out = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_C, 3)
        far = np.maximum(dist_in, dist_out) > r
        assert far.sum() > 500
        np.testing.assert_array_equal(soft[far], hard[far])
        near = ~far
        assert not np.array_equal(soft[near], hard[near])
        lo, hi = np.minimum(mse, gan), np.maximum(mse, gan)
        assert np.all(soft >= lo) and np.all(soft <= hi)


def test_feather_torch_matches_numpy_and_bounds():
    mse, gan = _images(h=20, w=24, dtype=np.float64, seed=5)
    m = np.zeros((20, 24), np.uint8)
    m[5:15, 6:18] = 255
    ref = pseudo_gt(mse, gan, m, feather=2.0)
    tm = torch.from_numpy(mse).permute(2, 0, 1)[None]
    tg = torch.from_numpy(gan).permute(2, 0, 1)[None]
    out = pseudo_gt(tm, tg, torch.from_numpy(m)[None, None], feather=2.0)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-12)
    assert torch.all(out >= torch.minimum(tm, tg)) and torch.all(out <= torch.maximum(tm, tg))
    w = feather_mask(m, 2.0)
    assert w.dtype == np.float64 and 0.0 <= w.min() and w.max() <= 1.0 and w[0, 0] < 0.01 and w[10, 12] > 0.9
    wt = feather_mask(torch.from_numpy(m), 2.0)
    np.testing.assert_allclose(wt.numpy(), w, atol=1e-5)
    np.testing.assert_array_equal(feather_mask(m, 0), (m > 0).astype(np.float64))


def test_feather_uint8_torch_rounds():
    mse, gan, mask = _edge_case()
    ref = pseudo_gt(mse, gan, mask, feather=2.0)
    tm, tg = torch.from_numpy(mse).permute(2, 0, 1), torch.from_numpy(gan).permute(2, 0, 1)
    out = pseudo_gt(tm, tg, torch.from_numpy(mask), feather=2.0)
    assert out.dtype == torch.uint8
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------------------ errors
def test_size_mismatch_errors_name_the_shapes():
    mse, gan = _images()
    with pytest.raises(ValueError, match=r'\(12, 10, 3\).*\(12, 9, 3\)'):
        pseudo_gt(mse, gan[:, :9], _blob_mask())
    with pytest.raises(ValueError, match=r'mask has shape \(12, 9\).*\(12, 10, 3\)'):
        pseudo_gt(mse, gan, _blob_mask()[:, :9])
    t = torch.zeros(2, 3, 12, 10)
    with pytest.raises(ValueError, match=r'mask has shape \(3, 12, 10\).*\(2, 3, 12, 10\)'):
        pseudo_gt(t, t, torch.zeros(3, 12, 10))
    with pytest.raises(ValueError, match=r'\(2, 3, 12, 10\).*\(2, 3, 12, 11\)'):
        pseudo_gt(t, torch.zeros(2, 3, 12, 11), torch.zeros(12, 10))
    with pytest.raises(TypeError, match='both be numpy arrays or both torch'):
        pseudo_gt(mse, torch.from_numpy(gan), _blob_mask())


def test_bad_mask_values_and_feather():
    mse, gan = _images()
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        pseudo_gt(mse, gan, np.full((12, 10), 2.0))
    with pytest.raises(ValueError, match='0..255'):
        pseudo_gt(mse, gan, np.full((12, 10), 300, np.int32))
    with pytest.raises(ValueError, match='NaN'):
        pseudo_gt(mse, gan, np.full((12, 10), np.nan))
    with pytest.raises(ValueError, match='feather'):
        pseudo_gt(mse, gan, _blob_mask(), feather=-1)


def test_top_level_alias_and_lazy_import():
    mse, gan = _images()
    m = _blob_mask()
    np.testing.assert_array_equal(desra.pseudo_gt(mse, gan, m), pseudo_gt(mse, gan, m))
    np.testing.assert_array_equal(desra.pseudo_gt(mse, gan, m, feather=1.0), pseudo_gt(mse, gan, m, feather=1.0))
    assert 'Pseudo-GT' in desra.pseudo_gt.__doc__
    code = ('import sys, numpy as np, desra; assert "torch" not in sys.modules; '
            'o = desra.pseudo_gt(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8), np.eye(4, dtype=bool), '
            'feather=1); assert "torch" not in sys.modules; print(o.dtype)')
    res = subprocess.run([sys.executable, '-c', code], check=False, capture_output=True, text=True, timeout=60,
                         env={**os.environ, 'PYTHONPATH': REPO})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'uint8'


# ------------------------------------------------------------------------------------------------ script
NAMES = ['a0', 'a1', 'a2', 'a3', 'a4', 'sub/b0']


def _make_detection_root(tmp_path, names=NAMES, lr_size=8, scale=4, cropped_mask=None):
    """A detect.py-like folder (mode a): records, masks, MSE-SR, GAN-SR; LR images in a separate folder."""
    root, lr_dir = tmp_path / 'det', tmp_path / 'lr'
    rng = np.random.default_rng(7)
    sr = lr_size * scale
    for i, name in enumerate(names):
        lr = rng.integers(0, 256, (lr_size, lr_size, 3)).astype(np.uint8)
        mse = cv2.resize(lr, (sr, sr), interpolation=cv2.INTER_CUBIC)
        gan = rng.integers(0, 256, (sr, sr, 3)).astype(np.uint8)
        mask = np.zeros((sr, sr), np.uint8)
        mask[4 + i:14 + i, 6:20] = 255
        if name == cropped_mask:
            mask = mask[5:-5, 5:-5]
        paths = {'lr': lr_dir / f'{name}.png', 'mse_sr': root / 'MSE-SR' / f'{name}.png',
                 'gan_sr': root / 'GAN-SR' / f'{name}.png', 'mask': root / 'masks' / f'{name}.png'}
        for key, img in (('lr', lr), ('mse_sr', mse), ('gan_sr', gan), ('mask', mask)):
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(paths[key]), img)
        rec = {'name': name, 'height': sr, 'width': sr, **{k: str(v) for k, v in paths.items()}}
        rec_path = root / 'records' / f'{name}.json'
        rec_path.parent.mkdir(parents=True, exist_ok=True)
        rec_path.write_text(json.dumps(rec))
    return root, lr_dir


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_script_from_detections(tmp_path, capsys):
    root, _ = _make_detection_root(tmp_path)
    out = tmp_path / 'ft'
    info = make_pseudo_gt.main(['--detections', str(root), '--out', str(out), '--train', '2', '--seed', '3'])
    assert 'make_pseudo_gt: 2 train + 4 val' in capsys.readouterr().out
    split = json.loads((out / 'split.json').read_text())
    assert split == json.loads(json.dumps(info))
    assert len(split['train']) == 2 and len(split['val']) == 4 and split['seed'] == 3 and split['scale'] == 4
    assert sorted(split['train'] + split['val']) == sorted(NAMES)
    assert split['source']['mode'] == 'detections'
    again = make_pseudo_gt.main(['--detections', str(root), '--out', str(tmp_path / 'ft2'), '--train', '2',
                                 '--seed', '3'])
    assert again['train'] == split['train']  # the split is a function of the seed

    for part in ('train', 'val'):
        names = split[part]
        lines = (out / part / 'meta_info.txt').read_text().splitlines()
        assert lines == [f'{n}.png (32,32,3)' for n in names]
        for n in names:
            lr, gt = _read(out / part / 'LR' / f'{n}.png'), _read(out / part / 'GT' / f'{n}.png')
            assert lr.shape == (8, 8, 3) and gt.shape == (32, 32, 3)
            np.testing.assert_array_equal(lr, _read(tmp_path / 'lr' / f'{n}.png'))
            mse, gan = _read(root / 'MSE-SR' / f'{n}.png'), _read(root / 'GAN-SR' / f'{n}.png')
            m = _read(root / 'masks' / f'{n}.png') > 0
            np.testing.assert_array_equal(gt, np.where(m[..., None], mse, gan))  # y~ = M y_MSE + (1-M) y_GAN
        if part == 'val':
            for n in names:
                np.testing.assert_array_equal(_read(out / 'val' / 'GAN-SR' / f'{n}.png'),
                                              _read(root / 'GAN-SR' / f'{n}.png'))
                np.testing.assert_array_equal(_read(out / 'val' / 'masks' / f'{n}.png'),
                                              _read(root / 'masks' / f'{n}.png'))
        else:
            assert not (out / 'train' / 'GAN-SR').exists()
    assert (out / ('train' if 'sub/b0' in split['train'] else 'val') / 'GT' / 'sub' / 'b0.png').is_file()

    from desra.data import PairedImageDataset
    ds = PairedImageDataset({'dataroot_gt': str(out / 'train' / 'GT'), 'dataroot_lq': str(out / 'train' / 'LR'),
                             'meta_info_file': str(out / 'train' / 'meta_info.txt'), 'phase': 'train', 'scale': 4,
                             'gt_size': 16, 'io_backend': {'type': 'disk'}})
    assert len(ds) == 2
    item = ds[(0, 0)]
    assert tuple(item['gt'].shape) == (3, 16, 16) and tuple(item['lq'].shape) == (3, 4, 4)


def test_script_val_all_feather_and_explicit_folders(tmp_path):
    root, lr_dir = _make_detection_root(tmp_path)
    out = tmp_path / 'ft'
    info = make_pseudo_gt.main(['--lr', str(lr_dir), '--mse', str(root / 'MSE-SR'), '--gan', str(root / 'GAN-SR'),
                                '--masks', str(root / 'masks'), '--out', str(out), '--train-fraction', '0.5',
                                '--val-all', '--feather', '1.5'])
    assert len(info['train']) == 3 and info['val'] == sorted(NAMES) and info['source']['mode'] == 'folders'
    assert len((out / 'val' / 'meta_info.txt').read_text().splitlines()) == 6
    for n in NAMES:
        gt = _read(out / 'val' / 'GT' / f'{n}.png').astype(int)
        mse, gan = _read(root / 'MSE-SR' / f'{n}.png').astype(int), _read(root / 'GAN-SR' / f'{n}.png').astype(int)
        assert np.all(gt >= np.minimum(mse, gan)) and np.all(gt <= np.maximum(mse, gan))
        assert not np.array_equal(gt, gan)
    for n in info['train']:
        np.testing.assert_array_equal(_read(out / 'train' / 'GT' / f'{n}.png'), _read(out / 'val' / 'GT' / f'{n}.png'))


def test_script_pads_a_cropped_mask(tmp_path):
    root, _ = _make_detection_root(tmp_path, names=['a0', 'a1'], cropped_mask='a1')
    out = tmp_path / 'ft'
    info = make_pseudo_gt.main(['--detections', str(root), '--out', str(out), '--train', '1', '--val-all'])
    assert info['mask_offsets'] == {'a1': 5}
    mask = _read(out / 'val' / 'masks' / 'a1.png')
    assert mask.shape == (32, 32) and mask[:5].max() == 0 and mask[9:14, 6:20].min() == 255


def test_script_scale_mismatch_and_missing_twin(tmp_path):
    root, lr_dir = _make_detection_root(tmp_path)
    # one LR image at 16x16: scale x2 where the others are x4
    cv2.imwrite(str(lr_dir / 'a3.png'), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match=r'a3\.png.*x2.*x4'):
        make_pseudo_gt.main(['--detections', str(root), '--out', str(tmp_path / 'o1'), '--train', '2'])
    assert not (tmp_path / 'o1').exists()  # checked before anything is written
    # not an integer scale
    cv2.imwrite(str(lr_dir / 'a3.png'), np.zeros((7, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r'GAN-SR/a3\.png is 32x32.*LR .*a3\.png is 7x8'):
        make_pseudo_gt.main(['--detections', str(root), '--out', str(tmp_path / 'o2'), '--train', '2'])
    cv2.imwrite(str(lr_dir / 'a3.png'), np.zeros((8, 8, 3), np.uint8))
    # missing twins are listed by name
    os.remove(root / 'masks' / 'a1.png')
    os.remove(root / 'masks' / 'sub' / 'b0.png')
    with pytest.raises(DataError, match=r'2 mask file\(s\) not found.*a1, sub/b0'):
        make_pseudo_gt.main(['--detections', str(root), '--out', str(tmp_path / 'o3'), '--train', '2'])
    with pytest.raises(DataError, match=r'missing from --masks.*a1, sub/b0'):
        make_pseudo_gt.main(['--lr', str(lr_dir), '--mse', str(root / 'MSE-SR'), '--gan', str(root / 'GAN-SR'),
                             '--masks', str(root / 'masks'), '--out', str(tmp_path / 'o4'), '--train', '2'])
    # as a command: one error line, exit status 2
    res = subprocess.run([sys.executable, SCRIPT, '--detections', str(root), '--out', str(tmp_path / 'o5')],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'PYTHONPATH': REPO})
    assert res.returncode == 2 and res.stderr.startswith('error: ') and 'Traceback' not in res.stderr


def test_script_train_larger_than_set(tmp_path):
    from desra.errors import ConfigError

    root, _ = _make_detection_root(tmp_path, names=['a0', 'a1'])
    with pytest.raises(ConfigError, match='--train: 50'):
        make_pseudo_gt.main(['--detections', str(root), '--out', str(tmp_path / 'o')])
