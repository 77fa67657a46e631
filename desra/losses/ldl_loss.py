"""LDL artifact map and loss (Liang, Zeng & Zhang, "Details or Artifacts: A Locally Discriminative
Learning Approach to Realistic Image Super-Resolution", CVPR 2022, Sec. 3, Eq. 2-7).

The local variance is computed with separable window sums of R and R^2 (2(k-1) additions per pixel
and a few B x 1 x H x W buffers) instead of materialising every k x k window with ``unfold`` as the
released code does (k^2 = 49 values per pixel). Gradients flow through the map by default, as in
the released code, via a hand-written backward that also avoids per-window buffers.
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
    """``sum_c |a_c - b_c|`` as B x 1 x H x W, one channel at a time to keep a single temporary."""
    bsz, c, h, w = a.shape
    exact = a.dtype == b.dtype == dtype

    def diff(i, buf):
        if exact:
            return torch.sub(a[:, i:i + 1], b[:, i:i + 1], out=buf)
        # Subtract in ``dtype``: torch.sub on two half tensors would round the difference to half.
        return buf.copy_(a[:, i:i + 1]).sub_(b[:, i:i + 1])

    out = diff(0, torch.empty((bsz, 1, h, w), dtype=dtype, device=a.device)).abs_()
    if c > 1:
        tmp = torch.empty_like(out)
        for i in range(1, c):
            out += diff(i, tmp).abs_()
    return out


def _vsum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over k consecutive rows ('valid'): ... x H x W -> ... x (H - k + 1) x W."""
    h = x.shape[-2] - k + 1
    out = x[..., :h, :].clone()
    for i in range(1, k):
        out += x[..., i:i + h, :]
    return out


def _hsum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over k consecutive columns ('valid'): ... x H x W -> ... x H x (W - k + 1)."""
    w = x.shape[-1] - k + 1
    out = x[..., :w].clone()
    for j in range(1, k):
        out += x[..., j:j + w]
    return out


def _window_sum_adjoint(g: torch.Tensor, k: int) -> torch.Tensor:
    """Adjoint of ``_hsum(_vsum(., k), k)``: ... x H x W -> ... x (H + k - 1) x (W + k - 1).

    Entry q receives the sum of g over every output window that contains q (a 'full' k x k box sum).
    """
    *lead, h, w = g.shape
    tmp = g.new_zeros(*lead, h, w + k - 1)
    for j in range(k):
        tmp[..., j:j + w] += g
    out = g.new_zeros(*lead, h + k - 1, w + k - 1)
    for i in range(k):
        out[..., i:i + h, :] += tmp
    return out


def _reflect_pad_adjoint(g: torch.Tensor, r: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (r, r, r, r), mode='reflect')``: folds the border back onto the image.

    Written with slices rather than ``reflection_pad2d_backward``, whose CUDA kernel has no
    deterministic implementation.
    """
    if r == 0:
        return g.clone()
    h, w = g.shape[-2] - 2 * r, g.shape[-1] - 2 * r
    rows = g[..., r:r + h, :].clone()
    # padded row r - t mirrors image row t, padded row r + h - 1 + t mirrors image row h - 1 - t (t = 1..r)
    rows[..., 1:r + 1, :] += g[..., :r, :].flip(-2)
    rows[..., h - 1 - r:h - 1, :] += g[..., r + h:, :].flip(-2)
    out = rows[..., r:r + w].clone()
    out[..., 1:r + 1] += rows[..., :r].flip(-1)
    out[..., w - 1 - r:w - 1] += rows[..., r + w:].flip(-1)
    return out


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = torch.promote_types(dt, t.dtype)
    # Half precision loses the small variances the map is made of; float32 at least.
    return torch.promote_types(dt, torch.float32)


