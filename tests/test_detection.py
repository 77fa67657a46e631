"""DeSRA detection: parity with the released algorithm on real photos, hand-built cases, class files, statistics."""
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from conftest import SHARED, run_script
from desra.detection import (ADE20K_CLASSES, ClassHistogram, clean_mask, detect_artifacts, load_class_weights,
                             read_class_file, semantic_adjust, texture_similarity)
from desra.detection.morphology import fill_holes, resolve_min_area
from desra.detection.semantics import write_class_file, write_class_json
from desra.errors import ConfigError, DataError

PHOTOS = os.path.join(SHARED, 'data', 'photos')
CLASS_FILE = os.path.join(SHARED, 'reference', 'SSIM_MSE_GAN_threshold.txt')
BAND_CLASSES = [1, 4, 26, 2]  # building, tree, sea, sky


# --------------------------------------------------------------------------- the released algorithm

def ref_D(img1, img2):
    """Released indicator: float64, per channel cv2.filter2D with the 11x11 Gaussian window, [5:-5, 5:-5]."""
    w = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(w, w.transpose())
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
    if img1.ndim == 2:
        img1, img2 = img1[..., None], img2[..., None]
    cs = []
    for ch in range(img1.shape[2]):
        x, y = img1[..., ch], img2[..., ch]
        mu1 = cv2.filter2D(x, -1, window)[5:-5, 5:-5]
        mu2 = cv2.filter2D(y, -1, window)[5:-5, 5:-5]
        var1 = cv2.filter2D(x ** 2, -1, window)[5:-5, 5:-5] - mu1 ** 2
        var2 = cv2.filter2D(y ** 2, -1, window)[5:-5, 5:-5] - mu2 ** 2
        cs.append((2 * np.sqrt(var1 + 1e-8) * np.sqrt(var2 + 1e-8) + 58.5225) / (var1 + var2 + 58.5225))
    return np.mean(cs, axis=0)


def ref_detect(img1, img2, labels, weights, min_area):
    """Released detection: semantic weights, S < 0.7, erode 5x5, dilate 5x5 x3, fill holes 3x3, area filter."""
    D = ref_D(img1, img2)
    S = np.clip(D * weights[labels[5:-5, 5:-5]], 0, 1)
    mask = (S < 0.7).astype(np.uint8) * 255
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    mask = cv2.dilate(mask, np.ones((5, 5), np.uint8), iterations=3)
    mask = ndimage.binary_fill_holes(mask, structure=np.ones((3, 3))).astype(np.uint8)
    _, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = np.zeros(mask.shape, np.uint8)
    for i in range(1, stats.shape[0]):
        if stats[i, cv2.CC_STAT_AREA] > min_area:
            out[lab == i] = 255
    return D, S, out


