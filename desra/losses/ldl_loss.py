"""LDL artifact map and loss (Liang, Zeng & Zhang, "Details or Artifacts: A Locally Discriminative
Learning Approach to Realistic Image Super-Resolution", CVPR 2022, Sec. 3, Eq. 2-7).

The local variance comes from window sums S1, S2 of R and R^2 instead of materialising every k x k
window with ``unfold`` as the released code does (k^2 = 49 values per pixel). Both sums are taken at
once, on a two-channel [R, R^2] tensor, by two reductions over strided views (the k rows, then the k
columns of each window; :func:`_box_sum`): 2(k - 1) additions per pixel, no copy of the windows. The
whole map is 18 kernels, each over the whole batch; its peak is about seven B x 1 x H x W buffers beyond
the inputs (the released code: over 50). Gradients flow through the map by default, as in the released
code, via a hand-written backward of 13 such kernels (plus eight on the r-wide border strips), its
window sums done the same way. Between forward and backward it keeps the map, the mask, the padded
two-channel [R, R^2] and the window sums [S1, S2] (about six buffers); the backward adds at most about
six and a half more (the B x C x H x W gradient included).
Every kernel is deterministic, on CPU and CUDA.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from desra.losses.basic_loss import _check_reduction, weighted_reduce
from desra.registry import LOSS_REGISTRY

__all__ = ['ldl_artifact_map', 'LDLArtifactLoss']


# ------------------------------------------------------------------------------------ helpers

def _abs_residual(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sum_c |a_c - b_c|`` as B x 1 x H x W in ``dtype``: three kernels, one B x C x H x W temporary."""
    # The subtraction runs in the promoted dtype: converting ``a`` is enough for half inputs, whose
    # difference torch.sub would otherwise round to half.
    return torch.sub(a if a.dtype == dtype else a.to(dtype), b).abs_().sum(1, keepdim=True)


