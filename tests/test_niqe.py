"""NIQE: building blocks on hand-built inputs, against independent (loop-based, MATLAB-transcribed)
references written here, and behaviour on real photos (skimage's sample images)."""
import hashlib
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
from scipy.ndimage import correlate
from scipy.special import gamma as G
from skimage import data as skdata

from desra.metrics import niqe as N
from desra.registry import METRIC_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the loop references divide by 0 on flat data


# ------------------------------------------------------------------------------ independent references

def _ref_mscn(img):
    """MSCN with a 2-D Gaussian built directly and scipy's correlate (replicate border = 'nearest')."""
    y, x = np.mgrid[-3:4, -3:4]
    k = np.exp(-(x ** 2 + y ** 2) / (2 * (7 / 6) ** 2))
    k /= k.sum()
    mu = correlate(img, k, mode='nearest')
    sigma = np.sqrt(np.abs(correlate(img * img, k, mode='nearest') - mu * mu))
    diff = img - mu
    diff[np.abs(diff) < 1e-9] = 0  # flat windows: exactly 0, not the blur's round-off (see compute_mscn)
    return diff / (sigma + 1), sigma


_GAM = np.arange(200, 10001) / 1000.0
_RGAM = G(2 / _GAM) ** 2 / (G(1 / _GAM) * G(3 / _GAM))


def _ref_aggd(vec):
    """Line-by-line transcription of MATLAB's ``estimateaggdparam`` (argmin over the grid; an all-NaN distance
    gives the first grid point, as MATLAB's ``min``) and the mean of ``computefeature``."""
    vec = np.asarray(vec, np.float64).ravel()
    leftstd = np.sqrt(np.mean(vec[vec < 0] ** 2))
    rightstd = np.sqrt(np.mean(vec[vec > 0] ** 2))
    gammahat = leftstd / rightstd
    rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec ** 2)
    rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    dist = (_RGAM - rhatnorm) ** 2
    alpha = _GAM[0] if np.all(np.isnan(dist)) else _GAM[np.nanargmin(dist)]
    betal = leftstd * np.sqrt(G(1 / alpha) / G(3 / alpha))
    betar = rightstd * np.sqrt(G(1 / alpha) / G(3 / alpha))
    mean = (betar - betal) * (G(2 / alpha) / G(1 / alpha))
    return alpha, mean, betal, betar


def _ref_block_features(block, wrap=True):
    """18 features of one MSCN block; products wrap inside the block (circshift) or stay inside it."""
    a, _, bl, br = _ref_aggd(block)
    feats = [a, (bl + br) / 2]
    if wrap:
        prods = [block * np.roll(block, s, axis=(0, 1)) for s in ((0, 1), (1, 0), (1, 1), (1, -1))]
    else:
        prods = [block[:, 1:] * block[:, :-1], block[1:, :] * block[:-1, :],
                 block[1:, 1:] * block[:-1, :-1], block[1:, :-1] * block[:-1, 1:]]
    for p in prods:
        feats.extend(_ref_aggd(p))
    return np.array(feats)


def _ref_imresize_half(img):
    """x0.5 antialiased bicubic resize, one output sample at a time (MATLAB's documented algorithm)."""

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
        if x <= 2:
            return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
        return 0.0

    def resize_rows(a):
        n = a.shape[0]
        out = np.zeros((int(np.ceil(n / 2)),) + a.shape[1:])
        for j in range(out.shape[0]):
            u = 2 * (j + 1) - 0.5  # 1-based centre in the input
            taps = [(k, 0.5 * cubic(0.5 * (u - k))) for k in range(int(np.floor(u - 4)), int(np.floor(u - 4)) + 10)]
            wsum = sum(w for _, w in taps)
            for k, w in taps:
                i = k - 1
                while i < 0 or i >= n:  # symmetric reflection including the edge sample
                    i = -i - 1 if i < 0 else 2 * n - 1 - i
                out[j] += w / wsum * a[i]
        return out

    return resize_rows(resize_rows(img).T).T


