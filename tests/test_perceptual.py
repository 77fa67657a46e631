"""LPIPS and DISTS: state-dict layouts, parity with independent references written here (the published formulas
on a functional backbone read straight from the state dict), properties, files and bad input.

Backbones are random (seeded) torchvision-layout files made here; the heads / alpha-beta are the real ones from
the PyPI archives when they can be had (``built_metrics``), else random ones.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from conftest import SHARED
from desra.archs.alexnet_arch import AlexNet
from desra.errors import CheckpointError
from desra.metrics import dists as D
from desra.metrics import lpips as L
from desra.registry import ARCH_REGISTRY, METRIC_REGISTRY
from desra.weights import locate

# torchvision's layouts, written out here: features index -> (in, out, kernel, stride, padding); 'M' max-pool.
ALEX_LAYERS = {0: (3, 64, 11, 4, 2), 1: 'R', 2: ('M', 3, 2), 3: (64, 192, 5, 1, 2), 4: 'R', 5: ('M', 3, 2),
               6: (192, 384, 3, 1, 1), 7: 'R', 8: (384, 256, 3, 1, 1), 9: 'R', 10: (256, 256, 3, 1, 1), 11: 'R',
               12: ('M', 3, 2)}
VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
               (28, 512, 512)]
VGG16_POOLS = (4, 9, 16, 23, 30)


def _photos(size=(96, 128), count=5):
    """Real photos as BGR uint8 pairs (restored, GT): shared GAN-SR vs HR when present, else skimage photos vs
    a blurred + noisy version of themselves."""
    h, w = size
    pairs = []
    if os.path.isdir(os.path.join(SHARED, 'data', 'photos')):
        import cv2
        for name in ('butterfly', 'baboon', 'chelsea'):
            gt = cv2.imread(os.path.join(SHARED, 'data', 'photos', 'HR', f'{name}.png'))[:h, :w]
            sr = cv2.imread(os.path.join(SHARED, 'data', 'photos', 'GAN-SR', f'{name}.png'))[:h, :w]
            pairs.append((np.ascontiguousarray(sr), np.ascontiguousarray(gt)))
    rng = np.random.default_rng(0)
    for img in (skdata.astronaut(), skdata.coffee()):
        gt = np.ascontiguousarray(img[100:100 + h, 100:100 + w, ::-1])
        sr = np.clip(gt.astype(np.float64) + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        pairs.append((sr, gt))
    return pairs[:2] + pairs[-1:] if count == 3 else pairs


def _rgb_tensor(bgr, crop=0):
    if crop:
        bgr = bgr[crop:-crop, crop:-crop]
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32) / 255.).permute(2, 0, 1)[None]


# ------------------------------------------------------------------------------------------- files

def _random_alexnet_sd(seed=0):
    torch.manual_seed(seed)
    sd = {}
    for i, spec in ALEX_LAYERS.items():
        if isinstance(spec, tuple) and spec[0] != 'M':
            cin, cout, k = spec[:3]
            sd[f'features.{i}.weight'] = torch.randn(cout, cin, k, k) * (2 / (cin * k * k)) ** 0.5
            sd[f'features.{i}.bias'] = torch.randn(cout) * 0.05
    sd['classifier.1.weight'] = torch.zeros(4, 4)  # present (and ignored): the real one is 4096 x 9216
    return sd


def _random_vgg16_sd(seed=0):
    torch.manual_seed(seed)
    sd = {}
    for i, cin, cout in VGG16_CONVS:
        sd[f'features.{i}.weight'] = torch.randn(cout, cin, 3, 3) * (2 / (cin * 9)) ** 0.5
        sd[f'features.{i}.bias'] = torch.randn(cout) * 0.05
    sd['classifier.0.weight'] = torch.zeros(4, 4)
    return sd


@pytest.fixture(scope='module')
def metric_files(perceptual_files):
    return perceptual_files


# -------------------------------------------------------------------------------- independent references

def _ref_alex_stages(x, sd):
    """The five ReLU outputs of torchvision's AlexNet features, computed functionally from the state dict."""
    outs = []
    for i, spec in ALEX_LAYERS.items():
        if spec == 'R':
            x = F.relu(x)
            if i in (1, 4, 7, 9, 11):
                outs.append(x)
        elif spec[0] == 'M':
            if i == 12:
                break
            x = F.max_pool2d(x, spec[1], spec[2])
        else:
            x = F.conv2d(x, sd[f'features.{i}.weight'], sd[f'features.{i}.bias'], stride=spec[3], padding=spec[4])
    return outs


