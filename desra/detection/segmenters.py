"""Semantic segmenters for DeSRA's semantic adjustment (paper Eq. 8-9).

A segmenter maps RGB images to ADE20K label maps (int64, index 0..149 in the order of
:data:`desra.detection.ade20k.ADE20K_CLASSES`), at the size of the input. Two are registered in
:data:`desra.registry.SEGMENTER_REGISTRY`:

``segformer`` (:class:`SegFormerSegmenter`)
    transformers' ``SegformerForSemanticSegmentation``, run the way the DeSRA authors ran mmseg's
    ``segformer_mit-b5_640x640_160k_ade20k``: whole-image inference with mmseg's test pipeline
    (keep-ratio resize to scale (2048, 640), ImageNet normalisation in 0..255 units). ``model`` is a hub id
    (default ``nvidia/segformer-b5-finetuned-ade-640-640``, the NVlabs release; it needs the hub or a filled
    cache) or a local folder written by ``save_pretrained``, e.g. the output of
    ``scripts/convert_mmseg_segformer.py`` (the authors' exact mmseg checkpoint).

``none`` (:class:`NoSegmenter`)
    No segmentation: calling it returns ``None``, which the detectors read as "every pixel has class weight
    1", i.e. the semantic adjustment is skipped (S = clip(D, 0, 1)).

YAML::

    segmenter:
      type: segformer
      model: pretrained/segformer-b5-ade-mmseg   # or a hub id
      dtype: float32        # float16 / bfloat16 on CUDA only
      scale: [2048, 640]
      batch_size: 1
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from desra.detection.ade20k import ADE20K_CLASSES
from desra.errors import CheckpointError, ConfigError
from desra.registry import SEGMENTER_REGISTRY

logger = logging.getLogger(__name__)

DEFAULT_MODEL = 'nvidia/segformer-b5-finetuned-ade-640-640'
# mmseg ADE20K img_norm_cfg (0..255 units, RGB)
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
NUM_CLASSES = len(ADE20K_CLASSES)

_DTYPES = {'float32': torch.float32, 'fp32': torch.float32, 'float': torch.float32,
           'float16': torch.float16, 'fp16': torch.float16, 'half': torch.float16,
           'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16}
# elements of one class-chunk of up-sampled logits (float32): bounds the memory of the final resize + argmax
_UPSAMPLE_BUDGET = 1 << 25


def build_segmenter(opt: dict | None, device=None, key_path: str = 'segmenter'):
    """Build the segmenter described by ``opt`` (``None`` or ``{'type': 'none'}``: :class:`NoSegmenter`).

    ``device`` is used unless ``opt`` sets ``device`` itself. Errors name ``key_path`` (e.g.
    ``segmenter.type: unknown segmenter type 'segformr'. Did you mean 'segformer'?``).
    """
    if opt is None:
        return NoSegmenter()
    if not isinstance(opt, dict):
        raise ConfigError(f"{key_path}: expected a mapping with a 'type' key (or null), got {type(opt).__name__}")
    extra = {}
    typ = opt.get('type')
    if isinstance(typ, str) and typ in SEGMENTER_REGISTRY:
        params = _accepted_params(SEGMENTER_REGISTRY.get(typ))
        if device is not None and 'device' not in opt and 'device' in params:
            extra['device'] = device
        if 'opt_path' in params and 'opt_path' not in opt:
            extra['opt_path'] = key_path
    return SEGMENTER_REGISTRY.build(dict(opt), key_path, **extra)


def _accepted_params(cls) -> set[str]:
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


def mmseg_rescale_size(height: int, width: int, scale=(2048, 640)) -> tuple[int, int]:
    """Output (h, w) of mmseg's ``Resize(img_scale=scale, keep_ratio=True)`` (``mmcv.imrescale``).

    The factor is ``min(max(scale) / long_side, min(scale) / short_side)``, so the long side fits
    ``max(scale)`` and the short side fits ``min(scale)``; it can be above 1 (small images are enlarged,
    as in mmseg). Sizes are ``int(x * factor + 0.5)`` (at least 1).
    """
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _hf_offline() -> bool:
    return any(os.environ.get(v, '').strip().lower() in ('1', 'true', 'yes', 'on')
               for v in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def _looks_like_path(s: str) -> bool:
    return (s.startswith(('/', '.', '~')) or '\\' in s or s.count('/') > 1 or os.path.splitext(s)[1].lower() in
            ('.pth', '.pt', '.bin', '.safetensors', '.ckpt'))


@SEGMENTER_REGISTRY.register(name='none')
class NoSegmenter:
    """The "no segmentation" segmenter: ``__call__`` returns ``None``.

    ``None`` labels mean that every pixel gets class weight 1, i.e. DeSRA's semantic adjustment (Eq. 8-9)
    is skipped and S = clip(D, 0, 1).
    """

    def __init__(self, device=None):
        self.device = device

    def __call__(self, images):
        return None

    def __repr__(self) -> str:
        return 'NoSegmenter()'


@SEGMENTER_REGISTRY.register(name='segformer')
class SegFormerSegmenter:
    """ADE20K SegFormer run like mmseg's whole-image test pipeline (see the module docstring).

    Args:
        model: hub id, or a local folder saved with ``save_pretrained`` (with ``preprocessor_config.json`` if
            present). A local folder always loads offline. A hub id needs the network or the local hub cache.
        device: torch device; ``None``: CUDA when available, else CPU.
        dtype: ``'float32'``; ``'float16'`` / ``'bfloat16'`` run under CUDA autocast (on CPU they fall back to
            float32 with a warning).
        scale: mmseg ``img_scale`` of the keep-ratio resize: the image is resized by
            ``min(max(scale)/long_side, min(scale)/short_side)``.
        batch_size: images of the same size are run together, up to this many.
        local_files_only: passed to ``from_pretrained`` for hub ids; ``None``: true when ``HF_HUB_OFFLINE`` or
            ``TRANSFORMERS_OFFLINE`` is set.
        opt_path: the YAML path of these options, used in error messages (``build_segmenter`` sets it).

    Calling it on a B x 3 x H x W RGB float tensor in [0, 1] (uint8 tensors are read as 0..255) returns a
    B x H x W int64 CPU tensor of labels at the input size; a 3 x H x W tensor or an H x W x 3 numpy RGB image
    (uint8, or float in [0, 1]) gives H x W; a list of such images of any sizes gives a list.

    Steps, per image (mmseg 0.x ``whole_inference``): bilinear resize (align_corners=False) of the 0..255
    image to :func:`mmseg_rescale_size`; ``(x - mean) / std``; model; logits (1/4 of the resized size)
    bilinearly resized to the resized input size and then to the original size (mmseg resizes in these two
    steps); argmax over the classes. mmseg resizes the uint8 image with OpenCV and rounds to uint8; this
    resizes the float image (differences below half a grey level).
    """

    def __init__(self, model: str = DEFAULT_MODEL, device=None, dtype: str = 'float32', scale=(2048, 640),
                 batch_size: int = 1, local_files_only: bool | None = None, opt_path: str = 'segmenter'):
        self.key_path = key_path = opt_path
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"{key_path}.device: invalid device {device!r} ({e})") from None
        self.dtype = self._parse_dtype(dtype)
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in scale)):
            raise ConfigError(f"{key_path}.scale: expected two positive integers like [2048, 640], got {scale!r}")
        self.scale = (int(scale[0]), int(scale[1]))
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"{key_path}.batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if local_files_only is not None and not isinstance(local_files_only, bool):
            raise ConfigError(f"{key_path}.local_files_only: expected true, false or null, got {local_files_only!r}")
        self.model_name = str(model)
        self.model, folder = self._load(str(model), local_files_only)
        self.mean, self.std = self._read_normalisation(folder)
        self.id2label = {int(k): v for k, v in (self.model.config.id2label or {}).items()}
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------------------------------ setup
    def _parse_dtype(self, dtype) -> torch.dtype:
        if isinstance(dtype, torch.dtype):
            dt = dtype
        elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
            dt = _DTYPES[dtype.lower()]
        else:
            raise ConfigError(f"{self.key_path}.dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        if dt not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"{self.key_path}.dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        if dt != torch.float32 and self.device.type != 'cuda':
            logger.warning('%s.dtype: %s is only used on CUDA; running the segmenter in float32 on %s',
                           self.key_path, str(dt).replace('torch.', ''), self.device)
            dt = torch.float32
        return dt

    def _load(self, model: str, local_files_only):
        from transformers import SegformerForSemanticSegmentation

        kp = self.key_path
        path = os.path.expanduser(model)
        folder = None
        if os.path.isdir(path):
            folder = path
            if not os.path.isfile(os.path.join(path, 'config.json')):
                raise CheckpointError(f"{kp}.model: folder {path} has no config.json; expected a SegFormer folder "
                                      "written by save_pretrained (or by scripts/convert_mmseg_segformer.py)")
            try:
                net = SegformerForSemanticSegmentation.from_pretrained(path, local_files_only=True)
            except Exception as e:  # noqa: BLE001  (transformers raises OSError, ValueError, RuntimeError ...)
                raise CheckpointError(f"{kp}.model: cannot load a SegFormer from folder {path}: {e}") from None
        elif os.path.exists(path):
            raise CheckpointError(
                f"{kp}.model: {path} is a file, but a folder saved with save_pretrained (or a hub id) is expected. "
                f"If it is the mmseg checkpoint (.pth), convert it first: python scripts/convert_mmseg_segformer.py "
                f"--checkpoint {path} --out pretrained/segformer-b5-ade-mmseg, then set "
                f"{kp}.model: pretrained/segformer-b5-ade-mmseg")
        elif _looks_like_path(model):
            raise CheckpointError(f"{kp}.model: folder {path} does not exist (expected a SegFormer folder saved with "
                                  "save_pretrained, or a hub id such as " + DEFAULT_MODEL + ")")
        else:
            lfo = _hf_offline() if local_files_only is None else local_files_only
            try:
                net = SegformerForSemanticSegmentation.from_pretrained(model, local_files_only=lfo)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(
                    f"{kp}.model: the SegFormer '{model}' could not be loaded from the Hugging Face hub or its local "
                    f"cache ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                    f"On a machine with internet, download it into a folder, e.g. "
                    f"`huggingface-cli download {model} --local-dir pretrained/{model.split('/')[-1]}` (or "
                    f"SegformerForSemanticSegmentation.from_pretrained('{model}').save_pretrained(folder)), copy "
                    f"the folder here and set `{kp}.model: /path/to/folder`. Or convert the authors' mmseg "
                    f"checkpoint (segformer_mit-b5_640x640_160k_ade20k_20220617_203542-940a6bd8.pth) with "
                    f"`python scripts/convert_mmseg_segformer.py --checkpoint <file.pth> --out "
                    f"pretrained/segformer-b5-ade-mmseg` and set `{kp}.model` to that folder. "
                    f"(If '{model}' was meant as a local folder: it does not exist.)") from None
        cfg = net.config
        if getattr(cfg, 'model_type', 'segformer') != 'segformer':
            raise ConfigError(f"{kp}.model: {model} is a '{cfg.model_type}' model, not a SegFormer")
        if cfg.num_labels != NUM_CLASSES:
            raise ConfigError(f"{kp}.model: {model} predicts {cfg.num_labels} labels, but DeSRA's class weights "
                              f"need an ADE20K model with {NUM_CLASSES} labels")
        self._check_label_names(cfg)
        from desra.detection.segformer_convert import apply_mmseg_compat

        apply_mmseg_compat(net)
        net.eval().requires_grad_(False).to(self.device)
        return net, folder

    def _check_label_names(self, cfg) -> None:
        names = {int(k): str(v).strip().lower() for k, v in (cfg.id2label or {}).items()}
        if not names or all(v == f'label_{k}' for k, v in names.items()):
            return  # unnamed labels: nothing to check
        diff = [f"{i}: '{names.get(i)}' (ADE20K '{c}')" for i, c in enumerate(ADE20K_CLASSES)
                if names.get(i) != c]
        if diff:
            logger.warning('%s.model: %d label name(s) differ from the ADE20K order DeSRA assumes, e.g. %s',
                           self.key_path, len(diff), '; '.join(diff[:5]))

    def _read_normalisation(self, folder):
        """(mean, std) in 0..255 units from ``preprocessor_config.json`` if there is one; mmseg's otherwise."""
        path = None
        if folder is not None:
            path = os.path.join(folder, 'preprocessor_config.json')
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                p = try_to_load_from_cache(self.model_name, 'preprocessor_config.json')
                path = p if isinstance(p, str) else None
            except Exception:  # noqa: BLE001
                path = None
        if not path or not os.path.isfile(path):
            return MMSEG_MEAN, MMSEG_STD
        try:
            with open(path, encoding='utf-8') as f:
                cfg = json.load(f)
            if not cfg.get('do_normalize', True):
                mean, std = [0.0] * 3, [1.0] * 3
            else:
                mean = cfg.get('image_mean', [m / 255 for m in MMSEG_MEAN])
                std = cfg.get('image_std', [s / 255 for s in MMSEG_STD])
            mean = [float(mean)] * 3 if np.isscalar(mean) else [float(m) for m in mean]
            std = [float(std)] * 3 if np.isscalar(std) else [float(s) for s in std]
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError(f'image_mean/image_std must have 3 values, std > 0: {mean}, {std}')
            if cfg.get('do_rescale', True):
                factor = float(cfg.get('rescale_factor', 1 / 255))
                mean, std = [m / factor for m in mean], [s / factor for s in std]
            return tuple(mean), tuple(std)
        except (OSError, ValueError, TypeError, ZeroDivisionError) as e:
            logger.warning('%s: cannot read the normalisation of %s (%s); using mmseg ADE20K mean/std',
                           self.key_path, path, e)
            return MMSEG_MEAN, MMSEG_STD

    # ------------------------------------------------------------------------------------------ inference
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) the model sees for an input of ``height`` x ``width`` (mmseg keep-ratio resize)."""
        return mmseg_rescale_size(height, width, self.scale)

    def preprocess(self, images01: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W float RGB in [0, 1] -> the normalised, resized model input (on ``self.device``)."""
        x = images01.to(self.device, torch.float32) * 255.0
        size = self.resized_size(x.shape[-2], x.shape[-1])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
        return (x - self._mean_t) / self._std_t

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """Raw float32 logits (B x 150 x h/4 x w/4 of the resized size) of a batch of same-size images."""
        x = self.preprocess(images01)
        amp = (torch.autocast(device_type='cuda', dtype=self.dtype)
               if self.device.type == 'cuda' and self.dtype != torch.float32 else nullcontext())
        try:
            with amp:
                out = self.model(pixel_values=x).logits
        except RuntimeError as e:
            if 'size' not in str(e).lower() or min(x.shape[-2:]) >= 64:
                raise
            raise ValueError(f'an image of {images01.shape[-2]}x{images01.shape[-1]} (HxW) is resized to '
                             f'{x.shape[-2]}x{x.shape[-1]} for scale {self.scale}, too small for the SegFormer '
                             f'({e}); use a larger {self.key_path}.scale or a less elongated image') from None
        return out.float()

    @torch.no_grad()
    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        """Labels (B x H x W int64, CPU) of a B x 3 x H x W batch of same-size images in [0, 1]."""
        h, w = images01.shape[-2:]
        logits = self.logits(images01)
        mid = self.resized_size(h, w)
        return _upsample_argmax(logits, [mid, (h, w)]).cpu()

    def __call__(self, images):
        if isinstance(images, (list, tuple)):
            items = [self._as_chw(im, f'images[{i}]') for i, im in enumerate(images)]
            return self._run(items)
        if torch.is_tensor(images) and images.ndim == 4:
            if images.shape[0] == 0:
                return torch.zeros((0,) + tuple(images.shape[-2:]), dtype=torch.int64)
            return torch.stack(self._run([self._as_chw(im, f'images[{i}]') for i, im in enumerate(images)]))
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return torch.stack(self._run([self._as_chw(im, f'images[{i}]') for i, im in enumerate(images)]))
        return self._run([self._as_chw(images, 'image')])[0]

    def _run(self, items: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(items):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                labels = self.predict(torch.stack([items[i] for i in chunk]))
                for i, lab in zip(chunk, labels):
                    out[i] = lab
        return out

    @staticmethod
    def _as_chw(im, name: str) -> torch.Tensor:
        """One image as a 3 x H x W float32 tensor in [0, 1] (device unchanged)."""
        if isinstance(im, np.ndarray):
            if im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f'{name}: expected an H x W x 3 RGB numpy image, got shape {im.shape}')
            if im.dtype == np.uint8:
                t = torch.from_numpy(np.ascontiguousarray(im)).float() / 255.0
            elif im.dtype == np.uint16:
                t = torch.from_numpy(im.astype(np.float32) / 65535.0)
            elif np.issubdtype(im.dtype, np.floating):
                t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))
            else:
                raise ValueError(f'{name}: unsupported numpy dtype {im.dtype} (use uint8 or float in [0, 1])')
            return t.permute(2, 0, 1)
        if torch.is_tensor(im):
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(f'{name}: expected a 3 x H x W RGB tensor, got shape {tuple(im.shape)}')
            if im.dtype == torch.uint8:
                return im.float() / 255.0
            if not im.is_floating_point():
                raise ValueError(f'{name}: unsupported tensor dtype {im.dtype} (use float in [0, 1] or uint8)')
            return im.float()
        raise ValueError(f'{name}: expected a torch tensor or a numpy array, got {type(im).__name__}')

    def __repr__(self) -> str:
        return (f'SegFormerSegmenter(model={self.model_name!r}, device={self.device}, '
                f'dtype={str(self.dtype).replace("torch.", "")}, scale={self.scale}, batch_size={self.batch_size})')


def _upsample_argmax(logits: torch.Tensor, sizes) -> torch.Tensor:
    """argmax over classes of ``logits`` bilinearly resized (align_corners=False) through ``sizes`` in turn.

    Works on chunks of classes so the full-resolution logits never exist at once; the result equals
    ``resize(resize(logits, sizes[0]), sizes[1]).argmax(1)`` (first index wins ties, as in ``argmax``).
    """
    b, c = logits.shape[:2]
    sizes = [tuple(int(v) for v in s) for s in sizes]
    biggest = max([s[0] * s[1] for s in sizes] + [1])
    step = max(1, min(c, _UPSAMPLE_BUDGET // max(1, b * biggest)))
    best_val = best_idx = None
    for start in range(0, c, step):
        x = logits[:, start:start + step]
        for s in sizes:
            if tuple(x.shape[-2:]) != s:
                x = F.interpolate(x, size=s, mode='bilinear', align_corners=False)
        val, idx = x.max(dim=1)
        idx = idx + start
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    return best_idx.to(torch.int64)
