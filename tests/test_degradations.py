"""Real-ESRGAN's degradation functions against independent references written here from their formulas."""
import glob
import math
import os

import cv2
import numpy as np
import pytest
import torch
from scipy import special

from conftest import SHARED
from desra.data import degradations as dg

PHOTOS = os.path.join(SHARED, 'data', 'photos')


# ----------------------------------------------------------------------------------------------- kernels
def _reference_kernel(k, sig_x, sig_y, theta, kind='gauss', beta=1.0):
    """exp(-d/2), exp(-d^beta/2) or 1/(d^beta+1) with d = [x y] S^-1 [x y]^T, S = R diag(sx^2, sy^2) R^T;
    x is the column offset, y the row offset, both in -(k//2)..k//2."""
    r = k // 2
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    sigma = rot @ np.diag([sig_x ** 2, sig_y ** 2]) @ rot.T
    inv = np.linalg.inv(sigma)
    out = np.zeros((k, k))
    for row in range(k):
        for col in range(k):
            v = np.array([col - r, row - r], float)
            d = v @ inv @ v
            out[row, col] = {'gauss': math.exp(-0.5 * d), 'gen': math.exp(-0.5 * d ** beta),
                             'plateau': 1.0 / (d ** beta + 1)}[kind]
    return out / out.sum()


