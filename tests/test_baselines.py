"""Table 1 baselines: LDL* map/mask (against ldl_artifact_map, a naive per-window formula and a hand-computed
spike) and the NIQE mask (torch/numpy conventions, thresholds)."""
import numpy as np
import pytest
import torch
from skimage import data as skdata

from desra.detection.baselines import ldl_star_map, ldl_star_mask, niqe_mask, niqe_sr_map
from desra.losses.ldl_loss import ldl_artifact_map
from desra.metrics.niqe import niqe_map


def _naive_ldl_star(mse, gan, k=7):
    """Per-pixel loop: R = sum_c |mse - gan| / 255, unbiased variance of each reflect-padded k x k window,
    times var(R)^(1/5) (unbiased); no EMA mask. numpy H x W x C in, H x W out, float64."""
    r = np.abs(mse.astype(np.float64) / 255 - gan.astype(np.float64) / 255).sum(axis=2)
    pad = np.pad(r, k // 2, mode='reflect')
    out = np.zeros(r.shape)
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            out[i, j] = np.var(pad[i:i + k, j:j + k], ddof=1)
    return out * np.var(r, ddof=1) ** 0.2


@pytest.fixture(scope='module')
def pair():
    """A 48 x 56 BGR crop of a photo (MSE-SR stand-in) and a copy with added high-frequency texture."""
    rng = np.random.default_rng(0)
    mse = np.ascontiguousarray(skdata.chelsea()[100:148, 150:206, ::-1])
    gan = np.clip(mse.astype(np.float64) + rng.normal(0, 6, mse.shape), 0, 255).round().astype(np.uint8)
    gan[10:25, 20:40] = np.clip(gan[10:25, 20:40].astype(np.int64) + rng.integers(-60, 61, (15, 20, 3)), 0, 255)
    return mse, gan


def test_ldl_star_equals_ldl_artifact_map_with_gan_as_ema(pair):
    mse, gan = pair
    mt = torch.from_numpy(mse[..., ::-1].copy()).permute(2, 0, 1)[None].float() * 1.0  # RGB, 0..255
    gt = torch.from_numpy(gan[..., ::-1].copy()).permute(2, 0, 1)[None].float()
    w = ldl_star_map(mt, gt)
    assert w.shape == (1, 1, 48, 56) and w.dtype == torch.float32 and w.grad_fn is None
    assert torch.equal(w, ldl_artifact_map(mt / 255, gt / 255, gt / 255, kernel_size=7))
    # numpy uint8 BGR input: same map (the residual sums over channels, so their order does not matter)
    wn = ldl_star_map(mse, gan)
    assert isinstance(wn, np.ndarray) and wn.shape == (48, 56) and wn.dtype == np.float32
    np.testing.assert_allclose(wn, w[0, 0].numpy(), rtol=1e-5, atol=1e-9)
    # uint8 tensors and float64 arrays are accepted too
    w8 = ldl_star_map(torch.from_numpy(mse).permute(2, 0, 1)[None], torch.from_numpy(gan).permute(2, 0, 1)[None])
    np.testing.assert_allclose(w8[0, 0].numpy(), wn, rtol=1e-5, atol=1e-9)
    w64 = ldl_star_map(mse.astype(np.float64), gan.astype(np.float64))
    assert w64.dtype == np.float64


def test_ldl_star_matches_naive_window_formula(pair):
    mse, gan = pair
    ref = _naive_ldl_star(mse, gan)
    np.testing.assert_allclose(ldl_star_map(mse.astype(np.float64), gan.astype(np.float64)), ref, rtol=1e-9,
                               atol=1e-15)
    np.testing.assert_allclose(ldl_star_map(mse, gan), ref, rtol=2e-4, atol=1e-9)
    # the textured block is where the map is large
    w = ldl_star_map(mse, gan)
    assert w[12:23, 22:38].min() > w[30:, :].max()


def test_ldl_star_single_spike_and_thresholds():
    h, wd, a = 21, 23, 192
    mse = np.full((h, wd, 3), 40, np.uint8)
    gan = mse.copy()
    gan[10, 11, 1] += a  # one residual of r = a / 255 in one channel
    r = a / 255
    n = h * wd
    # window variance (n = 49, unbiased) with the spike inside: (r^2 - r^2 / 49) / 48 = r^2 / 49;
    # sigma = (unbiased image variance)^(1/5) = ((r^2 - r^2 / N) / (N - 1))^(1/5) = (r^2 / N)^(1/5)
    value = r ** 2 / 49 * (r ** 2 / n) ** 0.2
    expected = np.zeros((h, wd))
    expected[7:14, 8:15] = value
    w = ldl_star_map(mse.astype(np.float64), gan.astype(np.float64))
    np.testing.assert_allclose(w, expected, rtol=1e-10, atol=1e-15)
    assert np.array_equal(ldl_star_mask(mse, gan, threshold=value * 0.99), expected > 0)
    assert not ldl_star_mask(mse, gan, threshold=value * 1.01).any()
    # the paper's thresholds on a torch batch: 0.005 > value (about 0.003) > 0.001 here
    assert 0.001 < value < 0.005
    mt = torch.from_numpy(mse).permute(2, 0, 1)[None].float()
    gt = torch.from_numpy(gan).permute(2, 0, 1)[None].float()
    m = ldl_star_mask(torch.cat([mt, mt]), torch.cat([gt, mt]), threshold=0.001)
    assert m.dtype == torch.bool and m.shape == (2, 1, h, wd)
    assert torch.equal(m[0, 0], torch.from_numpy(expected > 0)) and not m[1].any()
    assert not ldl_star_mask(mt, gt, threshold=0.005).any()


def test_ldl_star_input_errors(pair):
    mse, gan = pair
    with pytest.raises(TypeError):
        ldl_star_map(torch.zeros(1, 3, 20, 20), np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match='differ'):
        ldl_star_map(mse, gan[:40])
    with pytest.raises(ValueError):
        ldl_star_map(torch.zeros(3, 20, 20), torch.zeros(3, 20, 20))


def test_ldl_star_no_grad():
    x = torch.rand(1, 3, 16, 16, requires_grad=True) * 255
    y = torch.rand(1, 3, 16, 16, requires_grad=True) * 255
    assert not ldl_star_map(x, y).requires_grad


def test_niqe_mask_thresholds_and_conventions():
    bgr = np.ascontiguousarray(skdata.astronaut()[:128, 200:360, ::-1])
    m = niqe_map(bgr, window=64, stride=32)
    assert np.array_equal(niqe_sr_map(bgr, window=64, stride=32), m)
    thr = float(np.median(m))
    mask = niqe_mask(bgr, thr, window=64, stride=32)
    assert mask.dtype == np.bool_ and np.array_equal(mask, m > thr) and 0 < mask.mean() < 1
    assert niqe_mask(bgr, -1.0, window=64, stride=32).all()
    assert not niqe_mask(bgr, m.max(), window=64, stride=32).any()
    # torch: B x 3 x H x W RGB in 0..255 -> B x 1 x H x W, each image as its BGR numpy counterpart
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float()
    flipped = torch.flip(rgb, dims=[2])
    tm = niqe_sr_map(torch.stack([rgb, flipped]), window=64, stride=32)
    assert tm.shape == (2, 1, 128, 160)
    np.testing.assert_allclose(tm[0, 0].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(tm[1, 0].numpy(), niqe_map(np.ascontiguousarray(bgr[:, ::-1]), window=64, stride=32),
                               rtol=1e-12)
    tmask = niqe_mask(torch.stack([rgb, flipped]), thr, window=64, stride=32)
    assert tmask.dtype == torch.bool and torch.equal(tmask[0, 0], torch.from_numpy(mask))
