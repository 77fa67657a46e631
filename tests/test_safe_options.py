"""Bad options are refused with one line naming the key and what was expected, before torch is imported and
before anything is written; unknown, duplicate and ignored keys; name safety; --help without torch."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import (REPO, TINY_GAN_LDL, cli_env, cli_main, data_overrides, run_script, tree_snapshot,
                      user_error_in_process)
from desra.config import load_yaml_file, validate_options, yaml_load
from desra.errors import ConfigError

# Each bad value of the issue, with the exact one-line message train.py must print.
BAD_VALUES = [
    ('train:total_iters=2', 'train.total_iters: unknown key; did you mean total_iter?'),
    ('datasets:train:batch_size_per_gpu=0',
     'datasets.train.batch_size_per_gpu: expected a positive integer (>= 1), got 0'),
    ('datasets:train:batch_size_per_gpu=-4',
     'datasets.train.batch_size_per_gpu: expected a positive integer (>= 1), got -4'),
    ('datasets:train:num_worker_per_gpu=-1', 'datasets.train.num_worker_per_gpu: expected an integer >= 0, got -1'),
    ('train:optim_g:lr=.nan', 'train.optim_g.lr: expected a positive finite number, got nan'),
    ('train:optim_g:lr=0', 'train.optim_g.lr: expected a positive finite number, got 0'),
    ('train:optim_d:lr=-1e-4', 'train.optim_d.lr: expected a positive finite number, got -0.0001'),
    ('logger:print_freq=0', 'logger.print_freq: expected a positive integer (>= 1), got 0'),
    ('logger:save_checkpoint_freq=0.5', 'logger.save_checkpoint_freq: expected a positive integer (>= 1), got 0.5 '
                                        '(float)'),
    ('logger:save_checkpoint_freq=0', 'logger.save_checkpoint_freq: expected a positive integer (>= 1), got 0'),
    ('train:total_iter=0', 'train.total_iter: expected a positive integer (>= 1), got 0'),
    ('train:ema_decay=1.0', 'train.ema_decay: expected a number in [0, 1) (0 = no EMA; LDL uses 0.999), got 1.0'),
    ('train:ema_decay=-0.1', 'train.ema_decay: expected a number in [0, 1) (0 = no EMA; LDL uses 0.999), got -0.1'),
    ('val:val_freq=0', 'val.val_freq: expected a positive integer (>= 1), got 0'),
    ('num_gpu=-1', 'num_gpu: expected an integer >= 0, got -1'),
    ('num_gpu=gpu', "num_gpu: expected 'auto' or an integer >= 0 (0 = CPU), got 'gpu'"),
    ('name=../../x', "name: expected a plain folder name (no '/', '\\', '..', surrounding spaces or absolute path; it "
                     "names experiments/<name>), got '../../x'"),
    ('name=/tmp/abs', "name: expected a plain folder name (no '/', '\\', '..', surrounding spaces or absolute path; "
                      "it names experiments/<name>), got '/tmp/abs'"),
    ('name=..', "name: expected a plain folder name (no '/', '\\', '..', surrounding spaces or absolute path; it "
                "names experiments/<name>), got '..'"),
    ('scale=0', 'scale: expected a positive integer (>= 1), got 0'),
    ('logger:wandbb={project: x}', 'logger.wandbb: unknown key; did you mean wandb?'),
    ('val:metrics:psnr:type=[1]', "val.metrics.psnr.type: expected a string, got [1] (list)"),
]


@pytest.mark.parametrize('override, message', BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_one_line_and_touches_nothing(tmp_path, tiny_data, override, message):
    (tmp_path / 'keep.txt').write_text('user file')
    before = tree_snapshot(tmp_path)
    out = run_script('train.py', ['-opt', TINY_GAN_LDL, '--force_yml', *data_overrides(tiny_data), override],
                     tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr == f'error: {message}\n'
    assert out.stdout == ''
    assert tree_snapshot(tmp_path) == before  # no experiments/ or tb_logger/ folder, nothing else touched


def test_option_errors_come_before_torch_is_imported(tmp_path):
    code = textwrap.dedent(f'''
        import runpy, sys
        sys.argv = ['train.py', '-opt', {TINY_GAN_LDL!r}, '--force_yml', 'train:total_iters=2']
        try:
            runpy.run_path({os.path.join(REPO, 'train.py')!r}, run_name='__main__')
        except SystemExit as e:
            print('exit', e.code, 'torch' in sys.modules)
    ''')
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                         timeout=60)
    assert out.stdout.strip() == 'exit 2 False', out.stderr


@pytest.mark.parametrize('script', ['train.py', 'test.py', 'detect.py', 'scripts/desra_pipeline.py',
                                    'scripts/make_pseudo_gt.py'])
def test_help_does_not_import_torch(tmp_path, script):
    code = textwrap.dedent(f'''
        import runpy, sys
        sys.argv = [{script!r}, '--help']
        try:
            runpy.run_path({os.path.join(REPO, script)!r}, run_name='__main__')
        except SystemExit as e:
            print('exit', e.code, 'torch' in sys.modules)
    ''')
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                         timeout=60)
    assert out.stdout.strip().endswith('exit 0 False'), out.stdout + out.stderr
    assert 'usage:' in out.stdout


def test_duplicate_yaml_key_names_key_and_both_lines(tmp_path):
    text = open(TINY_GAN_LDL).read().replace('  total_iter: 30\n', '  total_iter: 30\n  warmup_iter: -1\n'
                                             '  total_iter: 40\n')
    path = tmp_path / 'dup.yml'
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index('  total_iter: 30') + 1
    second = lines.index('  total_iter: 40') + 1
    with pytest.raises(ConfigError) as e:
        load_yaml_file(str(path))
    assert str(e.value) == (f"{path}: duplicate key 'total_iter' on lines {first} and {second} (YAML would silently "
                            f"keep the last value); remove one of them")
    out = run_script('train.py', ['-opt', str(path)], tmp_path)
    assert out.returncode == 2 and out.stderr == f'error: {e.value}\n'
    # nested mappings too, and flow style
    with pytest.raises(ConfigError, match=r"<string>: duplicate key 'lr' on lines 1 and 1"):
        yaml_load('optim_g: {type: Adam, lr: 1e-4, lr: 2e-4}')


def test_unknown_key_suggestion_or_list():
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['logger']['print_frequency'] = 5
    with pytest.raises(ConfigError) as e:
        validate_options(opt)
    assert str(e.value) == 'logger.print_frequency: unknown key; did you mean print_freq?'
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['dist_params'] = {'backend': None, 'zzz': 1}
    with pytest.raises(ConfigError) as e:
        validate_options(opt)
    assert str(e.value) == 'dist_params.zzz: unknown key; known keys here: backend, port'
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['bogus_top'] = 1
    with pytest.raises(ConfigError, match=r'^bogus_top: unknown key; '):
        validate_options(opt)


def test_ignored_basicsr_keys_warn_once_each():
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['datasets']['train']['prefetch_mode'] = 'cpu'
    opt['logger']['wandb'] = {'project': None, 'resume_id': None}
    opt['val']['pbar'] = True
    warnings = []
    validate_options(opt, warnings=warnings)
    assert warnings == [
        'datasets.train.prefetch_mode: accepted and ignored (data are loaded by DataLoader workers; set '
        'num_worker_per_gpu)',
        'val.pbar: accepted and ignored (progress is always shown: a bar on a terminal, log lines otherwise)',
        'logger.wandb: accepted and ignored (Weights & Biases logging is not built in; use TensorBoard)']


def test_basicsr_float_counts_become_integers():
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['val']['val_freq'] = 5e3
    opt['logger']['save_checkpoint_freq'] = 5000.0
    opt['train']['total_iter'] = 4e5
    validate_options(opt)
    assert (opt['val']['val_freq'], opt['logger']['save_checkpoint_freq'], opt['train']['total_iter']) == \
        (5000, 5000, 400000)
    assert all(type(v) is int for v in (opt['val']['val_freq'], opt['train']['total_iter']))


def _tiny_args(tiny_data, *extra):
    return ['-opt', TINY_GAN_LDL, '--force_yml', *data_overrides(tiny_data), 'train:total_iter=1', *extra]


@pytest.mark.parametrize('override, message', [
    ('scale=2', "scale: 2, but network_g (RRDBNet) upscales x4; set scale and the generator's scale/upscale option "
                "to the same factor"),
    ('val:metrics:psnr:crop_borders=4', 'val.metrics.psnr.crop_borders: unknown key; did you mean crop_border?'),
    ('datasets:train:batch_size_per_gpus=2', 'datasets.train.batch_size_per_gpus: unknown key; did you mean '
                                             'batch_size_per_gpu?'),
    ('train:optim_g:amsgradd=true', 'train.optim_g.amsgradd: unknown key; did you mean amsgrad?'),
    ('network_g:num_feats=8', 'network_g.num_feats: unknown option for RRDBNet; did you mean num_feat? accepted: '
                              'num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch'),
])
def test_errors_found_when_building_come_before_the_folder(tmp_path, tiny_data, override, message, monkeypatch):
    before = tree_snapshot(tmp_path)
    main = cli_main('train.py')
    assert user_error_in_process(main, _tiny_args(tiny_data, override), tmp_path, monkeypatch) == message
    assert tree_snapshot(tmp_path) == before
