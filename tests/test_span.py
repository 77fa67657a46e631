"""SPAN (deploy form): key layout, checkpoint loading, an independent reference forward, and real-photo PSNR."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from desra.archs.checkpoint_io import load_network_weights
from desra.archs.span_arch import SPAN
from desra.errors import CheckpointError, ConfigError
from desra.metrics.psnr_ssim import calculate_psnr
from desra.registry import ARCH_REGISTRY

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
WEIGHTS = SHARED / 'weights'
PHOTOS = SHARED / 'data' / 'photos'
MEAN = (0.4488, 0.4371, 0.4040)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def expected_keys(c: int, upscale: int = 4, in_ch: int = 3, out_ch: int = 3) -> dict[str, tuple]:
    """Key -> shape of the official deploy checkpoint layout, written out from the README, not from the module."""
    keys = {'conv_1.eval_conv.weight': (c, in_ch, 3, 3), 'conv_1.eval_conv.bias': (c,)}
    for b in range(1, 7):
        for j in range(1, 4):
            keys[f'block_{b}.c{j}_r.eval_conv.weight'] = (c, c, 3, 3)
            keys[f'block_{b}.c{j}_r.eval_conv.bias'] = (c,)
    keys.update({'conv_2.eval_conv.weight': (c, c, 3, 3), 'conv_2.eval_conv.bias': (c,),
                 'conv_cat.weight': (c, 4 * c, 1, 1), 'conv_cat.bias': (c,),
                 'upsampler.0.weight': (out_ch * upscale ** 2, c, 3, 3), 'upsampler.0.bias': (out_ch * upscale ** 2,)})
    return keys


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, upscale: int = 4,
                      mean=MEAN, img_range: float = 255.0, post_silu_o1: bool = True) -> torch.Tensor:
    """SPAN written directly from the README's formula with plain F.conv2d on the state-dict tensors.

    ``post_silu_o1=False`` concatenates block_6's first conv output *before* its SiLU (a plausible bug).
    """
    def c3(name, t):
        return F.conv2d(t, sd[f'{name}.weight'], sd[f'{name}.bias'], padding=1)

    x = (x - torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)) * img_range
    f0 = c3('conv_1.eval_conv', x)
    u, outs, first_act = f0, [], None
    for b in range(1, 7):
        pre = c3(f'block_{b}.c1_r.eval_conv', u)
        o1 = F.silu(pre)
        o2 = F.silu(c3(f'block_{b}.c2_r.eval_conv', o1))
        o3 = c3(f'block_{b}.c3_r.eval_conv', o2)
        u = (o3 + u) * (torch.sigmoid(o3) - 0.5)
        outs.append(u)
        first_act = o1 if post_silu_o1 else pre
    cat = torch.cat([f0, c3('conv_2.eval_conv', outs[-1]), outs[0], first_act], 1)
    feat = F.conv2d(cat, sd['conv_cat.weight'], sd['conv_cat.bias'])
    return F.pixel_shuffle(c3('upsampler.0', feat), upscale)


def weights_path(c: int) -> Path:
    p = WEIGHTS / f'spanx4_ch{c}.safetensors'
    if not p.is_file():
        pytest.skip(f'{p} not present')
    return p


def read_rgb01(path: Path) -> torch.Tensor:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return torch.from_numpy(img[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def to_bgr_uint8(y: torch.Tensor) -> np.ndarray:
    """Same post-processing as shared/data/photos/MSE-SR: clamp to [0,1], round to uint8."""
    arr = y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
    return np.round(arr).astype(np.uint8)[:, :, ::-1]


@pytest.fixture(scope='module')
def span48():
    net = SPAN(3, 3, feature_channels=48, upscale=4).eval()
    assert load_network_weights(net, weights_path(48), param_key=None) == ([], [])
    return net


# ---------------------------------------------------------------- structure (no files needed)

@pytest.mark.parametrize('c,count', [(48, 426_288), (52, 498_208)])
def test_key_layout_and_param_count(c, count):
    net = SPAN(3, 3, feature_channels=c, upscale=4)
    sd = net.state_dict()
    exp = expected_keys(c)
    assert list(sd) == list(exp)  # also: 'mean' is a non-persistent buffer, not in the state dict
    assert {k: tuple(v.shape) for k, v in sd.items()} == exp
    assert n_params(net) == count
    assert torch.allclose(net.mean.flatten(), torch.tensor(MEAN))


def test_registry_build_and_options():
    net = ARCH_REGISTRY.build({'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3, 'feature_channels': 8,
                               'upscale': 2}, key_path='network_g')
    assert isinstance(net, SPAN) and net.scale == 2 and net.mod_pad == 1
    with torch.no_grad():
        assert net(torch.rand(1, 3, 7, 5)).shape == (1, 3, 14, 10)  # odd sizes are fine
    nb = SPAN(3, 3, feature_channels=8, bias=False)
    assert 'block_1.c1_r.eval_conv.bias' not in nb.state_dict() and 'conv_1.eval_conv.bias' in nb.state_dict()
    one = SPAN(1, 1, feature_channels=8, rgb_mean=None)
    assert one.mean.shape == (1, 1, 1, 1) and float(one.mean) == 0.0
    with pytest.raises(ConfigError, match='network_g: SPAN: rgb_mean has 3 values but num_in_ch is 1'):
        ARCH_REGISTRY.build({'type': 'SPAN', 'num_in_ch': 1, 'num_out_ch': 1}, key_path='network_g')
    with pytest.raises(ConfigError, match='upscale must be a positive integer'):
        ARCH_REGISTRY.build({'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3, 'upscale': 0}, key_path='network_g')


def test_module_matches_independent_reference_forward():
    torch.manual_seed(0)
    net = SPAN(3, 3, feature_channels=16, upscale=3).eval()
    with torch.no_grad():  # default init is tiny; scale weights up so every branch matters
        for p in net.parameters():
            p.mul_(3.0)
    x = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        y = net(x)
        ref = reference_forward(net.state_dict(), x, upscale=3)
    assert y.shape == (2, 3, 33, 27)
    assert y.std() > 1e-2
    assert torch.allclose(y, ref, atol=1e-5, rtol=0)
    # the comparison is sensitive: taking block_6's o1 before the SiLU gives a clearly different result
    with torch.no_grad():
        wrong = reference_forward(net.state_dict(), x, upscale=3, post_silu_o1=False)
    assert (wrong - y).abs().max() > 1e-3


def test_mismatch_in_memory_lists_shapes():
    sd = SPAN(3, 3, feature_channels=8, upscale=4).state_dict()
    with pytest.raises(CheckpointError, match=r'2 shape mismatch\(es\): .*upsampler\.0\.weight \(file \[48, 8, 3, 3\] '
                                              r'vs network \[12, 8, 3, 3\]\)'):
        load_network_weights(SPAN(3, 3, feature_channels=8, upscale=2), sd, param_key=None)


# ---------------------------------------------------------------- released checkpoints

@pytest.mark.parametrize('c,count', [(48, 426_288), (52, 498_208)])
@pytest.mark.parametrize('param_key', [None, 'params'])
def test_released_checkpoint_strict_load(c, count, param_key):
    from safetensors.torch import load_file
    path = weights_path(c)
    file_sd = load_file(str(path))
    net = SPAN(3, 3, feature_channels=c, upscale=4).eval()
    assert load_network_weights(net, path, param_key=param_key, strict=True) == ([], [])
    own = net.state_dict()
    assert sorted(own) == sorted(file_sd)
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in file_sd.items()}
    assert all(torch.equal(own[k], file_sd[k]) for k in own)
    assert n_params(net) == count
    with torch.no_grad():
        assert net(torch.rand(1, 3, 10, 12)).shape == (1, 3, 40, 48)


def test_released_checkpoint_matches_reference_forward(span48):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        y = span48(x)
        ref = reference_forward(span48.state_dict(), x)
    assert torch.allclose(y, ref, atol=1e-5, rtol=0)


def test_wrong_options_give_checkpoint_error_listing_shapes():
    path = weights_path(48)
    with pytest.raises(CheckpointError) as e:
        load_network_weights(SPAN(3, 3, feature_channels=48, upscale=2), path, param_key=None)
    msg = str(e.value)
    assert 'spanx4_ch48.safetensors' in msg and 'SPAN' in msg
    assert '2 shape mismatch(es): upsampler.0.bias (file [48] vs network [12]), ' \
           'upsampler.0.weight (file [48, 48, 3, 3] vs network [12, 48, 3, 3])' in msg
    with pytest.raises(CheckpointError) as e:
        load_network_weights(SPAN(3, 3, feature_channels=52, upscale=4), path, param_key=None)
    msg = str(e.value)
    # 44 tensors, all but upsampler.0.bias ([48] in both) differ; the list is cut at 10 with a count
    assert '43 shape mismatch(es)' in msg
    assert 'block_1.c1_r.eval_conv.bias (file [48] vs network [52])' in msg
    assert '(33 more)' in msg


def test_butterfly_psnr_and_shipped_mse_sr(span48):
    lr_p, hr_p, mse_p = (PHOTOS / d / 'butterfly.png' for d in ('LR', 'HR', 'MSE-SR'))
    for p in (lr_p, hr_p, mse_p):
        if not p.is_file():
            pytest.skip(f'{p} not present')
    lr = read_rgb01(lr_p)
    assert lr.shape == (1, 3, 64, 64)
    with torch.no_grad():
        sr = to_bgr_uint8(span48(lr))
    hr = cv2.imread(str(hr_p), cv2.IMREAD_COLOR)
    assert sr.shape == hr.shape == (256, 256, 3)
    psnr_y = calculate_psnr(sr, hr, crop_border=4, test_y_channel=True)
    assert psnr_y == pytest.approx(28.61, abs=0.05)  # README table; bicubic re-upscaling gives 22.10 dB
    # MSE-SR/butterfly.png was made by this model in PyTorch CPU fp32 and matches bit-exactly here. fp32
    # rounding differs by ~1e-6 between BLAS builds / thread counts, and a few dozen outputs lie within
    # 1e-4 (of 255) of a .5 boundary, so allow a handful of values off by one level.
    shipped = cv2.imread(str(mse_p), cv2.IMREAD_COLOR)
    diff = np.abs(sr.astype(np.int16) - shipped.astype(np.int16))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 50, f'{np.count_nonzero(diff)} of {diff.size} values differ'
