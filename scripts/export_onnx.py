"""Export a registered generator to ONNX and check the file with onnxruntime (CPU) against torch.

    python scripts/export_onnx.py --checkpoint pretrained/spanx4_ch48.safetensors --out span_x4.onnx
    python scripts/export_onnx.py --network '{type: RRDBNet, num_in_ch: 3, num_out_ch: 3, scale: 4}' \
        --checkpoint pretrained/RealESRGAN_x4plus.pth --param-key params_ema --out realesrgan_x4.onnx [--fp16]
    python scripts/export_onnx.py -opt options/X.yml --out net.onnx

The network is ``--network`` (a YAML or JSON mapping with a registered ``type``), else ``network_g`` of the
``-opt`` file, else the ``arch`` / ``kwargs`` header of a ``.safetensors`` checkpoint (the files
``scripts/download_pretrained.py`` writes carry one). The weights are ``--checkpoint``, else the option file's
``path.pretrain_network_g`` (with its ``param_key_g``); they load strictly, as the project's loader does
(``--param-key`` picks ``params_ema`` or ``params`` in BasicSR files and falls back to the other one with a
warning; flat state dicts and ``.safetensors`` load as they are). ``--random-init`` exports untrained weights.

The ONNX model takes ``input``: RGB float in [0, 1], N x C x H x W (float16 with ``--fp16``), and returns
``output``: N x C x H*scale x W*scale, not clamped. Batch, height and width are dynamic unless ``--static``;
H and W must be multiples of the network's ``mod_pad`` (2 for RRDBNet x2, 4 for x1). The file's metadata
records the network options, scale, input multiple and checkpoint name.

Check (unless ``--no-check``): a centre crop (``--check-size``, default 48x64, of another size than the
export's ``--export-size``) of ``--check-image`` (default: the first photo of ``../shared/data/photos/LR``;
a fixed random input where there is none), batched with its mirror image, goes through onnxruntime and torch
(fp32); the largest absolute difference is printed and must be at most ``--tol`` (default 1e-4, or 2e-2 with
``--fp16``: the fp16 model is compared with the fp32 torch network), times the output's peak where that exceeds
1 (untrained networks). The .onnx file is written atomically, and only once the check has passed.

``--exporter torchscript`` (default: torch's TorchScript-based ``torch.onnx.export(dynamo=False)``; fast,
exact ``--opset``, named dynamic axes) or ``dynamo`` (the ``torch.export``-based one; needs ``onnxscript``,
opset >= 18 natively). Needs ``onnx`` and ``onnxruntime``: ``pip install -e ".[onnx]"``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import struct
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from desra.cli import run_cli, script_parser  # noqa: E402
from desra.errors import CheckpointError, ConfigError, DataError, UserError  # noqa: E402

PHOTOS_LR = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'photos', 'LR')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
FP32_TOL = 1e-4
FP16_TOL = 2e-2  # fp16 activations between ops: RealESRGAN_x4plus measured up to 7.3e-3 on 48x64 crops
DEFAULT_OPSET = {'torchscript': 17, 'dynamo': 18}
MISSING_DEPS = 'export_onnx.py needs onnx and onnxruntime: pip install -e ".[onnx]"'


class ExportCheckError(UserError):
    """The exported model's output differs from torch's by more than the tolerance."""


def parse_size(text: str, option: str) -> tuple[int, int]:
    """``'48x64'`` -> ``(48, 64)`` (height, width); ``'64'`` -> ``(64, 64)``."""
    parts = text.lower().split('x')
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"{option}: expected HEIGHTxWIDTH (e.g. 48x64) or one size, got '{text}'")
    return size


def parse_args(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument('-opt', metavar='FILE', default=None,
                        help='BasicSR-style option file: network_g, path.pretrain_network_g, path.param_key_g')
    parser.add_argument('--network', metavar='YAML', default=None,
                        help="network options as YAML / JSON, e.g. '{type: SPAN, num_in_ch: 3, num_out_ch: 3}'")
    parser.add_argument('--checkpoint', metavar='PATH', default=None, help='weights (.pth / .safetensors)')
    parser.add_argument('--param-key', default=None,
                        help="BasicSR wrapper entry: params_ema (default) or params; the other is the fallback")
    parser.add_argument('--random-init', action='store_true', help='export untrained weights (seed 0)')
    parser.add_argument('--out', default=None, help='output .onnx file (default: <checkpoint or arch>[_fp16].onnx)')
    parser.add_argument('--fp16', action='store_true', help='export a half-precision model (float16 input/output)')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default 17; 18 with --exporter dynamo)')
    parser.add_argument('--exporter', choices=('torchscript', 'dynamo'), default='torchscript',
                        help='torch.onnx.export(dynamo=False) (default) or the torch.export-based exporter')
    parser.add_argument('--static', action='store_true', help='fixed input shape (1 x C x --export-size)')
    parser.add_argument('--export-size', default='32x32', metavar='HxW', help='trace input size (default 32x32)')
    parser.add_argument('--check-image', default=None, metavar='IMG',
                        help='photo to crop the check input from (default: first of ../shared/data/photos/LR)')
    parser.add_argument('--check-size', default='48x64', metavar='HxW', help='check crop size (default 48x64)')
    parser.add_argument('--tol', type=float, default=None,
                        help=f'largest accepted max |onnx - torch| (default {FP32_TOL:g}; {FP16_TOL:g} with --fp16)')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    args = parser.parse_args(argv)
    args.export_size = parse_size(args.export_size, '--export-size')
    args.check_size = parse_size(args.check_size, '--check-size')
    if args.tol is not None and not args.tol >= 0:
        parser.error(f'--tol must be >= 0, got {args.tol}')
    if args.tol is None:
        args.tol = FP16_TOL if args.fp16 else FP32_TOL
    return args


def require_onnx(exporter: str = 'torchscript') -> None:
    """One-line UserError when the optional packages are missing (checked before torch is imported)."""
    if any(importlib.util.find_spec(name) is None for name in ('onnx', 'onnxruntime')):
        raise UserError(MISSING_DEPS)
    if exporter == 'dynamo' and importlib.util.find_spec('onnxscript') is None:
        raise UserError('export_onnx.py --exporter dynamo needs onnxscript: pip install -e ".[onnx]" '
                        '(or use the default --exporter torchscript)')


def safetensors_header(path: str) -> dict:
    """The ``__metadata__`` of a ``.safetensors`` file (empty dict when unreadable), without torch."""
    try:
        with open(path, 'rb') as f:
            (n,) = struct.unpack('<Q', f.read(8))
            if n > 100_000_000:
                return {}
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return {}
    meta = header.get('__metadata__') if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def resolve_inputs(args) -> dict:
    """Network options, checkpoint and param key from the command line / option file (no torch)."""
    from desra.config import load_yaml_file, yaml_load

    opt = load_yaml_file(args.opt) if args.opt else {}
    path_opt = opt.get('path') or {}
    if not isinstance(path_opt, dict):
        raise ConfigError(f"{args.opt}: path: expected a mapping, got {type(path_opt).__name__}")

    ckpt, ckpt_key = None, None
    if args.checkpoint:
        ckpt, ckpt_key = args.checkpoint, '--checkpoint'
    elif path_opt.get('pretrain_network_g') or path_opt.get('pretrain_model_g'):
        ckpt = path_opt.get('pretrain_network_g') or path_opt.get('pretrain_model_g')
        ckpt_key = 'path.pretrain_network_g'
    if ckpt is not None:
        ckpt = os.fspath(ckpt)
        if not os.path.isfile(ckpt):  # the loader's own wording, before torch is imported
            raise CheckpointError(f"{ckpt_key}: checkpoint '{ckpt}' does not exist or is not a file")
        if args.random_init:
            raise ConfigError(f'--random-init and {ckpt_key} exclude each other: drop one of them')
    elif not args.random_init:
        raise ConfigError('no weights: give --checkpoint PATH (or path.pretrain_network_g in -opt), '
                          'or --random-init to export untrained weights')

    if args.network is not None:
        try:
            net_opt, net_key = yaml_load(args.network, '--network'), '--network'
        except ConfigError as e:  # PyYAML's message spans several lines
            raise ConfigError(' '.join(str(e).split())) from None
    elif args.opt:
        if 'network_g' not in opt:
            raise ConfigError(f"{args.opt}: network_g: missing (or give --network)")
        net_opt, net_key = opt['network_g'], 'network_g'
    else:
        meta = safetensors_header(ckpt) if ckpt and ckpt.endswith('.safetensors') else {}
        if 'arch' not in meta:
            where = f" (the header of {ckpt} names no 'arch')" if ckpt and ckpt.endswith('.safetensors') else ''
            raise ConfigError(f"no network: give --network '{{type: ..., ...}}' or -opt FILE{where}")
        try:
            kwargs = json.loads(meta.get('kwargs') or '{}')
        except ValueError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{ckpt}: header 'kwargs' is not a JSON mapping; give --network")
        net_opt, net_key = {'type': meta['arch'], **kwargs}, f'{ckpt} header'
    if not isinstance(net_opt, dict):
        raise ConfigError(f"{net_key}: expected a mapping with a 'type' key, got {type(net_opt).__name__}")

    param_key = args.param_key or path_opt.get('param_key_g') or 'params_ema'
    out = args.out
    if out is None:
        stem = os.path.splitext(os.path.basename(ckpt))[0] if ckpt else str(net_opt.get('type', 'network'))
        out = f"{stem}{'_fp16' if args.fp16 else ''}.onnx"
    if os.path.isdir(out):
        raise ConfigError(f'--out: {out} is a folder; give a file name such as {os.path.join(out, "model.onnx")}')
    opset = args.opset if args.opset is not None else DEFAULT_OPSET[args.exporter]
    return {'net_opt': dict(net_opt), 'net_key': net_key, 'checkpoint': ckpt, 'ckpt_key': ckpt_key,
            'param_key': param_key, 'out': out, 'opset': opset}


def default_check_image() -> str | None:
    if not os.path.isdir(PHOTOS_LR):
        return None
    names = sorted(n for n in os.listdir(PHOTOS_LR) if n.lower().endswith(IMAGE_SUFFIXES))
    return os.path.join(PHOTOS_LR, names[0]) if names else None


def show_path(path: str) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if rel.startswith('..') else rel


def check_input(image: str | None, size: tuple[int, int], channels: int, multiple: int, batch: int):
    """``(array N x C x h x w float32 in [0,1], description)``: a centre crop of ``image`` (RGB) with its mirror.

    ``h, w`` are ``size`` clipped to the image and rounded down to ``multiple``. Without an image (or for a
    network that is neither RGB nor grayscale) a fixed random input of ``size`` is used.
    """
    import numpy as np

    h, w = (s // multiple * multiple for s in size)
    if image is not None and channels in (1, 3):
        from desra.data.io import imread

        img = imread(image, flag='grayscale' if channels == 1 else 'color')
        img = img[:, :, None] if img.ndim == 2 else img[:, :, ::-1]  # BGR -> RGB
        h, w = min(h, img.shape[0] // multiple * multiple), min(w, img.shape[1] // multiple * multiple)
        if h < 1 or w < 1:
            raise DataError(f'--check-image: {image} is {img.shape[0]}x{img.shape[1]}, smaller than the '
                            f'network\'s input multiple {multiple}')
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        crop = np.ascontiguousarray(img[top:top + h, left:left + w].transpose(2, 0, 1)).astype(np.float32) / 255.0
        x = np.stack([crop, crop[:, :, ::-1]][:batch])
        return np.ascontiguousarray(x), f'{show_path(image)} centre crop {h}x{w}'
    if h < 1 or w < 1:
        raise ConfigError(f'--check-size: {size[0]}x{size[1]} is smaller than the input multiple {multiple}')
    x = np.random.default_rng(0).random((batch, channels, h, w), dtype=np.float32)
    return x, f'fixed random input {h}x{w} (no check image)'


def build_network(info: dict, random_init: bool):
    import torch

    import desra.archs  # noqa: F401  (registers the built-in architectures)
    from desra.archs.checkpoint_io import load_network_weights
    from desra.registry import ARCH_REGISTRY

    torch.manual_seed(0)
    net = ARCH_REGISTRY.build(dict(info['net_opt']), info['net_key'])
    if not isinstance(net, torch.nn.Module):
        raise ConfigError(f"{info['net_key']}.type: '{info['net_opt']['type']}' is not a network")
    if not random_init:
        load_network_weights(net, info['checkpoint'], param_key=info['param_key'], strict=True,
                             key_path=info['ckpt_key'])
    return net.eval().float()


def input_channels(net, net_opt: dict) -> int:
    for value in (getattr(net, 'in_channels', None), net_opt.get('num_in_ch'), net_opt.get('in_channels')):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    first = next((m for m in net.modules() if hasattr(m, 'in_channels')), None)
    return int(first.in_channels) if first is not None else 3


def export_to_bytes(net, dummy, exporter: str, opset: int, dynamic: bool, type_name: str) -> bytes:
    """Run ``torch.onnx.export`` in memory; failures become one ConfigError line."""
    import io
    import warnings

    import torch

    kwargs = {'input_names': ['input'], 'output_names': ['output'], 'opset_version': opset, 'dynamo': False}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated, and the tracer that shape checks (such as
            # RRDBNet's divisibility check) are fixed at trace time; neither changes the exported graph.
            warnings.filterwarnings('ignore', category=DeprecationWarning)
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            if exporter == 'torchscript':
                if dynamic:
                    kwargs['dynamic_axes'] = {'input': {0: 'batch', 2: 'height', 3: 'width'},
                                              'output': {0: 'batch', 2: 'out_height', 3: 'out_width'}}
                buf = io.BytesIO()
                with torch.no_grad():
                    torch.onnx.export(net, (dummy,), buf, **kwargs)
                return buf.getvalue()
            kwargs['dynamo'] = True
            if dynamic:
                auto = torch.export.Dim.AUTO
                kwargs['dynamic_shapes'] = ({0: auto, 2: auto, 3: auto},)
            warnings.filterwarnings('ignore', category=FutureWarning)
            registration = logging.getLogger('torch.onnx._internal.exporter._registration')
            level = registration.level
            registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms"
            try:
                program = torch.onnx.export(net, (dummy,), None, verbose=False, **kwargs)
            finally:
                registration.setLevel(level)
            model = program.model_proto
            rename_symbolic_dims(model)
            return model.SerializeToString()
    except Exception as e:  # unsupported operator / opset, shape errors in forward, ...
        first = (str(e).strip().splitlines() or [''])[0]
        raise ConfigError(f"torch.onnx.export ({exporter}, opset {opset}) failed for {type_name}: "
                          f"{type(e).__name__}: {first}; check --export-size, or try another --opset or "
                          "--exporter") from None


def rename_symbolic_dims(model) -> None:
    """Name the dynamo exporter's symbols (``s77 x 3 x s53 x s0``) batch, height and width, in the whole graph."""
    names = {}
    for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim, ('batch', None, 'height', 'width')):
        if name and d.dim_param and re.fullmatch(r'[A-Za-z_]\w*', d.dim_param):
            names[d.dim_param] = name
    if not names:
        return
    pattern = re.compile(r'\b(' + '|'.join(re.escape(k) for k in names) + r')\b')
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)