def band_labels(h, w):
    """Column band k = x * 4 // w gets class BAND_CLASSES[k]."""
    return np.repeat(np.asarray(BAND_CLASSES, np.uint8)[np.arange(w) * 4 // w][None], h, axis=0)


def photo_pairs():
    paths = sorted(glob.glob(os.path.join(PHOTOS, 'GAN-SR', '*.png')))
    if not paths:
        pytest.skip(f'no photos in {PHOTOS}')
    return [(os.path.basename(p), cv2.imread(os.path.join(PHOTOS, 'MSE-SR', os.path.basename(p))), cv2.imread(p))
            for p in paths]


@pytest.fixture(scope='module')
def photos():
    return photo_pairs()


@pytest.fixture(scope='module')
def small_pair():
    """A real 64x80 crop: MSE-SR and GAN-SR of one photo, or a blurred / noisy twin if the photos are absent."""
    paths = sorted(glob.glob(os.path.join(PHOTOS, 'GAN-SR', '*.png')))
    if paths:
        gan = cv2.imread(paths[3])[100:164, 120:200]
        mse = cv2.imread(paths[3].replace(os.sep + 'GAN-SR' + os.sep, os.sep + 'MSE-SR' + os.sep))[100:164, 120:200]
    else:
        from skimage import data as skdata
        gan = np.ascontiguousarray(skdata.astronaut()[100:164, 120:200, ::-1])
        mse = cv2.GaussianBlur(gan, (0, 0), 1.5)
    return np.ascontiguousarray(mse), np.ascontiguousarray(gan)


# ------------------------------------------------------------------------------ parity on real data

@pytest.mark.parametrize('semantic', [True, False], ids=['class-file', 'weights-1'])
def test_parity_with_released_algorithm_on_photos(photos, semantic):
    """All 16 photos: masks equal the released algorithm pixel for pixel, D and S within 1e-5."""
    if semantic and not os.path.isfile(CLASS_FILE):
        pytest.skip(f'{CLASS_FILE} is absent')
    weights = read_class_file(CLASS_FILE) if semantic else np.ones(150)
    artifact_pixels = 0
    for name, mse, gan in photos:
        labels = band_labels(*mse.shape[:2])
        D_ref, S_ref, mask_ref = ref_detect(mse, gan, labels, weights, min_area=500)
        mask, maps = detect_artifacts(mse, gan, labels, CLASS_FILE if semantic else None, official_crop=True,
                                      min_area=500, return_maps=True) if semantic else \
            detect_artifacts(mse, gan, official_crop=True, min_area=500, return_maps=True)
        assert mask.shape == mask_ref.shape == (mse.shape[0] - 10, mse.shape[1] - 10), name
        assert mask.dtype == np.uint8
        assert np.array_equal(mask, mask_ref), f'{name}: {np.count_nonzero(mask != mask_ref)} pixels differ'
        assert np.abs(maps['D'] - D_ref).max() <= 1e-5, name
        assert np.abs(maps['S'] - S_ref).max() <= 1e-5, name
        artifact_pixels += int(np.count_nonzero(mask_ref))
        # default: the same mask at SR size with the uncovered 5 px band marked 0
        full = detect_artifacts(mse, gan, labels if semantic else None, CLASS_FILE if semantic else None,
                                min_area=500)
        assert full.shape == mse.shape[:2] and np.array_equal(full[5:-5, 5:-5], mask)
        assert not full[:5].any() and not full[-5:].any() and not full[:, :5].any() and not full[:, -5:].any()
    assert artifact_pixels > 0  # the comparison covered real detections


def test_class_weights_from_the_released_file_and_round_trip(tmp_path):
    if not os.path.isfile(CLASS_FILE):
        pytest.skip(f'{CLASS_FILE} is absent')
    w = read_class_file(CLASS_FILE)
    assert w.shape == (150,) and w.dtype == np.float64
    idx = np.rint(20 - 20 / w).astype(np.int64)
    expected = {'sky': 0, 'tree': 5, 'grass': 5, 'sea': 7, 'skyscraper': 7, 'tower': 9, 'bulletin board': 11}
    for name, i in expected.items():
        assert idx[ADE20K_CLASSES.index(name)] == i
        assert w[ADE20K_CLASSES.index(name)] == 20 / (20 - i)
    out = tmp_path / 'again.txt'
    write_class_file(out, idx)  # same order as the release ('screen door' before 'screen')
    with open(CLASS_FILE, 'rb') as f:
        assert out.read_bytes() == f.read()


# ------------------------------------------------------------------------------------ the indicator

def test_identical_images_give_one():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    D = texture_similarity(img, img)
    assert D.shape == (30, 40) and D.dtype == np.float32
    assert np.abs(D - 1).max() <= 1e-6
    D64 = texture_similarity(img, img, dtype=torch.float64, valid=False)
    assert D64.shape == (40, 50) and D64.dtype == np.float64 and np.abs(D64 - 1).max() <= 1e-9


@pytest.mark.parametrize('window', ['gaussian', 'box'])
def test_flat_against_checkerboard_has_known_low_D(window):
    """MSE flat 128, GAN a +-a checkerboard: var1 = 0, var2 = a^2 (1 - s^2) with s the window's checker sum."""
    a = 60.0
    yy, xx = np.mgrid[:31, :33]
    checker = np.where((yy + xx) % 2 == 0, 128 + a, 128 - a)
    mse = np.full((31, 33, 3), 128, np.uint8)
    gan = np.repeat(checker[..., None], 3, axis=2).astype(np.uint8)
    g = cv2.getGaussianKernel(11, 1.5)[:, 0] if window == 'gaussian' else np.full(11, 1 / 11)
    alt = (-1.0) ** np.arange(11)
    # windows centred on a +a pixel have mean 128 + a s, those on a -a pixel 128 - a s: variance is the same
    s = float(g @ alt) ** 2
    var2 = a * a * (1 - s * s)
    expected = (2 * np.sqrt(1e-8) * np.sqrt(var2 + 1e-8) + 58.5225) / (var2 + 58.5225)
    D = texture_similarity(mse, gan, window=window, dtype='float64')
    assert np.abs(D - expected).max() < 1e-9
    assert expected < 0.03


def test_box_window_equals_direct_window_mean():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (23, 29, 3)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255)
    n = 7
    cs = []
    for ch in range(3):
        wx = sliding_window_view(x[..., ch], (n, n))
        wy = sliding_window_view(y[..., ch], (n, n))
        v1, v2 = wx.var(axis=(-2, -1)), wy.var(axis=(-2, -1))
        cs.append((2 * np.sqrt(v1 + 1e-8) * np.sqrt(v2 + 1e-8) + 58.5225) / (v1 + v2 + 58.5225))
    expected = np.mean(cs, axis=0)
    D = texture_similarity(x, y, window='box', window_size=n, dtype=np.float64)
    assert D.shape == expected.shape == (17, 23)
    assert np.abs(D - expected).max() < 1e-10
    Dt = texture_similarity(torch.from_numpy(x).permute(2, 0, 1), torch.from_numpy(y).permute(2, 0, 1),
                            window='box', window_size=n, dtype=torch.float64, backend='torch')
    assert np.abs(Dt[0].numpy() - expected).max() < 1e-10


def test_full_size_map_uses_reflect_101_borders(small_pair):
    mse, gan = small_pair
    w = cv2.getGaussianKernel(11, 1.5)
    win = w @ w.T
    cs = []
    for ch in range(3):
        x, y = mse[..., ch].astype(np.float64), gan[..., ch].astype(np.float64)
        m1, m2 = cv2.filter2D(x, -1, win), cv2.filter2D(y, -1, win)  # default border: BORDER_REFLECT_101
        v1, v2 = cv2.filter2D(x * x, -1, win) - m1 ** 2, cv2.filter2D(y * y, -1, win) - m2 ** 2
        cs.append((2 * np.sqrt(v1 + 1e-8) * np.sqrt(v2 + 1e-8) + 58.5225) / (v1 + v2 + 58.5225))
    expected = np.mean(cs, axis=0)
    full = texture_similarity(mse, gan, valid=False)
    assert full.shape == mse.shape[:2] and np.abs(full - expected).max() < 1e-5
    assert np.array_equal(full[5:-5, 5:-5], texture_similarity(mse, gan))
    t = [torch.from_numpy(a).permute(2, 0, 1)[None] for a in (mse, gan)]
    full_t = texture_similarity(*t, valid=False, backend='torch')
    assert full_t.shape == (1, 1) + mse.shape[:2] and np.abs(full_t[0, 0].numpy() - expected).max() < 1e-5


def test_numpy_torch_batched_and_backends_agree(small_pair):
    mse, gan = small_pair
    D = texture_similarity(mse, gan)
    assert np.abs(D - ref_D(mse, gan)).max() < 1e-5
    tm, tg = (torch.from_numpy(a).permute(2, 0, 1) for a in (mse, gan))
    # channel order does not matter (BGR numpy vs RGB tensor)
    tm, tg = tm.flip(0), tg.flip(0)
    single = texture_similarity(tm, tg)
    assert single.shape == (1,) + D.shape and single.dtype == torch.float32
    assert np.abs(single[0].numpy() - D).max() < 1e-6
    other = (tg.float() * 0.5 + 40).round()  # a second, different pair in the batch
    batch = texture_similarity(torch.stack([tm.float(), tm.float()]), torch.stack([tg.float(), other]))
    assert batch.shape == (2, 1) + D.shape
    assert torch.equal(batch[0, 0], texture_similarity(tm.float(), tg.float())[0])
    assert torch.equal(batch[1, 0], texture_similarity(tm.float(), other)[0])
    via_torch = texture_similarity(torch.stack([tm.float(), tm.float()]), torch.stack([tg.float(), other]),
                                   backend='torch')
    assert (via_torch - batch).abs().max() < 1e-6
    assert np.abs(texture_similarity(mse, gan, backend='torch') - D).max() < 1e-6


def test_gray_rgba_and_input_errors(small_pair):
    mse, gan = small_pair
    gray = texture_similarity(mse[..., 1], gan[..., 1])
    assert gray.shape == (54, 70) and np.abs(gray - ref_D(mse[..., 1], gan[..., 1])).max() < 1e-5
    g64 = [np.ascontiguousarray(a[..., 1], dtype=np.float64) for a in (mse, gan)]
    before = [a.copy() for a in g64]
    assert np.abs(texture_similarity(*g64) - gray).max() < 1e-6
    assert np.abs(texture_similarity(*(torch.from_numpy(a)[None] for a in g64))[0].numpy() - gray).max() < 1e-6
    assert all(np.array_equal(a, b) for a, b in zip(g64, before))  # inputs untouched
    alpha = np.full(mse.shape[:2] + (1,), 255, np.uint8)
    rgba = texture_similarity(np.concatenate([mse, alpha], 2), np.concatenate([gan, alpha * 0], 2))
    assert np.array_equal(rgba, texture_similarity(mse, gan))  # alpha dropped
    with pytest.raises(ValueError, match=r'same shape, got \(64, 80, 3\) \(mse_sr\) and \(64, 79, 3\) \(gan_sr\)'):
        texture_similarity(mse, gan[:, :79])
    with pytest.raises(ValueError, match='images of 10x80 are smaller than the 11x11 window'):
        texture_similarity(mse[:10], gan[:10])
    with pytest.raises(TypeError, match='both be torch tensors or both numpy'):
        texture_similarity(mse, torch.from_numpy(gan))
    with pytest.raises(ValueError, match='odd positive integer'):
        texture_similarity(mse, gan, window_size=10)
    with pytest.warns(UserWarning, match=r'values in \[0, 255\]'):
        texture_similarity(mse / 255.0, gan / 255.0)


# ------------------------------------------------------------------------------------- morphology

def square(mask, y, x, side, value=1):
    mask[y:y + side, x:x + side] = value
    return mask


def test_clean_mask_erodes_specks_dilates_three_times_and_keeps_border_regions():
    m = np.zeros((80, 80), bool)
    square(m, 5, 5, 3)  # a speck: gone after the 5x5 erosion
    square(m, 30, 30, 20)  # eroded to 16, dilated 3 x 2 px per side -> 28
    out = clean_mask(m, min_area=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    assert np.array_equal(out, square(np.zeros((80, 80), np.uint8), 26, 26, 28, 255))
    # the image edge neither erodes (default border = max) nor dilates inward (border = min)
    full = np.ones((30, 30), np.uint8)
    assert (clean_mask(full, min_area=0) == 255).all()
    edge = square(np.zeros((40, 40), np.uint8), 0, 0, 10)  # touches the top-left corner
    expected = cv2.dilate(cv2.erode(edge, np.ones((5, 5), np.uint8)), np.ones((5, 5), np.uint8), iterations=3)
    assert np.array_equal(clean_mask(edge, min_area=0), expected * 255)
    assert np.array_equal(expected[:14, :14], np.ones((14, 14), np.uint8))  # eroded only on the inner sides


def test_clean_mask_fills_the_hole_of_a_ring():
    m = square(np.zeros((80, 80), np.uint8), 20, 20, 40, 255)
    square(m, 28, 28, 24, 0)  # ring 8 px thick; after erosion+dilation its hole is 16 x 16
    filled = clean_mask(m, min_area=0)
    assert np.array_equal(filled, square(np.zeros((80, 80), np.uint8), 16, 16, 48, 255))
    with_hole = clean_mask(m, fill_holes=0, min_area=0)
    assert np.array_equal(with_hole, np.where(square(np.zeros((80, 80), np.uint8), 32, 32, 16), 0, filled))


def test_fill_holes_fast_path_equals_scipy():
    rng = np.random.default_rng(2)
    for p in (0.3, 0.5, 0.6, 0.7):
        m = (rng.random((60, 70)) < p).astype(np.uint8)
        ref = ndimage.binary_fill_holes(m, structure=np.ones((3, 3))).astype(np.uint8)
        assert np.array_equal(fill_holes(m, 3), ref)
        ref5 = ndimage.binary_fill_holes(m, structure=np.ones((5, 5))).astype(np.uint8)
        assert np.array_equal(fill_holes(m, 5), ref5)


def test_clean_mask_area_filter_is_strict_8_connected_and_fractional():
    m = np.zeros((100, 100), np.uint8)
    square(m, 5, 5, 10)  # area 100: removed at min_area=100 (area <= min_area)
    m[40:50, 40:50] = 1
    m[50, 40] = 1  # area 101: kept
    square(m, 80, 80, 7)
    square(m, 87, 87, 7)  # two 49 px squares touching diagonally: one 98 px component
    only_area = dict(erode=0, dilate_iterations=0, fill_holes=0)
    out = clean_mask(m, min_area=100, **only_area)
    assert not out[5:15, 5:15].any() and out[40:51, 40:50].sum() == 101 * 255 and not out[80:, 80:].any()
    assert np.array_equal(clean_mask(m, min_area=97, **only_area)[80:, 80:], m[80:, 80:] * 255)
    # a fraction of the 100 x 100 mask area: floor(f * 10000) pixels
    assert resolve_min_area(0.01, 100, 100) == 100 and resolve_min_area(0.01019, 100, 100) == 101
    assert np.array_equal(clean_mask(m, min_area=0.01, **only_area), out)
    assert not clean_mask(m, min_area=0.01019, **only_area)[40:51, 40:50].any()
    with pytest.raises(ValueError, match='min_area'):
        clean_mask(m, min_area=-1)
    with pytest.raises(ValueError, match='min_area'):
        clean_mask(m, min_area=2.5)


def test_clean_mask_torch_layouts_match_numpy():
    rng = np.random.default_rng(3)
    masks = [ndimage.binary_dilation(rng.random((50, 60)) < 0.02, iterations=3) for _ in range(3)]
    expected = np.stack([clean_mask(m, min_area=50) for m in masks])
    t = torch.from_numpy(np.stack(masks))
    out3 = clean_mask(t, min_area=50)
    assert out3.dtype == torch.uint8 and out3.shape == (3, 50, 60) and np.array_equal(out3.numpy(), expected)
    out4 = clean_mask(t[:, None].float() * 255, min_area=50)
    assert out4.shape == (3, 1, 50, 60) and np.array_equal(out4[:, 0].numpy(), expected)
    assert expected.any()


# -------------------------------------------------------------------------------------- semantics

def test_semantic_adjust_clips_and_checks_labels():
    D = np.array([[0.9, 0.3], [0.5, 0.65]], np.float32)
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    S = semantic_adjust(D, labels, [2.0, 0.5, 1.0])
    assert S.dtype == np.float32
    np.testing.assert_allclose(S, [[1.0, 0.15], [0.5, 0.65]], rtol=1e-6)
    Dt = torch.from_numpy(D)[None, None].repeat(2, 1, 1, 1)
    St = semantic_adjust(Dt, torch.from_numpy(labels)[None].repeat(2, 1, 1), torch.tensor([2.0, 0.5, 1.0]))
    assert St.shape == (2, 1, 2, 2) and np.allclose(St[1, 0].numpy(), S)
    with pytest.raises(ValueError) as e:
        semantic_adjust(D, np.array([[0, 1], [3, 2]]), [2.0, 0.5, 1.0])
    assert str(e.value) == 'semantic_adjust: label 3 is out of range for 3 classes (expected 0..2)'
    with pytest.raises(ValueError, match='label -1 is out of range for 150 classes'):
        semantic_adjust(D, np.array([[0, -1], [3, 2]], np.int8), np.ones(150))
    with pytest.raises(ValueError, match=r'labels of shape \(2, 3\) do not match D of shape \(2, 2\)'):
        semantic_adjust(D, np.zeros((2, 3), np.int64), [1.0])


def _class_lines(skip=None, replace=None):
    lines = [f'{n}--{i % 3}' for i, n in enumerate(ADE20K_CLASSES) if n != skip]
    for k, v in (replace or {}).items():
        lines[k] = v
    return '\n'.join(lines) + '\n'


def test_class_file_reader_errors(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text(_class_lines(skip='wall'))
    with pytest.raises(ConfigError) as e:
        read_class_file(path)
    assert str(e.value) == (f"{path}: missing class 'wall' (the 150 ADE20K classes are required; 149 given), "
                            "e.g. add a line 'wall--0'")
    path.write_text(_class_lines(replace={2: 'sky-3'}))
    with pytest.raises(ConfigError) as e:
        read_class_file(path)
    assert str(e.value) == (f"{path}:3: malformed line 'sky-3'; expected 'classname--idx' (an ADE20K class "
                            'name, two hyphens, an integer 0..19)')
    path.write_text(_class_lines(replace={2: 'skyy--3'}))
    with pytest.raises(ConfigError, match=r":3: unknown ADE20K class 'skyy'; did you mean 'sky'\?"):
        read_class_file(path)
    path.write_text(_class_lines(replace={3: 'sky--1'}))
    with pytest.raises(ConfigError, match=r":4: duplicate class 'sky' \(first given on line 3\)"):
        read_class_file(path)
    path.write_text(_class_lines(replace={4: ' tree -- 20'}))
    with pytest.raises(ConfigError, match=r":5: class 'tree' has idx 20; expected an integer 0..19"):
        read_class_file(path)
    path.write_text(_class_lines(replace={4: ' tree -- 7 '}) + '\n\n')  # spaces and blank lines are fine
    w = read_class_file(path)
    assert w[4] == 20 / 13 and w[0] == 1.0 and w[1] == 20 / 19
    with pytest.raises(ConfigError, match='class file not found'):
        read_class_file(tmp_path / 'nope.txt')


def test_class_json_round_trip_and_load_forms(tmp_path):
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 12, 150)
    p85 = np.where(np.arange(150) % 7 == 0, np.nan, rng.random(150))
    write_class_json(tmp_path / 'w.json', idx, p85=p85, counts=np.arange(150), source={'note': 'test'})
    doc = json.loads((tmp_path / 'w.json').read_text())
    assert doc['format'] == 'desra-class-weights' and doc['version'] == 1 and doc['bins'] == 20
    assert list(doc['classes']) == list(ADE20K_CLASSES)
    assert doc['classes']['wall'] == {'idx': int(idx[0]), 'weight': 20 / (20 - idx[0]), 'p85': None, 'count': 0}
    w = 20 / (20 - idx)
    assert np.array_equal(read_class_file(tmp_path / 'w.json'), w)
    write_class_file(tmp_path / 'w.txt', idx)
    assert np.array_equal(load_class_weights(str(tmp_path / 'w.txt')), w)
    assert np.array_equal(load_class_weights(w.tolist()), w)
    by_name = load_class_weights({'sky': 1.5, 'tree': 2})
    assert by_name[2] == 1.5 and by_name[4] == 2 and (np.delete(by_name, [2, 4]) == 1).all()
    with pytest.raises(ConfigError, match="unknown ADE20K class 'skye'"):
        load_class_weights({'skye': 1.5})
    with pytest.raises(ConfigError, match=r'expected a \.txt'):
        load_class_weights(str(tmp_path / 'w.yaml'))
    del doc['classes']['sky']
    (tmp_path / 'bad.json').write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"bad\.json: missing class 'sky'"):
        read_class_file(tmp_path / 'bad.json')


def test_class_histogram_indices_and_weights_by_construction():
    hist = ClassHistogram(num_classes=4)
    D = np.concatenate([np.full(90, 0.97), np.full(10, 0.5),  # class 0: 90 % in the top bin -> idx 0
                        np.full(80, 0.97), np.full(20, 0.72),  # class 1: 80 % top, 20 % in [0.70, 0.75) -> 5
                        np.full(85, 0.99), np.full(15, 0.61)])  # class 2: exactly 85 % top is not > 85 % -> 7
    labels = np.repeat([0, 0, 1, 1, 2, 2], [90, 10, 80, 20, 85, 15])
    hist.update(D[:150], labels[:150])  # streamed in two parts, as torch then numpy
    hist.update(torch.from_numpy(D[150:]).float(), torch.from_numpy(labels[150:]))
    assert hist.totals.tolist() == [100, 100, 100, 0]
    assert hist.bin_index(0.85).tolist() == [0, 5, 7, 0]  # class 3 never seen: idx 0
    np.testing.assert_allclose(hist.weights(0.85), [1.0, 20 / 15, 20 / 13, 1.0])
    assert hist.bin_index(0.75).tolist() == [0, 0, 0, 0]
    assert np.isnan(hist.p85()[3])
    with pytest.raises(ValueError, match='label 4 is out of range for 4 classes'):
        hist.update(np.array([0.5]), np.array([4]))


def test_class_histogram_percentiles_match_numpy():
    rng = np.random.default_rng(5)
    hist = ClassHistogram(num_classes=3)
    values = [rng.beta(8, 1.5, 20000), rng.beta(2, 2, 5000), rng.uniform(0.2, 0.9, 777)]
    for k, v in enumerate(values):
        for part in np.array_split(v, 3):
            hist.update(part, np.full(part.shape, k))
    idx = hist.bin_index(0.85)
    p85 = hist.p85(0.85)
    for k, v in enumerate(values):
        for q in (5, 15, 50, 85, 99):
            assert abs(hist.percentile(q)[k] - np.percentile(v, q)) <= 1e-3  # one fine bin (<< the 0.05 bins)
        assert abs(p85[k] - np.percentile(v, 15)) <= 1e-3  # the paper's descending 85 % point
        # the idx bin holds P85: 1 / weight is its upper edge
        assert 1 - (idx[k] + 1) / 20 - 1e-3 <= p85[k] <= 1 - idx[k] / 20 + 1e-3


# --------------------------------------------------------------------------------------- detector

def test_detect_artifacts_layouts_and_options(small_pair, tmp_path):
    mse, gan = small_pair
    labels = band_labels(64, 80)
    weights = np.linspace(1.0, 2.0, 150)
    kw = dict(min_area=20, threshold=0.9)
    mask, maps = detect_artifacts(mse, gan, labels, weights, return_maps=True, **kw)
    assert mask.shape == (64, 80) and mask.dtype == np.uint8
    assert maps['D'].shape == maps['S'].shape == maps['labels'].shape == (54, 70)
    assert np.array_equal(maps['labels'], labels[5:-5, 5:-5])
    # labels already at the cropped size, and weights given as a dict or a file
    same = detect_artifacts(mse, gan, labels[5:-5, 5:-5], dict(zip(ADE20K_CLASSES, weights)), **kw)
    assert np.array_equal(same, mask)
    write_class_json(tmp_path / 'w.json', np.arange(150) % 20)
    from_file = detect_artifacts(mse, gan, labels, str(tmp_path / 'w.json'), **kw)
    assert np.array_equal(from_file, detect_artifacts(mse, gan, labels, 20 / (20 - np.arange(150) % 20), **kw))
    # torch in -> torch out, batched = per image
    tm, tg = (torch.from_numpy(a).permute(2, 0, 1) for a in (mse, gan))
    tl = torch.from_numpy(labels)
    out, tmaps = detect_artifacts(torch.stack([tm, tm]), torch.stack([tg, tm]), torch.stack([tl, tl])[:, None],
                                  torch.from_numpy(weights), return_maps=True, **kw)
    assert out.shape == (2, 64, 80) and out.dtype == torch.uint8
    assert tmaps['D'].shape == tmaps['S'].shape == (2, 1, 54, 70) and tmaps['labels'].shape == (2, 54, 70)
    assert np.array_equal(out[0].numpy(), mask) and not out[1].any()  # identical images: no artifact
    single = detect_artifacts(tm, tg, tl, weights, official_crop=True, **kw)
    assert single.shape == (54, 70) and np.array_equal(single.numpy(), mask[5:-5, 5:-5])
    assert mask.any()
    with pytest.raises(ValueError, match='match neither the SR size 64x80 nor the cropped size 54x70'):
        detect_artifacts(mse, gan, labels[:60])
    with pytest.raises(ValueError, match='no labels'):
        detect_artifacts(mse, gan, class_weights=weights)


# ---------------------------------------------------------------------------- class-weight script

def test_compute_class_weights_script(tmp_path, small_pair):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'compute_class_weights', os.path.join(os.path.dirname(os.path.dirname(__file__)), 'scripts',
                                              'compute_class_weights.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(6)
    expected = ClassHistogram()
    for d in ('mse', 'gan', 'labels'):
        os.makedirs(tmp_path / d / 'sub', exist_ok=True)
    mse, gan = small_pair
    for i in range(3):
        name = f'sub/img{i}'
        m = np.ascontiguousarray(np.roll(mse, 7 * i, axis=1))
        g = np.ascontiguousarray(np.roll(gan, 7 * i, axis=1))
        lab = rng.integers(0, 150, (8, 10)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        cv2.imwrite(str(tmp_path / 'mse' / f'{name}.png'), m)
        cv2.imwrite(str(tmp_path / 'gan' / f'{name}.png'), g)
        cv2.imwrite(str(tmp_path / 'labels' / f'{name}.png'), lab)
        expected.update(texture_similarity(m.astype(np.float32), g.astype(np.float32)), lab[5:-5, 5:-5])
    prefix = str(tmp_path / 'out' / 'weights')
    result = script.main(['--mse', str(tmp_path / 'mse'), '--gan', str(tmp_path / 'gan'),
                          '--labels', str(tmp_path / 'labels'), '--out', prefix])
    assert np.array_equal(result['idx'], expected.bin_index())
    assert np.array_equal(read_class_file(prefix + '.txt'), expected.weights())
    assert np.array_equal(read_class_file(prefix + '.json'), expected.weights())
    with open(prefix + '.json', encoding='utf-8') as f:
        doc = json.load(f)
    assert doc['source']['images'] == 3
    assert sum(c['count'] for c in doc['classes'].values()) == 3 * 54 * 70
    # a GAN-SR image without its MSE-SR twin: exit status 2 and the file named
    os.remove(tmp_path / 'mse' / 'sub' / 'img1.png')
    proc = run_script('scripts/compute_class_weights.py',
                      ['--mse', str(tmp_path / 'mse'), '--gan', str(tmp_path / 'gan'),
                       '--labels', str(tmp_path / 'labels'), '--out', prefix], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'gan' / 'sub' / 'img1.png'} has no twin in {tmp_path / 'mse'}" in proc.stderr
    with pytest.raises(DataError, match='has no twin'):
        script.main(['--mse', str(tmp_path / 'mse'), '--gan', str(tmp_path / 'gan'),
                     '--labels', str(tmp_path / 'labels'), '--out', prefix])
