"""FID: the InceptionV3 of pytorch-fid (torchvision layout, no torchvision), the Fréchet distance, streaming
statistics and their files, the set-level FIDMetric, and scripts/calculate_fid.py.

Only two computations use the full 2048-d ``sqrtm`` (~10 s each on two CPU cores): the real-network FIDMetric test
and the CLI test on image folders; everything else uses small dimensions.
"""
import logging
import os
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli_main, run_script

from desra.archs.inception_arch import FIDInceptionV3, load_fid_inception
from desra.errors import CheckpointError, ConfigError, DataError
from desra.metrics.fid import (FeatureStats, FIDMetric, calculate_fid, extract_inception_features,
                               load_fid_stats)

FID_FILE = 'pt_inception-2015-12-05-6726825d.pth'


# ------------------------------------------------------------------------ the layer table of torchvision's Inception3

def _conv(name, cin, cout, k, s=1, p=0):
    k = (k, k) if isinstance(k, int) else k
    p = (p, p) if isinstance(p, int) else p
    return name, cin, cout, k, s, p


def inception3_convs():
    """(name, in, out, kernel, stride, padding) of every BasicConv2d of Inception3(aux_logits=False)."""
    t = [_conv('Conv2d_1a_3x3', 3, 32, 3, s=2), _conv('Conv2d_2a_3x3', 32, 32, 3),
         _conv('Conv2d_2b_3x3', 32, 64, 3, p=1), _conv('Conv2d_3b_1x1', 64, 80, 1), _conv('Conv2d_4a_3x3', 80, 192, 3)]
    for blk, cin, pf in (('Mixed_5b', 192, 32), ('Mixed_5c', 256, 64), ('Mixed_5d', 288, 64)):
        t += [_conv(f'{blk}.branch1x1', cin, 64, 1), _conv(f'{blk}.branch5x5_1', cin, 48, 1),
              _conv(f'{blk}.branch5x5_2', 48, 64, 5, p=2), _conv(f'{blk}.branch3x3dbl_1', cin, 64, 1),
              _conv(f'{blk}.branch3x3dbl_2', 64, 96, 3, p=1), _conv(f'{blk}.branch3x3dbl_3', 96, 96, 3, p=1),
              _conv(f'{blk}.branch_pool', cin, pf, 1)]
    t += [_conv('Mixed_6a.branch3x3', 288, 384, 3, s=2), _conv('Mixed_6a.branch3x3dbl_1', 288, 64, 1),
          _conv('Mixed_6a.branch3x3dbl_2', 64, 96, 3, p=1), _conv('Mixed_6a.branch3x3dbl_3', 96, 96, 3, s=2)]
    for blk, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
        t += [_conv(f'{blk}.branch1x1', 768, 192, 1), _conv(f'{blk}.branch7x7_1', 768, c7, 1),
              _conv(f'{blk}.branch7x7_2', c7, c7, (1, 7), p=(0, 3)),
              _conv(f'{blk}.branch7x7_3', c7, 192, (7, 1), p=(3, 0)), _conv(f'{blk}.branch7x7dbl_1', 768, c7, 1),
              _conv(f'{blk}.branch7x7dbl_2', c7, c7, (7, 1), p=(3, 0)),
              _conv(f'{blk}.branch7x7dbl_3', c7, c7, (1, 7), p=(0, 3)),
              _conv(f'{blk}.branch7x7dbl_4', c7, c7, (7, 1), p=(3, 0)),
              _conv(f'{blk}.branch7x7dbl_5', c7, 192, (1, 7), p=(0, 3)), _conv(f'{blk}.branch_pool', 768, 192, 1)]
    t += [_conv('Mixed_7a.branch3x3_1', 768, 192, 1), _conv('Mixed_7a.branch3x3_2', 192, 320, 3, s=2),
          _conv('Mixed_7a.branch7x7x3_1', 768, 192, 1), _conv('Mixed_7a.branch7x7x3_2', 192, 192, (1, 7), p=(0, 3)),
          _conv('Mixed_7a.branch7x7x3_3', 192, 192, (7, 1), p=(3, 0)),
          _conv('Mixed_7a.branch7x7x3_4', 192, 192, 3, s=2)]
    for blk, cin in (('Mixed_7b', 1280), ('Mixed_7c', 2048)):
        t += [_conv(f'{blk}.branch1x1', cin, 320, 1), _conv(f'{blk}.branch3x3_1', cin, 384, 1),
              _conv(f'{blk}.branch3x3_2a', 384, 384, (1, 3), p=(0, 1)),
              _conv(f'{blk}.branch3x3_2b', 384, 384, (3, 1), p=(1, 0)), _conv(f'{blk}.branch3x3dbl_1', cin, 448, 1),
              _conv(f'{blk}.branch3x3dbl_2', 448, 384, 3, p=1),
              _conv(f'{blk}.branch3x3dbl_3a', 384, 384, (1, 3), p=(0, 1)),
              _conv(f'{blk}.branch3x3dbl_3b', 384, 384, (3, 1), p=(1, 0)), _conv(f'{blk}.branch_pool', cin, 192, 1)]
    return t


