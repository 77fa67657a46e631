"""Training speed options (desra.engine.speed): defaults, errors, and that each leaves the losses unchanged."""
import os
import re

import pytest
import torch

from desra.config import load_yaml_file, validate_options
from desra.engine.speed import optimizer_speed_kwargs, resolve_speed_options
from desra.errors import ConfigError
from desra.models.base_model import _cpu_state
from conftest import tiny_gan_ldl_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU, CUDA = torch.device('cpu'), torch.device('cuda')  # a device object needs no GPU


def test_defaults_per_device_and_explicit_values_win():
    assert resolve_speed_options({}, CPU) == {'channels_last': True, 'compile': None, 'fused_optim': True,
                                              'cudnn_benchmark': False, 'tf32': False}
    assert resolve_speed_options({}, CUDA) == {'channels_last': True, 'compile': None, 'fused_optim': True,
                                               'cudnn_benchmark': True, 'tf32': True}
    off = resolve_speed_options({'channels_last': False, 'fused_optim': False, 'tf32': False, 'compile': 'auto'},
                                CUDA)
    assert off == {'channels_last': False, 'compile': None, 'fused_optim': False, 'cudnn_benchmark': True,
                   'tf32': False}
    assert resolve_speed_options({}, CUDA, deterministic=True)['cudnn_benchmark'] is False
    assert resolve_speed_options({'compile': 'max-autotune'}, CPU)['compile'] == {
        'mode': 'max-autotune', 'backend': 'inductor', 'dynamic': None}
    assert resolve_speed_options({'compile': True}, CPU)['compile'] == {
        'mode': 'default', 'backend': 'inductor', 'dynamic': None}


@pytest.mark.parametrize('train, message', [
    ({'channels_last': 'yes'}, "train.channels_last: expected true, false or 'auto', got 'yes'"),
    ({'compile': 'fastest'}, "train.compile.mode: expected one of default, reduce-overhead, max-autotune, "
                             "max-autotune-no-cudagraphs, got 'fastest'"),
    ({'compile': {'mode': 'default', 'backnd': 'inductor'}},
     'train.compile.backnd: unknown key; known keys here: backend, dynamic, mode'),
    ({'compile': 3}, 'train.compile: expected true/false or a string or a mapping or null, got 3 (int)'),
])
def test_bad_speed_options_are_one_line_errors_before_torch_work(train, message):
    opt = load_yaml_file(os.path.join(REPO, 'options', 'tiny', 'gan_ldl.yml'))
    opt['train'].update(train)
    with pytest.raises(ConfigError) as e:
        validate_options(opt, is_train=True)
    assert str(e.value) == message


def test_cudnn_benchmark_with_deterministic_is_refused():
    with pytest.raises(ConfigError, match=re.escape('train.cudnn_benchmark: cannot be true with deterministic: '
                                                    'true (the autotuner chooses kernels by timing)')):
        resolve_speed_options({'cudnn_benchmark': True}, CUDA, deterministic=True)


def test_optimizer_implementation_choice():
    params = [torch.zeros(3, requires_grad=True)]
    on = {'fused_optim': True}
    assert optimizer_speed_kwargs('Adam', {}, on, params) == {'fused': True}
    assert optimizer_speed_kwargs('SGD', {}, on, params) == {'fused': True}
    assert optimizer_speed_kwargs('RMSprop', {}, on, params) == {'foreach': True}  # no fused kernel
    assert optimizer_speed_kwargs('Adam', {'fused': False}, on, params) == {}        # the block decides
    assert optimizer_speed_kwargs('Adam', {'foreach': False}, on, params) == {}
    assert optimizer_speed_kwargs('Adam', {}, {'fused_optim': False}, params) == {}
    assert optimizer_speed_kwargs('Adam', {}, None, params) == {}
    assert optimizer_speed_kwargs('Adam', {}, on, [torch.zeros(3, dtype=torch.int64)]) == {}


def _tiny_run(steps=2, **speed):
    return tiny_gan_ldl_run('cpu', steps, **speed)


def _max_diff(a, b):
    assert [sorted(x) for x in a] == [sorted(x) for x in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)


@pytest.fixture(scope='module')
def plain_run():
    return _tiny_run(channels_last=False, fused_optim=False)


def test_channels_last_gives_the_same_losses_and_saves_contiguous_weights(plain_run):
    losses, model = _tiny_run(channels_last=True, fused_optim=False)
    assert _max_diff(losses, plain_run[0]) < 1e-5
    conv = model.net_g.conv_first.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.ema.module.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.lq.is_contiguous(memory_format=torch.channels_last)
    saved = _cpu_state(model.net_g)
    assert all(v.is_contiguous() for v in saved.values())
    assert torch.equal(saved['conv_first.weight'], conv.detach())


def test_fused_optimizer_gives_the_same_losses(plain_run):
    losses, model = _tiny_run(channels_last=False, fused_optim=True)
    assert model.optimizer_g.defaults['fused'] is True and model.optimizer_d.defaults['fused'] is True
    assert plain_run[1].optimizer_g.defaults['fused'] is None
    assert _max_diff(losses, plain_run[0]) < 1e-5


def test_compile_gives_the_same_losses_and_keeps_state_dict_keys(plain_run):
    # aot_eager traces forward and backward through TorchDynamo and AOTAutograd as inductor does, without its
    # C++ code generation (minutes on 2 cores; measured with inductor: the same losses within 6e-8)
    losses, model = _tiny_run(channels_last=False, fused_optim=False, compile={'backend': 'aot_eager'})
    assert _max_diff(losses, plain_run[0]) < 1e-5
    assert list(model.net_g.state_dict()) == list(plain_run[1].net_g.state_dict())
    assert model.net_g._compiled_call_impl is not None


def test_compile_unavailable_falls_back_with_one_warning(monkeypatch, caplog):
    import desra.engine.speed as speed

    monkeypatch.setattr(speed.shutil, 'which', lambda name: None)
    monkeypatch.delenv('CXX', raising=False)
    with caplog.at_level('WARNING', logger='desra'):
        _, model = _tiny_run(steps=1, compile=True)
    assert model.speed['compile'] is None and model.net_g._compiled_call_impl is None
    assert [r.getMessage() for r in caplog.records if 'compile' in r.getMessage()] == [
        'train.compile: torch.compile is unavailable here (the inductor backend on CPU needs a C++ compiler '
        '(g++ not found; set CXX)); training without it']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without CUDA')
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    import subprocess
    import sys

    out = tmp_path / 'gpu_check'
    proc = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'gpu_check.sh'), str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, 'PYTHON': sys.executable})
    assert proc.returncode == 0
    assert proc.stdout == 'gpu_check: skipped: no CUDA device here (torch.cuda.is_available() is False)\n'
    assert not out.exists()