def _sample_ggd(rng, alpha, beta_l, beta_r, n):
    """AGGD samples: side with probability beta_side / (beta_l + beta_r), |x| = beta * Gamma(1/a, 1)^(1/a)."""
    mag = rng.gamma(1 / alpha, 1.0, n) ** (1 / alpha)
    left = rng.random(n) < beta_l / (beta_l + beta_r)
    return np.where(left, -beta_l * mag, beta_r * mag)


def _ref_niqe(lum, mu_p, cov_p, p=96):
    """NIQE of a luminance image by MATLAB's ``computequality``, block by block: features of each P x P block
    (and of its P/2 block after the half resize), ``nanmean`` over blocks, ``nancov`` of the complete rows."""
    nh, nw = lum.shape[0] // p, lum.shape[1] // p
    crop = lum[:nh * p, :nw * p]
    m1, _ = _ref_mscn(crop)
    m2, _ = _ref_mscn(_ref_imresize_half(crop))
    q = p // 2
    feats = np.array([np.concatenate([_ref_block_features(m1[i * p:(i + 1) * p, j * p:(j + 1) * p]),
                                      _ref_block_features(m2[i * q:(i + 1) * q, j * q:(j + 1) * q])])
                      for j in range(nw) for i in range(nh)])
    mu = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    cov = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros((36, 36))
    d = mu_p.ravel() - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))


def _random_params(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(36, 36)) * 0.1
    return np.abs(rng.normal(size=36)) + 0.2, a @ a.T + 1e-3 * np.eye(36)


@pytest.fixture
def no_installed_params(tmp_path, monkeypatch):
    """Hide pretrained/niqe_pris_params.npz and $DESRA_NIQE_PARAMS, so the default is the shipped fallback."""
    from desra.weights import locate
    monkeypatch.delenv(N.PARAMS_ENV_VAR, raising=False)
    monkeypatch.setattr(locate, 'REPO_ROOT', tmp_path / 'repo')
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')
    return tmp_path


@pytest.fixture(scope='module')
def astro_y():
    return N.to_luminance(np.ascontiguousarray(skdata.astronaut()[..., ::-1]))


# ------------------------------------------------------------------------------------------ building blocks

def test_mscn_of_constant_image_is_zero():
    m, s = N.compute_mscn(np.full((40, 50), 123.0))
    assert np.all(m == 0) and np.abs(s).max() < 1e-5  # sigma: zero up to the round-off of the blur


def test_mscn_matches_reference(astro_y):
    img = astro_y[100:180, 200:300]
    m, s = N.compute_mscn(img)
    rm, rs = _ref_mscn(img)
    np.testing.assert_allclose(m, rm, atol=1e-9)
    np.testing.assert_allclose(s, rs, atol=1e-9)


def test_imresize_half_matches_reference_and_reproduces_ramps():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (17, 12))
    out = N.imresize_half(img)
    assert out.shape == (9, 6)
    np.testing.assert_allclose(out, _ref_imresize_half(img), atol=1e-10)
    # Interior samples of a linear ramp land exactly at the new centres 2j + 0.5 (0-based); constants stay.
    ramp = np.tile(np.arange(40, dtype=np.float64), (40, 1))
    np.testing.assert_allclose(N.imresize_half(ramp)[:, 3:-3], np.tile(2 * np.arange(3, 17) + 0.5, (20, 1)))
    np.testing.assert_allclose(N.imresize_half(np.full((10, 7), 42.0)), 42.0)