def expected_state_dict_shapes():
    shapes = {}
    for name, cin, cout, (kh, kw), _, _ in inception3_convs():
        shapes[f'{name}.conv.weight'] = (cout, cin, kh, kw)
        for buf in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{name}.bn.{buf}'] = (cout,)
        shapes[f'{name}.bn.num_batches_tracked'] = ()
    shapes['fc.weight'] = (1008, 2048)
    shapes['fc.bias'] = (1008,)
    return shapes


def reference_features(sd, x, count_include_pad=False):
    """pytorch-fid's FID InceptionV3, written functionally from the state dict ``sd``: B x 2048 pool3 features."""
    geometry = {name: (s, p) for name, _, _, _, s, p in inception3_convs()}

    def conv(name, h):
        stride, padding = geometry[name]
        h = F.conv2d(h, sd[f'{name}.conv.weight'], stride=stride, padding=padding)
        h = F.batch_norm(h, sd[f'{name}.bn.running_mean'], sd[f'{name}.bn.running_var'], sd[f'{name}.bn.weight'],
                         sd[f'{name}.bn.bias'], training=False, eps=1e-3)
        return F.relu(h)

    def chain(prefix, names, h):
        for n in names:
            h = conv(f'{prefix}.{n}', h)
        return h

    def avg(h):
        return F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=count_include_pad)

    h = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False) * 2 - 1
    h = F.max_pool2d(conv('Conv2d_2b_3x3', conv('Conv2d_2a_3x3', conv('Conv2d_1a_3x3', h))), 3, 2)
    h = F.max_pool2d(conv('Conv2d_4a_3x3', conv('Conv2d_3b_1x1', h)), 3, 2)
    for b in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
        h = torch.cat([conv(f'{b}.branch1x1', h), chain(b, ['branch5x5_1', 'branch5x5_2'], h),
                       chain(b, ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'], h),
                       conv(f'{b}.branch_pool', avg(h))], 1)
    b = 'Mixed_6a'
    h = torch.cat([conv(f'{b}.branch3x3', h), chain(b, ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'], h),
                   F.max_pool2d(h, 3, 2)], 1)
    for b in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
        h = torch.cat([conv(f'{b}.branch1x1', h), chain(b, ['branch7x7_1', 'branch7x7_2', 'branch7x7_3'], h),
                       chain(b, [f'branch7x7dbl_{i}' for i in range(1, 6)], h), conv(f'{b}.branch_pool', avg(h))], 1)
    b = 'Mixed_7a'
    h = torch.cat([chain(b, ['branch3x3_1', 'branch3x3_2'], h), chain(b, [f'branch7x7x3_{i}' for i in range(1, 5)], h),
                   F.max_pool2d(h, 3, 2)], 1)
    for b, pool in (('Mixed_7b', avg), ('Mixed_7c', lambda t: F.max_pool2d(t, 3, stride=1, padding=1))):
        y = conv(f'{b}.branch3x3_1', h)
        z = chain(b, ['branch3x3dbl_1', 'branch3x3dbl_2'], h)
        h = torch.cat([conv(f'{b}.branch1x1', h), conv(f'{b}.branch3x3_2a', y), conv(f'{b}.branch3x3_2b', y),
                       conv(f'{b}.branch3x3dbl_3a', z), conv(f'{b}.branch3x3dbl_3b', z),
                       conv(f'{b}.branch_pool', pool(h))], 1)
    return h.mean(dim=(2, 3))


def randomised_state_dict(seed=0):
    """Seeded random weights with non-trivial BatchNorm statistics (He-scaled convs: O(1) activations)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith('conv.weight'):
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(('bn.weight', 'bn.running_var')):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(('bn.bias', 'bn.running_mean')):
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.startswith('fc.'):
            sd[k] = 0.01 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = v
    return sd


def smooth_images(n, h, w, seed):
    """``n x 3 x h x w`` smooth random RGB images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, max(h // 4, 2), max(w // 4, 2), generator=g), size=(h, w),
                         mode='bicubic', align_corners=False).clamp(0, 1)


@pytest.fixture(scope='module')
def random_weights_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('fid_weights') / 'random_inception.pth'
    torch.save(FIDInceptionV3().state_dict(), path)
    return str(path)


# ------------------------------------------------------------------------------------------ network

def test_state_dict_is_torchvision_inception3_layout():
    net = FIDInceptionV3()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == expected_state_dict_shapes()
    assert len(got) == 94 * 6 + 2
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # the measuring network never leaves eval mode


def test_features_equal_functional_reference_and_avg_pools_exclude_padding():
    sd = randomised_state_dict(seed=1)
    net = FIDInceptionV3()
    net.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = net(x)
        ref = reference_features(sd, x, count_include_pad=False)
        ref_with_pad = reference_features(sd, x, count_include_pad=True)
    assert got.shape == (1, 2048) and got.dtype == torch.float32
    scale = ref.abs().max().item()
    assert scale > 1e-2  # the random network gives non-trivial features
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * scale)
    # with count_include_pad=True the features would be visibly different
    assert (ref_with_pad - got).abs().max().item() > 100 * 1e-4 * scale
    # the input is always resized: a 299 x 299 input goes through the interpolation too (identity up to rounding)
    x299 = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x299), reference_features(sd, x299), rtol=1e-4, atol=1e-4 * scale)