def _ref_vgg_stages(x, sd, pool):
    """relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16; ``pool`` replaces the max-pools between them."""
    outs = []
    convs = {i: (cin, cout) for i, cin, cout in VGG16_CONVS}
    for i in range(30):
        if i in convs:
            x = F.relu(F.conv2d(x, sd[f'features.{i}.weight'], sd[f'features.{i}.bias'], padding=1))
            if i + 2 in VGG16_POOLS:  # the ReLU (i + 1) before a pool ends a stage
                outs.append(x)
        elif i in VGG16_POOLS:
            x = pool(x)
    return outs


def _ref_lpips(x, y, net, sd, heads):
    """LPIPS v0.1 (Zhang et al. 2018, Eq. 1): x, y in [-1, 1]; scaling layer, unit-normalised features,
    squared difference weighted per channel, spatial mean, sum over layers."""
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
    stages = (_ref_alex_stages if net == 'alex' else
              lambda t, s: _ref_vgg_stages(t, s, lambda z: F.max_pool2d(z, 2, 2)))
    fx, fy = stages((x - shift) / scale, sd), stages((y - shift) / scale, sd)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for i, (a, b) in enumerate(zip(fx, fy)):
        a = a.double() / (a.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b.double() / (b.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f'lin{i}.model.1.weight'].double().view(1, -1, 1, 1)
        total += (w * (a - b) ** 2).sum(1).mean((1, 2))
    return total


def _ref_l2pool(x):
    """DISTS's L2 pooling with the 3 x 3 Hann window written out: [1 2 1; 2 4 2; 1 2 1] / 16."""
    k = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16
    c = x.shape[1]
    return (F.conv2d(x * x, k.expand(c, 1, 3, 3), stride=2, padding=1, groups=c) + 1e-12).sqrt()


def _ref_dists(x, y, sd, alpha, beta):
    """DISTS (Ding et al. 2020, Eqs. 9-11): stage 0 is the image itself; texture term from the feature means,
    structure term from the (population) variances and covariance; alpha/beta normalised to sum 1 together."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    fx = [x] + _ref_vgg_stages((x - mean) / std, sd, _ref_l2pool)
    fy = [y] + _ref_vgg_stages((y - mean) / std, sd, _ref_l2pool)
    a = alpha.double().flatten() / (alpha.double().sum() + beta.double().sum())
    b = beta.double().flatten() / (alpha.double().sum() + beta.double().sum())
    s, j = torch.zeros(x.shape[0], dtype=torch.float64), 0
    for u, v in zip(fx, fy):
        u, v = u.double().flatten(2), v.double().flatten(2)
        c = u.shape[1]
        mu, mv = u.mean(2), v.mean(2)
        vu, vv = u.var(2, unbiased=False), v.var(2, unbiased=False)
        cuv = (u * v).mean(2) - mu * mv
        texture = (2 * mu * mv + 1e-6) / (mu ** 2 + mv ** 2 + 1e-6)
        structure = (2 * cuv + 1e-6) / (vu + vv + 1e-6)
        s += (a[j:j + c] * texture + b[j:j + c] * structure).sum(1)
        j += c
    return 1 - s


# ------------------------------------------------------------------------------------------- layouts

def test_alexnet_state_dict_is_torchvision_layout():
    sd = AlexNet().state_dict()
    expect = {f'features.{i}.{p}' for i, s in ALEX_LAYERS.items() if isinstance(s, tuple) and s[0] != 'M'
              for p in ('weight', 'bias')} | {f'classifier.{i}.{p}' for i in (1, 4, 6) for p in ('weight', 'bias')}
    assert set(sd) == expect
    assert tuple(sd['features.0.weight'].shape) == (64, 3, 11, 11)
    assert tuple(sd['classifier.1.weight'].shape) == (4096, 9216) and tuple(sd['classifier.6.bias'].shape) == (1000,)
    assert ARCH_REGISTRY.get('AlexNet') is AlexNet
    # a torchvision-style AlexNet file loads strictly, and its features give the reference stage outputs
    full = AlexNet().state_dict()
    full.update({k: v for k, v in _random_alexnet_sd().items() if k.startswith('features.')})
    net = AlexNet()
    net.load_state_dict(full, strict=True)
    x = torch.rand(1, 3, 80, 96)
    torch.testing.assert_close(net.features[:12](x), _ref_alex_stages(x, full)[-1])


def test_registry_and_directions():
    for name in ('calculate_lpips', 'calculate_lpips_pt', 'calculate_dists', 'calculate_dists_pt',
                 'calculate_niqe', 'calculate_fid'):
        assert getattr(METRIC_REGISTRY.get(name), 'better') == 'lower', name
    assert getattr(METRIC_REGISTRY.get('calculate_psnr'), 'better', 'higher') == 'higher'


# --------------------------------------------------------------------------------------- LPIPS parity

@pytest.mark.parametrize('net', ['alex', 'vgg'])
def test_lpips_equals_reference_on_photos(metric_files, net):
    backbone, heads = metric_files[net], metric_files[f'heads_{net}']
    sd = torch.load(backbone, weights_only=True)
    head_sd = L.load_lpips_heads(heads, net)
    head_sd = {f'lin{i}.model.1.weight': w for i, w in enumerate(head_sd)}
    for sr, gt in (_photos() if net == 'alex' else _photos((64, 96), 3)):
        ours = L.calculate_lpips(sr, gt, crop_border=4, net=net, backbone=backbone, heads=heads, device='cpu')
        ref = float(_ref_lpips(_rgb_tensor(sr, 4) * 2 - 1, _rgb_tensor(gt, 4) * 2 - 1, net, sd, head_sd)[0])
        assert ours == pytest.approx(ref, rel=1e-4, abs=1e-7)
        assert ours > 0
    if metric_files['real']:  # the shipped heads are non-negative weights of the published model
        assert all(float(w.min()) >= 0 for w in head_sd.values())


def test_lpips_identity_symmetry_and_batched(metric_files):
    kw = dict(net='alex', backbone=metric_files['alex'], heads=metric_files['heads_alex'])
    (sr, gt), (sr2, gt2) = _photos()[:2]
    assert L.calculate_lpips(gt, gt, device='cpu', **kw) == 0.0
    assert L.calculate_lpips(sr, gt, device='cpu', **kw) == pytest.approx(L.calculate_lpips(gt, sr, device='cpu',
                                                                                              **kw), rel=1e-6)
    # CHW input, and the batched tensor version equals the per-image numpy one
    assert L.calculate_lpips(sr.transpose(2, 0, 1), gt.transpose(2, 0, 1), input_order='CHW', device='cpu',
                             **kw) == L.calculate_lpips(sr, gt, device='cpu', **kw)
    batch = L.calculate_lpips_pt(torch.cat([_rgb_tensor(sr), _rgb_tensor(sr2)]),
                                 torch.cat([_rgb_tensor(gt), _rgb_tensor(gt2)]), crop_border=2, **kw)
    assert batch.dtype == torch.float64 and batch.shape == (2,)
    np.testing.assert_allclose(batch.numpy(), [L.calculate_lpips(sr, gt, 2, device='cpu', **kw),
                                               L.calculate_lpips(sr2, gt2, 2, device='cpu', **kw)], rtol=1e-5)


def test_networks_are_cached_and_reloaded_when_the_file_changes(metric_files, tmp_path):
    kw = dict(backbone=metric_files['alex'], heads=metric_files['heads_alex'], device='cpu')
    assert L.lpips_network('alex', **kw) is L.lpips_network('alex', **kw)
    copy = tmp_path / 'alexnet-owt-7be5be79.pth'
    torch.save(_random_alexnet_sd(seed=1), copy)
    first = L.lpips_network('alex', copy, metric_files['heads_alex'], 'cpu')
    torch.save(_random_alexnet_sd(seed=2), copy)
    os.utime(copy, ns=(os.stat(copy).st_mtime_ns + 10 ** 9,) * 2)
    second = L.lpips_network('alex', copy, metric_files['heads_alex'], 'cpu')
    assert second is not first
    assert not torch.equal(first.features[0].weight, second.features[0].weight)
    dkw = dict(backbone=metric_files['vgg'], weights=metric_files['dists'], device='cpu')
    assert D.dists_network(**dkw) is D.dists_network(**dkw)


# ---------------------------------------------------------------------------------------- DISTS parity

def test_dists_equals_reference_on_photos(metric_files):
    backbone, weights = metric_files['vgg'], metric_files['dists']
    sd = torch.load(backbone, weights_only=True)
    alpha, beta = D.load_dists_weights(weights)
    for sr, gt in _photos((64, 96), 3):
        ours = D.calculate_dists(sr, gt, crop_border=4, backbone=backbone, weights=weights, device='cpu')
        ref = float(_ref_dists(_rgb_tensor(sr, 4), _rgb_tensor(gt, 4), sd, alpha, beta)[0])
        assert ours == pytest.approx(ref, abs=2e-6)
        assert 0 < ours < 1
    sr, gt = _photos((64, 96), 3)[0]
    same = D.calculate_dists(gt, gt, backbone=backbone, weights=weights, device='cpu')
    assert abs(same) < 1e-5
    batch = D.calculate_dists_pt(_rgb_tensor(sr).repeat(2, 1, 1, 1), _rgb_tensor(gt).repeat(2, 1, 1, 1),
                                 backbone=backbone, weights=weights)
    assert batch.shape == (2,)
    np.testing.assert_allclose(batch.numpy(), D.calculate_dists(sr, gt, backbone=backbone, weights=weights,
                                                                device='cpu'), rtol=1e-5)


# ------------------------------------------------------------------------------------------ bad input

@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Every search place of the weight files points at empty temporary folders."""
    for spec in (locate.ALEXNET, locate.VGG16, locate.LPIPS_HEADS['alex'], locate.DISTS_WEIGHTS):
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(locate, 'REPO_ROOT', tmp_path / 'repo')
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')
    return tmp_path


def test_missing_backbone_names_the_file_and_folder(nowhere, metric_files):
    img = _photos()[0][1]
    with pytest.raises(CheckpointError) as e:
        L.calculate_lpips(img, img, heads=metric_files['heads_alex'], device='cpu')
    msg = str(e.value)
    assert '\n' not in msg
    assert msg.startswith("LPIPS (net=alex) needs alexnet-owt-7be5be79.pth (torchvision's AlexNet ImageNet "
                          f"weights): put it in {nowhere / 'repo' / 'pretrained'}/ (or set "
                          'DESRA_ALEXNET_WEIGHTS=/path/to/alexnet-owt-7be5be79.pth), e.g. with '
                          '`python scripts/download_pretrained.py --source official --only alexnet`; searched ')
    with pytest.raises(CheckpointError, match=r'^DISTS needs vgg16-397923af\.pth'):
        D.calculate_dists(img, img, weights=metric_files['dists'], device='cpu')
    with pytest.raises(CheckpointError, match=r'^LPIPS \(net=vgg\) needs lpips_vgg_v0\.1\.safetensors \(the LPIPS '
                                              r'v0\.1 linear heads for vgg'):
        L.calculate_lpips(img, img, net='vgg', backbone=metric_files['vgg'], device='cpu')


def test_backbone_with_wrong_keys_lists_them(tmp_path, metric_files):
    wrong = tmp_path / 'not_alexnet.pth'
    sd = _random_alexnet_sd()
    del sd['features.10.weight'], sd['features.10.bias']
    torch.save({k.replace('features.0.', 'conv_first.'): v for k, v in sd.items()}, wrong)
    img = _photos()[0][1]
    with pytest.raises(CheckpointError) as e:
        L.calculate_lpips(img, img, backbone=wrong, heads=metric_files['heads_alex'], device='cpu')
    assert str(e.value) == (f"{wrong}: not torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth): 4 "
                            'key(s) missing: features.0.weight, features.0.bias, features.10.weight, features.10.bias')
    shapes = tmp_path / 'shapes.pth'
    sd = _random_vgg16_sd()
    sd['features.0.weight'] = torch.zeros(64, 1, 3, 3)
    torch.save(sd, shapes)
    with pytest.raises(CheckpointError, match=r'wrong shapes: features\.0\.weight \(64, 1, 3, 3\) \(expected '
                                              r'\(64, 3, 3, 3\)\)'):
        D.DISTS(shapes, metric_files['dists'])
    heads = tmp_path / 'heads.pth'
    torch.save({'lin0.model.1.weight': torch.zeros(1, 64, 1, 1)}, heads)
    with pytest.raises(CheckpointError, match='missing lin1.model.1.weight, lin2.model.1.weight'):
        L.load_lpips_heads(heads, 'alex')


def test_images_of_different_sizes(metric_files):
    a, b = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 60, 3), np.uint8)
    with pytest.raises(ValueError) as e:
        L.calculate_lpips(a, b, backbone=metric_files['alex'], heads=metric_files['heads_alex'], device='cpu')
    assert str(e.value) == 'calculate_lpips: image shapes differ: (64, 64, 3) vs (64, 60, 3)'
    with pytest.raises(ValueError, match=r'^calculate_dists: image shapes differ: \(64, 64, 3\) vs \(64, 60, 3\)$'):
        D.calculate_dists(a, b, backbone=metric_files['vgg'], weights=metric_files['dists'], device='cpu')
    with pytest.raises(ValueError, match=r'^calculate_lpips_pt: image shapes differ: \(1, 3, 8, 8\) vs '
                                         r'\(1, 3, 8, 9\)$'):
        L.calculate_lpips_pt(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="net must be one of 'alex', 'vgg', got 'squeeze'"):
        L.calculate_lpips(a, a, net='squeeze')
