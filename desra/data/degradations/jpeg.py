"""JPEG compression: a batched torch JPEG (``DiffJPEG``) and OpenCV's encoder for numpy images.

``DiffJPEG`` follows BasicSR's conventions, so its output equals BasicSR's for the same input and quality:

1. the batch (RGB in [0, 1]) is padded with zeros at the bottom / right to a multiple of 16;
2. RGB -> YCbCr (JFIF: ``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = -0.168736 R - 0.331264 G + 0.5 B + 128``,
   ``Cr = 0.5 R - 0.418688 G - 0.081312 B + 128``, on the 0-255 scale), chroma averaged over 2 x 2 (4:2:0);
3. 8 x 8 blocks, centred by -128, orthonormal DCT-II (``alpha(0) = 1 / sqrt 2``, factor 1/4);
4. division by the quantisation table times ``factor(q) = 50 / q`` for ``q < 50`` else ``(200 - 2 q) / 100``,
   the tables being the standard luminance / chrominance tables as floats, transposed as in BasicSR, with no
   integer rounding or clamping; ``torch.round`` of the coefficients (``differentiable=True``: ``round(x) +
   (x - round(x))^3``, which has a useful gradient);
5. the inverse: multiplication by the table, inverse DCT, blocks merged, chroma repeated 2 x 2, YCbCr -> RGB,
   clamped to [0, 255], divided by 255 and cropped back to the input size.

Call it as ``DiffJPEG(differentiable=False)(img, quality=q)`` with ``q`` a number or a ``(B,)`` tensor (one quality
per image; the tensor is not modified).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ['DiffJPEG', 'diff_round', 'quality_to_factor', 'add_jpg_compression', 'random_add_jpg_compression',
           'JPEG_Y_TABLE', 'JPEG_C_TABLE']

#: The standard luminance table (ITU-T T.81 Annex K), row = vertical frequency.
JPEG_Y_TABLE = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                         [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                         [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                         [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float32)
#: The standard chrominance table (ITU-T T.81 Annex K): 99 outside the top-left 4 x 4.
JPEG_C_TABLE = np.full((8, 8), 99, dtype=np.float32)
JPEG_C_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def diff_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a gradient: ``round(x) + (x - round(x))^3``."""
    return torch.round(x) + (x - torch.round(x)) ** 3


def quality_to_factor(quality):
    """Table scale for a JPEG quality in (0, 100]: ``50 / q`` below 50, ``(200 - 2 q) / 100`` from 50 on."""
    if torch.is_tensor(quality):
        q = quality.to(torch.float32)
        return torch.where(q < 50, 5000. / q, 200. - q * 2) / 100.
    quality = 5000. / quality if quality < 50 else 200. - quality * 2
    return quality / 100.


def _dct_tensor(inverse: bool) -> torch.Tensor:
    tensor = np.zeros((8, 8, 8, 8), dtype=np.float32)
    for x, y, u, v in itertools.product(range(8), repeat=4):
        if inverse:
            tensor[x, y, u, v] = np.cos((2 * u + 1) * x * np.pi / 16) * np.cos((2 * v + 1) * y * np.pi / 16)
        else:
            tensor[x, y, u, v] = np.cos((2 * x + 1) * u * np.pi / 16) * np.cos((2 * y + 1) * v * np.pi / 16)
    return torch.from_numpy(tensor).float()