def test_load_fid_inception_caches_and_checks_keys(random_weights_file, tmp_path):
    a = load_fid_inception(random_weights_file, device='cpu')
    assert load_fid_inception(random_weights_file, device='cpu') is a  # built once per file and device
    assert not a.training
    sd = torch.load(random_weights_file, map_location='cpu', weights_only=True)
    torch.testing.assert_close(a.state_dict()['Mixed_7c.branch_pool.bn.bias'], sd['Mixed_7c.branch_pool.bn.bias'])
    without_fc = {k: v for k, v in sd.items() if not k.startswith('fc.')}
    with pytest.raises(CheckpointError) as e:
        load_fid_inception(without_fc)
    assert 'fc.weight' in str(e.value) and '\n' not in str(e.value)
    bad = tmp_path / 'not_inception.pth'
    torch.save({'features.0.weight': torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError) as e:
        load_fid_inception(str(bad))
    msg = str(e.value)
    assert msg.startswith(f'{bad}: not ') and FID_FILE in msg and 'key(s) missing: Conv2d_1a_3x3.conv.weight' in msg
    assert '\n' not in msg


def test_missing_weights_names_file_and_pretrained_folder(tmp_path, monkeypatch):
    import desra.weights.locate as locate

    repo = tmp_path / 'repo'
    (tmp_path / 'cwd').mkdir()
    monkeypatch.setattr(locate, 'REPO_ROOT', repo)
    monkeypatch.chdir(tmp_path / 'cwd')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delenv('DESRA_FID_INCEPTION_WEIGHTS', raising=False)
    start = (f"FID needs {FID_FILE} (pytorch-fid's InceptionV3 weights (the TF FID network)): put it in "
             f"{repo / 'pretrained'}/")
    with pytest.raises(CheckpointError) as e:
        load_fid_inception()
    assert str(e.value).startswith(start) and '\n' not in str(e.value)
    with pytest.raises(CheckpointError) as e:
        FIDMetric({'type': 'calculate_fid'}, device='cpu')
    assert str(e.value).startswith(f'val.metrics.fid: {start}')
    with pytest.raises(CheckpointError) as e:  # checked before a run starts, nothing built or read
        FIDMetric.check_options({'type': 'calculate_fid', 'better': 'lower'}, 'val.metrics.fid')
    assert str(e.value).startswith(f'val.metrics.fid: {start}')
    with pytest.raises(CheckpointError, match=r'^val\.metrics\.fid: nowhere\.pth: file not found'):
        FIDMetric.check_options({'type': 'calculate_fid', 'weights': 'nowhere.pth'})


# ------------------------------------------------------------------------------------------ Fréchet distance

def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def _diagonal_case(rng, d):
    """Means, diagonal covariances (as vectors) and their Frechet distance in closed form:
    ``|mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2``."""
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    return mu1, mu2, s1, s2, np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2, s1, s2, want = _diagonal_case(rng, d)
    assert calculate_fid(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-10)
    # commuting covariances: same eigenvectors
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    c1, c2 = q @ np.diag(s1) @ q.T, q @ np.diag(s2) @ q.T
    assert calculate_fid(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)
    # general SPD: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), computed with eigendecompositions
    for trial in range(3):
        c1, c2 = _random_spd(rng, 20), _random_spd(rng, 20)
        w, v = np.linalg.eigh(c1)
        root1 = v @ np.diag(np.sqrt(w)) @ v.T
        tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ c2 @ root1), 0, None)))
        m1, m2 = rng.standard_normal(20), rng.standard_normal(20)
        want = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
        assert calculate_fid(m1, c1, m2, c2) == pytest.approx(want, rel=1e-8)
        assert abs(calculate_fid(m1, c1, m1, c1)) < 1e-10
    # identical singular statistics (fewer samples than dimensions) are ~0 as well
    feats = rng.standard_normal((10, 64))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(calculate_fid(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    # torch tensors are accepted
    assert calculate_fid(torch.zeros(2), torch.eye(2), torch.ones(2), torch.eye(2)) == pytest.approx(2.0)


def test_frechet_distance_eigh_method_equals_closed_form_and_sqrtm():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2, s1, s2, want = _diagonal_case(rng, d)
    assert calculate_fid(mu1, np.diag(s1), mu2, np.diag(s2), method='eigh') == pytest.approx(want, rel=1e-10)
    c1, c2 = _random_spd(rng, 30), _random_spd(rng, 30)
    assert calculate_fid(mu1[:1].repeat(30), c1, mu2[:1].repeat(30), c2, method='eigh') == pytest.approx(
        calculate_fid(mu1[:1].repeat(30), c1, mu2[:1].repeat(30), c2), rel=1e-10)
    with pytest.raises(ValueError, match="method must be 'sqrtm' or 'eigh', got 'svd'"):
        calculate_fid(mu1, np.diag(s1), mu2, np.diag(s2), method='svd')


def test_frechet_distance_singular_product_takes_eps_path(monkeypatch, caplog):
    import scipy.linalg

    # rank-1 covariances u u^T, v v^T: Tr sqrt(S1 S2) = |u.v| = 1, d^2 = |dmu|^2 + |u|^2 + |v|^2 - 2 = 6
    u, v = np.array([1., -1, 0, -1]), np.array([1., 1, -1, 1])
    mu2 = np.array([1., 0, 0, 0])
    value = calculate_fid(np.zeros(4), np.outer(u, u), mu2, np.outer(v, v))
    assert np.isfinite(value) and value == pytest.approx(6.0, abs=1e-3)

    # a non-finite square root is retried with eps * I on both covariances
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def failing_first(m, *args, **kwargs):
        calls.append(m.copy())
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, 'sqrtm', failing_first)
    s1, s2 = np.array([1., 4]), np.array([9., 0.25])
    with caplog.at_level(logging.WARNING, logger='desra'):
        value = calculate_fid(np.zeros(2), np.diag(s1), np.zeros(2), np.diag(s2), eps=1e-6)
    assert len(calls) == 2 and np.allclose(calls[1], np.diag((s1 + 1e-6) * (s2 + 1e-6)))
    assert value == pytest.approx(np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2), abs=1e-5)
    assert 'retrying with 1e-06 added to the diagonal' in caplog.text


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match='same length'):
        calculate_fid(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r'sigma2 must be 3 x 3'):
        calculate_fid(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match='imaginary component'):  # not positive semi-definite
        calculate_fid(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match='NaN'):
        calculate_fid(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    from desra.registry import METRIC_REGISTRY

    assert METRIC_REGISTRY.get('calculate_fid') is calculate_fid
    assert calculate_fid.set_level is True and calculate_fid.better == 'lower'


# ------------------------------------------------------------------------------------------ statistics files

def test_feature_stats_stream_equals_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.gamma(2.0, 0.2, (700, 48)) + 3.0  # non-negative, offset mean: cancellation-prone
    stats = FeatureStats()
    for i, part in enumerate(np.split(feats, [1, 2, 50, 51, 333, 600])):
        stats.update(torch.from_numpy(part) if i % 2 else part)
    ref_cov = np.cov(feats, rowvar=False)
    assert stats.n == 700 and stats.dim == 48
    np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-12)
    assert np.abs(stats.sigma - ref_cov).max() <= 1e-10 * np.abs(ref_cov).max()
    other = FeatureStats().update(feats[:300]).merge(FeatureStats().update(feats[300:]))
    assert np.abs(other.sigma - ref_cov).max() <= 1e-10 * np.abs(ref_cov).max()

    path = tmp_path / 'stats' / 'set.npz'
    stats.save(path, dataset='Set5', patch_size=None)
    assert os.listdir(tmp_path / 'stats') == ['set.npz']  # no temporary file left
    loaded = FeatureStats.load(path)
    assert loaded.n == 700 and loaded.meta == {'dataset': 'Set5', 'patch_size': None}
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    mu, sigma, n = load_fid_stats(path)
    np.testing.assert_array_equal(mu, stats.mu)
    assert n == 700 and sigma.shape == (48, 48)
    loaded.update(feats[:5])  # a counted file can be extended
    assert loaded.n == 705