@pytest.mark.parametrize('alpha', [0.6, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_shape(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    x = _sample_ggd(rng, alpha, 1.3, 1.3, 400_000)
    a, var = N.fit_ggd(x)
    assert abs(a - alpha) < 0.05 * alpha
    assert var == pytest.approx(1.3 ** 2 * G(3 / alpha) / G(1 / alpha), rel=0.03)


def test_gaussian_and_laplacian_shapes():
    rng = np.random.default_rng(0)
    assert N.fit_ggd(rng.normal(size=300_000))[0] == pytest.approx(2.0, abs=0.05)
    assert N.fit_ggd(rng.laplace(size=300_000))[0] == pytest.approx(1.0, abs=0.03)
    assert N.fit_aggd(rng.normal(size=300_000))[0] == pytest.approx(2.0, abs=0.05)
    assert N.fit_aggd(rng.laplace(size=300_000))[0] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize('alpha,bl,br', [(0.8, 0.5, 1.5), (1.5, 2.0, 1.0), (2.5, 1.0, 1.0)])
def test_aggd_fit_recovers_parameters(alpha, bl, br):
    rng = np.random.default_rng(7)
    x = _sample_ggd(rng, alpha, bl, br, 400_000)
    a, mean, beta_l, beta_r = N.fit_aggd(x)
    assert abs(a - alpha) < 0.06 * alpha
    assert beta_l == pytest.approx(bl, rel=0.03) and beta_r == pytest.approx(br, rel=0.03)  # the AGGD scales
    assert mean == pytest.approx((br - bl) * G(2 / alpha) / G(1 / alpha), abs=0.02)


def test_aggd_fit_equals_transcribed_reference():
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.standard_t(4, 5000) * rng.uniform(0.2, 3) + rng.uniform(-0.3, 0.3)
        np.testing.assert_allclose(N.fit_aggd(x), _ref_aggd(x), rtol=1e-12, atol=1e-14)


def test_aggd_fit_undefined_on_one_sided_sample():
    # No negative value: beta_l and the mean are NaN and alpha is MATLAB's first grid point; beta_r stays defined.
    a, mean, beta_l, beta_r = N.fit_aggd(np.abs(np.arange(10.0)))
    assert a == 0.2 and np.isnan(mean) and np.isnan(beta_l) and np.isfinite(beta_r)
    assert N.fit_aggd(np.abs(np.arange(10.0)))[3] == pytest.approx(_ref_aggd(np.abs(np.arange(10.0)))[3])
    assert N.fit_aggd(np.zeros(10))[0] == 0.2 and all(np.isnan(v) for v in N.fit_aggd(np.zeros(10))[1:])


def test_patch_features_count_and_reference(astro_y):
    img = astro_y[:200, :300]  # 2 x 3 patches of 96 after cropping to 192 x 288
    feats, sharp = N.patch_features(img)
    assert feats.shape == (6, N.NUM_FEATURES) == (6, 36) and sharp.shape == (6,)
    crop = img[:192, :288]
    m1, s1 = _ref_mscn(crop)
    m2, _ = _ref_mscn(_ref_imresize_half(crop))
    k = 0
    for i in range(2):
        for j in range(3):
            ref = np.concatenate([_ref_block_features(m1[96 * i:96 * i + 96, 96 * j:96 * j + 96]),
                                  _ref_block_features(m2[48 * i:48 * i + 48, 48 * j:48 * j + 48])])
            np.testing.assert_allclose(feats[k], ref, rtol=1e-7, atol=1e-9)
            assert sharp[k] == pytest.approx(s1[96 * i:96 * i + 96, 96 * j:96 * j + 96].mean())
            k += 1


# ------------------------------------------------------------------------------------------- NIQE behaviour

def test_niqe_small_on_itself_and_grows_with_distortion(astro_y):
    img = astro_y[64:448, 64:448]
    views = [img[dy:, dx:] for dy in (0, 32, 64) for dx in (0, 32, 64)]
    params = N.fit_pristine_params(views, sharpness_threshold=0.0)
    rng = np.random.default_rng(0)

    def score(x):
        return N.niqe_score(np.clip(x, 0, 255).round(), params)

    clean = score(img)
    noise = [score(img + rng.normal(0, s, img.shape)) for s in (5, 15, 40)]
    blurred = score(cv2.GaussianBlur(img, (0, 0), 3))
    assert clean < 2.0
    assert clean < noise[0] < noise[1] < noise[2]
    assert blurred > 5 * clean


def test_niqe_with_shipped_params_ranks_distortions(astro_y):
    img = np.ascontiguousarray(skdata.chelsea()[..., ::-1])
    rng = np.random.default_rng(0)
    clean = N.calculate_niqe(img)
    assert np.isfinite(clean)
    assert N.calculate_niqe(np.clip(img + rng.normal(0, 20, img.shape), 0, 255)) > clean
    assert N.calculate_niqe(cv2.GaussianBlur(img, (0, 0), 2.5)) > clean


def test_calculate_niqe_options_and_registry(astro_y):
    bgr = np.ascontiguousarray(skdata.astronaut()[:200, :250, ::-1])
    v = N.calculate_niqe(bgr)
    assert METRIC_REGISTRY.get('calculate_niqe') is N.calculate_niqe
    assert N.calculate_niqe(bgr.transpose(2, 0, 1), input_order='CHW') == v
    assert N.calculate_niqe(img=bgr, img2=bgr, crop_border=0) == v  # extra keys from the validation loop
    assert v == N.niqe_score(astro_y[:200, :250])
    assert N.calculate_niqe(bgr, crop_border=4) == N.niqe_score(astro_y[4:196, 4:246])
    assert np.isfinite(N.calculate_niqe(bgr, convert_to='gray'))
    with pytest.raises(ValueError, match='96x96'):
        N.calculate_niqe(bgr[:90])
    with pytest.raises(ValueError, match='convert_to'):
        N.calculate_niqe(bgr, convert_to='lab')
    assert np.isnan(N.calculate_niqe(np.full((100, 100, 3), 77, np.uint8)))


# -------------------------------------------------------------------------------------------- NIQE map

def test_niqe_map_windows_match_direct_computation(astro_y):
    img = astro_y[150:246, 180:310]  # 96 x 130
    mu, cov = N.load_niqe_params()
    win, stride = 32, 24
    m, (scores, ys, xs) = N.niqe_map(img, window=win, stride=stride, return_window_scores=True)
    assert list(ys) == [0, 24, 48, 64] and list(xs) == [0, 24, 48, 72, 96, 98]
    m1, _ = _ref_mscn(img)
    m2, _ = _ref_mscn(_ref_imresize_half(img))
    pinv = np.linalg.pinv(cov / 2)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            f = np.concatenate([_ref_block_features(m1[y:y + win, x:x + win], wrap=False),
                                _ref_block_features(m2[y // 2:y // 2 + win // 2, x // 2:x // 2 + win // 2],
                                                    wrap=False)])
            d = f - mu
            assert scores[i, j] == pytest.approx(np.sqrt(d @ pinv @ d), rel=1e-7)
    # Each pixel: the mean score of the windows covering it.
    ref = np.zeros(img.shape)
    cnt = np.zeros(img.shape)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            ref[y:y + win, x:x + win] += scores[i, j]
            cnt[y:y + win, x:x + win] += 1
    np.testing.assert_allclose(m, ref / cnt, rtol=1e-10)


def test_niqe_map_is_higher_over_pasted_noise():
    img = np.ascontiguousarray(skdata.coffee()[40:296, 200:456, ::-1]).astype(np.float64)  # 256 x 256
    rng = np.random.default_rng(0)
    noisy = img.copy()
    noisy[80:176, 96:192] = np.clip(noisy[80:176, 96:192] + rng.normal(0, 40, (96, 96, 3)), 0, 255)
    # the shipped fit whatever pretrained/ holds: the margins below were set on its scale
    m = N.niqe_map(noisy.round().astype(np.uint8), params=N.DEFAULT_PARAMS_PATH)
    assert m.shape == (256, 256) and m.dtype == np.float64 and np.all(np.isfinite(m))
    inside = np.zeros(m.shape, bool)
    inside[80:176, 96:192] = True
    assert m[inside].mean() > 1.2 * m[~inside].mean()
    assert np.unravel_index(np.argmax(m), m.shape)[0] in range(80, 176)
    clean = N.niqe_map(img, params=N.DEFAULT_PARAMS_PATH)
    assert m[inside].mean() > clean[inside].mean() + 5


def test_niqe_map_small_and_flat_images():
    rng = np.random.default_rng(0)
    m = N.niqe_map(rng.integers(0, 256, (40, 60)).astype(np.uint8))  # smaller than the window
    assert m.shape == (40, 60) and np.all(np.isfinite(m))
    flat = np.full((100, 120, 3), 200, np.uint8)
    assert np.all(N.niqe_map(flat) == 0)  # undefined windows are left out; uncovered pixels get 0
    with pytest.raises(ValueError, match='too small'):
        N.niqe_map(np.zeros((10, 10)))


# ------------------------------------------------------------------------------------------ parameters

def test_niqe_equals_block_reference_with_nanmean(astro_y):
    """The vectorised NIQE against MATLAB's algorithm transcribed block by block, including a flat block (NaN
    scales, alpha 0.2: ``nanmean`` keeps its defined features) and a half-flat one (one-sided products)."""
    mu_p, cov_p = _random_params(0)
    img = astro_y[64:352, 32:416].copy()          # 3 x 4 blocks
    img[80:208, 0:112] = 120.0                     # block (1, 0) flat at both scales, with a margin
    img[:96, 300:384] = 60.0                       # most of another
    feats = N.patch_features(img)[0]
    assert np.isnan(feats).any(axis=1).sum() >= 1 and np.all(feats[:, 0] > 0)
    assert N.niqe_score(img, (mu_p, cov_p)) == pytest.approx(_ref_niqe(img, mu_p, cov_p), rel=1e-9)


def test_single_patch_image_has_zero_test_covariance(astro_y):
    mu_p, cov_p = _random_params(1)
    img = astro_y[100:200, 100:200]
    assert N.niqe_score(img, (mu_p, cov_p)) == pytest.approx(_ref_niqe(img, mu_p, cov_p), rel=1e-9)


@pytest.fixture(scope='module')
def matlab_params(built_metrics):
    """BasicSR's MATLAB-derived pristine parameters, extracted from the basicsr 1.4.2 sdist (skips offline)."""
    return os.path.join(built_metrics[0], 'niqe_pris_params.npz')


PHOTOS = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'photos')


def test_matlab_params_equal_reference_on_photos(matlab_params):
    with np.load(matlab_params) as z:
        mu_p, cov_p = z['mu_pris_param'], z['cov_pris_param']
    assert mu_p.shape == (1, 36) and cov_p.shape == (36, 36)
    images = {'astronaut': np.ascontiguousarray(skdata.astronaut()[:288, :384, ::-1])}
    if os.path.isdir(PHOTOS):
        images.update({f'GAN-SR/{n}': cv2.imread(os.path.join(PHOTOS, 'GAN-SR', f'{n}.png'))
                       for n in ('butterfly', 'chelsea')})
    for name, bgr in images.items():
        lum = N.to_luminance(bgr)[4:-4, 4:-4]
        ours = N.calculate_niqe(bgr, crop_border=4, params=matlab_params)
        assert ours == pytest.approx(_ref_niqe(lum, mu_p, cov_p), rel=1e-9), name
    if os.path.isdir(PHOTOS):
        # The figure for BasicSR's calculate_niqe on this photo (the variance features gave 27.27).
        assert N.calculate_niqe(images['GAN-SR/butterfly'], 4, params=matlab_params) == pytest.approx(10.33, abs=5e-3)


def test_default_params_order_and_log(no_installed_params, matlab_params, monkeypatch, caplog, astro_y):
    tmp = no_installed_params
    img = astro_y[:192, :192]
    caplog.set_level('INFO', logger='desra')
    N._announced.clear()
    assert N.resolve_niqe_params()[0] == N.DEFAULT_PARAMS_PATH
    shipped = N.niqe_score(img)
    assert 'shipped scikit-image fit' in caplog.text and 'not comparable with published NIQE' in caplog.text
    (tmp / 'repo' / 'pretrained').mkdir(parents=True)
    installed = tmp / 'repo' / 'pretrained' / 'niqe_pris_params.npz'
    installed.write_bytes(open(matlab_params, 'rb').read())
    caplog.clear()
    assert N.resolve_niqe_params() == (str(installed), "MATLAB's (BasicSR's niqe_pris_params.npz)")
    matlab = N.niqe_score(img)
    assert matlab == N.niqe_score(img, matlab_params) != shipped
    assert f"NIQE: pristine parameters MATLAB's (BasicSR's niqe_pris_params.npz): {installed}" in caplog.text
    caplog.clear()
    N.niqe_score(img)
    assert 'pristine parameters' not in caplog.text          # said once per file
    monkeypatch.setenv(N.PARAMS_ENV_VAR, N.DEFAULT_PARAMS_PATH)
    assert N.niqe_score(img) == shipped


def test_shipped_params(no_installed_params):
    with np.load(N.DEFAULT_PARAMS_PATH) as z:
        mu, cov = z['mu'], z['cov']
        images = json.loads(str(z['images']))
        assert int(z['patch_size']) == 96 and float(z['sharpness_threshold']) == 0.75
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T, atol=1e-14)
    assert np.linalg.eigvalsh(cov).min() > 0
    assert len(images) >= 5 and all(im['licence'] and im['sha256'] and im['package'] for im in images)
    lmu, lcov = N.load_niqe_params()
    np.testing.assert_array_equal(lmu, mu)
    np.testing.assert_array_equal(lcov, cov)


def test_user_params_with_basicsr_keys_and_env_var(tmp_path, monkeypatch, astro_y):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    mu, cov = rng.normal(size=36) + 1, a @ a.T / 36
    path = str(tmp_path / 'matlab_params.npz')
    np.savez(path, mu_pris_param=mu[None], cov_pris_param=cov, gaussian_window=np.ones((7, 7)) / 49)
    lmu, lcov = N.load_niqe_params(path)
    np.testing.assert_array_equal(lmu, mu)
    np.testing.assert_array_equal(lcov, cov)
    img = astro_y[:192, :192]
    v = N.niqe_score(img, path)
    assert v == N.niqe_score(img, (mu, cov)) == N.niqe_score(img, {'mu': mu, 'cov': cov})
    assert v != N.niqe_score(img)
    monkeypatch.setenv(N.PARAMS_ENV_VAR, path)
    assert N.niqe_score(img) == v
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, mean=mu, covariance=cov)
    with pytest.raises(ValueError, match='mu_pris_param'):
        N.load_niqe_params(bad)
    with pytest.raises(ValueError, match='36'):
        N.load_niqe_params((mu[:10], cov))
    with pytest.raises(FileNotFoundError):
        N.load_niqe_params(str(tmp_path / 'missing.npz'))


def test_fit_script_reproduces_shipped_params():
    path = os.path.join(REPO, 'scripts', 'fit_niqe_params.py')
    spec = importlib.util.spec_from_file_location('fit_niqe_params', path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(N.DEFAULT_PARAMS_PATH) as z:
        images = json.loads(str(z['images']))
        mu, cov, n = z['mu'], z['cov'], int(z['n_patches'])
    data_dir = script.skimage_data_dir()
    for im in images:
        with open(os.path.join(data_dir, os.path.basename(im['file'])), 'rb') as f:
            if hashlib.sha256(f.read()).hexdigest() != im['sha256']:
                pytest.skip(f"{im['file']} differs from the one the shipped parameters were fitted on")
    fmu, fcov, fn, _ = script.fit()
    assert fn == n
    # Loose enough for another CPU's filter round-off to move a shape estimate by one grid step.
    np.testing.assert_allclose(fmu, mu, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(fcov, cov, rtol=1e-4, atol=1e-8)
