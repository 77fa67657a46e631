"""PSNR/SSIM numbers against hand-computed values and independent reference implementations."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from skimage import data as skdata
from skimage.metrics import structural_similarity

from desra.errors import ConfigError
from desra.metrics import (bgr2ycbcr, calculate_metric, calculate_psnr, calculate_psnr_pt, calculate_ssim,
                           calculate_ssim_pt, rgb2ycbcr, rgb2ycbcr_pt, ycbcr2bgr)
from desra.registry import METRIC_REGISTRY


@pytest.fixture(scope='module')
def pair():
    """A 96x112 BGR uint8 crop of skimage's astronaut and a noisy copy."""
    img = np.ascontiguousarray(skdata.astronaut()[40:136, 150:262, ::-1])
    rng = np.random.default_rng(0)
    noisy = np.clip(img.astype(np.float64) + rng.normal(0, 12, img.shape), 0, 255).round().astype(np.uint8)
    return img, noisy


def _ref_ssim_channel(a, b):
    """Direct float64 SSIM with 'valid' convolution (independent of cv2.filter2D + slicing)."""
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)

    def f(z):
        return convolve2d(z, w, mode='valid')

    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a ** 2
    var_b = f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.mean()


def _to_pt(img_bgr):
    return torch.from_numpy(np.ascontiguousarray(img_bgr[..., ::-1].transpose(2, 0, 1))).float()[None] / 255.


def test_registered():
    for name in ('calculate_psnr', 'calculate_ssim', 'calculate_psnr_pt', 'calculate_ssim_pt'):
        assert name in METRIC_REGISTRY


def test_psnr_hand_built():
    img = np.full((20, 24, 3), 100, np.uint8)
    assert calculate_psnr(img, img + 1, crop_border=0) == pytest.approx(10 * math.log10(65025), abs=1e-9)
    assert calculate_psnr(img, img + 1, crop_border=0) == pytest.approx(48.1308036, abs=1e-6)
    # MSE 4 -> PSNR - 10 log10(4)
    assert calculate_psnr(img, img + 2, 0) == pytest.approx(10 * math.log10(65025 / 4), abs=1e-9)
    # float inputs on the same scale give the same number; CHW order too
    assert calculate_psnr(img.astype(np.float32), img + 1.0, 0) == pytest.approx(48.1308036, abs=1e-6)
    assert calculate_psnr(img.transpose(2, 0, 1), (img + 1).transpose(2, 0, 1), 0,
                          input_order='CHW') == pytest.approx(48.1308036, abs=1e-6)
    assert calculate_psnr(img, img, 0) == float('inf')


def test_psnr_crop_border():
    img = np.full((20, 24, 3), 50, np.uint8)
    other = img.copy()
    other[:3] = 0
    other[:, -3:] = 255
    assert calculate_psnr(img, other, crop_border=3) == float('inf')
    assert calculate_psnr(img, other, crop_border=2) < 30
    other[10, 10, 1] = 51  # one differing value of 14*18*3 inside the border
    assert calculate_psnr(img, other, crop_border=3) == pytest.approx(10 * math.log10(65025 * 14 * 18 * 3), abs=1e-9)


def test_ycbcr_known_colours():
    bgr = np.array([[[255, 255, 255], [0, 0, 0], [0, 0, 255], [255, 0, 0]]], np.uint8)
    y = bgr2ycbcr(bgr, y_only=True)
    assert y.dtype == np.uint8
    # white 235, black 16, red 16 + 65.481, blue 16 + 24.966
    assert y.tolist() == [[235, 16, 81, 41]]
    yf = bgr2ycbcr(bgr.astype(np.float32) / 255., y_only=True) * 255
    np.testing.assert_allclose(yf[0], [235.0, 16.0, 16 + 65.481, 16 + 24.966], atol=1e-4)
    full = bgr2ycbcr(bgr)
    assert full[0, 0].tolist() == [235, 128, 128]  # white: neutral chroma
    assert full[0, 2].tolist() == [81, 90, 240]  # red: Cr at its maximum 240
    np.testing.assert_array_equal(rgb2ycbcr(bgr[..., ::-1].copy()), full)
    # round trip through the inverse
    img = np.ascontiguousarray(skdata.astronaut()[:16, :16, ::-1])
    back = ycbcr2bgr(bgr2ycbcr(img.astype(np.float64) / 255.)) * 255.
    np.testing.assert_allclose(back, img, atol=1e-6)
    # torch version (RGB, [0,1]) matches
    t = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 1.0]]]])
    np.testing.assert_allclose((rgb2ycbcr_pt(t, y_only=True) * 255).flatten().numpy(),
                               [235.0, 16.0, 16 + 65.481, 16 + 24.966], atol=1e-4)


