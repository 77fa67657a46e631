"""The CUDA path (marked ``cuda``: skipped without a GPU; ``scripts/gpu_check.sh`` runs them with ``-m cuda``).

Each compares the CUDA result with the CPU one (or an independent float64 reference) so that a device-specific
bug fails here rather than in a user's run."""
import copy
import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_gan_ldl_run

pytestmark = pytest.mark.cuda
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.device('cuda')


def _reference_map(gt, sr, ema, k=7):
    """LDL's map in float64 with ``unfold`` windows (the released definition)."""
    b, _, h, w = gt.shape
    r_sr = (gt - sr).abs().sum(1, keepdim=True)
    r_ema = (gt - ema).abs().sum(1, keepdim=True)
    local = torch.var(F.unfold(F.pad(r_sr, [k // 2] * 4, mode='reflect'), k), dim=1).view(b, 1, h, w)
    sigma = torch.var(r_sr, dim=(1, 2, 3), keepdim=True) ** 0.2
    return torch.where(r_sr < r_ema, torch.zeros_like(local), sigma * local)


def test_ldl_map_forward_and_gradient_on_cuda_match_float64_reference():
    from desra.losses.ldl_loss import ldl_artifact_map

    g = torch.Generator().manual_seed(0)
    gt, sr, ema = (torch.rand(3, 3, 40, 52, generator=g) for _ in range(3))
    sr64 = sr.double().requires_grad_()
    ref = _reference_map(gt.double(), sr64, ema.double())
    (ref * torch.linspace(0, 1, ref.numel(), dtype=torch.float64).view_as(ref)).sum().backward()
    sr_cuda = sr.to(CUDA).requires_grad_()
    ours = ldl_artifact_map(gt.to(CUDA), sr_cuda, ema.to(CUDA))
    weights = torch.linspace(0, 1, ours.numel(), device=CUDA).view_as(ours)
    (ours * weights).sum().backward()
    torch.testing.assert_close(ours.double().cpu(), ref.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sr_cuda.grad.double().cpu(), sr64.grad, rtol=1e-3, atol=1e-5)


def _tiny_losses(device, steps=2, **train):
    return tiny_gan_ldl_run(device, steps, **train)[0]


def test_gan_ldl_step_on_cuda_matches_cpu_in_fp32():
    cpu = _tiny_losses(torch.device('cpu'), channels_last=False, fused_optim=False)
    for speed in ({'channels_last': False, 'fused_optim': False}, {'channels_last': True, 'fused_optim': True}):
        cuda = _tiny_losses(CUDA, tf32=False, cudnn_benchmark=False, **speed)
        for a, b in zip(cuda, cpu):
            for k in a:
                assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(b[k])), (speed, k, a[k], b[k])


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_gan_ldl_step_with_amp_is_finite_and_close_to_fp32(amp, channels_last):
    fp32 = _tiny_losses(CUDA, tf32=False)
    half = _tiny_losses(CUDA, use_amp=True, amp_dtype=amp, channels_last=channels_last)
    for a, b in zip(half, fp32):
        for k in a:
            assert np.isfinite(a[k]), (k, a[k])
            assert abs(a[k] - b[k]) <= 0.05 * max(1.0, abs(b[k])), (k, a[k], b[k])


def test_compile_on_cuda_gives_the_same_losses():
    pytest.importorskip('triton')
    plain = _tiny_losses(CUDA, tf32=False, channels_last=False, fused_optim=False)
    compiled = _tiny_losses(CUDA, tf32=False, channels_last=False, fused_optim=False, compile=True)
    for a, b in zip(compiled, plain):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(b[k])), (k, a[k], b[k])


def test_tiled_inference_on_cuda_matches_cpu():
    from desra.archs.rrdbnet_arch import RRDBNet
    from desra.inference import tiled_forward

    torch.manual_seed(0)
    net = RRDBNet(3, 3, num_feat=16, num_block=2, num_grow_ch=8).eval()
    lq = torch.rand(1, 3, 70, 90)
    cpu = tiled_forward(net, lq, 4, tile_size=32, tile_pad=8)
    torch.backends.cudnn.allow_tf32 = False
    cuda = tiled_forward(copy.deepcopy(net).to(CUDA), lq.to(CUDA), 4, tile_size=32, tile_pad=8)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_desra_indicator_on_cuda_matches_cpu_masks():
    from desra.detection import clean_mask, texture_similarity

    rng = np.random.default_rng(0)
    mse = rng.integers(0, 256, (96, 120, 3)).astype(np.uint8)
    gan = np.clip(mse.astype(int) + rng.integers(-60, 60, mse.shape), 0, 255).astype(np.uint8)
    d_cpu = texture_similarity(mse, gan)
    t = [torch.from_numpy(a).permute(2, 0, 1)[None].float().to(CUDA) for a in (mse, gan)]
    d_cuda = texture_similarity(*t, backend='torch')[0, 0].cpu().numpy()
    np.testing.assert_allclose(d_cuda, d_cpu, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(clean_mask(d_cuda < 0.7, min_area=10), clean_mask(d_cpu < 0.7, min_area=10))
