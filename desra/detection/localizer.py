"""A learned artifact localiser at inference: a segmentation network (e.g. ``DeepLabV3Plus``) that maps one
restored image to a per-pixel artifact probability, with sliding windows for large images.

Input convention (the same as :class:`desra.data.artifact_mask_dataset.ArtifactMaskDataset` gives in training):
RGB in [0, 1], B x 3 x H x W; a localiser trained with MSE-SR channels takes the 6-channel concatenation
``[restored RGB, MSE-SR RGB]`` (its ``in_channels`` says which). Output: one logit channel; the probability is its
sigmoid.

Sliding windows (:func:`predict_probability`): the image is covered by ``tile`` x ``tile`` windows whose corners
are ``tile - overlap`` apart, the last one flush with the border; each window is reflect-padded to a multiple of
``divisor`` (the network's output stride constraint), run, cropped back, and the window probabilities are
blended with a weight that is 0 on the outer ``overlap // 4`` pixels of an inner edge (those pixels see no context
on one side, and the neighbouring window covers them), then ramps linearly up to 1 at ``overlap`` pixels inside
(edges on the image border keep weight 1), so there are no seams. Images no larger than ``tile`` are one window.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from desra.errors import DataError

__all__ = ['in_channels_of', 'load_localizer', 'localizer_input', 'predict_probability',
           'predict_probability_tensor']


def load_localizer(network_opt: dict, checkpoint: str, param_key: str = 'params_ema', device=None,
                   key_path: str = 'detector') -> torch.nn.Module:
    """Build ``network_opt`` (a registered arch, e.g. ``{type: DeepLabV3Plus, encoder_name: resnet18}``) and load
    ``checkpoint`` strictly (BasicSR format; ``params_ema`` falls back to ``params``); eval mode, on ``device``.

    A checkpoint of another architecture raises a one-line :class:`~desra.errors.CheckpointError` listing the
    missing and unexpected keys.
    """
    from desra.archs.checkpoint_io import load_network_weights
    from desra.models.base_model import build_network

    net = build_network(network_opt, f'{key_path}.network')
    load_network_weights(net, checkpoint, param_key=param_key, strict=True, key_path=f'{key_path}.checkpoint')
    return net.to(device or 'cpu').eval().requires_grad_(False)


def localizer_input(img: np.ndarray, mse: np.ndarray | None = None, in_channels: int = 3) -> torch.Tensor:
    """uint8-range BGR H x W x 3 image(s) -> the 1 x C x H x W float32 RGB [0, 1] input of a localiser.

    ``in_channels`` 6 needs ``mse`` (the MSE-SR image of the same size), appended after the image's channels.
    """
    def rgb(x):
        return torch.from_numpy(np.ascontiguousarray(x[..., ::-1], dtype=np.float32) / 255.0).permute(2, 0, 1)

    if in_channels == 6:
        if mse is None:
            raise DataError('this localiser was trained with MSE-SR channels (in_channels 6): give the MSE-SR '
                            'images too')
        if mse.shape != img.shape:
            raise DataError(f'MSE-SR image {mse.shape[1]}x{mse.shape[0]} and restored image '
                            f'{img.shape[1]}x{img.shape[0]} differ in size')
        return torch.cat([rgb(img), rgb(mse)]).unsqueeze(0)
    if in_channels != 3:
        raise DataError(f'unsupported localiser in_channels {in_channels} (expected 3, or 6 with MSE-SR)')
    return rgb(img).unsqueeze(0)


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weight of a window of length n. At an inner edge (one another window overlaps) the outer
    ``overlap // 4`` pixels get weight 0 (they lack context; the neighbour covers them), then the weight ramps
    linearly up to 1 over the rest of the overlap."""
    w = torch.ones(n)
    if overlap > 0:
        margin = overlap // 4
        k = min(overlap, n)
        r = torch.zeros(k)
        r[margin:] = torch.arange(1, k - margin + 1, dtype=torch.float32) / (k - margin + 1)
        if not at_start:
            w[:k] = torch.minimum(w[:k], r)
        if not at_end:
            w[n - k:] = torch.minimum(w[n - k:], r.flip(0))
    return w


def _padded_forward(net, x: torch.Tensor, divisor: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        mode = 'reflect' if ph < h and pw < w else 'replicate'
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return net(x)[..., :h, :w]


@torch.no_grad()
def predict_probability(net: torch.nn.Module, img: np.ndarray, mse: np.ndarray | None = None, tile: int = 512,
                        overlap: int = 64, divisor: int = 32, batch_size: int = 4, device=None) -> np.ndarray:
    """The artifact probability map (H x W float32 in [0, 1]) of a BGR uint8-range image; see the module docstring.

    ``net`` maps B x C x h x w to B x 1 x h x w logits; ``tile`` (a multiple of ``divisor`` is best) and
    ``overlap`` set the windows, ``batch_size`` how many go through the network at once.
    """
    x = localizer_input(img, mse, in_channels_of(net))
    return predict_probability_tensor(net, x, tile, overlap, divisor, batch_size, device).numpy()


@torch.no_grad()
def predict_probability_tensor(net: torch.nn.Module, x: torch.Tensor, tile: int = 512, overlap: int = 64,
                               divisor: int = 32, batch_size: int = 4, device=None) -> torch.Tensor:
    """:func:`predict_probability` of a 1 x C x H x W input tensor (RGB [0, 1]); an H x W float32 CPU tensor."""
    if overlap < 0 or overlap >= tile:
        raise ValueError(f'overlap must be in [0, tile), got overlap={overlap}, tile={tile}')
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device('cpu')
    h, w = x.shape[-2:]
    ys, xs = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    th, tw = min(tile, h), min(tile, w)
    windows = [(y, xx) for y in ys for xx in xs]
    prob = torch.zeros(h, w)
    weight = torch.zeros(h, w)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        batch = torch.cat([x[..., y:y + th, xx:xx + tw] for y, xx in chunk]).to(device)
        logits = _padded_forward(net, batch, divisor).float()
        if logits.shape[1] != 1:
            raise DataError(f'the localiser outputs {logits.shape[1]} channels; expected 1 (classes: 1)')
        p = torch.sigmoid(logits[:, 0]).cpu()
        for k, (y, xx) in enumerate(chunk):
            wy = _ramp(th, overlap, y == 0, y + th == h)
            wx = _ramp(tw, overlap, xx == 0, xx + tw == w)
            ww = wy[:, None] * wx[None, :]
            prob[y:y + th, xx:xx + tw] += p[k] * ww
            weight[y:y + th, xx:xx + tw] += ww
    return prob / weight


def in_channels_of(net) -> int:
    """Input channels of a network: its ``in_channels`` attribute, else those of its first convolution (else 3)."""
    declared = getattr(net, 'in_channels', None)
    if isinstance(declared, int):
        return declared
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3