class DiffJPEG(nn.Module):
    """Batched JPEG compression of ``B x 3 x H x W`` RGB images in [0, 1] (see the module notes)."""

    def __init__(self, differentiable: bool = True):
        super().__init__()
        self.rounding = diff_round if differentiable else torch.round
        alpha = np.array([1. / np.sqrt(2)] + [1] * 7)
        # the tables are used transposed, as BasicSR (and the DiffJPEG code it comes from) does
        self.register_buffer('y_table', torch.from_numpy(JPEG_Y_TABLE.T.copy()))
        self.register_buffer('c_table', torch.from_numpy(JPEG_C_TABLE.T.copy()))
        self.register_buffer('rgb2ycc', torch.from_numpy(np.array(
            [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32).T))
        self.register_buffer('rgb2ycc_shift', torch.tensor([0., 128., 128.]))
        self.register_buffer('ycc2rgb', torch.from_numpy(np.array(
            [[1., 0., 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]], dtype=np.float32).T))
        self.register_buffer('ycc2rgb_shift', torch.tensor([0, -128., -128.]))
        self.register_buffer('dct', _dct_tensor(inverse=False))
        self.register_buffer('dct_scale', torch.from_numpy(np.outer(alpha, alpha) * 0.25).float())
        self.register_buffer('idct', _dct_tensor(inverse=True))
        self.register_buffer('idct_alpha', torch.from_numpy(np.outer(alpha, alpha)).float())

    # ---- the parts, each on the 0-255 scale
    @staticmethod
    def _blocks(channel: torch.Tensor) -> torch.Tensor:
        b, h = channel.shape[:2]
        return channel.view(b, h // 8, 8, -1, 8).permute(0, 1, 3, 2, 4).contiguous().view(b, -1, 8, 8)

    @staticmethod
    def _merge(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b = blocks.shape[0]
        return blocks.view(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).contiguous().view(b, h, w)

    @staticmethod
    def _table(table: torch.Tensor, factor):
        if isinstance(factor, (int, float)):
            return table * factor
        b = factor.size(0)
        return table.expand(b, 1, 8, 8) * factor.view(b, 1, 1, 1)

    def compress(self, image: torch.Tensor, factor):
        """RGB ``B x 3 x H x W`` on 0-255 -> quantised DCT blocks ``(y, cb, cr)``."""
        x = image.permute(0, 2, 3, 1)
        ycc = (torch.tensordot(x, self.rgb2ycc, dims=1) + self.rgb2ycc_shift).view(x.shape)
        chroma = ycc.permute(0, 3, 1, 2).clone()
        cb = F.avg_pool2d(chroma[:, 1:2], kernel_size=2, stride=(2, 2), count_include_pad=False)[:, 0]
        cr = F.avg_pool2d(chroma[:, 2:3], kernel_size=2, stride=(2, 2), count_include_pad=False)[:, 0]
        out = []
        for comp, table in ((ycc[..., 0], self.y_table), (cb, self.c_table), (cr, self.c_table)):
            blocks = self._blocks(comp) - 128
            coeffs = self.dct_scale * torch.tensordot(blocks, self.dct, dims=2)
            coeffs = coeffs if coeffs.dtype == torch.float64 else coeffs.float()  # float64 kept for gradcheck
            out.append(self.rounding(coeffs / self._table(table, factor)))
        return out

    def decompress(self, y, cb, cr, h: int, w: int, factor) -> torch.Tensor:
        """Quantised blocks -> RGB ``B x 3 x h x w`` in [0, 1]."""
        comps = []
        for comp, table, (ch, cw) in ((y, self.y_table, (h, w)), (cb, self.c_table, (h // 2, w // 2)),
                                      (cr, self.c_table, (h // 2, w // 2))):
            coeffs = comp * self._table(table, factor)
            blocks = 0.25 * torch.tensordot(coeffs * self.idct_alpha, self.idct, dims=2) + 128
            comps.append(self._merge(blocks, ch, cw))

        def up2(c):
            hh, ww = c.shape[1:3]
            return c.unsqueeze(-1).repeat(1, 1, 2, 2).view(-1, hh * 2, ww * 2)

        ycc = torch.stack([comps[0], up2(comps[1]), up2(comps[2])], dim=3)
        rgb = torch.tensordot(ycc + self.ycc2rgb_shift, self.ycc2rgb, dims=1).view(ycc.shape).permute(0, 3, 1, 2)
        rgb = torch.min(255 * torch.ones_like(rgb), torch.max(torch.zeros_like(rgb), rgb))
        return rgb / 255

    def forward(self, x: torch.Tensor, quality) -> torch.Tensor:
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f'DiffJPEG: expected a B x 3 x H x W RGB batch, got shape {tuple(x.shape)}')
        factor = quality_to_factor(quality)
        if torch.is_tensor(factor):
            factor = factor.to(device=x.device).reshape(-1)
            if factor.numel() != x.size(0):
                raise ValueError(f'DiffJPEG: {factor.numel()} qualities for a batch of {x.size(0)} images')
        h, w = x.size()[-2:]
        h_pad, w_pad = (16 - h % 16) % 16, (16 - w % 16) % 16
        x = F.pad(x, (0, w_pad, 0, h_pad), mode='constant', value=0)
        y, cb, cr = self.compress(x * 255, factor)
        out = self.decompress(y, cb, cr, h + h_pad, w + w_pad, factor)
        return out[:, :, 0:h, 0:w]


def add_jpg_compression(img: np.ndarray, quality: int = 90) -> np.ndarray:
    """JPEG round trip of an H x W x 3 BGR float image in [0, 1] with OpenCV; returns float32 in [0, 1].

    ``img * 255`` is brought to 8 bits with OpenCV's own rule for a float image given to its encoder (round half to
    even, saturate), done here explicitly so that OpenCV 5 does not warn about the conversion.
    """
    import cv2

    img = np.clip(img, 0, 1)
    img8 = np.clip(np.rint(img * 255.), 0, 255).astype(np.uint8)
    ok, encimg = cv2.imencode('.jpg', img8, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError('add_jpg_compression: OpenCV could not encode the image')
    return np.float32(cv2.imdecode(encimg, 1)) / 255.


def random_add_jpg_compression(img: np.ndarray, quality_range=(90, 100), rng=None) -> np.ndarray:
    """:func:`add_jpg_compression` with the quality ``int(U(quality_range))``."""
    u = np.random.uniform if rng is None else rng.uniform
    return add_jpg_compression(img, int(u(quality_range[0], quality_range[1])))
