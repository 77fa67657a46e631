"""Architectures, checkpoint loading and tiled inference."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import CountCalls
from desra.archs.arch_util import default_init_weights, make_layer
from desra.archs.checkpoint_io import load_network_weights
from desra.archs.discriminator_arch import UNetDiscriminatorSN, VGGStyleDiscriminator
from desra.archs.rrdbnet_arch import RRDBNet
from desra.errors import CheckpointError, ConfigError
from desra.inference import tiled_forward
from desra.registry import ARCH_REGISTRY

REPO = Path(__file__).resolve().parents[1]
REALESRGAN = REPO.parent / 'shared' / 'weights' / 'RealESRGAN_x4plus.safetensors'


def tiny_rrdb(scale=4, seed=0):
    torch.manual_seed(seed)
    return RRDBNet(3, 3, scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- RRDBNet

@pytest.fixture(scope='module')
def full_rrdb():
    torch.manual_seed(0)
    return RRDBNet(3, 3, 4, 64, 23, 32).eval()


@pytest.fixture(scope='module')
def realesrgan_sd():
    if not REALESRGAN.is_file():
        pytest.skip(f'{REALESRGAN} not present')
    from safetensors.torch import load_file
    return load_file(str(REALESRGAN))


def test_rrdbnet_param_count_and_registry(full_rrdb):
    assert n_params(full_rrdb) == 16_697_987
    assert ARCH_REGISTRY.get('RRDBNet') is RRDBNet
    net = ARCH_REGISTRY.build({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8,
                               'num_block': 2, 'num_grow_ch': 4}, key_path='network_g')
    assert isinstance(net, RRDBNet) and len(net.body) == 2


def test_rrdbnet_key_layout(full_rrdb):
    sd = full_rrdb.state_dict()
    assert len(sd) == 702
    for k in ('conv_first.weight', 'body.22.rdb3.conv5.bias', 'conv_body.weight', 'conv_up1.weight',
              'conv_up2.bias', 'conv_hr.weight', 'conv_last.bias'):
        assert k in sd, k
    assert sd['body.0.rdb1.conv5.weight'].shape == (64, 64 + 4 * 32, 3, 3)
    assert sd['conv_last.weight'].shape == (3, 64, 3, 3)


def test_rrdbnet_keys_match_release(full_rrdb, realesrgan_sd):
    own = full_rrdb.state_dict()
    assert sorted(own) == sorted(realesrgan_sd)
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in realesrgan_sd.items())


def _gradient_image(h=16, w=16):
    yy = torch.linspace(0.2, 0.8, h).view(h, 1).expand(h, w)
    xx = torch.linspace(0.2, 0.8, w).view(1, w).expand(h, w)
    return torch.stack([yy, xx, 0.5 * (yy + xx)]).unsqueeze(0)


def test_realesrgan_loads_and_is_sane(full_rrdb, realesrgan_sd, tmp_path):
    net = full_rrdb
    assert load_network_weights(net, REALESRGAN) == ([], [])
    lq = _gradient_image()
    with torch.no_grad():
        out = net(lq)
    assert out.shape == (1, 3, 64, 64)
    ref = F.interpolate(lq, scale_factor=4, mode='bicubic', align_corners=False)
    # The released model reproduces a smooth gradient; random weights are nowhere near (checked below).
    assert (out - ref).abs().mean().item() < 0.05

    # The same weights in BasicSR's wrapped .pth layouts.
    for wrapper in ('params_ema', 'params'):
        p = tmp_path / f'{wrapper}.pth'
        torch.save({wrapper: realesrgan_sd}, p)
        torch.manual_seed(1)
        fresh = RRDBNet(3, 3, 4, 64, 23, 32).eval()
        assert load_network_weights(fresh, p, param_key='params_ema') == ([], [])
        assert torch.equal(fresh.conv_last.weight, realesrgan_sd['conv_last.weight'].float())
        assert torch.equal(fresh.body[22].rdb3.conv5.bias, realesrgan_sd['body.22.rdb3.conv5.bias'])


def test_random_rrdbnet_fails_sanity_check(full_rrdb, realesrgan_sd):
    # Guards the threshold above: it must separate trained from untrained weights.
    torch.manual_seed(3)
    net = RRDBNet(3, 3, 4, 64, 23, 32).eval()
    lq = _gradient_image()
    with torch.no_grad():
        out = net(lq)
    ref = F.interpolate(lq, scale_factor=4, mode='bicubic', align_corners=False)
    assert (out - ref).abs().mean().item() > 0.05


@pytest.mark.parametrize('scale,in_ch', [(1, 48), (2, 12), (4, 3)])
def test_rrdbnet_scales(scale, in_ch):
    net = tiny_rrdb(scale)
    assert net.conv_first.weight.shape[1] == in_ch
    x = torch.rand(2, 3, 12, 8)
    with torch.no_grad():
        assert net(x).shape == (2, 3, 12 * scale, 8 * scale)


def test_rrdbnet_bad_scale_and_odd_size():
    with pytest.raises(ConfigError, match='scale must be 1, 2 or 4'):
        RRDBNet(3, 3, scale=3)
    with pytest.raises(ValueError, match='divisible by 4'):
        tiny_rrdb(1)(torch.rand(1, 3, 10, 12))


def test_init_helpers():
    torch.manual_seed(0)
    convs = [nn.Conv2d(64, 64, 3, padding=1) for _ in range(2)]
    default_init_weights(convs, scale=0.1, bias_fill=0.5)
    # Kaiming normal std for fan_in 576 is sqrt(2/576) ~ 0.059; scaled by 0.1 -> ~0.0059.
    std = convs[0].weight.std().item()
    assert 0.004 < std < 0.008
    assert torch.all(convs[1].bias == 0.5)
    seq = make_layer(nn.Linear, 3, in_features=2, out_features=2)
    assert isinstance(seq, nn.Sequential) and len(seq) == 3 and seq[0] is not seq[1]
    assert '2.weight' in seq.state_dict()


# ---------------------------------------------------------------- discriminators

def _unet_expected(nf=64, in_ch=3):
    chans = {1: (nf, 2 * nf, 4), 2: (2 * nf, 4 * nf, 4), 3: (4 * nf, 8 * nf, 4), 4: (8 * nf, 4 * nf, 3),
             5: (4 * nf, 2 * nf, 3), 6: (2 * nf, nf, 3), 7: (nf, nf, 3), 8: (nf, nf, 3)}
    exp = [('conv0.weight', (nf, in_ch, 3, 3)), ('conv0.bias', (nf,))]
    for i, (ci, co, k) in chans.items():
        exp += [(f'conv{i}.weight_orig', (co, ci, k, k)), (f'conv{i}.weight_u', (co,)),
                (f'conv{i}.weight_v', (ci * k * k,))]
    exp += [('conv9.weight', (1, nf, 3, 3)), ('conv9.bias', (1,))]
    return exp


def test_unet_discriminator_keys():
    sd = UNetDiscriminatorSN(3, 64, True).state_dict()
    expected = _unet_expected()
    assert [k for k, _ in expected][:5] == ['conv0.weight', 'conv0.bias', 'conv1.weight_orig',
                                            'conv1.weight_u', 'conv1.weight_v']
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert sd['conv1.weight_orig'].shape == (128, 64, 4, 4)
    assert sd['conv4.weight_orig'].shape == (256, 512, 3, 3)


def test_unet_discriminator_roundtrip_and_shape(tmp_path, caplog):
    torch.manual_seed(0)
    net = UNetDiscriminatorSN(3, 16, skip_connection=True)
    x = torch.rand(2, 3, 32, 24)
    net(x)  # a training-mode pass runs a power iteration, so weight_u differs from a fresh net's
    net.eval()
    p = tmp_path / 'netD.pth'
    torch.save({'params': net.state_dict()}, p)
    torch.manual_seed(1)
    other = UNetDiscriminatorSN(3, 16, skip_connection=True).eval()
    with caplog.at_level(logging.WARNING):
        assert load_network_weights(other, p) == ([], [])  # default param_key params_ema -> falls back
    assert "no 'params_ema' entry" in caplog.text
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 1, 32, 24)
        assert torch.allclose(other(x), out, atol=1e-6)
    with pytest.raises(ValueError, match='divisible by 8'):
        net(torch.rand(1, 3, 20, 24))


def test_unet_without_skip_differs():
    torch.manual_seed(0)
    a = UNetDiscriminatorSN(3, 8, skip_connection=True).eval()
    b = UNetDiscriminatorSN(3, 8, skip_connection=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize('size', [128, 256])
def test_vgg_discriminator(size):
    torch.manual_seed(0)
    net = VGGStyleDiscriminator(3, 64, input_size=size).eval()
    sd = net.state_dict()
    assert sd['conv0_0.weight'].shape == (64, 3, 3, 3) and 'conv0_0.bias' in sd
    assert 'conv0_1.bias' not in sd and sd['conv0_1.weight'].shape == (64, 64, 4, 4)
    assert sd['conv1_0.weight'].shape == (128, 64, 3, 3)
    assert sd['conv3_1.weight'].shape == (512, 512, 4, 4)
    assert sd['bn4_1.running_mean'].shape == (512,)
    assert sd['linear1.weight'].shape == (100, 8192)
    assert sd['linear2.weight'].shape == (1, 100)
    assert ('conv5_0.weight' in sd) == (size == 256) and ('bn5_1.weight' in sd) == (size == 256)
    assert not [k for k in sd if k.startswith(('conv6', 'bn6', 'conv0_1.b'))]
    with torch.no_grad():
        assert net(torch.rand(2, 3, size, size)).shape == (2, 1)
        wrong = 256 if size == 128 else 128
        with pytest.raises(ValueError, match=f'expects input of shape B x C x {size} x {size}'):
            net(torch.rand(1, 3, wrong, wrong))


def test_vgg_discriminator_bad_input_size():
    with pytest.raises(ConfigError, match='input_size must be 128 or 256, got 192'):
        VGGStyleDiscriminator(3, 64, input_size=192)


# ---------------------------------------------------------------- checkpoint loading

def test_checkpoint_mismatch_message(tmp_path):
    net = tiny_rrdb()
    sd = dict(net.state_dict())
    sd['conv_firstx.weight'] = sd.pop('conv_first.weight')
    sd['conv_last.weight'] = torch.zeros(3, 9, 3, 3)
    p = tmp_path / 'bad_ckpt.pth'
    torch.save({'params_ema': sd}, p)
    with pytest.raises(CheckpointError) as ei:
        load_network_weights(net, p, key_path='path.pretrain_network_g')
    msg = str(ei.value)
    assert 'bad_ckpt.pth' in msg and 'path.pretrain_network_g' in msg
    assert '1 missing key(s)' in msg and 'conv_first.weight' in msg
    assert '1 unexpected key(s)' in msg and 'conv_firstx.weight' in msg
    assert 'conv_last.weight (file [3, 9, 3, 3] vs network [3, 8, 3, 3])' in msg


def test_checkpoint_message_truncated(tmp_path):
    net = tiny_rrdb()
    sd = {f'extra{i:02d}.weight': torch.zeros(1) for i in range(25)}
    sd.update(net.state_dict())
    p = tmp_path / 'many.pth'
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r'25 unexpected key\(s\).*extra09\.weight, \.\.\. \(15 more\)') as ei:
        load_network_weights(net, p)
    assert 'extra10.weight' not in str(ei.value)


def test_checkpoint_non_strict_loads_matching(tmp_path):
    src = tiny_rrdb(seed=1)
    dst = tiny_rrdb(seed=2)
    sd = {'module.' + k: v for k, v in src.state_dict().items()}  # DDP-saved keys
    sd.pop('module.conv_hr.bias')
    sd['module.conv_last.weight'] = torch.zeros(5, 8, 3, 3)
    sd['module.unused.weight'] = torch.zeros(2)
    before_last = dst.conv_last.weight.clone()
    missing, unexpected = load_network_weights(dst, {'params': sd}, param_key='params', strict=False)
    assert sorted(missing) == ['conv_hr.bias', 'conv_last.weight']
    assert unexpected == ['unused.weight']
    assert torch.equal(dst.conv_first.weight, src.conv_first.weight)
    assert torch.equal(dst.conv_last.weight, before_last)
    assert not torch.equal(dst.conv_hr.bias, src.conv_hr.bias)


def test_checkpoint_safetensors_and_errors(tmp_path):
    from safetensors.torch import save_file
    src, dst = tiny_rrdb(seed=1), tiny_rrdb(seed=2)
    p = tmp_path / 'tiny.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    assert load_network_weights(dst, str(p)) == ([], [])
    assert torch.equal(dst.conv_first.weight, src.conv_first.weight)

    with pytest.raises(CheckpointError, match='nope.pth'):
        load_network_weights(dst, tmp_path / 'nope.pth')
    bad = tmp_path / 'garbage.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*garbage.pth'):
        load_network_weights(dst, bad)
    torch.save({'optimizers': [1, 2], 'iter': 5}, tmp_path / 'state.pth')
    with pytest.raises(CheckpointError, match="no state dict found.*top-level keys: optimizers, iter"):
        load_network_weights(dst, tmp_path / 'state.pth')


def test_vgg_disc_checkpoint_without_num_batches_tracked():
    src, dst = VGGStyleDiscriminator(3, 8), VGGStyleDiscriminator(3, 8)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert load_network_weights(dst, sd) == ([], [])
    assert torch.equal(dst.bn2_0.weight, src.bn2_0.weight)


# ---------------------------------------------------------------- tiled inference

class ShuffleNet(nn.Module):
    """Three 3x3 convs + pixel shuffle: receptive radius 3 input pixels (exact tiling with tile_pad >= 3)."""

    def __init__(self, scale=2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(8, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize('tile,pad,batch', [(16, 3, 1), (10, 4, 3), (7, 3, 100), (64, 3, 1)])
def test_tiled_equals_whole_exact(tile, pad, batch):
    torch.manual_seed(0)
    net = ShuffleNet(2).eval()
    x = torch.rand(2, 3, 37, 29)
    with torch.no_grad():
        ref = net(x)
    out = tiled_forward(net, x, scale=2, tile_size=tile, tile_pad=pad, batch_tiles=batch)
    assert out.shape == (2, 3, 74, 58)
    assert (out - ref).abs().max().item() < 1e-5
    # Not enough context: seams must show up, proving the test can fail.
    if tile < 37:
        bad = tiled_forward(net, x, scale=2, tile_size=tile, tile_pad=1)
        assert (bad - ref).abs().max().item() > 1e-4


def test_tiled_keeps_dtype_and_3d_input():
    torch.manual_seed(0)
    net = ShuffleNet(2).eval()
    x = torch.rand(3, 13, 11, dtype=torch.float64)
    out = tiled_forward(net, x, scale=2, tile_size=5, tile_pad=3)
    assert out.dtype == torch.float64 and out.shape == (3, 26, 22)
    with torch.no_grad():
        ref = net(x.float().unsqueeze(0))[0].double()
    assert (out - ref).abs().max().item() < 1e-5
    assert not out.requires_grad


def test_tiled_rrdb():
    net = CountCalls(tiny_rrdb(4))
    x = torch.rand(1, 3, 70, 61)
    with torch.no_grad():
        ref = net(x)
    net.shapes.clear()
    # Receptive radius of a 1-block RRDBNet(scale 4) is 19 input pixels: 20 of context makes tiling exact.
    out = tiled_forward(net, x, scale=4, tile_size=12, tile_pad=20, batch_tiles=2)
    assert out.shape == ref.shape and (out - ref).abs().max().item() < 1e-5
    # Windows of 12 + 2 * 20 = 52 spread evenly with overlaps >= 2 * 20 + 6 (blend capped at tile / 2):
    # 4 x 3 windows, 2 per call.
    assert len(net.shapes) == 6 and net.shapes[0] == (2, 3, 52, 52)
    approx = tiled_forward(net, x, scale=4, tile_size=12, tile_pad=4)
    assert 0 < (approx - ref).abs().mean().item() < 1e-3


class UnshuffleNet(nn.Module):
    """Needs H, W divisible by 4 (like RRDBNet scale 1); receptive radius 3 cells of 4 px in the input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(48, 16, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(16, 48, 3, 1, 1), nn.PixelShuffle(4), nn.Conv2d(3, 3, 3, 1, 1))

    def forward(self, x):
        return self.body(x)


