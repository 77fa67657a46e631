"""Registries, YAML options, --force_yml and their error messages."""
import os
import subprocess
import sys

import pytest

from desra.config import apply_force_yml, load_yaml_file, parse_options, validate_options, yaml_load
from desra.errors import ConfigError
from desra.registry import ARCH_REGISTRY, Registry, import_user_modules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'options', 'tiny', 'gan_ldl.yml')


def tiny_opt():
    return load_yaml_file(TINY)


# ------------------------------------------------------------------------------------------- registry
def test_registry_decorator_get_and_build():
    reg = Registry('toy')

    @reg.register()
    class Foo:
        def __init__(self, a, b=2):
            self.a, self.b = a, b

    @reg.register(name='Bar')
    def make_bar(x=1):
        return ('bar', x)

    assert reg.get('Foo') is Foo
    foo = reg.build({'type': 'Foo', 'a': 5}, 'network_g')
    assert (foo.a, foo.b) == (5, 2)
    assert reg.build({'type': 'Bar', 'x': 3}, 'k') == ('bar', 3)
    reg.register(Foo)  # same object again: a no-op
    with pytest.raises(KeyError, match="'Foo' is already registered"):
        reg.register(type('Foo', (), {}))


def test_unknown_type_names_key_path_lists_names_and_suggests():
    import desra.archs  # noqa: F401

    with pytest.raises(ConfigError) as e:
        ARCH_REGISTRY.build({'type': 'RRDBNett', 'num_in_ch': 3}, 'network_g')
    msg = str(e.value)
    assert msg.startswith("network_g.type: unknown arch type 'RRDBNett'. Did you mean 'RRDBNet'?")
    for name in ('RRDBNet', 'UNetDiscriminatorSN', 'VGGStyleDiscriminator'):
        assert name in msg.split('Registered:')[1]