def finish_model(data: bytes, metadata: dict, opset: int):
    """Add metadata, run the ONNX checker; returns ``(bytes, model)``."""
    import onnx

    model = onnx.load_from_string(data)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConfigError(f'the exported model fails the ONNX checker (opset {opset}): '
                          f'{(str(e).strip().splitlines() or [""])[0]}') from None
    return model.SerializeToString(), model


def run_onnxruntime(data: bytes, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=['CPUExecutionProvider'])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as e:
        first = (str(e).strip().splitlines() or [''])[0]
        raise ExportCheckError(f'onnxruntime {ort.__version__} (CPU) cannot run the exported model: {first}') \
            from None


def dims(value_info) -> str:
    shape = value_info.type.tensor_type.shape
    return ' x '.join(d.dim_param or str(d.dim_value) for d in shape.dim)


def main(argv=None):
    args = parse_args(argv)
    info = resolve_inputs(args)
    require_onnx(args.exporter)
    if args.check_image is not None and not os.path.isfile(args.check_image):
        raise DataError(f'--check-image: {os.path.abspath(args.check_image)} does not exist')

    import copy

    import numpy as np
    import onnx
    import onnxruntime
    import torch

    from desra.atomic import atomic_write_bytes
    from desra.models.base_model import network_scale

    from torch.onnx import _constants

    low = 9
    high = getattr(_constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET' if args.exporter == 'torchscript'
                   else 'ONNX_MAX_OPSET', 20)
    if not low <= info['opset'] <= high:
        raise ConfigError(f"--opset: {info['opset']} is outside what the {args.exporter} exporter of torch "
                          f"{torch.__version__} writes ({low} to {high})")
    net = build_network(info, args.random_init)
    type_name = info['net_opt']['type']
    multiple = int(getattr(net, 'mod_pad', 1) or 1)
    channels = input_channels(net, info['net_opt'])
    scale = network_scale(net)

    if args.static:
        ex_h, ex_w = args.check_size = args.export_size
    else:
        ex_h, ex_w = args.export_size
    ex_h, ex_w = max(multiple, ex_h // multiple * multiple), max(multiple, ex_w // multiple * multiple)
    dtype = torch.float16 if args.fp16 else torch.float32
    dummy = torch.rand(1, channels, ex_h, ex_w, generator=torch.Generator().manual_seed(0)).to(dtype)
    export_net = copy.deepcopy(net).half() if args.fp16 else net

    data = export_to_bytes(export_net, dummy, args.exporter, info['opset'], not args.static, type_name)
    metadata = {'desra_network': json.dumps(info['net_opt']), 'scale': str(scale or ''),
                'input_multiple': str(multiple), 'input': 'RGB float in [0,1], N x C x H x W',
                'dtype': 'float16' if args.fp16 else 'float32',
                'checkpoint': os.path.basename(info['checkpoint']) if info['checkpoint'] else 'random init',
                'param_key': info['param_key'] if info['checkpoint'] else '', 'exporter': args.exporter,
                'torch': torch.__version__}
    data, model = finish_model(data, metadata, info['opset'])
    opset = next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), info['opset'])
    print(f"exported {type_name} ({'fp16' if args.fp16 else 'fp32'}, {args.exporter} exporter, opset {opset}): "
          f"input {dims(model.graph.input[0])}, output {dims(model.graph.output[0])}"
          f"{f', H and W multiples of {multiple}' if multiple > 1 else ''}")

    result = {'out': info['out'], 'opset': opset, 'exporter': args.exporter, 'fp16': args.fp16,
              'export_size': (ex_h, ex_w), 'max_diff': None, 'bytes': len(data)}
    if not args.no_check:
        image = args.check_image if args.check_image is not None else default_check_image()
        x, what = check_input(image, args.check_size, channels, multiple, 1 if args.static else 2)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        out = run_onnxruntime(data, x.astype(np.float16) if args.fp16 else x)
        if out.shape != ref.shape:
            raise ExportCheckError(f'onnxruntime output shape {list(out.shape)} != torch {list(ref.shape)} for '
                                   f'input {list(x.shape)}')
        diff = float(np.abs(out.astype(np.float32) - ref).max())
        peak = float(np.abs(ref).max())
        limit = args.tol * max(1.0, peak)
        result.update(max_diff=diff, peak=peak, check_shape=tuple(x.shape), check_input=what)
        scaled = f', scaled by the output peak {peak:.3g}' if peak > 2 else ''
        print(f'check: {what}, batch {x.shape[0]}, onnxruntime {onnxruntime.__version__} CPU vs torch fp32: '
              f'max |diff| = {diff:.3g} (tolerance {limit:.3g}{scaled})')
        if not diff <= limit:
            raise ExportCheckError(f'max |onnx - torch| = {diff:.3g} exceeds the tolerance {limit:.3g}; '
                                   f'{info["out"]} was not written (--tol to accept, --no-check to skip)')
    atomic_write_bytes(info['out'], data)
    print(f"wrote {info['out']} ({len(data) / 2**20:.1f} MiB; onnx {onnx.__version__})")
    return result


if __name__ == '__main__':
    run_cli(main)