def test_psnr_y_channel(pair):
    img, noisy = pair
    y1 = (img.astype(np.float64) / 255) @ np.array([24.966, 128.553, 65.481]) + 16
    y2 = (noisy.astype(np.float64) / 255) @ np.array([24.966, 128.553, 65.481]) + 16
    ref = 10 * np.log10(255 ** 2 / np.mean((y1[4:-4, 4:-4] - y2[4:-4, 4:-4]) ** 2))
    assert calculate_psnr(img, noisy, 4, test_y_channel=True) == pytest.approx(ref, abs=1e-4)
    assert calculate_psnr(img, noisy, 4, test_y_channel=True) > calculate_psnr(img, noisy, 4)


def test_ssim_identical_and_reference(pair):
    img, noisy = pair
    assert calculate_ssim(img, img, 0) == pytest.approx(1.0, abs=1e-12)
    ours = calculate_ssim(img, noisy, crop_border=4)
    a, b = img[4:-4, 4:-4].astype(np.float64), noisy[4:-4, 4:-4].astype(np.float64)
    ref = np.mean([_ref_ssim_channel(a[..., c], b[..., c]) for c in range(3)])
    assert ours == pytest.approx(ref, abs=1e-4)
    assert 0.3 < ours < 0.95  # really degraded, not trivially 1
    # skimage with the same settings, its full map restricted to the valid region
    ch = []
    for c in range(3):
        _, smap = structural_similarity(a[..., c], b[..., c], gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255, full=True, win_size=11,
                                        truncate=3.5)
        ch.append(smap[5:-5, 5:-5].mean())
    assert ours == pytest.approx(np.mean(ch), abs=1e-4)


def test_ssim_y_channel(pair):
    img, noisy = pair
    y1 = (img.astype(np.float64) / 255) @ np.array([24.966, 128.553, 65.481]) + 16
    y2 = (noisy.astype(np.float64) / 255) @ np.array([24.966, 128.553, 65.481]) + 16
    ref = _ref_ssim_channel(y1[2:-2, 2:-2], y2[2:-2, 2:-2])
    assert calculate_ssim(img, noisy, 2, test_y_channel=True) == pytest.approx(ref, abs=1e-4)


def test_torch_matches_numpy(pair):
    img, noisy = pair
    t1, t2 = _to_pt(img), _to_pt(noisy)
    batch1, batch2 = torch.cat([t1, t1]), torch.cat([t2, t1])
    psnr = calculate_psnr_pt(batch1, batch2, crop_border=4)
    assert psnr.shape == (2,)
    assert psnr[0].item() == pytest.approx(calculate_psnr(img, noisy, 4), abs=1e-4)
    assert psnr[1].item() == pytest.approx(80.0, abs=1e-6)  # identical: BasicSR's +1e-8 in the MSE
    assert calculate_psnr_pt(t1, t2, 4, test_y_channel=True).item() == pytest.approx(
        calculate_psnr(img, noisy, 4, test_y_channel=True), abs=1e-4)
    ssim = calculate_ssim_pt(batch1, batch2, crop_border=4)
    assert ssim[0].item() == pytest.approx(calculate_ssim(img, noisy, 4), abs=1e-4)
    assert ssim[1].item() == pytest.approx(1.0, abs=1e-9)
    assert calculate_ssim_pt(t1, t2, 4, test_y_channel=True).item() == pytest.approx(
        calculate_ssim(img, noisy, 4, test_y_channel=True), abs=1e-4)


def test_calculate_metric_and_errors(pair):
    img, noisy = pair
    v = calculate_metric({'img': img, 'img2': noisy}, {'type': 'calculate_psnr', 'crop_border': 4})
    assert v == calculate_psnr(img, noisy, 4)
    with pytest.raises(ConfigError, match=r"val\.metrics\.psnr\.type: unknown metric type 'calc_psnr'"):
        calculate_metric({'img': img, 'img2': noisy}, {'type': 'calc_psnr', 'crop_border': 4},
                         key_path='val.metrics.psnr')
    with pytest.raises(ValueError, match=r'shapes differ: \(96, 112, 3\) vs \(96, 111, 3\)'):
        calculate_psnr(img, noisy[:, :-1], 0)
    with pytest.raises(ValueError, match='input_order'):
        calculate_ssim(img, noisy, 0, input_order='HCW')
