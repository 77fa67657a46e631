"""Seamless tiled inference (desra.inference): window layout, blending weights, accuracy, tile_size 'auto'."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import CountCalls
from desra.archs.rrdbnet_arch import RRDBNet
from desra.archs.span_arch import SPAN
from desra.config import _TEST_SCHEMA, _TRAIN_SCHEMA, check_schema
from desra.errors import ConfigError
from desra.inference import (DEFAULT_TILE_PAD, auto_tile_size, axis_blend_weights, axis_windows,
                             estimate_forward_bytes, memory_budget, tiled_forward)
from desra.tile_options import tile_size_option


class Ones(nn.Module):
    """Output 1 everywhere: the tiled result is then the sum of the blending weights at every pixel."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.ones(x.shape[0], 3, x.shape[-2] * self.scale, x.shape[-1] * self.scale, dtype=x.dtype)


# ------------------------------------------------------------------------------------------------ layout
def test_axis_blend_weights_partition_of_unity_hand_built():
    starts, window, size, scale = [0, 10, 22], 16, 38, 3  # overlaps [10, 16) and [22, 26): 6 and 4 pixels
    w = axis_blend_weights(starts, window, size, scale, blend=4)
    assert w.shape == (3, size * scale) and w.dtype == torch.float64
    assert torch.allclose(w.sum(0), torch.ones(size * scale, dtype=torch.float64), atol=1e-12)
    assert (w >= 0).all() and (w <= 1).all()
    u = (torch.arange(size * scale) + 0.5) / scale
    for i, s in enumerate(starts):
        assert (w[i][(u < s) | (u >= s + window)] == 0).all()  # nothing outside its own window
    # Ramps 4 px wide centred in the overlaps (13 and 24): window 0 alone below 11, window 1 alone in [15, 22).
    assert (w[0][u < 11] == 1).all() and (w[1][(u > 15) & (u < 22)] == 1).all() and (w[2][u > 26] == 1).all()
    fade = w[1][(u >= 11) & (u <= 15)]
    assert (fade[1:] >= fade[:-1]).all() and 0 < fade[len(fade) // 2] < 1  # rises smoothly through 1/2
    # Output pixels 38 and 39 (centres 12.83 and 13.17) straddle the centre 13: symmetric raised cosine.
    assert w[1][38] < 0.5 < w[1][39] and abs(w[1][38] + w[1][39] - 1) < 1e-12
    # blend 0: a hard cut at the centre of each overlap; 0/1 weights, still a partition of unity.
    hard = axis_blend_weights(starts, window, size, scale, blend=0)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(0), torch.ones(size * scale).double())
    assert (hard[0][u < 13] == 1).all() and (hard[1][(u >= 13) & (u < 24)] == 1).all()


def test_axis_blend_weights_rejects_gaps():
    touching = axis_blend_weights([0, 16], 16, 32, 2)  # no overlap to fade in: a hard cut at the border
    assert torch.equal(touching, torch.tensor([[1.0] * 32 + [0.0] * 32, [0.0] * 32 + [1.0] * 32]).double())
    with pytest.raises(ValueError, match='without gaps'):
        axis_blend_weights([0, 17], 16, 33)  # a gap between the windows
    with pytest.raises(ValueError, match='without gaps'):
        axis_blend_weights([0, 10], 16, 30)  # the end is not covered


@pytest.mark.parametrize('size,window,overlap,mod', [(256, 164, 72, 1), (256, 192, 72, 1), (83 + 1, 40, 20, 4),
                                                     (1000, 148, 28, 1), (50, 60, 10, 1)])