def _box_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over every k x k window ('valid'): ... x H x W -> ... x (H - k + 1) x (W - k + 1).

    Two reductions, over the rows then the columns of each window, each over a strided view
    (``Tensor.unfold``) that copies nothing: one kernel per direction, whatever k, with the one
    intermediate ... x (H - k + 1) x W. Each sum adds the k values themselves (accumulating in at least
    the input's precision), so it is as exact as k additions, with no running sum (cumsum) whose
    round-off would grow with the image size; the reductions are deterministic on every device.
    """
    return x.unfold(-2, k, 1).sum(-1).unfold(-1, k, 1).sum(-1)


def _reflect_fold_(g: torch.Tensor, r: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (r, r, r, r), mode='reflect')``, in place: adds the r-wide border of ``g``
    onto the pixels it mirrors and returns the interior (a view of ``g``), the gradient of x.

    Eight kernels on the border strips alone (B x r x W elements each; small enough to run on one
    thread, with no parallel region), deterministic on any device. Rows first, over the full padded
    width, then columns: the fold is separable, so the corners reach the right pixels.
    """
    if r == 0:
        return g
    h, w = g.shape[-2] - 2 * r, g.shape[-1] - 2 * r
    # padded row r - t mirrors image row t (padded row r + t), padded row r + h - 1 + t mirrors image row
    # h - 1 - t (t = 1..r); h > r keeps every source strip out of every destination strip.
    g[..., r + 1:2 * r + 1, :].add_(g[..., :r, :].flip(-2))
    g[..., h - 1:r + h - 1, :].add_(g[..., r + h:, :].flip(-2))
    rows = g[..., r:r + h, :]
    rows[..., r + 1:2 * r + 1].add_(rows[..., :r].flip(-1))
    rows[..., w - 1:r + w - 1].add_(rows[..., r + w:].flip(-1))
    return rows[..., r:r + w]


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = torch.promote_types(dt, t.dtype)
    # Half precision loses the small variances the map is made of; float32 at least.
    return torch.promote_types(dt, torch.float32)


def _map_forward(img_gt, img_sr, img_ema, k):
    """The artifact map without autograd; also returns what the backward needs.

    18 kernels, each over a whole B x 1 x H x W (or B x C x H x W, B x 2 x H x W) tensor.
    """
    r, n = k // 2, k * k
    dt = _compute_dtype(img_gt, img_sr, img_ema)
    res = _abs_residual(img_gt, img_sr, dt)                                   # R_SR, Eq. 2
    # Eq. 6 keeps W where R_SR >= R_EMA: keep is that mask as 0 / 1 in dt, applied by multiplying (on CPU
    # masked_fill_, or a multiply by a bool tensor, which converts it first, is several times slower)
    keep = torch.ge(res, _abs_residual(img_gt, img_ema, dt), out=torch.empty_like(res))
    mean = res.mean(dim=(1, 2, 3), keepdim=True)
    pad = F.pad(res, (r, r, r, r), mode='reflect')
    h, w = res.shape[-2:]
    del res
    # x = [P, P^2] as two channels, so that S1 and S2 come from the same two reductions, with P the
    # padded R centred by its image mean: the variance is shift-invariant, and centring shrinks the
    # cancellation in S2 - S1^2 / n.
    x = torch.empty((pad.shape[0], 2, *pad.shape[2:]), dtype=dt, device=pad.device)
    p = torch.sub(pad, mean, out=x[:, :1])
    del pad
    torch.square(p, out=x[:, 1:])
    # Eq. 4: the unbiased variance of R is the sum of the squares of the centred R (the interior of P^2)
    var_img = x[:, 1:, r:r + h, r:r + w].sum(dim=(1, 2, 3), keepdim=True).div_(h * w - 1)
    sigma = var_img.pow(0.2)
    s = _box_sum(x, k)                                                        # B x 2 x H x W
    s1, m = s[:, :1], s[:, 1:]
    # Eq. 3 as (S2 - S1^2 / n) / (n - 1), built in place of S2. The exact value (like torch.var in the
    # released code) is never negative, so a negative result is round-off of a flat window and is set to
    # its true 0. The final multiply writes a new (contiguous) tensor; S1 stays for the backward.
    m.addcmul_(s1, s1, value=-1.0 / n).clamp_min_(0).mul_(keep)
    weight = torch.mul(m, sigma / (n - 1))                                    # Eq. 5-6
    return weight, keep, var_img, sigma, p, s1


class _LDLArtifactMap(torch.autograd.Function):
    """Artifact map with an analytic backward (no per-window buffers either way).

    With A = dL/dM (zero where masked), P the reflect-padded centred residual and mu = S1 / n its window
    means: dL/dP_q = 2 / (n - 1) * sum_{windows p containing q} A_p (P_q - mu_p), folded back through the
    reflect padding; plus the sigma path dL/dR_i = dL/dvar * 2 (R_i - mean R) / (N - 1) with
    dL/dvar = 0.2 * sum(dL/dW * W) / var (0 where var = 0, where the released code gives NaN).
    R_SR = sum_c |gt_c - sr_c| then gives dL/dsr_c = -sign(gt_c - sr_c) dL/dR (0 where equal, like
    autograd's abs). The EMA image only enters through the mask and gets no gradient.

    The sums over windows containing q are one 'full' box sum of the two channels [A, A mu] (scaled,
    zero-padded by k - 1, then the same two reductions as the forward): 13 kernels over whole tensors
    in all, plus the fold of the padding (eight small ones).
    """

    @staticmethod
    def forward(ctx, img_sr, img_gt, img_ema, k):
        weight, keep, var_img, sigma, p, s1 = _map_forward(img_gt, img_sr, img_ema, k)
        ctx.k = k
        # p and s1 are views of the two-channel [P, P^2] and [S1, S2] buffers: both are held until the backward
        ctx.save_for_backward(img_sr, img_gt, weight, keep, var_img, sigma, p, s1)
        return weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w):
        img_sr, img_gt, weight, keep, var_img, sigma, p, s1 = ctx.saved_tensors
        need_sr, need_gt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_sr or need_gt):
            return None, None, None, None
        k = ctx.k
        r, n = k // 2, k * k
        bsz, _, h, w = weight.shape

        # Sigma path. sum(g * M) = sum(g * W) / sigma, g = dL/dW: W = sigma * M where not masked, 0 where
        # masked. (A reduction rather than bmm: with deterministic algorithms on, CUDA bmm raises unless
        # CUBLAS_WORKSPACE_CONFIG is set.)
        gw = torch.mul(grad_w, weight).sum(dim=(1, 2, 3), keepdim=True)
        dvar = torch.where(var_img > 0, 0.2 * gw / var_img.clamp_min(torch.finfo(var_img.dtype).tiny),
                           torch.zeros_like(gw))

        # With a = -2 / (n - 1) * A, A = sigma g = dL/dM (g zeroed where masked, by a multiply: the same as
        # masked_fill for finite gradients), dL/dP = V - P U for the 'full' box sums U = sum_{p containing q}
        # a_p and V = sum_{p containing q} a_p mu_p, mu = S1 / n. Both come from z = [a / n, a S1 / n],
        # zero-padded by k - 1: its box sums are U / n and V.
        z = weight.new_zeros(bsz, 2, h + 2 * (k - 1), w + 2 * (k - 1))
        za = z[:, :1, k - 1:k - 1 + h, k - 1:k - 1 + w]
        torch.mul(grad_w, keep, out=za).mul_(sigma * (-2.0 / ((n - 1) * n)))
        torch.mul(za, s1, out=z[:, 1:, k - 1:k - 1 + h, k - 1:k - 1 + w])
        uv = _box_sum(z, k)                                                   # B x 2 x (H + 2r) x (W + 2r)
        del z, za
        grad_res = _reflect_fold_(torch.addcmul(uv[:, 1:], p, uv[:, :1], value=-n), r)
        del uv
        # the centred residual R - mean R is the interior of P
        grad_res.addcmul_(p[..., r:r + h, r:r + w], dvar * (2.0 / (h * w - 1)))

        # dL/dsr = sign(sr - gt) dL/dR and dL/dgt = -dL/dsr
        if need_sr:
            grad_sr = torch.sub(img_sr, img_gt).sign_().mul_(grad_res)
            grad_gt = (-grad_sr).to(img_gt.dtype) if need_gt else None
            grad_sr = grad_sr.to(img_sr.dtype)
        else:
            grad_sr, grad_gt = None, torch.sub(img_gt, img_sr).sign_().mul_(grad_res).to(img_gt.dtype)
        return grad_sr, grad_gt, None, None