@pytest.mark.parametrize('k, sx, sy, theta', [(21, 2.0, 0.7, 0.6), (7, 0.5, 1.8, -2.1), (13, 3.0, 3.0, 0.0)])
def test_gaussian_kernels(k, sx, sy, theta):
    np.testing.assert_allclose(dg.bivariate_Gaussian(k, sx, sy, theta, isotropic=False),
                               _reference_kernel(k, sx, sy, theta), rtol=1e-12, atol=1e-15)
    # isotropic ignores sig_y and theta
    np.testing.assert_allclose(dg.bivariate_Gaussian(k, sx, sy, theta, isotropic=True),
                               _reference_kernel(k, sx, sx, 0.0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('beta', [0.5, 1.0, 3.7])
def test_generalized_and_plateau_kernels(beta):
    np.testing.assert_allclose(dg.bivariate_generalized_Gaussian(15, 1.5, 0.8, 0.4, beta, isotropic=False),
                               _reference_kernel(15, 1.5, 0.8, 0.4, 'gen', beta), rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(dg.bivariate_plateau(15, 1.5, 0.8, 0.4, beta, isotropic=False),
                               _reference_kernel(15, 1.5, 0.8, 0.4, 'plateau', beta), rtol=1e-11, atol=1e-15)
    # beta = 1: the generalised Gaussian is the Gaussian
    if beta == 1.0:
        np.testing.assert_allclose(dg.bivariate_generalized_Gaussian(9, 1.2, 0.9, 1.0, 1.0, isotropic=False),
                                   dg.bivariate_Gaussian(9, 1.2, 0.9, 1.0, isotropic=False), rtol=1e-12)


def test_grid_convention_column_then_row():
    grid, xx, yy = dg.mesh_grid(5)
    assert grid.shape == (5, 5, 2) and grid[0, 4, 0] == 2 and grid[0, 4, 1] == -2  # x = column, y = row
    # a kernel stretched along x (theta 0, sig_x > sig_y) is wider across columns than across rows
    k = dg.bivariate_Gaussian(11, 3.0, 0.6, 0.0, isotropic=False)
    assert k[5, 0] > k[0, 5]


@pytest.mark.parametrize('cutoff, k, pad_to', [(np.pi / 3, 13, 21), (2.5, 7, 0), (np.pi, 21, 21)])
def test_sinc_kernel_from_bessel_formula(cutoff, k, pad_to):
    c = (k - 1) / 2
    ref = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            rr = math.hypot(i - c, j - c)
            ref[i, j] = (cutoff ** 2 / (4 * math.pi) if rr == 0
                         else cutoff * special.jv(1, cutoff * rr) / (2 * math.pi * rr))
    ref /= ref.sum()
    if pad_to > k:
        p = (pad_to - k) // 2
        ref = np.pad(ref, p)
    out = dg.circular_lowpass_kernel(cutoff, k, pad_to=pad_to)
    assert out.shape == ref.shape and abs(out.sum() - 1) < 1e-12
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-14)


def test_random_mixed_kernels_types_and_determinism():
    names = list(dg.KERNEL_TYPES)
    probs = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    rng = np.random.default_rng(0)
    counts = {n: 0 for n in names}
    for _ in range(2000):
        kernel, kind = dg.random_mixed_kernels(names, probs, 9, (0.2, 3), (0.2, 3), (-math.pi, math.pi),
                                               (0.5, 4), (1, 2), rng=rng, return_type=True)
        assert kernel.shape == (9, 9) and abs(kernel.sum() - 1) < 1e-9 and (kernel >= 0).all()
        counts[kind] += 1
    for n, p in zip(names, probs):
        assert abs(counts[n] / 2000 - p) < 0.04, (n, counts[n])
    a = dg.random_mixed_kernels(names, probs, 21, rng=np.random.default_rng(5))
    b = dg.random_mixed_kernels(names, probs, 21, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown kernel type 'gauss'"):
        dg.random_mixed_kernels(['gauss'], [1.0], 21, rng=rng)


# ----------------------------------------------------------------------------------------------- filter2D
def _direct_filter(img, kernels):
    """Direct correlation with reflect-101 borders (numpy 'reflect' mode), one kernel per image."""
    b, c, h, w = img.shape
    k = kernels.shape[-1]
    r = k // 2
    out = np.zeros_like(img, dtype=np.float64)
    for n in range(b):
        kern = kernels[n if kernels.shape[0] > 1 else 0]
        for ch in range(c):
            padded = np.pad(img[n, ch].astype(np.float64), r, mode='reflect')
            for i in range(k):
                for j in range(k):
                    out[n, ch] += kern[i, j] * padded[i:i + h, j:j + w]
    return out


def test_filter2d_equals_direct_correlation():
    rng = np.random.default_rng(1)
    img = rng.random((3, 3, 17, 23)).astype(np.float32)
    kernels = rng.random((3, 7, 7)).astype(np.float32)  # not symmetric: correlation, not convolution
    out = dg.filter2D(torch.from_numpy(img), torch.from_numpy(kernels)).numpy()
    np.testing.assert_allclose(out, _direct_filter(img, kernels), rtol=1e-5, atol=1e-5)
    shared = dg.filter2D(torch.from_numpy(img), torch.from_numpy(kernels[:1])).numpy()
    np.testing.assert_allclose(shared, _direct_filter(img, kernels[:1]), rtol=1e-5, atol=1e-5)


def test_filter2d_large_kernel_on_a_small_image_matches_opencv():
    rng = np.random.default_rng(2)
    img = rng.random((1, 1, 8, 6)).astype(np.float32)
    kernel = rng.random((21, 21)).astype(np.float32)
    out = dg.filter2D(torch.from_numpy(img), torch.from_numpy(kernel)[None]).numpy()[0, 0]
    ref = cv2.filter2D(img[0, 0].astype(np.float64), -1, kernel.astype(np.float64), borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- USM
def _gauss1d(ksize):
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for sigma = 0
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(img, ksize):
    g = _gauss1d(ksize)
    r = ksize // 2
    pad = np.pad(img, ((r, r), (r, r)) + ((0, 0),) * (img.ndim - 2), mode='reflect')
    tmp = sum(g[i] * pad[i:i + img.shape[0]] for i in range(ksize))
    return sum(g[j] * tmp[:, j:j + img.shape[1]] for j in range(ksize))


def test_usm_against_its_definition():
    rng = np.random.default_rng(3)
    img = np.clip(cv2.GaussianBlur(rng.random((40, 44, 3)).astype(np.float32), (5, 5), 1) * 1.2, 0, 1)
    weight, radius, threshold = 0.5, 50, 10
    k = radius + 1  # even radius -> radius + 1
    blur = _blur(img.astype(np.float64), k)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float64)
    soft = _blur(mask, k)
    ref = soft * np.clip(img + weight * residual, 0, 1) + (1 - soft) * img
    np.testing.assert_allclose(dg.usm_sharp(img, weight, radius, threshold), ref, atol=2e-5)
    t = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    out = dg.USMSharp(radius)(t, weight, threshold)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(out, ref, atol=2e-5)


# ----------------------------------------------------------------------------------------------- noise
def test_gaussian_noise_pt_is_the_formula():
    img = torch.full((2, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    out = dg.add_gaussian_noise_pt(img, sigma=torch.tensor([10.0, 20.0]), gray_noise=torch.tensor([0.0, 1.0]),
                                   clip=False, generator=g)
    g2 = torch.Generator().manual_seed(0)
    gray = torch.randn(32, 32, generator=g2)  # drawn first when any image asks for gray noise
    color = torch.randn(2, 3, 32, 32, generator=g2)
    expected = img.clone()
    expected[0] += color[0] * 10 / 255
    expected[1] += gray * 20 / 255
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[1, 0], out[1, 2])  # gray noise is the same in every channel


def test_poisson_noise_pt_is_the_formula():
    rng = np.random.default_rng(4)
    img = torch.from_numpy((rng.integers(0, 256, (1, 3, 16, 16)) / 255.).astype(np.float32))
    out = dg.add_poisson_noise_pt(img, scale=2.0, clip=False, gray_noise=0, generator=torch.Generator().manual_seed(1))
    levels = 2 ** math.ceil(math.log2(len(torch.unique(img))))
    ref = torch.poisson(img * levels, generator=torch.Generator().manual_seed(1)) / levels
    torch.testing.assert_close(out, img + (ref - img) * 2.0)


def test_random_noise_is_reproducible_and_clipped():
    img = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    a = dg.random_add_poisson_noise_pt(img, (0.05, 3), 0.4, generator=torch.Generator().manual_seed(9))
    b = dg.random_add_poisson_noise_pt(img, (0.05, 3), 0.4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    n = dg.generate_gaussian_noise(np.zeros((4, 5, 3), np.float32), sigma=25, rng=np.random.default_rng(2))
    np.testing.assert_allclose(n, np.float32(np.random.default_rng(2).standard_normal((4, 5, 3))) * 25 / 255.)


# ----------------------------------------------------------------------------------------------- JPEG
def test_quality_to_factor():
    assert dg.quality_to_factor(25) == 2.0 and dg.quality_to_factor(50) == 1.0
    assert abs(dg.quality_to_factor(90) - 0.2) < 1e-12
    q = torch.tensor([25.0, 50.0, 90.0])
    torch.testing.assert_close(dg.quality_to_factor(q), torch.tensor([2.0, 1.0, 0.2]))
    assert torch.equal(q, torch.tensor([25.0, 50.0, 90.0]))  # not modified


@pytest.mark.skipif(not glob.glob(os.path.join(PHOTOS, 'HR', '*.png')), reason='shared photos absent')
def test_diffjpeg_against_opencv_on_a_real_photo():
    path = sorted(glob.glob(os.path.join(PHOTOS, 'HR', '*.png')))[0]
    bgr = cv2.imread(path)[:120, :150]  # not a multiple of 16: padded and cropped back
    x = torch.from_numpy(bgr[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
    jpeg = dg.DiffJPEG(differentiable=False)
    psnrs = {}
    for q in (30, 60, 95):
        out = jpeg(x, quality=q)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        ok, enc = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        ref = cv2.imdecode(enc, 1)[..., ::-1].astype(np.float32) / 255
        mse = float(((out[0].permute(1, 2, 0).numpy() - ref) ** 2).mean())
        psnrs[q] = 10 * math.log10(1 / mse)
    print('DiffJPEG vs OpenCV JPEG, PSNR (dB):', {q: round(v, 2) for q, v in psnrs.items()})
    assert psnrs[30] > 30 and psnrs[60] > 31 and psnrs[95] > 40
    # per-image qualities equal separate calls
    both = jpeg(torch.cat([x, x]), quality=torch.tensor([30.0, 95.0]))
    torch.testing.assert_close(both[0:1], jpeg(x, quality=30))
    torch.testing.assert_close(both[1:2], jpeg(x, quality=95))


def test_diffjpeg_differentiable_mode_passes_gradcheck():
    jpeg = dg.DiffJPEG(differentiable=True).double()
    x = (torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.6 + 0.2)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: jpeg(t, quality=70), (x,), eps=1e-6, atol=1e-4)


def test_add_jpg_compression_is_opencv_jpeg():
    rng = np.random.default_rng(6)
    img = rng.random((24, 32, 3))
    out = dg.add_jpg_compression(img, 40)
    ok, enc = cv2.imencode('.jpg', np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 40])
    np.testing.assert_array_equal(out, np.float32(cv2.imdecode(enc, 1)) / 255.)


def test_resize_modes():
    x = torch.rand(2, 3, 20, 30)
    for mode in dg.RESIZE_MODES:
        assert dg.resize_pt(x, scale_factor=0.5, mode=mode).shape == (2, 3, 10, 15)
        assert dg.resize_pt(x, size=(7, 9), mode=mode).shape == (2, 3, 7, 9)
    with pytest.raises(ValueError, match="resize mode must be one of area, bilinear, bicubic"):
        dg.resize_pt(x, scale_factor=2, mode='nearest')


def test_importable_without_torchvision():
    import sys

    assert 'torchvision' not in sys.modules


def test_usm_default_is_basicsr_2d_filter_and_fast_is_close():
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(8))
    u = dg.USMSharp()
    k = u.kernel
    assert k.shape == (1, 51, 51) and abs(float(k.sum()) - 1) < 1e-5
    blur = dg.filter2D(x, k)
    residual = x - blur
    soft = dg.filter2D((torch.abs(residual) * 255 > 10).float(), k)
    ref = soft * torch.clip(x + 0.5 * residual, 0, 1) + (1 - soft) * x
    assert torch.equal(u(x), ref)  # the same operations as BasicSR's USMSharp
    fast = dg.USMSharp(fast=True)(x)
    assert float((fast - ref).abs().mean()) < 1e-5 and float((fast - ref).abs().max()) < 2e-3