def test_axis_windows(size, window, overlap, mod):
    starts = axis_windows(size, window, overlap, mod)
    if window >= size:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] + window == size and all(s % mod == 0 for s in starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(0 < g <= window - overlap for g in gaps)  # every neighbour overlap >= the minimum
    assert max(gaps) - min(gaps) <= mod  # evenly spread
    # the fewest windows: one window fewer would need a stride above the maximum
    assert len(starts) - 2 < (size - window) / (window - overlap) or len(starts) == 2


@pytest.mark.parametrize('tile,pad,blend,mod,batch', [(8, 3, 4, 1, 1), (12, 5, 8, 4, 3), (6, 0, 0, 2, 100),
                                                      (20, 2, 6, 1, 2)])
def test_blending_weights_sum_to_one_in_2d(tile, pad, blend, mod, batch):
    net = Ones(2)
    x = torch.rand(2, 3, 45, 38)
    out = tiled_forward(net, x, 2, tile_size=tile, tile_pad=pad, mod_pad=mod, blend=blend, batch_tiles=batch)
    assert out.shape == (2, 3, 90, 76)
    assert (out - 1).abs().max().item() < 1e-6


# ------------------------------------------------------------------------------------------------ accuracy
def tiny_rrdb(scale=4, blocks=2, seed=0):
    torch.manual_seed(seed)
    return RRDBNet(3, 3, scale=scale, num_feat=8, num_block=blocks, num_grow_ch=4).eval()


def tiny_span(seed=0):
    torch.manual_seed(seed)
    return SPAN(3, 3, feature_channels=8, upscale=4, img_range=1.0).eval()


@pytest.mark.parametrize('make', [tiny_rrdb, tiny_span], ids=['rrdb', 'span'])
def test_tiled_matches_whole_at_defaults(make):
    net = CountCalls(make())
    x = torch.rand(1, 3, 180, 160)
    with torch.no_grad():
        ref = net(x)
    net.shapes.clear()
    out = tiled_forward(net, x, 4, tile_size=40, batch_tiles=2)  # default tile_pad and blend: 3 x 3 windows
    window = 40 + 2 * DEFAULT_TILE_PAD
    assert net.shapes[0] == (2, 3, window, window) and len(net.shapes) == 5  # really tiled
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() < 1e-5 * scale
    # Without context and blending the seams show: the comparison above can fail.
    bad = tiled_forward(net, x, 4, tile_size=40, tile_pad=1, blend=0)
    assert (bad - ref).abs().max().item() > 1e-4 * scale


def test_cross_fade_is_continuous():
    """The weights change by at most the raised cosine's slope per output pixel: no step at a seam (blend 0: 1)."""
    starts, window, size, scale = [0, 20, 40], 30, 70, 4  # overlaps of 10 input pixels
    for blend in (4, 8, 10):
        w = axis_blend_weights(starts, window, size, scale, blend=blend)
        jump = (w[:, 1:] - w[:, :-1]).abs().max().item()
        assert 0.5 * torch.pi / (2 * blend * scale) < jump <= torch.pi / (2 * blend * scale) + 1e-12
    assert (axis_blend_weights(starts, window, size, scale, blend=0)[:, 1:].diff(dim=1).abs().max() == 1)


def test_tiled_mod_pad_and_dtype_device():
    torch.manual_seed(0)
    net = tiny_rrdb(scale=1, blocks=1)  # needs H, W divisible by 4
    x = torch.rand(1, 3, 83, 71, dtype=torch.float64)
    whole = tiled_forward(net, x, 1, tile_size=0, mod_pad=4)
    tiled = tiled_forward(net, x, 1, tile_size=12, tile_pad=40, blend=6, mod_pad=4, batch_tiles=3)
    assert tiled.dtype == torch.float64 and tiled.shape == (1, 3, 83, 71)
    assert (tiled - whole).abs().max().item() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_tiled_cuda_net_cpu_image():
    net = tiny_rrdb().cuda()
    x = torch.rand(1, 3, 90, 70)
    out = tiled_forward(net, x, 4, tile_size=24)
    assert out.device.type == 'cpu'
    ref = tiled_forward(net.cpu(), x, 4, tile_size=0)
    assert (out - ref).abs().max().item() < 1e-4


def test_bad_tile_size_values():
    net = Ones(2)
    x = torch.rand(1, 3, 8, 8)
    for bad in (-3, 'big', True, 2.5):
        with pytest.raises(ValueError, match="tile_size >= 0 or 'auto'"):
            tiled_forward(net, x, 2, tile_size=bad)


# ------------------------------------------------------------------------------------------------ memory / auto
def test_estimate_forward_bytes_counts_activations():
    conv = nn.Conv2d(3, 16, 3, 1, 1)
    # The only tensor a conv forward creates is its output: 16 channels * 4 bytes per input pixel.
    est = estimate_forward_bytes(conv, (2, 3, 40, 30))
    expected = 1.25 * 16 * 4 * 2 * 40 * 30 + 3 * 4 * 2 * 40 * 30
    assert abs(est - expected) <= 0.01 * expected
    net = tiny_rrdb()
    small, big = (estimate_forward_bytes(net, (1, 3, s, s)) for s in (50, 100))
    assert 3.5 < big / small < 4.5  # linear in pixels
    # x4 output alone: 3 channels * 16 pixels * 4 bytes per input pixel; the 4x-resolution features are more.
    assert small > 3 * 16 * 4 * 2500 * 2


def test_auto_untiled_when_it_fits_and_tiled_under_a_tiny_budget():
    net = CountCalls(tiny_rrdb())
    x = torch.rand(1, 3, 200, 180)
    assert memory_budget('cpu') > 0
    assert auto_tile_size(net, tuple(x.shape), 4) == 0  # a small image fits the default budget
    with torch.no_grad():
        ref = net(x)
    net.shapes.clear()
    out = tiled_forward(net, x, 4, tile_size='auto')
    assert torch.equal(out, ref)
    assert [s for s in net.shapes if s[-1] > 32] == [(1, 3, 200, 180)]  # one whole-image call (+ small probes)

    accumulator = 4 * 3 * 800 * 720  # float32 output of the whole image, on the same device
    budget = estimate_forward_bytes(net, (1, 3, 120, 120)) + accumulator  # room for 120 x 120 windows
    assert estimate_forward_bytes(net, (1, 3, 200, 180)) > budget
    tile = auto_tile_size(net, tuple(x.shape), 4, budget=budget)
    assert 120 - 2 * DEFAULT_TILE_PAD - 2 <= tile <= 120 - 2 * DEFAULT_TILE_PAD  # the largest windows that fit
    window = tile + 2 * DEFAULT_TILE_PAD
    net.shapes.clear()
    out = tiled_forward(net, x, 4, tile_size='auto', budget=budget)
    assert len(net.shapes) > 1 and all(s == (1, 3, window, window) for s in net.shapes)
    assert (out - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    with pytest.warns(RuntimeWarning, match='may not fit'):
        assert auto_tile_size(net, tuple(x.shape), 4, budget=1000) == 16


def test_probe_leaves_train_mode_state_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3, 1, 1)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    estimate_forward_bytes(net, (1, 3, 64, 64))
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


# ------------------------------------------------------------------------------------------------ options
def test_tile_size_option_values():
    assert tile_size_option('auto', 'val.tile_size') == 'auto'
    assert tile_size_option(128.0, 'val.tile_size') == 128 and tile_size_option(0, 'x') == 0
    for bad, shown in ((-3, '-3'), ('big', "'big'"), (1.5, '1.5'), (True, 'True (bool)')):
        with pytest.raises(ConfigError) as e:
            tile_size_option(bad, 'val.tile_size')
        assert str(e.value) == f"val.tile_size: expected an integer >= 0 or 'auto', got {shown}"


@pytest.mark.parametrize('schema', [_TRAIN_SCHEMA, _TEST_SCHEMA], ids=['train', 'test'])
def test_val_tile_size_schema(schema):
    val = schema.children['val']
    assert check_schema({'tile_size': 'auto', 'tile_pad': 16}, val, 'val')['tile_size'] == 'auto'
    with pytest.raises(ConfigError, match=r"^val.tile_size: expected an integer >= 0 or 'auto', got -3$"):
        check_schema({'tile_size': -3}, val, 'val')


def test_pipeline_tile_size_schemas():
    from desra.detection.pipeline import DETECT_SCHEMA
    from desra.pipelines.fuse import GENERATOR_MODEL

    model = {'name': 'G', 'network': {'type': 'RRDBNet'}, 'checkpoint': 'g.pth', 'tile': 'auto'}
    assert check_schema(dict(model), GENERATOR_MODEL, 'models[0]')['tile'] == 'auto'
    with pytest.raises(ConfigError, match=r"^models\[0\].tile: expected an integer >= 0 or 'auto', got 'x'$"):
        check_schema({**model, 'tile': 'x'}, GENERATOR_MODEL, 'models[0]')
    assert DETECT_SCHEMA.children['tile_size'].check('auto', 'tile_size') == 'auto'
    with pytest.raises(ConfigError, match=r"^tile_size: expected an integer >= 0 or 'auto', got -1$"):
        DETECT_SCHEMA.children['tile_size'].check(-1, 'tile_size')
