"""scripts/export_onnx.py: ONNX export of SPAN and RRDBNet, checked with onnxruntime (CPU) against torch."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, cli_main, run_script, write_opt
from desra.errors import CheckpointError, ConfigError, UserError

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

SCRIPT = 'scripts/export_onnx.py'
PHOTOS_LR = os.path.join(SHARED, 'data', 'photos', 'LR')
SPAN_WEIGHTS = [os.path.join(REPO, 'pretrained', 'spanx4_ch48.safetensors'),
                os.path.join(SHARED, 'weights', 'spanx4_ch48.safetensors')]
SMALL_RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 2, 'num_feat': 16, 'num_block': 2,
              'num_grow_ch': 8}
SMALL_SPAN = {'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3, 'feature_channels': 8, 'upscale': 4}
FP32_TOL = 1e-4
FP16_TOL = 2e-2  # the script's --fp16 default: fp16 model vs fp32 torch (SPAN x4 measured ~2e-3)


@pytest.fixture(scope='module')
def export_main():
    return cli_main(SCRIPT)


def photo_crop(h, w):
    """RGB crop of a shared LR photo (N x 3 x h x w float32), or a fixed smooth synthetic image without one."""
    names = sorted(n for n in os.listdir(PHOTOS_LR) if n.endswith('.png')) if os.path.isdir(PHOTOS_LR) else []
    if names:
        import cv2

        img = cv2.imread(os.path.join(PHOTOS_LR, names[-1]))[:h, :w, ::-1]
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([128 + 100 * np.sin(xx / 5.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1)
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32) / 255.0


def span_weights(tmp_path):
    """(checkpoint, network options or None): the real SPAN x4 weights, else a small random SPAN."""
    for p in SPAN_WEIGHTS:
        if os.path.isfile(p):
            return p, None
    from safetensors.torch import save_file

    from desra.archs.span_arch import SPAN

    torch.manual_seed(1)
    net = SPAN(**{k: v for k, v in SMALL_SPAN.items() if k != 'type'})
    path = str(tmp_path / 'span_small.safetensors')
    save_file(net.state_dict(), path)
    return path, SMALL_SPAN


def torch_net(opt, checkpoint):
    import desra.archs  # noqa: F401
    from desra.archs.checkpoint_io import load_network_weights
    from desra.registry import ARCH_REGISTRY

    net = ARCH_REGISTRY.build(dict(opt), 'network').eval()
    load_network_weights(net, checkpoint)
    return net


def ort_run(path, x):
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {'input': x})[0]


def no_temp_files(folder):
    return not [n for n in os.listdir(folder) if n.endswith('.tmp')]


def test_span_export_matches_torch_on_other_size(export_main, tmp_path):
    ckpt, net_opt = span_weights(tmp_path)
    out = tmp_path / 'span.onnx'
    args = ['--checkpoint', ckpt, '--out', str(out), '--export-size', '32x32', '--check-size', '24x40']
    if net_opt is not None:
        args += ['--network', json.dumps(net_opt)]
    result = export_main(args)
    assert result['max_diff'] <= FP32_TOL and result['check_shape'][0] == 2  # the script's own check, batch 2
    assert result['check_shape'][2:] != result['export_size']
    model = onnx.load(str(out))
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ['batch', '', 'height', 'width']
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['scale'] == '4' and meta['checkpoint'] == os.path.basename(ckpt)

    x = photo_crop(40, 56)  # neither the export size nor the script's check size
    with torch.no_grad():
        ref = torch_net(net_opt or {'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3}, ckpt)(torch.from_numpy(x))
    got = ort_run(str(out), x)
    assert got.shape == (1, 3, 160, 224)
    assert np.abs(got - ref.numpy()).max() <= FP32_TOL * max(1.0, float(ref.abs().max()))
    assert no_temp_files(tmp_path)


def test_small_rrdb_x2_from_option_file(export_main, tmp_path):
    from desra.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(**{k: v for k, v in SMALL_RRDB.items() if k != 'type'}).eval()
    ckpt = tmp_path / 'net_g.pth'
    torch.save({'params': net.state_dict()}, ckpt)  # no params_ema: the loader falls back to params
    opt = write_opt(tmp_path / 'opt.yml', {'network_g': SMALL_RRDB,
                                           'path': {'pretrain_network_g': str(ckpt), 'param_key_g': 'params_ema'}})
    out = tmp_path / 'rrdb.onnx'
    result = export_main(['-opt', opt, '--out', str(out), '--opset', '17', '--check-size', '24x40'])
    assert result['max_diff'] <= FP32_TOL and result['opset'] == 17

    x = photo_crop(36, 52)  # pixel-unshuffle by 2: any even size
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = ort_run(str(out), x)
    assert got.shape == (1, 3, 72, 104)
    assert np.abs(got - ref).max() <= FP32_TOL


def test_fp16_export_within_looser_tolerance(export_main, tmp_path):
    ckpt, net_opt = span_weights(tmp_path)
    extra = ['--check-size', '24x32'] + (['--network', json.dumps(net_opt)] if net_opt is not None else [])
    out = tmp_path / 'span_fp16.onnx'
    with pytest.raises(UserError, match='exceeds the tolerance'):  # fp16 is never exact: nothing is written
        export_main(['--checkpoint', ckpt, '--fp16', '--tol', '0', '--out', str(out)] + extra)
    assert not out.exists() and no_temp_files(tmp_path)

    result = export_main(['--checkpoint', ckpt, '--fp16', '--out', str(out)] + extra)
    assert 0 < result['max_diff'] <= FP16_TOL * max(1.0, result['peak'])
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    got = ort_run(str(out), photo_crop(24, 40).astype(np.float16))
    assert got.dtype == np.float16 and got.shape == (1, 3, 96, 160)


def test_missing_checkpoint_is_one_line(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    res = run_script(SCRIPT, ['--network', '{type: SPAN, num_in_ch: 3, num_out_ch: 3}', '--checkpoint', missing,
                              '--out', str(tmp_path / 'x.onnx')], cwd=str(tmp_path))
    assert res.returncode == 2
    assert res.stderr == f"error: --checkpoint: checkpoint '{missing}' does not exist or is not a file\n"
    assert not (tmp_path / 'x.onnx').exists()


def test_bad_network_and_mismatched_keys(export_main, tmp_path):
    from safetensors.torch import save_file

    from desra.archs.span_arch import SPAN

    ckpt = str(tmp_path / 'span8.safetensors')
    save_file(SPAN(3, 3, 8, 4).state_dict(), ckpt)
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(ConfigError, match=r"--network\.type: unknown arch type 'SPANN'\. Did you mean 'SPAN'\?"):
        export_main(['--network', '{type: SPANN, num_in_ch: 3, num_out_ch: 3}', '--checkpoint', ckpt, '--out', out])
    with pytest.raises(CheckpointError, match=r"^--checkpoint: checkpoint '.*span8.safetensors' does not match SPAN: "
                                              r"\d+ shape mismatch"):
        export_main(['--network', '{type: SPAN, num_in_ch: 3, num_out_ch: 3, feature_channels: 16}',
                     '--checkpoint', ckpt, '--out', out])
    with pytest.raises(ConfigError, match='^no weights: give --checkpoint'):
        export_main(['--network', '{type: SPAN, num_in_ch: 3, num_out_ch: 3}', '--out', out])
    assert not os.path.exists(out)


def test_missing_packages_message(export_main, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxruntime' else real(name))
    with pytest.raises(UserError) as e:
        export_main(['--network', '{type: SPAN, num_in_ch: 3, num_out_ch: 3}', '--random-init'])
    assert str(e.value) == 'export_onnx.py needs onnx and onnxruntime: pip install -e ".[onnx]"'
