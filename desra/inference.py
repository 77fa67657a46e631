"""Running a super-resolution generator on whole images or in overlapping tiles (bounded memory)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _pad_to_multiple(x: torch.Tensor, mod: int) -> torch.Tensor:
    """Pad bottom/right of ``x`` so H and W are multiples of ``mod`` (reflect; replicate when too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % mod, (-w) % mod
    if ph == 0 and pw == 0:
        return x
    # Reflect keeps image statistics at the border; it needs pad < size, so tiny inputs replicate instead.
    mode = 'reflect' if ph < h and pw < w else 'replicate'
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _net_device_dtype(net: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for p in net.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else x.dtype)
    return x.device, x.dtype


def _tile_starts(size: int, tile: int, window: int, pad: int, mod: int) -> list[tuple[int, int, int]]:
    """For one axis: (out_start, out_end, window_start) of every tile.

    Tiles partition [0, size); each window has the same length ``window`` (so tiles can be batched), starts on
    a multiple of ``mod`` (so pixel-unshuffle grids line up with the whole image) and covers ``pad`` pixels of
    context on both sides of its tile wherever the image has them.
    """
    out = []
    for i in range(math.ceil(size / tile)):
        a = i * tile
        b = min(a + tile, size)
        s = ((a - pad) // mod) * mod
        s = min(max(s, 0), size - window)
        out.append((a, b, s))
    return out


@torch.no_grad()
def tiled_forward(net: nn.Module, lq: torch.Tensor, scale: int, tile_size: int = 0, tile_pad: int = 10,
                  batch_tiles: int = 1, mod_pad: int = 1) -> torch.Tensor:
    """Run generator ``net`` on ``lq``, whole or tile by tile, and return the upscaled image.

    With ``tile_size > 0`` the (padded) image is cut into ``tile_size x tile_size`` tiles (smaller at the
    right/bottom edges); each tile is run with up to ``tile_pad`` pixels of surrounding context on every side,
    and only the tile's own part of the output is kept. When ``tile_pad`` covers the network's receptive field
    (in input pixels) the result equals the whole-image forward up to float rounding; otherwise seams may appear.
    Peak memory grows with ``batch_tiles * (tile_size + 2 * tile_pad)**2`` instead of with the image size.

    ``net``'s train/eval mode is left as it is (call ``net.eval()`` first for inference). Tiles are moved to
    ``net``'s device and dtype, so a large image can stay on the CPU while ``net`` runs on an accelerator.

    Args:
        net: generator mapping ``B x C x h x w`` to ``B x C' x h*scale x w*scale``.
        lq: low-quality input, ``B x C x H x W`` (``C x H x W`` is accepted too), typically in [0, 1].
        scale: the generator's upscaling factor.
        tile_size: tile edge in input pixels; 0 runs the whole image at once.
        tile_pad: context (input pixels) added around each tile.
        batch_tiles: number of tiles run together in one forward call.
        mod_pad: the generator needs H and W divisible by this (e.g. 2 for RRDBNet scale 2, 4 for scale 1);
            the input is reflect-padded at the bottom/right to a multiple and the output cropped back.

    Returns:
        ``B x C' x H*scale x W*scale`` tensor on ``lq``'s device with ``lq``'s dtype (``C' x ...`` for 3-D input).
    """
    if tile_size < 0 or tile_pad < 0 or batch_tiles < 1 or mod_pad < 1 or scale < 1:
        raise ValueError(f"tiled_forward: need tile_size >= 0, tile_pad >= 0, batch_tiles >= 1, mod_pad >= 1, "
                         f"scale >= 1; got tile_size={tile_size}, tile_pad={tile_pad}, "
                         f"batch_tiles={batch_tiles}, mod_pad={mod_pad}, scale={scale}")
    squeeze = lq.dim() == 3
    if squeeze:
        lq = lq.unsqueeze(0)
    if lq.dim() != 4:
        raise ValueError(f"tiled_forward: expected a B x C x H x W tensor, got shape {tuple(lq.shape)}")
    out_device, out_dtype = lq.device, lq.dtype
    net_device, net_dtype = _net_device_dtype(net, lq)
    b, _, h, w = lq.shape
    x = _pad_to_multiple(lq, mod_pad)
    hp, wp = x.shape[-2:]

    def run(inp: torch.Tensor) -> torch.Tensor:
        y = net(inp.to(device=net_device, dtype=net_dtype))
        if y.shape[-2:] != (inp.shape[-2] * scale, inp.shape[-1] * scale):
            raise ValueError(f"tiled_forward: network output {tuple(y.shape)} for input {tuple(inp.shape)} "
                             f"does not match scale={scale}")
        return y

    if tile_size == 0 or (tile_size >= hp and tile_size >= wp):
        out = run(x)[..., :h * scale, :w * scale].to(device=out_device, dtype=out_dtype)
        return out[0] if squeeze else out

    tile_size = -(-tile_size // mod_pad) * mod_pad  # tiles must start on the mod_pad grid
    win_h = min(hp, -(-(tile_size + 2 * tile_pad + mod_pad - 1) // mod_pad) * mod_pad)
    win_w = min(wp, -(-(tile_size + 2 * tile_pad + mod_pad - 1) // mod_pad) * mod_pad)
    tiles = [(ya, yb, ys, xa, xb, xs)
             for ya, yb, ys in _tile_starts(hp, tile_size, win_h, tile_pad, mod_pad)
             for xa, xb, xs in _tile_starts(wp, tile_size, win_w, tile_pad, mod_pad)]

    out: torch.Tensor | None = None
    s = scale
    for i in range(0, len(tiles), batch_tiles):
        group = tiles[i:i + batch_tiles]
        inp = torch.cat([x[:, :, ys:ys + win_h, xs:xs + win_w] for _, _, ys, _, _, xs in group], dim=0)
        y = run(inp).to(device=out_device, dtype=out_dtype)
        if out is None:
            out = torch.empty((b, y.shape[1], hp * s, wp * s), device=out_device, dtype=out_dtype)
        for j, (ya, yb, ys, xa, xb, xs) in enumerate(group):
            part = y[j * b:(j + 1) * b]
            out[:, :, ya * s:yb * s, xa * s:xb * s] = \
                part[:, :, (ya - ys) * s:(yb - ys) * s, (xa - xs) * s:(xb - xs) * s]
    out = out[..., :h * s, :w * s]
    return out[0] if squeeze else out
