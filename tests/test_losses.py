"""Losses (pixel, perceptual, GAN, LDL) and the VGG feature extractor, checked against hand-made numbers
and independent reference implementations written here."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from desra.archs import vgg_arch
from desra.archs.vgg_arch import VGG19, VGGFeatureExtractor
from desra.errors import CheckpointError
from desra.losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss, PerceptualLoss
from desra.losses.gan_loss import GANLoss, relativistic_gan_terms
from desra.losses.ldl_loss import LDLArtifactLoss, ldl_artifact_map
from desra.registry import ARCH_REGISTRY, LOSS_REGISTRY

LDL_LAYERS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1, 'conv5_4': 1}


# =========================================================================================== LDL map

def ref_artifact_map(gt, sr, ema, k=7):
    """LDL.md written out literally: reflect pad, every k x k window via unfold, torch.var over it."""
    b, _, h, w = gt.shape
    r_sr = (gt - sr).abs().sum(1, keepdim=True)
    r_ema = (gt - ema).abs().sum(1, keepdim=True)
    windows = F.unfold(F.pad(r_sr, [k // 2] * 4, mode='reflect'), k)  # B x k*k x H*W
    m = windows.var(dim=1, unbiased=True).view(b, 1, h, w)
    sigma = r_sr.var(dim=(1, 2, 3), unbiased=True).pow(1 / 5).view(b, 1, 1, 1)
    weight = sigma * m
    return torch.where(r_sr < r_ema, torch.zeros_like(weight), weight)


def rand_triplet(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize('shape,k', [
    ((1, 3, 9, 9), 7), ((2, 1, 17, 23), 7), ((3, 3, 17, 23), 7), ((2, 3, 16, 10), 7),
    ((1, 1, 9, 9), 5), ((3, 3, 12, 15), 5), ((2, 3, 8, 8), 3),
])
def test_map_matches_unfold_reference(shape, k):
    gt, sr, ema = rand_triplet(shape, seed=sum(shape) + k)
    ours = ldl_artifact_map(gt, sr, ema, kernel_size=k)
    ref = ref_artifact_map(gt, sr, ema, k)
    assert ours.shape == (shape[0], 1, *shape[2:]) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    assert (ours >= 0).all()


def test_map_float32_close_to_float64_reference():
    gt, sr, ema = rand_triplet((2, 3, 24, 20), seed=3)
    ours = ldl_artifact_map(gt.float(), sr.float(), ema.float())
    ref = ref_artifact_map(gt, sr, ema)
    assert ours.dtype == torch.float32
    assert ((ours.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_map_half_inputs_computed_in_float32():
    gt, sr, ema = rand_triplet((1, 3, 12, 12), seed=4, dtype=torch.float32)
    out = ldl_artifact_map(gt.half(), sr.half(), ema.half())
    assert out.dtype == torch.float32
    ref = ref_artifact_map(gt.half().double(), sr.half().double(), ema.half().double())
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_constant_residual_gives_zero_map():
    gt = torch.full((2, 3, 11, 13), 0.7, dtype=torch.float64)
    sr = torch.full_like(gt, 0.2)
    w = ldl_artifact_map(gt, sr, gt.clone())
    assert torch.equal(w, torch.zeros_like(w))


def test_piecewise_constant_residual_zero_inside_flat_regions():
    # R = 0.3 on the left 8 columns and 1.5 on the right 8: a window wholly on one side has M = 0,
    # a window straddling the edge with a columns of 0.3 and 7 - a of 1.5 (7a and 7(7 - a) values)
    # has the unbiased two-value variance 7a * 7(7 - a) * 1.2^2 / (49 * 48) = a (7 - a) 1.2^2 / 48.
    gt = torch.zeros(1, 3, 12, 16, dtype=torch.float64)
    sr = gt.clone()
    sr[..., :8] = 0.1
    sr[..., 8:] = 0.5
    w = ldl_artifact_map(gt, sr, gt.clone())
    r = sr.sum(1).flatten()
    sigma = r.var(unbiased=True) ** 0.2
    m = w[0, 0] / sigma
    assert torch.all(m[:, :5] == 0) and torch.all(m[:, 11:] == 0)
    for col in range(5, 11):
        a = min(max(8 - (col - 3), 0), 7)  # columns of the window left of the edge
        expect = a * (7 - a) * 1.2 ** 2 / 48
        torch.testing.assert_close(m[:, col], torch.full((12,), expect, dtype=torch.float64))


def test_single_pixel_spike_has_analytic_variance():
    a = 0.5
    gt = torch.full((1, 1, 15, 15), 0.5, dtype=torch.float64)
    sr = gt.clone()
    sr[0, 0, 7, 7] -= a  # R = a at (7, 7), 0 elsewhere; the spike is farther than 3 from any border
    w = ldl_artifact_map(gt, sr, gt.clone())[0, 0]
    sigma = (a * a / 225) ** 0.2  # unbiased variance of one a among 225 pixels: a^2 / 225
    expect = torch.zeros(15, 15, dtype=torch.float64)
    expect[4:11, 4:11] = sigma * a * a / 49  # one a among 49: (a^2 - a^2 / 49) / 48 = a^2 / 49
    torch.testing.assert_close(w, expect, rtol=1e-10, atol=1e-14)


def test_map_zero_where_live_model_beats_ema():
    gt, sr, ema = rand_triplet((2, 3, 16, 16), seed=5)
    ema[..., :8] = gt[..., :8]  # EMA perfect on the left half: R_SR >= R_EMA there, never masked
    w = ldl_artifact_map(gt, sr, ema)
    r_sr = (gt - sr).abs().sum(1, keepdim=True)
    r_ema = (gt - ema).abs().sum(1, keepdim=True)
    mask = r_sr < r_ema
    assert mask.any() and (~mask).any()
    assert torch.all(w[mask] == 0)
    assert torch.all(w[..., :8] > 0)
    # ties are kept (the paper masks only where the live model is strictly better)
    assert torch.all(ldl_artifact_map(gt, sr, sr.clone()) > 0)


def test_map_argument_errors():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='odd'):
        ldl_artifact_map(x, x, x, kernel_size=6)
    with pytest.raises(ValueError, match='one shape'):
        ldl_artifact_map(x, x[..., :7], x)
    with pytest.raises(ValueError, match='too small'):
        ldl_artifact_map(x[..., :3, :3], x[..., :3, :3], x[..., :3, :3], kernel_size=7)


# ---------------------------------------------------------------------------------------- gradients

def _grads(fn, gt, sr, ema, g):
    sr = sr.clone().requires_grad_(True)
    gt = gt.clone().requires_grad_(True)
    return torch.autograd.grad((fn(gt, sr, ema) * g).sum(), (sr, gt))


@pytest.mark.parametrize('shape,k', [((2, 3, 17, 23), 7), ((1, 1, 9, 9), 7), ((2, 3, 12, 10), 5)])
def test_map_gradient_matches_autograd_of_reference(shape, k):
    gt, sr, ema = rand_triplet(shape, seed=11 + k)
    g = torch.randn(shape[0], 1, *shape[2:], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = _grads(lambda a, b, c: ldl_artifact_map(a, b, c, k), gt, sr, ema, g)
    ref = _grads(lambda a, b, c: ref_artifact_map(a, b, c, k), gt, sr, ema, g)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-7, atol=1e-9 * r.abs().max().item())


def test_map_gradcheck():
    gt, sr, ema = rand_triplet((1, 2, 8, 9), seed=21)
    sr.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: ldl_artifact_map(gt, s, ema, 5), (sr,), eps=1e-7, atol=1e-6)


def test_gradient_flows_through_map_unless_detached():
    gt, sr, ema = rand_triplet((2, 3, 16, 16), seed=7)
    sr.requires_grad_(True)
    grads = {}
    for detach in (False, True):
        loss = LDLArtifactLoss(detach_map=detach)(sr, gt, ema)
        grads[detach], = torch.autograd.grad(loss, sr)
    assert grads[False].abs().sum() > 0 and grads[True].abs().sum() > 0
    assert not torch.allclose(grads[False], grads[True])
    # the difference is exactly the path through W: d/dsr of mean(W |sr - gt|) with |sr - gt| fixed
    w = ldl_artifact_map(gt, sr, ema)
    via_map, = torch.autograd.grad((w * (sr - gt).abs().detach()).mean(), sr)
    torch.testing.assert_close(grads[False] - grads[True], via_map, rtol=1e-9, atol=1e-15)

    detached = ldl_artifact_map(gt, sr, ema, detach=True)
    assert detached.grad_fn is None and not detached.requires_grad
    assert ldl_artifact_map(gt, sr, ema).grad_fn is not None
    assert torch.equal(detached, w.detach())


def test_ema_gets_no_gradient_and_flat_residual_gives_finite_gradient():
    gt, sr, ema = rand_triplet((1, 3, 10, 10), seed=8)
    ema.requires_grad_(True)
    sr.requires_grad_(True)
    w = ldl_artifact_map(gt, sr, ema)
    g_sr, g_ema = torch.autograd.grad(w.sum(), (sr, ema), allow_unused=True)
    assert g_ema is None or torch.all(g_ema == 0)
    # sr == gt: sigma = 0; the released code's var^(1/5) backward gives NaN there, ours 0.
    gt2 = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    sr2 = gt2.clone().requires_grad_(True)
    g, = torch.autograd.grad(LDLArtifactLoss()(sr2, gt2, torch.rand_like(gt2)), sr2)
    assert torch.isfinite(g).all()


def test_ldl_loss_value_and_registry():
    gt, sr, ema = rand_triplet((2, 3, 12, 12), seed=9)
    w = ref_artifact_map(gt, sr, ema)
    expect = 0.5 * (w * sr - w * gt).abs().mean()
    loss = LOSS_REGISTRY.build({'type': 'LDLArtifactLoss', 'loss_weight': 0.5}, key_path='train.artifacts_opt')
    torch.testing.assert_close(loss(sr, gt, ema), expect)
    torch.testing.assert_close(LDLArtifactLoss(reduction='sum')(sr, gt, ema), (w * sr - w * gt).abs().sum())
    with pytest.raises(ValueError, match='none, mean, sum'):
        LDLArtifactLoss(reduction='avg')


@pytest.mark.parametrize('r,shape', [(1, (2, 1, 5, 7)), (2, (1, 2, 6, 5)), (3, (2, 1, 9, 4)), (3, (1, 1, 4, 4))])
def test_reflect_fold_is_the_adjoint_of_reflect_pad(r, shape):
    # the backward's in-place fold of the reflect padding, against the definition of the adjoint and
    # against torch's reflection_pad2d_backward kernel (CPU; its CUDA kernel is not deterministic)
    from desra.losses.ldl_loss import _reflect_fold_
    g = torch.Generator().manual_seed(r)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(*shape[:2], shape[2] + 2 * r, shape[3] + 2 * r, generator=g, dtype=torch.float64)
    fold = _reflect_fold_(y.clone(), r)
    assert fold.shape == x.shape
    torch.testing.assert_close((F.pad(x, [r] * 4, mode='reflect') * y).sum(), (x * fold).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(fold, torch.ops.aten.reflection_pad2d_backward(y, x, [r] * 4), rtol=1e-15, atol=1e-15)


def _map_grads_on(device):
    gt, sr, ema = (t.to(device) for t in rand_triplet((2, 3, 19, 14), seed=31))
    g = torch.randn(2, 1, 19, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    return (ldl_artifact_map(gt, sr, ema).detach(), *_grads(ldl_artifact_map, gt, sr, ema, g))


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA'))])
def test_map_and_gradient_deterministic_and_match_reference(device):
    # Under torch.use_deterministic_algorithms(True) nothing in the map or its backward may raise (no
    # kernel without a deterministic implementation) and two runs agree bit for bit.
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _map_grads_on(device), _map_grads_on(device)
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    gt, sr, ema = rand_triplet((2, 3, 19, 14), seed=31)
    g = torch.randn(2, 1, 19, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = (ref_artifact_map(gt, sr, ema), *_grads(ref_artifact_map, gt, sr, ema, g))
    for o, r in zip(first, ref):
        torch.testing.assert_close(o.cpu(), r, rtol=1e-7, atol=1e-9 * r.abs().max().item())


# ====================================================================================== pixel losses

def test_l1_mse_hand_values():
    pred = torch.tensor([0., 2., 3.])
    target = torch.tensor([1., 1., 1.])
    weight = torch.tensor([1., 0., 1.])
    assert L1Loss()(pred, target).item() == pytest.approx(4 / 3)
    assert L1Loss()(pred, target, weight).item() == pytest.approx(1.5)  # (1 + 2) / 2
    assert L1Loss(reduction='sum')(pred, target, weight).item() == pytest.approx(3.0)
    assert torch.equal(L1Loss(reduction='none')(pred, target), torch.tensor([1., 1., 2.]))
    assert L1Loss(loss_weight=0.01)(pred, target).item() == pytest.approx(0.04 / 3)
    assert MSELoss()(pred, target).item() == pytest.approx(2.0)  # (1 + 1 + 4) / 3
    assert MSELoss()(pred, target, weight).item() == pytest.approx(2.5)  # (1 + 4) / 2


def test_weighted_mean_broadcasts_weight_over_channels():
    pred = torch.tensor([[[[1., 2.]], [[3., 4.]]]])  # 1 x 2 x 1 x 2
    target = torch.zeros_like(pred)
    weight = torch.tensor([[[[1., 0.]]]])  # 1 x 1 x 1 x 2: counts once per channel
    assert L1Loss()(pred, target, weight).item() == pytest.approx((1 + 3) / 2)
    full = torch.tensor([[[[1., 0.]], [[0., 0.5]]]])
    assert L1Loss()(pred, target, full).item() == pytest.approx((1 + 2) / 1.5)
    assert L1Loss()(pred, target, torch.zeros_like(full)).item() == 0.0  # not NaN


def test_charbonnier_hand_values():
    pred = torch.tensor([0., 3.])
    target = torch.zeros(2)
    assert CharbonnierLoss(eps=16.)(pred, target).item() == pytest.approx((4 + 5) / 2)
    assert CharbonnierLoss()(target, target).item() == pytest.approx(1e-6)  # sqrt(1e-12)
    w = torch.tensor([0., 2.])
    assert CharbonnierLoss(loss_weight=2., eps=16.)(pred, target, w).item() == pytest.approx(2 * 10 / 2)


@pytest.mark.parametrize('cls', [L1Loss, MSELoss, CharbonnierLoss])
def test_bad_reduction_message(cls):
    with pytest.raises(ValueError) as err:
        cls(reduction='avg')
    assert "'avg'" in str(err.value) and 'none, mean, sum' in str(err.value)


def test_losses_registered():
    for name in ('L1Loss', 'MSELoss', 'CharbonnierLoss', 'PerceptualLoss', 'GANLoss', 'LDLArtifactLoss'):
        assert name in LOSS_REGISTRY
    for name in ('VGG19', 'VGGFeatureExtractor'):
        assert name in ARCH_REGISTRY


# ========================================================================================= GAN loss

LOG2 = math.log(2)


def sp(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize('real', [True, False])
def test_vanilla(real):
    crit = GANLoss('vanilla', loss_weight=0.1)
    zero = torch.zeros(4)
    assert crit(zero, real, is_disc=True).item() == pytest.approx(LOG2)
    assert crit(zero, real).item() == pytest.approx(0.1 * LOG2)
    x = torch.tensor([2.0])
    expect = sp(-2) if real else sp(2)
    assert crit(x, real, is_disc=True).item() == pytest.approx(expect)


def test_lsgan_and_labels():
    x = torch.tensor([0.5, 1.5])
    assert GANLoss('lsgan')(x, True, is_disc=True).item() == pytest.approx(0.25)
    assert GANLoss('lsgan')(x, False, is_disc=True).item() == pytest.approx((0.25 + 2.25) / 2)
    assert GANLoss('lsgan', real_label_val=0.9, loss_weight=2.)(x, True).item() == pytest.approx(
        2 * (0.16 + 0.36) / 2)


def test_wgan_variants():
    x = torch.tensor([1.0, 3.0])
    assert GANLoss('wgan')(x, True, is_disc=True).item() == pytest.approx(-2.0)
    assert GANLoss('wgan')(x, False, is_disc=True).item() == pytest.approx(2.0)
    assert GANLoss('wgan', loss_weight=0.5)(x, True).item() == pytest.approx(-1.0)
    assert GANLoss('wgan_softplus')(torch.zeros(3), True, is_disc=True).item() == pytest.approx(LOG2)
    assert GANLoss('wgan_softplus')(x, False, is_disc=True).item() == pytest.approx((sp(1) + sp(3)) / 2)
    assert GANLoss('wgan_softplus')(x, True, is_disc=True).item() == pytest.approx((sp(-1) + sp(-3)) / 2)


def test_hinge():
    x = torch.tensor([0.5, -2.0])
    crit = GANLoss('hinge', loss_weight=3.)
    assert crit(x, True, is_disc=True).item() == pytest.approx((0.5 + 3.0) / 2)
    assert crit(x, False, is_disc=True).item() == pytest.approx((1.5 + 0.0) / 2)
    for real in (True, False):  # generator: -mean(x) whatever the target, weighted
        assert crit(x, real).item() == pytest.approx(3 * 0.75)


def test_unknown_gan_type():
    with pytest.raises(ValueError) as err:
        GANLoss('ragan')
    for t in ('vanilla', 'lsgan', 'wgan', 'wgan_softplus', 'hinge'):
        assert t in str(err.value)


def test_relativistic_terms():
    crit = GANLoss('vanilla', loss_weight=5e-3)
    real = torch.tensor([1.0, 3.0], requires_grad=True)  # mean 2
    fake = torch.tensor([0.0, 2.0], requires_grad=True)  # mean 1
    g = relativistic_gan_terms(crit, real, fake)
    # real - mean(fake) = [0, 2] labelled fake; fake - mean(real) = [-2, 0] labelled real
    assert g.real.item() == pytest.approx(5e-3 * (sp(0) + sp(2)) / 2 / 2)
    assert g.fake.item() == pytest.approx(5e-3 * (sp(2) + sp(0)) / 2 / 2)
    gr, gf = torch.autograd.grad(g.total, (real, fake), allow_unused=True)
    assert gr is None and gf.abs().sum() > 0  # D's verdict on real images is a constant for G
    d = relativistic_gan_terms(crit, real, fake, is_disc=True)
    assert d.real.item() == pytest.approx((sp(0) + sp(-2)) / 2 / 2)  # unweighted
    assert d.fake.item() == pytest.approx((sp(-2) + sp(0)) / 2 / 2)
    gr_real, = torch.autograd.grad(d.real, real)
    gf_fake, = torch.autograd.grad(d.fake, fake)
    assert gr_real.abs().sum() > 0 and gf_fake.abs().sum() > 0


# ============================================================================================== VGG

TV_VGG19_SHAPES = {
    'features.0': (64, 3), 'features.2': (64, 64), 'features.5': (128, 64), 'features.7': (128, 128),
    'features.10': (256, 128), 'features.12': (256, 256), 'features.14': (256, 256), 'features.16': (256, 256),
    'features.19': (512, 256), 'features.21': (512, 512), 'features.23': (512, 512), 'features.25': (512, 512),
    'features.28': (512, 512), 'features.30': (512, 512), 'features.32': (512, 512), 'features.34': (512, 512),
}
POOL_IDX = {4, 9, 18, 27, 36}  # torchvision indices of the max-pools in vgg19.features


def torchvision_vgg19_keys():
    shapes = {}
    for m, (o, i) in TV_VGG19_SHAPES.items():
        shapes[f'{m}.weight'] = (o, i, 3, 3)
        shapes[f'{m}.bias'] = (o,)
    for m, (o, i) in {'classifier.0': (4096, 25088), 'classifier.3': (4096, 4096),
                      'classifier.6': (1000, 4096)}.items():
        shapes[f'{m}.weight'] = (o, i)
        shapes[f'{m}.bias'] = (o,)
    return shapes


def manual_vgg19(x, sd, upto, norm=True):
    """Features of layer index ``upto`` (inclusive) with F.conv2d / relu / max_pool2d and weights ``sd``."""
    if norm:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = (x - mean) / std
    for idx in range(upto + 1):
        if f'features.{idx}.weight' in sd:
            x = F.conv2d(x, sd[f'features.{idx}.weight'], sd[f'features.{idx}.bias'], padding=1)
        elif idx in POOL_IDX:
            x = F.max_pool2d(x, 2, 2)
        else:
            x = F.relu(x)
    return x


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
    torch.manual_seed(0)
    net = VGG19()
    path = tmp_path_factory.mktemp('weights') / 'vgg19-dcbb9e9d.pth'
    torch.save(net.state_dict(), path)
    return net, path


def test_vgg19_state_dict_is_torchvision_layout(vgg19_file):
    net, path = vgg19_file
    sd = net.state_dict()
    expect = torchvision_vgg19_keys()
    assert list(sd) == list(expect)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expect
    net.load_state_dict(torch.load(path, weights_only=True, mmap=True), strict=True)
    assert ARCH_REGISTRY.get('VGG19') is VGG19
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_extractor_loads_file_and_matches_manual_forward(vgg19_file):
    net, path = vgg19_file
    ext = VGGFeatureExtractor(['relu5_4'], weights=str(path))
    assert ext.weights_path == path
    assert set(ext.state_dict()) == {k for k in net.state_dict() if k.startswith('features.')}
    x = torch.rand(2, 3, 32, 32)
    out = ext(x)
    assert list(out) == ['relu5_4'] and out['relu5_4'].shape == (2, 512, 2, 2)
    torch.testing.assert_close(out['relu5_4'], manual_vgg19(x, net.state_dict(), 35), rtol=1e-4, atol=1e-5)
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())


def test_extractor_layer_names_and_options(vgg19_file):
    net, path = vgg19_file
    sd = net.state_dict()
    ext = VGGFeatureExtractor(['conv1_1', 'relu1_1', 'pool1', 'conv3_4'], weights=path, use_input_norm=False,
                              range_norm=True)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    out = ext(x)
    assert list(out) == ['conv1_1', 'relu1_1', 'pool1', 'conv3_4']
    assert len(ext.features) == 17  # built only up to conv3_4 (torchvision index 16)
    x01 = (x + 1) / 2
    torch.testing.assert_close(out['conv1_1'], manual_vgg19(x01, sd, 0, norm=False))  # not overwritten by relu
    torch.testing.assert_close(out['relu1_1'], manual_vgg19(x01, sd, 1, norm=False))
    torch.testing.assert_close(out['pool1'], manual_vgg19(x01, sd, 4, norm=False))
    torch.testing.assert_close(out['conv3_4'], manual_vgg19(x01, sd, 16, norm=False), rtol=1e-4, atol=1e-5)
    nopool = VGGFeatureExtractor(['conv2_1'], weights='random', remove_pooling=True)
    assert nopool(torch.rand(1, 3, 8, 8))['conv2_1'].shape == (1, 128, 8, 8)
    with pytest.raises(ValueError, match="unknown vgg19 layer 'conv6_1'"):
        VGGFeatureExtractor(['conv6_1'], weights='random')


def test_extractor_random_weights_and_clean_state_dict():
    ext = VGGFeatureExtractor(['conv2_2'], weights='random')
    assert list(ext.state_dict()) == ['features.0.weight', 'features.0.bias', 'features.2.weight',
                                      'features.2.bias', 'features.5.weight', 'features.5.bias',
                                      'features.7.weight', 'features.7.bias']
    assert ext.weights_path is None and not any(p.requires_grad for p in ext.parameters())
    trainable = VGGFeatureExtractor(['conv1_1'], weights='random', requires_grad=True)
    assert all(p.requires_grad for p in trainable.parameters())


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Point every search place of the VGG weights at an empty temporary folder."""
    monkeypatch.delenv('DESRA_VGG19_WEIGHTS', raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(vgg_arch, '_REPO_ROOT', tmp_path / 'repo')
    work = tmp_path / 'cwd'
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_missing_weights_raise_checkpoint_error(nowhere):
    with pytest.raises(CheckpointError) as err:
        VGGFeatureExtractor(['conv1_1'])
    msg = str(err.value)
    assert 'pretrained/vgg19-dcbb9e9d.pth' in msg
    assert 'DESRA_VGG19_WEIGHTS' in msg and 'scripts/download_pretrained.py' in msg
    assert str(nowhere / 'pretrained' / 'vgg19-dcbb9e9d.pth') in msg
    assert 'experiments/pretrained_models' in msg and 'torch_home' in msg
    with pytest.raises(CheckpointError):
        PerceptualLoss(LDL_LAYERS)


def test_weights_found_in_search_places(nowhere, vgg19_file, monkeypatch):
    net, path = vgg19_file
    (nowhere / 'pretrained').mkdir()
    (nowhere / 'pretrained' / 'vgg19-dcbb9e9d.pth').symlink_to(path)
    assert VGGFeatureExtractor(['conv1_1']).weights_path == nowhere / 'pretrained' / 'vgg19-dcbb9e9d.pth'
    monkeypatch.setenv('DESRA_VGG19_WEIGHTS', str(path))
    ext = VGGFeatureExtractor(['conv1_1'])
    assert ext.weights_path == path
    torch.testing.assert_close(ext.features[0].weight, net.features[0].weight)
    monkeypatch.setenv('DESRA_VGG19_WEIGHTS', str(nowhere / 'nope.pth'))
    with pytest.raises(CheckpointError, match='DESRA_VGG19_WEIGHTS'):
        VGGFeatureExtractor(['conv1_1'])


def test_bad_weight_files(tmp_path):
    partial = tmp_path / 'partial.pth'
    torch.save({'features.0.weight': torch.zeros(64, 3, 3, 3), 'features.0.bias': torch.zeros(64)}, partial)
    VGGFeatureExtractor(['relu1_1'], weights=partial)  # has all it needs
    with pytest.raises(CheckpointError, match='partial.pth'):
        VGGFeatureExtractor(['conv1_2'], weights=partial)
    wrong = tmp_path / 'wrong.pth'
    torch.save({'features.0.weight': torch.zeros(32, 3, 3, 3), 'features.0.bias': torch.zeros(32)}, wrong)
    with pytest.raises(CheckpointError, match='shape'):
        VGGFeatureExtractor(['conv1_1'], weights=wrong)
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.pth'):
        VGGFeatureExtractor(['conv1_1'], weights=junk)


def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file
    src = VGGFeatureExtractor(['conv2_1'], weights='random')
    path = tmp_path / 'vgg.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    ext = VGGFeatureExtractor(['conv2_1'], weights=path)
    for a, b in zip(src.parameters(), ext.parameters()):
        assert torch.equal(a, b)


# ================================================================================ perceptual loss

def test_perceptual_loss_matches_reference():
    torch.manual_seed(0)
    loss = PerceptualLoss(LDL_LAYERS, weights='random', perceptual_weight=1.0, style_weight=0.)
    sd = loss.vgg.state_dict()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
    gt = torch.rand(2, 3, 32, 32, generator=g)
    percep, style = loss(x, gt)
    assert style is None
    idx = {'conv1_2': 2, 'conv2_2': 7, 'conv3_4': 16, 'conv4_4': 25, 'conv5_4': 34}
    expect = sum(w * (manual_vgg19(x, sd, idx[k]) - manual_vgg19(gt, sd, idx[k])).abs().mean()
                 for k, w in LDL_LAYERS.items())
    torch.testing.assert_close(percep, expect, rtol=1e-4, atol=1e-6)
    gx, = torch.autograd.grad(percep, x)
    assert gx.abs().sum() > 0


def test_perceptual_style_and_criteria():
    torch.manual_seed(0)
    layers = {'relu1_1': 1.0, 'conv2_1': 0.5}
    x, gt = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loss = PerceptualLoss(layers, weights='random', perceptual_weight=0., style_weight=2.)
    percep, style = loss(x, gt)
    assert percep is None
    sd = loss.vgg.state_dict()

    def gram(f):
        b, c, h, w = f.shape
        f = f.reshape(b, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)

    fx = {'relu1_1': manual_vgg19(x, sd, 1), 'conv2_1': manual_vgg19(x, sd, 5)}
    fg = {'relu1_1': manual_vgg19(gt, sd, 1), 'conv2_1': manual_vgg19(gt, sd, 5)}
    expect = 2 * sum(w * (gram(fx[k]) - gram(fg[k])).abs().mean() for k, w in layers.items())
    torch.testing.assert_close(style, expect, rtol=1e-4, atol=1e-7)

    fro = PerceptualLoss(layers, weights='random', criterion='fro')
    fro.vgg.load_state_dict(sd)
    expect_fro = sum(w * torch.sqrt(((fx[k] - fg[k]) ** 2).sum()) for k, w in layers.items())
    torch.testing.assert_close(fro(x, gt)[0], expect_fro, rtol=1e-4, atol=1e-6)
    l2 = PerceptualLoss(layers, weights='random', criterion='l2')
    l2.vgg.load_state_dict(sd)
    expect_l2 = sum(w * ((fx[k] - fg[k]) ** 2).mean() for k, w in layers.items())
    torch.testing.assert_close(l2(x, gt)[0], expect_l2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match='l1, l2, fro'):
        PerceptualLoss(layers, weights='random', criterion='l3')