def test_tiled_mod_pad_exact():
    torch.manual_seed(0)
    net = CountCalls(UnshuffleNet().eval())
    x = torch.rand(2, 3, 83, 71)  # not a multiple of 4
    with pytest.raises(RuntimeError):
        net(x)
    whole = tiled_forward(net, x, scale=1, tile_size=0, mod_pad=4)
    assert whole.shape == (2, 3, 83, 71)
    with torch.no_grad():
        ref = net(F.pad(x, (0, 1, 0, 1), mode='reflect'))[..., :83, :71]
    assert torch.allclose(whole, ref, atol=1e-6)
    net.shapes.clear()
    # tile 10 is rounded up to 12; windows must start on the 4-pixel grid for exactness.
    tiled = tiled_forward(net, x, scale=1, tile_size=10, tile_pad=13, mod_pad=4, batch_tiles=5)
    assert all(s[-1] % 4 == 0 and s[-2] % 4 == 0 for s in net.shapes) and len(net.shapes) > 1
    assert (tiled - whole).abs().max().item() < 1e-5


@pytest.mark.parametrize('scale,mod', [(2, 2), (1, 4)])
def test_tiled_mod_pad_rrdb(scale, mod):
    net = tiny_rrdb(scale)
    x = torch.rand(1, 3, 83, 71)  # odd: RRDBNet(scale 1/2) cannot take it directly
    whole = tiled_forward(net, x, scale=scale, tile_size=0, mod_pad=mod)
    assert whole.shape == (1, 3, 83 * scale, 71 * scale)
    with torch.no_grad():
        xp = F.pad(x, (0, (-71) % mod, 0, (-83) % mod), mode='reflect')
        ref = net(xp)[..., :83 * scale, :71 * scale]
    assert torch.allclose(whole, ref, atol=1e-6)
    # The receptive radius is ~19 cells of `mod` pixels; 4 cells of context is already close at init.
    tiled = tiled_forward(net, x, scale=scale, tile_size=24, tile_pad=4 * mod, mod_pad=mod, batch_tiles=4)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean().item() < 1e-4


def test_tiled_small_image_and_bad_args():
    torch.manual_seed(0)
    net = ShuffleNet(2).eval()
    x = torch.rand(1, 3, 5, 3)
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(tiled_forward(net, x, 2, tile_size=64), ref)
    assert torch.allclose(tiled_forward(net, x, 2, tile_size=2, tile_pad=3), ref, atol=1e-6)
    with pytest.raises(ValueError, match='does not match scale=4'):
        tiled_forward(net, x, 4)
    with pytest.raises(ValueError, match='tile_size >= 0'):
        tiled_forward(net, x, 2, tile_size=-1)