def test_foreign_stats_formats_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(8), _random_spd(rng, 8)
    np.savez(tmp_path / 'pytorch_fid.npz', mu=mu, sigma=sigma)
    got_mu, got_sigma, n = load_fid_stats(tmp_path / 'pytorch_fid.npz')
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert n is None
    # BasicSR: torch.save(dict(name=..., size=..., mean=numpy, cov=numpy)); also tensors
    torch.save({'name': 'FFHQ', 'size': np.int64(512), 'mean': mu.astype(np.float32), 'cov': sigma},
               tmp_path / 'inception_FFHQ_512.pth')
    torch.save({'mean': torch.from_numpy(mu), 'cov': torch.from_numpy(sigma)}, tmp_path / 'tensors.pth')
    for name in ('inception_FFHQ_512.pth', 'tensors.pth'):
        got_mu, got_sigma, n = load_fid_stats(tmp_path / name)
        np.testing.assert_allclose(got_mu, mu, rtol=1e-6)
        np.testing.assert_array_equal(got_sigma, sigma)
        assert n is None
    frozen = FeatureStats.load(tmp_path / 'tensors.pth')
    with pytest.raises(ValueError, match='cannot be extended'):
        frozen.update(np.zeros((2, 8)))

    np.savez(tmp_path / 'wrong_keys.npz', mean_features=mu)
    (tmp_path / 'garbage.npz').write_bytes(b'not a statistics file')
    np.savez(tmp_path / 'wrong_shape.npz', mu=mu, sigma=sigma[:4])
    for name, pattern in (('wrong_keys.npz', "not FID statistics: keys ['mean_features'], expected an .npz with "
                                             "'mu' and 'sigma'"),
                          ('garbage.npz', "cannot read FID statistics"),
                          ('wrong_shape.npz', "must have shape"),
                          ('missing.npz', 'FID statistics file not found')):
        with pytest.raises(DataError) as e:
            load_fid_stats(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and pattern in msg and '\n' not in msg, msg


# ------------------------------------------------------------------------------------------ FIDMetric

class TinyFeatures(nn.Module):
    """A cheap stand-in for the Inception network (8-d features) that counts the images it sees."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(12, 8, generator=g), requires_grad=False)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        summary = torch.cat([x.mean((2, 3)), x.std((2, 3)), x.amax((2, 3)), x.amin((2, 3))], 1)
        return summary @ self.proj


def test_extract_features_tiles_row_major():
    net = TinyFeatures()
    imgs = smooth_images(2, 10, 13, seed=0)
    feats = extract_inception_features(imgs, net, patch_size=4)  # 2 rows x 3 columns per image, remainder dropped
    tiles = [imgs[b:b + 1, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] for b in range(2) for r in range(2) for c in range(3)]
    torch.testing.assert_close(feats, net(torch.cat(tiles)))
    torch.testing.assert_close(extract_inception_features(imgs, net), net(imgs))
    with pytest.raises(ValueError, match='does not fit'):
        extract_inception_features(imgs, net, patch_size=11)


def test_fid_metric_ref_stats_written_then_reused(tmp_path):
    sr, gt, other_gt = smooth_images(12, 16, 16, 1), smooth_images(12, 16, 16, 2), smooth_images(12, 16, 16, 3)
    ref = tmp_path / 'Set12_gt.npz'
    net = TinyFeatures()
    metric = FIDMetric({'type': 'calculate_fid', 'ref_stats': str(ref), 'better': 'lower'}, inception=net)
    for i in range(0, 12, 5):
        metric.update(sr[i:i + 5], gt[i:i + 5])
    assert net.images_seen == 24 and not ref.exists()
    first = metric.compute()
    assert ref.exists() and load_fid_stats(ref)[2] == 12
    with torch.no_grad():
        f_sr, f_gt = net(sr).double().numpy(), net(gt).double().numpy()
    want = calculate_fid(f_sr.mean(0), np.cov(f_sr, rowvar=False), f_gt.mean(0), np.cov(f_gt, rowvar=False))
    assert first == pytest.approx(want, rel=1e-9) and first > 1e-2

    second_net = TinyFeatures()
    again = FIDMetric({'type': 'calculate_fid', 'ref_stats': str(ref)}, inception=second_net)
    again.update(sr[:7], other_gt[:7])
    again.update(sr[7:], None)
    assert second_net.images_seen == 12  # SR only: the GT statistics come from the file
    assert again.compute() == pytest.approx(first, rel=1e-12)
    sr_path, gt_path = again.save_stats(tmp_path / 'stats', 'Set12')
    assert os.path.basename(sr_path) == 'Set12_sr.npz' and os.path.basename(gt_path) == 'Set12_gt.npz'
    np.testing.assert_allclose(load_fid_stats(sr_path)[0], f_sr.mean(0), rtol=1e-6)

    with pytest.raises(ConfigError, match='was computed with patch_size=None, this run uses patch_size=8'):
        FIDMetric({'type': 'calculate_fid', 'ref_stats': str(ref), 'patch_size': 8}, inception=TinyFeatures())


def test_fid_metric_options_and_small_sets():
    with pytest.raises(ConfigError) as e:
        FIDMetric({'type': 'calculate_fid', 'patch': 64}, key_path='val.metrics.fid', inception=TinyFeatures())
    assert str(e.value).startswith('val.metrics.fid.patch: unknown option for calculate_fid; accepted: ')
    assert 'patch_size' in str(e.value)
    for bad in ({'patch_size': 0}, {'eps': -1}, {'type': 'calculate_psnr'}, {'ref_stats': 3}):
        with pytest.raises(ConfigError, match=r'val\.metrics\.fid\.'):
            FIDMetric({'type': 'calculate_fid', **bad}, inception=TinyFeatures())
    assert FIDMetric.check_options({'type': 'calculate_fid', 'weights': 'random', 'eps': '1e-6'}) == {
        'type': 'calculate_fid', 'weights': 'random', 'patch_size': None, 'ref_stats': None, 'eps': 1e-6,
        'method': 'sqrtm', 'better': None}
    with pytest.raises(ConfigError, match=r"^val\.metrics\.fid\.method: expected 'sqrtm' or 'eigh', got 'svd'$"):
        FIDMetric.check_options({'type': 'calculate_fid', 'method': 'svd'}, check_files=False)

    metric = FIDMetric({'type': 'calculate_fid'}, inception=TinyFeatures())
    metric.update(smooth_images(1, 16, 16, 4), smooth_images(1, 16, 16, 5))
    with pytest.warns(UserWarning, match='FID from 1 sample: a covariance needs at least 2 samples'):
        assert np.isnan(metric.compute())
    metric.update(smooth_images(4, 16, 16, 6), smooth_images(4, 16, 16, 7))
    with pytest.warns(UserWarning, match=r'FID from 5 samples \(< 8 features\)'):
        assert np.isfinite(metric.compute())
    metric.reset()
    assert metric.sr_stats.n == 0 and metric.gt_stats.n == 0

    patches = FIDMetric({'type': 'calculate_fid', 'patch_size': 8}, inception=TinyFeatures())
    patches.update(smooth_images(2, 16, 24, 8), smooth_images(2, 16, 24, 9))
    assert patches.sr_stats.n == patches.gt_stats.n == 12
    with pytest.raises(ConfigError, match=r'val\.metrics\.fid\.patch_size: .*does not fit'):
        patches.update(smooth_images(1, 4, 4, 0), smooth_images(1, 4, 4, 0))


def test_fid_metric_real_network_identical_sets(random_weights_file):
    imgs = smooth_images(3, 32, 40, seed=11)
    metric = FIDMetric({'type': 'calculate_fid', 'weights': random_weights_file, 'method': 'eigh'}, device='cpu')
    metric.update(imgs[:2], imgs[:2])
    metric.update(imgs[2:], imgs[2:])
    with torch.no_grad():
        feats = load_fid_inception(random_weights_file, 'cpu')(imgs).double().numpy()
    np.testing.assert_allclose(metric.sr_stats.mu, feats.mean(0), rtol=1e-5, atol=1e-7)
    trace = np.trace(metric.sr_stats.sigma)
    assert trace > 1e-3  # the features vary between images: ~0 below is not trivial
    with pytest.warns(UserWarning, match=r'FID from 3 samples \(< 2048 features\).*not comparable with published'):
        value = metric.compute()
    assert np.isfinite(value) and abs(value) < 1e-3 and abs(value) < 1e-4 * trace


# ------------------------------------------------------------------------------------------ the CLI

def _write_folder(folder, images):
    folder.mkdir()
    for i, img in enumerate(images):
        rgb = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        cv2.imwrite(str(folder / f'{i:02d}.png'), rgb[:, :, ::-1])


def test_cli_on_folders(tmp_path, random_weights_file, capsys):
    _write_folder(tmp_path / 'A', [smooth_images(1, 32, 32, 20)[0], smooth_images(1, 32, 32, 21)[0],
                                   smooth_images(1, 24, 40, 22)[0]])  # two sizes in one folder
    _write_folder(tmp_path / 'B', [smooth_images(1, 32, 32, 30 + i)[0] for i in range(3)])
    main = cli_main('scripts/calculate_fid.py')
    with pytest.warns(UserWarning, match='FID from 3 samples'):
        out = main([str(tmp_path / 'A'), str(tmp_path / 'B'), '--weights', random_weights_file, '--device', 'cpu',
                    '--batch-size', '2', '--save-stats', str(tmp_path / 'a.npz'), '--method', 'eigh'])
    printed = capsys.readouterr().out
    assert re.search(r'^FID: -?\d+\.\d{6}$', printed, re.M) and 'samples: A=3, B=3' in printed
    assert np.isfinite(out['fid']) and out['fid'] > 1e-3 and out['n_a'] == out['n_b'] == 3
    # the saved statistics are those of the images as read from disk
    net = load_fid_inception(random_weights_file, 'cpu')
    batch = [torch.from_numpy(cv2.imread(str(tmp_path / 'A' / f'{i:02d}.png'))[:, :, ::-1].copy()).permute(2, 0, 1)
             for i in range(3)]
    with torch.no_grad():
        feats = torch.cat([net(b[None].float() / 255) for b in batch]).double().numpy()
    mu, sigma, n = load_fid_stats(tmp_path / 'a.npz')
    assert n == 3
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-7)


def test_cli_on_stats_files_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40, 6))
    FeatureStats().update(a).save(tmp_path / 'a.npz')
    mu, sigma = rng.standard_normal(6), _random_spd(rng, 6)
    torch.save({'mean': mu, 'cov': sigma}, tmp_path / 'b.pth')
    out = cli_main('scripts/calculate_fid.py')([str(tmp_path / 'a.npz'), str(tmp_path / 'b.pth')])
    assert out['fid'] == pytest.approx(calculate_fid(a.mean(0), np.cov(a, rowvar=False), mu, sigma), rel=1e-10)
    assert 'samples: A=40, B=?' in capsys.readouterr().out

    result = run_script('scripts/calculate_fid.py', [str(tmp_path / 'no_such_folder'), str(tmp_path / 'a.npz')],
                        cwd=str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: A: ') and 'no_such_folder does not exist' in lines[0]
