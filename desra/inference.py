"""Running a super-resolution generator on whole images or in overlapping, cross-faded tiles (bounded memory)."""
from __future__ import annotations

import math
import os
import warnings
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from desra.tile_options import AUTO, DEFAULT_BLEND, DEFAULT_TILE_PAD

__all__ = ['DEFAULT_BLEND', 'DEFAULT_TILE_PAD', 'auto_tile_size', 'axis_blend_weights', 'axis_windows',
           'estimate_forward_bytes', 'memory_budget', 'tiled_forward']

#: The measured activation bytes are multiplied by this (allocator rounding, convolution workspaces).
MEMORY_SAFETY = 1.25
#: Fraction of the free accelerator memory / available RAM that ``tile_size='auto'`` may use.
CUDA_BUDGET_FRACTION = 0.8
CPU_BUDGET_FRACTION = 0.5
#: ``tile_size='auto'`` never picks tiles smaller than this (input pixels).
MIN_AUTO_TILE = 16


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


# ------------------------------------------------------------------------------------------------ layout
def axis_windows(size: int, window: int, min_overlap: int, mod: int = 1) -> list[int]:
    """Start positions of equal windows of length ``window`` covering ``[0, size)`` along one axis.

    The windows are spread evenly (first at 0, last ending at ``size``), start on multiples of ``mod`` (so
    pixel-unshuffle grids line up with the whole image) and neighbours overlap by at least ``min_overlap``;
    the fewest windows that allow this are used. ``size`` and ``window`` must be multiples of ``mod`` unless
    ``window >= size`` (then one window covers the axis).
    """
    if window >= size:
        return [0]
    cells, max_step = (size - window) // mod, (window - min_overlap) // mod  # in units of the mod grid
    if max_step < 1:
        raise ValueError(f"axis_windows: window {window} with overlap {min_overlap} leaves a stride below "
                         f"the {mod}-pixel grid")
    gaps = -(-cells // max_step)  # n - 1; the spacing cells / gaps is in [1, max_step]
    # Rounding half up keeps every step between floor and ceil of the spacing, so within [1, max_step].
    return [(2 * i * cells + gaps) // (2 * gaps) * mod for i in range(gaps + 1)]


def _raised_cosine(t: torch.Tensor) -> torch.Tensor:
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def axis_blend_weights(starts: list[int], window: int, size: int, scale: int = 1, blend: float = DEFAULT_BLEND
                       ) -> torch.Tensor:
    """Per-window blending weights along one axis, in output pixels: an ``n x size*scale`` float64 tensor.

    Neighbours ``i`` and ``i + 1`` cross-fade with a raised-cosine ramp ``min(blend, overlap)`` input pixels
    wide, centred in their overlap (``blend=0`` or touching windows: a hard cut at the centre); each window's
    weight is zero outside it and where its neighbour has taken over. Columns are normalised, so the weights are
    a partition of unity: every output pixel's weights sum to 1. ``starts`` must increase, begin at 0 and cover
    ``[0, size)`` without gaps.
    """
    if not starts or starts[0] != 0 or starts[-1] + window < size or any(
            b <= a or b > a + window for a, b in zip(starts, starts[1:])):
        raise ValueError(f"axis_blend_weights: windows of {window} starting at {starts} do not cover [0, {size}) "
                         f"without gaps")
    u = (torch.arange(size * scale, dtype=torch.float64) + 0.5) / scale  # output pixel centres, input units
    n = len(starts)
    fade_in = []  # fade_in[k]: weight of window k + 1 in its overlap with window k (0 -> 1)
    for a, b in zip(starts, starts[1:]):
        end = a + window
        centre, width = (b + end) / 2, min(float(blend), end - b)
        if width > 0:
            fade_in.append(_raised_cosine(((u - (centre - width / 2)) / width).clamp(0, 1)))
        else:
            fade_in.append((u >= centre).double())
    weights = torch.ones(n, u.numel(), dtype=torch.float64)
    for i, s in enumerate(starts):
        if i > 0:
            weights[i] *= fade_in[i - 1]
        if i < n - 1:
            weights[i] *= 1 - fade_in[i]
        weights[i] *= (u >= s) & (u < s + window)
    total = weights.sum(0)
    if bool((total <= 0).any()):
        raise ValueError(f"axis_blend_weights: windows {starts} (length {window}) leave pixels without weight")
    return weights / total


# ------------------------------------------------------------------------------------------------ memory
try:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
except ImportError:  # pragma: no cover - very old torch
    TorchDispatchMode = None


if TorchDispatchMode is not None:
    class _PeakTensorBytes(TorchDispatchMode):
        """Counts the bytes of tensor storages created by the ops run under it and records the peak.

        A storage counts from the op that creates it until its tensor is freed; storages that existed before
        (the input, the weights) are not counted. Device-agnostic: it sees the ops, not an allocator.
        """

        def __init__(self):
            super().__init__()
            self.current = self.peak = 0
            self._live: dict = {}
            self._outside: set = set()

        def _free(self, key):
            self.current -= self._live.pop(key, 0)

        @staticmethod
        def _key(t: torch.Tensor):
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                return None, 0
            return (str(t.device), st.data_ptr()), st.nbytes()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    key, _ = self._key(t)
                    if key is not None and key not in self._live:
                        self._outside.add(key)
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    key, nbytes = self._key(t)
                    if key is None or nbytes == 0 or key in self._live or key in self._outside:
                        continue
                    self._live[key] = nbytes
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(t, self._free, key)
            return out


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe_bytes(net: nn.Module, channels: int, side: int, device, dtype) -> tuple[int, int]:
    """(peak bytes of tensors created, output channels) of one forward of a 1 x C x side x side zero input."""
    net = getattr(net, '_orig_mod', net)  # a torch.compile'd module: probe the eager one it wraps
    x = torch.zeros(1, channels, side, side, device=device, dtype=dtype)
    saved = [(buf, buf.detach().clone()) for buf in net.buffers()]  # a train-mode BatchNorm must not change
    devices = [device] if device.type == 'cuda' else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        if TorchDispatchMode is None:  # pragma: no cover
            y = net(x)
            peak = 4 * y.numel() * y.element_size()
        else:
            mode = _PeakTensorBytes()
            with mode:
                y = net(x)
            peak = mode.peak
        for buf, value in saved:
            buf.copy_(value)
    return peak, y.shape[1]


def _forward_cost(net: nn.Module, channels: int, mod: int, device, dtype) -> tuple[float, float, int]:
    """``(fixed, per_pixel, out_channels)``: a forward on ``N`` input pixels creates ``fixed + per_pixel * N``
    bytes of tensors at its peak. Measured once per net, device, dtype and mode on inputs of 8 and 16 grid cells."""
    try:
        autocast = torch.is_autocast_enabled(device.type)
    except TypeError:  # older torch: CUDA autocast only
        autocast = torch.is_autocast_enabled()
    key = (str(device), dtype, channels, mod, net.training, autocast)
    cache = _PROBES.setdefault(net, {})
    if key not in cache:
        side = 8 * mod
        while True:  # nets that downsample internally may need a larger probe
            try:
                p1, c_out = _probe_bytes(net, channels, side, device, dtype)
                break
            except (RuntimeError, ValueError):
                if side >= 64 * mod:
                    raise
                side *= 2
        p2, _ = _probe_bytes(net, channels, 2 * side, device, dtype)
        per_pixel = max(p2 - p1, 0) / (3 * side * side)
        cache[key] = (max(p1 - per_pixel * side * side, 0.0), per_pixel, c_out)
    return cache[key]


def estimate_forward_bytes(net: nn.Module, shape: tuple[int, int, int, int], mod_pad: int = 1) -> int:
    """Estimated peak memory (bytes, on ``net``'s device) of ``net`` run on a ``B x C x H x W`` input.

    The activations (and output) of one forward are measured on two small inputs by counting the storages
    the ops create (any device), fitted as ``fixed + per_pixel * B * H * W`` and scaled by
    :data:`MEMORY_SAFETY`; the input itself is added. Weights are not included (they are already resident).
    """
    b, c, h, w = shape
    device, dtype = _net_device_dtype(net, torch.empty(0))
    fixed, per_pixel, _ = _forward_cost(net, c, mod_pad, device, dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return int(MEMORY_SAFETY * (fixed + per_pixel * b * h * w) + b * c * h * w * itemsize)


def _available_ram() -> int:
    avail = None
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    try:  # a container's memory limit (cgroup v2) is not visible in MemAvailable
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        if limit.isdigit():
            with open('/sys/fs/cgroup/memory.current') as f:
                avail = min(avail, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return max(int(avail), 0)


def memory_budget(device: torch.device | str) -> int:
    """Bytes ``tile_size='auto'`` may use on ``device``: :data:`CUDA_BUDGET_FRACTION` of the free memory on
    CUDA (``torch.cuda.mem_get_info`` plus what PyTorch's cache holds unused), :data:`CPU_BUDGET_FRACTION` of
    the available RAM (container limit included) elsewhere."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_BUDGET_FRACTION * free)
    return int(CPU_BUDGET_FRACTION * _available_ram())


def auto_tile_size(net: nn.Module, shape: tuple[int, int, int, int], scale: int, tile_pad: int | None = None,
                   batch_tiles: int = 1, mod_pad: int = 1, budget: int | None = None,
                   out_device: torch.device | str | None = None) -> int:
    """The ``tile_size`` that ``tile_size='auto'`` uses for a ``B x C x H x W`` input: 0 (whole image) when the
    estimated forward (:func:`estimate_forward_bytes`) fits ``budget`` (default :func:`memory_budget` of
    ``net``'s device), else the largest tile whose windows (``batch_tiles`` at a time, plus the output
    accumulator when it lives on the same device) fit, at least :data:`MIN_AUTO_TILE`."""
    tile_pad = DEFAULT_TILE_PAD if tile_pad is None else tile_pad
    b, c, h, w = shape
    h, w = -(-h // mod_pad) * mod_pad, -(-w // mod_pad) * mod_pad
    device, dtype = _net_device_dtype(net, torch.empty(0))
    budget = memory_budget(device) if budget is None else budget
    if estimate_forward_bytes(net, (b, c, h, w), mod_pad) <= budget:
        return 0
    fixed, per_pixel, c_out = _forward_cost(net, c, mod_pad, device, dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    left = budget
    if out_device is None or torch.device(out_device) == device:
        left -= b * c_out * h * w * scale * scale * 4  # float32 accumulator of the whole output
    per_window_pixel = batch_tiles * b * (MEMORY_SAFETY * per_pixel + c * itemsize)
    side = math.sqrt(max(left - MEMORY_SAFETY * fixed, 0) / per_window_pixel) if per_window_pixel > 0 else 0
    tile = int(side) - 2 * tile_pad
    tile -= tile % mod_pad
    floor = -(-MIN_AUTO_TILE // mod_pad) * mod_pad
    if tile < floor:
        warnings.warn(f"tiled_forward: even {floor}-pixel tiles (context {tile_pad}) may not fit the memory "
                      f"budget of {budget / 2**20:.0f} MiB; using them anyway", RuntimeWarning, stacklevel=3)
        tile = floor
    return tile


# ------------------------------------------------------------------------------------------------ forward
@torch.no_grad()
def tiled_forward(net: nn.Module, lq: torch.Tensor, scale: int, tile_size: int | str = 0,
                  tile_pad: int | None = None, batch_tiles: int = 1, mod_pad: int = 1, *,
                  blend: int | None = None, budget: int | None = None) -> torch.Tensor:
    """Run generator ``net`` on ``lq``, whole or in overlapping tiles, and return the upscaled image.

    With ``tile_size > 0`` the (padded) image is covered by equal windows of ``tile_size + 2 * tile_pad``
    input pixels, spread evenly so that neighbours overlap by at least ``2 * tile_pad + blend``. Neighbouring
    outputs cross-fade with a raised-cosine ramp ``blend`` pixels wide in the middle of their overlap (weights
    normalised to sum to 1), so every output pixel that is used has at least ``tile_pad`` pixels of context
    inside its window on every side (or the image border). When ``tile_pad`` covers the network's receptive
    field the result equals the whole-image forward up to float rounding; otherwise the residual difference
    fades across the seam instead of stepping. Peak memory grows with
    ``batch_tiles * (tile_size + 2 * tile_pad)**2`` (plus the output) instead of with the image size.

    ``tile_size='auto'`` runs the whole image when its estimated forward memory fits the budget
    (:func:`auto_tile_size`, :func:`memory_budget`) and picks the largest tile that fits otherwise.

    ``net``'s train/eval mode is left as it is (call ``net.eval()`` first for inference). Tiles are moved to
    ``net``'s device and dtype, so a large image can stay on the CPU while ``net`` runs on an accelerator.

    Args:
        net: generator mapping ``B x C x h x w`` to ``B x C' x h*scale x w*scale``.
        lq: low-quality input, ``B x C x H x W`` (``C x H x W`` is accepted too), typically in [0, 1].
        scale: the generator's upscaling factor.
        tile_size: tile edge in input pixels (the stride between windows is at most ``tile_size``, less by up
            to ``blend``); 0 runs the whole image at once; ``'auto'`` decides from memory.
        tile_pad: context (input pixels) around each tile; ``None``: :data:`DEFAULT_TILE_PAD`.
        batch_tiles: number of windows run together in one forward call.
        mod_pad: the generator needs H and W divisible by this (e.g. 2 for RRDBNet scale 2, 4 for scale 1);
            the input is reflect-padded at the bottom/right to a multiple and the output cropped back.
        blend: cross-fade width (input pixels; ``None``: :data:`DEFAULT_BLEND`, 0: hard cut), at most half the
            tile.
        budget: memory budget in bytes for ``tile_size='auto'`` (default: :func:`memory_budget`).

    Returns:
        ``B x C' x H*scale x W*scale`` tensor on ``lq``'s device with ``lq``'s dtype (``C' x ...`` for 3-D input).
    """
    tile_pad = DEFAULT_TILE_PAD if tile_pad is None else tile_pad
    blend = DEFAULT_BLEND if blend is None else blend
    bad_tile = tile_size != AUTO if isinstance(tile_size, str) else (
        isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 0)
    if bad_tile or tile_pad < 0 or blend < 0 or batch_tiles < 1 or mod_pad < 1 or scale < 1:
        raise ValueError(f"tiled_forward: need tile_size >= 0 or '{AUTO}', tile_pad >= 0, blend >= 0, "
                         f"batch_tiles >= 1, mod_pad >= 1, scale >= 1; got tile_size={tile_size!r}, "
                         f"tile_pad={tile_pad}, blend={blend}, batch_tiles={batch_tiles}, mod_pad={mod_pad}, "
                         f"scale={scale}")
    squeeze = lq.dim() == 3
    if squeeze:
        lq = lq.unsqueeze(0)
    if lq.dim() != 4:
        raise ValueError(f"tiled_forward: expected a B x C x H x W tensor, got shape {tuple(lq.shape)}")
    out_device, out_dtype = lq.device, lq.dtype
    net_device, net_dtype = _net_device_dtype(net, lq)
    b, _, h, w = lq.shape
    if tile_size == AUTO:
        tile_size = auto_tile_size(net, tuple(lq.shape), scale, tile_pad, batch_tiles, mod_pad, budget, out_device)
    x = _pad_to_multiple(lq, mod_pad)
    hp, wp = x.shape[-2:]

    def run(inp: torch.Tensor) -> torch.Tensor:
        y = net(inp.to(device=net_device, dtype=net_dtype))
        if y.shape[-2:] != (inp.shape[-2] * scale, inp.shape[-1] * scale):
            raise ValueError(f"tiled_forward: network output {tuple(y.shape)} for input {tuple(inp.shape)} "
                             f"does not match scale={scale}")
        return y

    tile_size = -(-tile_size // mod_pad) * mod_pad  # windows start on the mod_pad grid
    window = -(-(tile_size + 2 * tile_pad) // mod_pad) * mod_pad
    if tile_size == 0 or (window >= hp and window >= wp) or (tile_size >= hp and tile_size >= wp):
        out = run(x)[..., :h * scale, :w * scale].to(device=out_device, dtype=out_dtype)
        return out[0] if squeeze else out

    blend = min(blend, tile_size // 2, tile_size - mod_pad)  # the stride stays >= tile_size / 2 and on the grid
    s = scale
    acc_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    layout = []  # per axis: window length, starts, and per window the span of nonzero weight and its weights
    for size in (hp, wp):
        win = min(window, size)
        starts = axis_windows(size, win, 2 * tile_pad + blend, mod_pad)
        wts = axis_blend_weights(starts, win, size, s, blend)
        spans = []
        for i in range(len(starts)):
            nz = torch.nonzero(wts[i]).flatten()
            lo, hi = int(nz[0]), int(nz[-1]) + 1
            wt = wts[i, lo:hi].to(device=out_device, dtype=acc_dtype) if len(starts) > 1 else None  # None: all 1
            spans.append((lo, hi, wt))
        layout.append((win, starts, spans))
    (win_h, ys_all, spans_y), (win_w, xs_all, spans_x) = layout
    tiles = [(iy, ix) for iy in range(len(ys_all)) for ix in range(len(xs_all))]

    out: torch.Tensor | None = None
    for g in range(0, len(tiles), batch_tiles):
        group = tiles[g:g + batch_tiles]
        inp = torch.cat([x[:, :, ys_all[iy]:ys_all[iy] + win_h, xs_all[ix]:xs_all[ix] + win_w]
                         for iy, ix in group], dim=0)
        y = run(inp)
        if out is None:
            out = torch.zeros((b, y.shape[1], hp * s, wp * s), device=out_device, dtype=acc_dtype)
        for j, (iy, ix) in enumerate(group):
            (ylo, yhi, wy), (xlo, xhi, wx) = spans_y[iy], spans_x[ix]
            oy, ox = ys_all[iy] * s, xs_all[ix] * s
            part = y[j * b:(j + 1) * b, :, ylo - oy:yhi - oy, xlo - ox:xhi - ox].to(device=out_device,
                                                                                    dtype=acc_dtype)
            if wy is not None:
                part = part * wy[:, None]
            if wx is not None:
                part = part * wx
            out[:, :, ylo:yhi, xlo:xhi] += part
    out = out[..., :h * s, :w * s].to(out_dtype)
    return out[0] if squeeze else out