def test_unknown_constructor_option_names_key_path():
    import desra.archs  # noqa: F401

    with pytest.raises(ConfigError, match=r"^network_g\.num_feats: unknown option for RRDBNet; did you mean num_feat\? "
                                          r"accepted: "):
        ARCH_REGISTRY.build({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feats': 8}, 'network_g')


def test_import_modules_registers_user_arch(tmp_path, monkeypatch):
    pkg = tmp_path / 'my_pkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'my_arch.py').write_text(
        'from torch import nn\nfrom desra.registry import ARCH_REGISTRY\n\n'
        '@ARCH_REGISTRY.register()\nclass MyTinyNet(nn.Conv2d):\n'
        '    def __init__(self, ch=3):\n        super().__init__(ch, ch, 3, padding=1)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    import_user_modules(['my_pkg.my_arch'])
    net = ARCH_REGISTRY.build({'type': 'MyTinyNet', 'ch': 2}, 'network_g')
    assert net.weight.shape == (2, 2, 3, 3)
    with pytest.raises(ConfigError, match=r"^import_modules\[0\]: cannot import module 'no_such_pkg\.arch'"):
        import_user_modules(['no_such_pkg.arch'])


def test_builtin_imports_have_no_side_effects(tmp_path):
    # importing every built-in package in a fresh interpreter writes nothing and needs no network or GPU
    code = ('import os, desra.archs, desra.losses, desra.data, desra.metrics, desra.models, desra.engine.trainer;'
            'print(sorted(os.listdir(".")))')
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, 'PYTHONPATH': REPO}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


# ------------------------------------------------------------------------------------------ YAML / CLI
def test_yaml_reads_exponent_floats_without_dot():
    assert yaml_load('lr: 1e-4\nb: !!float 2e-3\nc: 3\nd: 1.5') == {'lr': 1e-4, 'b': 2e-3, 'c': 3, 'd': 1.5}


def test_force_yml_parses_yaml_and_creates_keys():
    opt = {'train': {'total_iter': 10, 'optim_g': {'lr': 1e-4}}}
    apply_force_yml(opt, ['train:total_iter=20', 'train:optim_g:betas=[0.9, 0.99]', 'logger:print_freq=1',
                          'name=exp "a"', 'path:resume_state=~', 'train:optim_g:lr=2e-4'])
    assert opt == {'train': {'total_iter': 20, 'optim_g': {'lr': 2e-4, 'betas': [0.9, 0.99]}},
                   'logger': {'print_freq': 1}, 'name': 'exp "a"', 'path': {'resume_state': None}}


@pytest.mark.parametrize('expr, message', [
    ('train:total_iter', "--force_yml 'train:total_iter': expected KEY:SUBKEY=VALUE (e.g. train:total_iter=1000)"),
    ('train::x=1', "--force_yml 'train::x=1': empty key in 'train::x'; expected KEY:SUBKEY=VALUE"),
    ('train:optim_g=[1, 2', "--force_yml 'train:optim_g=[1, 2': the value '[1, 2' is not valid YAML"),
    ('name:sub=1', "--force_yml 'name:sub=1': 'name' is a str, not a mapping"),
])
def test_force_yml_bad_expression(expr, message):
    with pytest.raises(ConfigError) as e:
        apply_force_yml({'name': 'x', 'train': {}}, [expr])
    assert str(e.value).startswith(message)


def test_force_yml_never_evaluates_code(tmp_path):
    marker = tmp_path / 'pwned'
    opt = {}
    apply_force_yml(opt, [f"name=__import__('os').system('touch {marker}')"])
    assert isinstance(opt['name'], str) and not marker.exists()


@pytest.mark.parametrize('mutate, message', [
    (lambda o: o.pop('scale'), 'scale: missing required key (expected an integer)'),
    (lambda o: o['network_g'].pop('type'), 'network_g.type: missing required key (expected a string)'),
    (lambda o: o['train'].pop('total_iter'), 'train.total_iter: missing required key (expected an integer)'),
    (lambda o: o['train'].update(total_iter='many'), "train.total_iter: expected an integer, got 'many' (str)"),
    (lambda o: o['train'].update(total_iter=True), 'train.total_iter: expected an integer, got True (bool)'),
    (lambda o: o['train']['optim_g'].update(lr='fast'), "train.optim_g.lr: expected a number, got 'fast' (str)"),
    (lambda o: o['datasets']['train'].update(gt_size=32.5),
     'datasets.train.gt_size: expected a positive integer (>= 1), got 32.5 (float)'),
    (lambda o: o['train']['pixel_opt'].pop('type'), 'train.pixel_opt.type: missing required key'),
    (lambda o: o['datasets'].pop('train'), 'datasets.train: missing required key (expected a mapping)'),
    (lambda o: o['logger'].update(print_freq='10'), "logger.print_freq: expected an integer, got '10' (str)"),
    (lambda o: o.update(network_d=['UNet']), "network_d: expected a mapping, got ['UNet'] (list)"),
])
def test_validation_reports_key_path(mutate, message):
    opt = tiny_opt()
    mutate(opt)
    with pytest.raises(ConfigError) as e:
        validate_options(opt)
    assert str(e.value).startswith(message), str(e.value)


def test_tiny_options_are_valid_and_parse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt, args = parse_options(['-opt', TINY, '--local-rank', '0', '--force_yml', 'train:total_iter=3'])
    assert opt['train']['total_iter'] == 3 and opt['dist'] is False and opt['world_size'] == 1
    assert opt['path']['models'] == str(tmp_path / 'experiments' / 'tiny_gan_ldl' / 'models')
    assert opt['path']['tb_logger'] == str(tmp_path / 'tb_logger' / 'tiny_gan_ldl')
    assert opt['datasets']['train']['phase'] == 'train' and opt['datasets']['val']['phase'] == 'val'
    assert opt['datasets']['train']['scale'] == 4
    opt, _ = parse_options(['-opt', TINY, '--debug', '--local_rank', '1'])
    assert opt['name'] == 'debug_tiny_gan_ldl'
    assert (opt['logger']['print_freq'], opt['logger']['save_checkpoint_freq'], opt['val']['val_freq']) == (1, 8, 8)


def _run_cli(script, args, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'PYTHONPATH': REPO})


def test_cli_user_error_is_one_line_without_traceback(tmp_path, tiny_data):
    from conftest import data_overrides

    out = _run_cli('train.py', ['-opt', TINY, '--force_yml', 'network_g:type=RRDBNet_', *data_overrides(tiny_data)],
                   tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.startswith("error: network_g.type: unknown arch type 'RRDBNet_'. Did you mean 'RRDBNet'? "
                                 "Registered: ")

    out = _run_cli('train.py', ['-opt', TINY, '--force_yml', 'train:optim_g:lr=fast'], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip() == "error: train.optim_g.lr: expected a number, got 'fast' (str)"

    out = _run_cli('train.py', ['-opt', str(tmp_path / 'missing.yml')], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: option file not found: {tmp_path / 'missing.yml'}"

    out = _run_cli('train.py', ['-opt', TINY, '--force_yml', 'train:total_iter=[1'], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.startswith("error: --force_yml 'train:total_iter=[1': the value '[1' is not valid YAML")


def test_constructor_value_errors_name_the_key_path():
    import desra.losses  # noqa: F401
    from desra.registry import LOSS_REGISTRY

    with pytest.raises(ConfigError) as e:
        LOSS_REGISTRY.build({'type': 'L1Loss', 'reduction': 'avg'}, 'train.pixel_opt')
    assert str(e.value).startswith('train.pixel_opt: ') and "'avg'" in str(e.value)