def ldl_artifact_map(img_gt: torch.Tensor, img_sr: torch.Tensor, img_ema: torch.Tensor, kernel_size: int = 7,
                     detach: bool = False) -> torch.Tensor:
    """LDL artifact map W (paper Eq. 2-7), the per-pixel weight of the artifact loss.

    With R_X = sum_c |I_HR - I_X| (Eq. 2), for each image of the batch:

    - M(i) = var(R_SR over the k x k window centred on pixel i), unbiased (Eq. 3); the border is
      reflect-padded by k // 2;
    - sigma = var(R_SR over the whole image)^(1/5), unbiased (Eq. 4);
    - W = sigma * M (Eq. 5), and W = 0 where R_SR < R_EMA (Eq. 6: only pixels where the live model is
      no better than its EMA are penalised); the loss is ||W * I_HR - W * I_SR||_1 (Eq. 7).

    M is computed as (S2 - S1^2 / n) / (n - 1), n = k^2, from the window sums S1, S2 of R and R^2
    (separable: two strided reductions give both); R is centred by its image mean first (the variance
    does not change) to limit cancellation. The released code materialises every window with
    ``unfold`` (k^2 values per pixel) and takes ``torch.var``; the two agree to floating-point
    round-off. Unlike ``torch.var`` the sum formula can return tiny negative numbers on flat windows;
    these are set to 0, the exact value (a variance is never negative, so no value the released code
    can produce is changed).

    Args:
        img_gt, img_sr, img_ema: B x C x H x W images in [0, 1] (HR ground truth, output of the
            trained generator, output of its EMA copy). H and W must exceed ``kernel_size // 2``.
        kernel_size: odd window size k (7 in LDL).
        detach: return the map without autograd history. By default, as in the released code, the map
            is differentiable w.r.t. ``img_sr`` (and ``img_gt``); ``img_ema`` only enters the mask and
            never receives a gradient.

    Returns:
        W, B x 1 x H x W, non-negative. Its scale follows the residuals: M <= (C)^2 / 4 * n / (n - 1)
        and sigma <= (C^2 / 4 * N / (N - 1))^(1/5) for N = H * W pixels; typical values are far below
        1. Float32 for half-precision inputs, otherwise the inputs' (promoted) dtype.
    """
    if not (img_gt.shape == img_sr.shape == img_ema.shape) or img_sr.dim() != 4:
        raise ValueError(f'ldl_artifact_map: expected three B x C x H x W images of one shape, got '
                         f'{tuple(img_gt.shape)}, {tuple(img_sr.shape)}, {tuple(img_ema.shape)}')
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f'ldl_artifact_map: kernel_size must be a positive odd number, got {kernel_size}')
    if min(img_sr.shape[-2:]) <= kernel_size // 2:
        raise ValueError(f'ldl_artifact_map: image {tuple(img_sr.shape[-2:])} too small for reflect padding '
                         f'by {kernel_size // 2} (kernel_size {kernel_size})')
    if not detach and torch.is_grad_enabled() and (img_sr.requires_grad or img_gt.requires_grad):
        return _LDLArtifactMap.apply(img_sr, img_gt, img_ema, kernel_size)
    with torch.no_grad():
        return _map_forward(img_gt, img_sr, img_ema, kernel_size)[0]


@LOSS_REGISTRY.register()
class LDLArtifactLoss(nn.Module):
    """LDL artifact loss ``loss_weight * L1(W * sr, W * gt)`` with W = :func:`ldl_artifact_map` (Eq. 7).

    ``forward(sr, gt, ema)``: B x C x H x W images in [0, 1]; ``ema`` is the EMA generator's output.
    ``detach_map=True`` stops gradients through W (the released code does not).
    """

    def __init__(self, loss_weight: float = 1.0, kernel_size: int = 7, detach_map: bool = False,
                 reduction: str = 'mean'):
        super().__init__()
        self.loss_weight = loss_weight
        self.kernel_size = kernel_size
        self.detach_map = detach_map
        self.reduction = _check_reduction(reduction)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
        w = ldl_artifact_map(gt, sr, ema, self.kernel_size, detach=self.detach_map)
        loss = F.l1_loss(w * sr, w * gt, reduction='none')
        return self.loss_weight * weighted_reduce(loss, None, self.reduction)