def _map_forward(img_gt, img_sr, img_ema, k):
    """The artifact map without autograd; also returns what the backward needs."""
    r, n = k // 2, k * k
    dt = _compute_dtype(img_gt, img_sr, img_ema)
    res = _abs_residual(img_gt, img_sr, dt)                                   # R_SR, Eq. 2
    mask = res < _abs_residual(img_gt, img_ema, dt)                           # R_SR < R_EMA, Eq. 6
    var_img = torch.var(res, dim=(1, 2, 3), correction=1)
    sigma = var_img.pow(0.2)                                                  # Eq. 4
    # Variance is shift-invariant; centring R first shrinks the cancellation in S2 - S1^2 / n.
    res -= res.mean(dim=(1, 2, 3), keepdim=True)
    pad = F.pad(res, (r, r, r, r), mode='reflect')
    del res
    s1 = _hsum(_vsum(pad, k), k)
    pad.square_()
    v = _vsum(pad, k)
    del pad  # freed before S2 is built: the peak holds at most three image-sized buffers
    s2 = _hsum(v, k)
    del v
    # Eq. 3 as (S2 - S1^2 / n) / (n - 1). The exact value (like torch.var in the released code) is
    # never negative, so a negative result is round-off of a flat window and is set to its true 0.
    local_var = s2.sub_(s1.square_().div_(n)).div_(n - 1).clamp_min_(0)
    weight = local_var.mul_(sigma.view(-1, 1, 1, 1)).masked_fill_(mask, 0)  # Eq. 5-6
    return weight, mask, var_img, sigma


class _LDLArtifactMap(torch.autograd.Function):
    """Artifact map with an analytic backward (no per-window buffers either way).

    With A = dL/dM (zero where masked), P the reflect-padded centred residual and S1 its window sums:
    dL/dP_q = 2 / (n - 1) * sum_{windows p containing q} A_p (P_q - S1_p / n), folded back through the
    reflect padding; plus the sigma path dL/dR_i = dL/dvar * 2 (R_i - mean R) / (N - 1) with
    dL/dvar = 0.2 * sum(dL/dW * W) / var (0 where var = 0, where the released code gives NaN).
    R_SR = sum_c |gt_c - sr_c| then gives dL/dsr_c = -sign(gt_c - sr_c) dL/dR (0 where equal, like
    autograd's abs). The EMA image only enters through the mask and gets no gradient.
    """

    @staticmethod
    def forward(ctx, img_sr, img_gt, img_ema, k):
        weight, mask, var_img, sigma = _map_forward(img_gt, img_sr, img_ema, k)
        ctx.k = k
        ctx.save_for_backward(img_sr, img_gt, weight, mask, var_img, sigma)
        return weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_w):
        img_sr, img_gt, weight, mask, var_img, sigma = ctx.saved_tensors
        need_sr, need_gt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_sr or need_gt):
            return None, None, None, None
        k = ctx.k
        r, n = k // 2, k * k
        bsz = weight.shape[0]
        npix = weight[0].numel()
        g = grad_w.to(weight.dtype).masked_fill(mask, 0)

        # Sigma path. sum(g * M) = sum(g * W) / sigma because W = sigma * M wherever g is not masked.
        gw = torch.bmm(g.reshape(bsz, 1, -1), weight.reshape(bsz, -1, 1)).reshape(bsz)
        dvar = torch.where(var_img > 0, 0.2 * gw / var_img.clamp_min(torch.finfo(var_img.dtype).tiny),
                           torch.zeros_like(gw))

        res = _abs_residual(img_gt, img_sr, weight.dtype)
        res -= res.mean(dim=(1, 2, 3), keepdim=True)
        a = g.mul_(sigma.view(-1, 1, 1, 1))  # dL/dM
        pad = F.pad(res, (r, r, r, r), mode='reflect')
        s1 = _hsum(_vsum(pad, k), k)
        t = s1.mul_(a).div_(n)  # A_p S1_p / n
        pad.mul_(_window_sum_adjoint(a, k))
        del a, g
        pad.sub_(_window_sum_adjoint(t, k)).mul_(2.0 / (n - 1))
        del t, s1
        grad_res = _reflect_pad_adjoint(pad, r)
        del pad
        grad_res.addcmul_(res, (dvar * (2.0 / (npix - 1))).view(-1, 1, 1, 1))
        del res

        sgn = torch.sub(img_gt, img_sr).sign_().mul_(grad_res)  # dL/dgt; dL/dsr is its negation
        grad_gt = sgn.to(img_gt.dtype) if need_gt else None  # may be ``sgn`` itself: no in-place below
        grad_sr = (sgn.neg_() if not need_gt else -sgn).to(img_sr.dtype) if need_sr else None
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

    M is computed as (S2 - S1^2 / n) / (n - 1), n = k^2, from window sums S1, S2 of R and R^2, with
    separable running sums; R is centred by its image mean first (the variance does not change) to
    limit cancellation. The released code materialises every window with ``unfold`` (k^2 values per
    pixel) and takes ``torch.var``; the two agree to floating-point round-off. Unlike ``torch.var``
    the sum formula can return tiny negative numbers on flat windows; these are set to 0, the exact
    value (a variance is never negative, so no value the released code can produce is changed).

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
