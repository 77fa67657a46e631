"""End-to-end training: experiment layout, checkpoint formats, exact resume after SIGKILL, DDP parity, NaN stop."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import KILLER_PLUGIN, REPO, TINY_GAN_LDL, cli_env, data_overrides, read_losses, run_script
from desra.engine.checkpoint import atomic_torch_save, find_latest_state, list_training_states


def train(cwd, data_root, *extra, name='tiny', extra_pythonpath=None):
    args = ['-opt', TINY_GAN_LDL, '--force_yml', f'name={name}', *data_overrides(data_root), *extra]
    return run_script('train.py', args, cwd, extra_pythonpath)


def test_training_writes_basicsr_layout_and_formats(tmp_path, tiny_data):
    out = train(tmp_path, tiny_data, 'train:total_iter=10', 'logger:use_tb_logger=true', 'val:val_freq=10',
                'val:save_img=true')
    assert out.returncode == 0, out.stderr
    exp = tmp_path / 'experiments' / 'tiny'
    assert sorted(os.listdir(exp / 'models')) == ['net_d_10.pth', 'net_d_5.pth', 'net_g_10.pth', 'net_g_5.pth']
    assert list_training_states(str(exp / 'training_states')) == [5, 10]
    g = torch.load(exp / 'models' / 'net_g_10.pth', weights_only=True)
    d = torch.load(exp / 'models' / 'net_d_10.pth', weights_only=True)
    assert set(g) == {'params', 'params_ema'} and set(d) == {'params'}
    assert 'conv_first.weight' in g['params'] and 'body.0.rdb1.conv1.weight' in g['params_ema']
    assert 'conv1.weight_orig' in d['params'] and 'conv1.weight_u' in d['params']
    # the EMA (decay 0.999) lags behind G: after 10 steps it is close to, but not equal to, G
    diff = (g['params']['conv_first.weight'] - g['params_ema']['conv_first.weight']).abs().max()
    assert 0 < diff < 0.05
    state = torch.load(exp / 'training_states' / '10.state', weights_only=True)
    assert state['iter'] == 10 and len(state['optimizers']) == 2 and len(state['rng_states']) == 1
    losses = read_losses(exp)
    assert sorted(losses) == list(range(1, 11))
    assert set(losses[1]) == {'l_g_pix', 'l_g_artifacts', 'l_g_gan', 'l_d_real', 'l_d_fake', 'out_d_real',
                              'out_d_fake'}
    # validation images and a TensorBoard event file
    assert sorted(os.listdir(exp / 'visualization' / 'tiny_val'))[0] == '0000_10.png'
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tb_logger' / 'tiny'))
    assert 'Validation tiny_val @ iter 10: psnr:' in open(next(exp.glob('train_tiny_*.log'))).read()


KILLER = KILLER_PLUGIN


def test_sigkill_then_auto_resume_reproduces_losses_exactly(tmp_path, tiny_data):
    ref_dir, run_dir, plugin_dir = tmp_path / 'ref', tmp_path / 'run', tmp_path / 'plugin'
    for d in (ref_dir, run_dir, plugin_dir):
        d.mkdir()
    (plugin_dir / 'killer_plugin.py').write_text(KILLER)

    ref = train(ref_dir, tiny_data, 'train:total_iter=30', 'val:val_freq=1000')
    assert ref.returncode == 0, ref.stderr
    ref_losses = read_losses(ref_dir / 'experiments' / 'tiny')
    assert sorted(ref_losses) == list(range(1, 31))

    env = cli_env(str(plugin_dir))
    env['DESRA_TEST_KILL_AT'] = '17'
    killed = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '-opt', TINY_GAN_LDL, '--force_yml',
                             'name=tiny', *data_overrides(tiny_data), 'train:total_iter=30', 'val:val_freq=1000',
                             'import_modules=[killer_plugin]'], cwd=run_dir, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    exp = run_dir / 'experiments' / 'tiny'
    assert list_training_states(str(exp / 'training_states')) == [5, 10, 15]
    before = read_losses(exp)
    assert max(before) == 17

    resumed = train(run_dir, tiny_data, 'train:total_iter=30', 'val:val_freq=1000', '--auto_resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resumed from' in resumed.stdout and 'iteration 15' in resumed.stdout
    after = read_losses(exp)
    assert sorted(after) == list(range(1, 31))
    # bitwise: every loss term of every iteration equals the uninterrupted run's (floats logged with repr)
    for it in range(1, 31):
        assert after[it] == ref_losses[it], f'iteration {it}: {after[it]} != {ref_losses[it]}'
    ref_g = torch.load(ref_dir / 'experiments' / 'tiny' / 'models' / 'net_g_30.pth', weights_only=True)
    run_g = torch.load(exp / 'models' / 'net_g_30.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        for k in ref_g[key]:
            assert torch.equal(ref_g[key][k], run_g[key][k]), (key, k)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path):
    target = tmp_path / 'training_states' / '5.state'
    atomic_torch_save({'iter': 5}, str(target))
    original = target.read_bytes()

    class Exploding:
        def __reduce__(self):
            raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        atomic_torch_save({'iter': 10, 'big': torch.zeros(1000), 'boom': Exploding()}, str(target))
    assert target.read_bytes() == original
    assert os.listdir(target.parent) == ['5.state']  # no temporary file left behind

    # a process SIGKILLed in the middle of writing the bytes: the target never appears, only a temp file that
    # is ignored (and removed at the next start in that folder, see test_resume)
    script = textwrap.dedent(f'''
        import os, signal
        import desra.atomic as atomic
        import desra.engine.checkpoint as ck
        def half_write(fd, data):
            os.write(fd, bytes(data)[:10])
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        atomic._write_file = half_write
        ck.atomic_torch_save({{'iter': 10}}, {str(tmp_path / 'training_states' / '10.state')!r})
    ''')
    p = subprocess.run([sys.executable, '-c', script], env=cli_env(), capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    names = os.listdir(target.parent)
    assert '10.state' not in names and any(n.startswith('.10.state.') for n in names)
    assert find_latest_state(str(target.parent)) == str(target)
    assert torch.load(target, weights_only=True) == {'iter': 5}


NAN_PLUGIN = textwrap.dedent('''
    """Test plugin: an L1 loss that turns NaN from its 7th call on (iteration 7 of the G step)."""
    import torch
    from desra.losses import L1Loss
    from desra.registry import LOSS_REGISTRY

    @LOSS_REGISTRY.register()
    class NaNAfterL1Loss(L1Loss):
        def __init__(self, after=7, **kwargs):
            super().__init__(**kwargs)
            self.after, self.calls = after, 0

        def forward(self, pred, target, weight=None):
            self.calls += 1
            loss = super().forward(pred, target, weight)
            return loss * float('nan') if self.calls >= self.after else loss
''')


def test_nan_loss_stops_with_iteration_and_term_and_keeps_checkpoint(tmp_path, tiny_data):
    (tmp_path / 'nan_plugin.py').write_text(NAN_PLUGIN)
    out = train(tmp_path, tiny_data, 'train:total_iter=30', 'val:val_freq=1000', 'import_modules=[nan_plugin]',
                'train:pixel_opt={type: NaNAfterL1Loss, after: 7, loss_weight: 0.01}',
                extra_pythonpath=str(tmp_path))
    assert out.returncode == 2
    assert 'Traceback' not in out.stderr
    assert out.stderr.startswith('error: non-finite loss at iteration 7: l_g_pix=nan.')
    assert 'the last saved checkpoint is untouched' in out.stderr
    exp = tmp_path / 'experiments' / 'tiny'
    assert list_training_states(str(exp / 'training_states')) == [5]
    g = torch.load(exp / 'models' / 'net_g_5.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in g['params'].values())


def test_ddp_two_processes_match_one_process(tmp_path, tiny_data):
    """torchrun --nproc_per_node=2 (gloo, CPU) with batch 2 per process == 1 process with batch 4."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir()
    two.mkdir()
    common = ['train:total_iter=20', 'val:val_freq=1000', 'logger:save_checkpoint_freq=20']
    single = train(one, tiny_data, *common, 'datasets:train:batch_size_per_gpu=4')
    assert single.returncode == 0, single.stderr
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517',
           os.path.join(REPO, 'train.py'), '-opt', TINY_GAN_LDL, '--launcher', 'pytorch', '--force_yml', 'name=tiny',
           *data_overrides(tiny_data), *common, 'datasets:train:batch_size_per_gpu=2']
    multi = subprocess.run(cmd, cwd=two, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert 'world size 2' in multi.stdout
    g1 = torch.load(one / 'experiments' / 'tiny' / 'models' / 'net_g_20.pth', weights_only=True)
    g2 = torch.load(two / 'experiments' / 'tiny' / 'models' / 'net_g_20.pth', weights_only=True)
    worst = max((g1['params'][k] - g2['params'][k]).abs().max().item() for k in g1['params'])
    print(f'DDP 2x2 vs 1x4: max |param diff| after 20 iterations = {worst:.3e}')
    assert worst <= 1e-5, worst
    l1, l2 = read_losses(one / 'experiments' / 'tiny'), read_losses(two / 'experiments' / 'tiny')
    for it in (1, 10, 20):
        for k in l1[it]:
            assert l1[it][k] == pytest.approx(l2[it][k], rel=1e-4, abs=1e-6), (it, k)
    # and training really moved the weights, so the equality above is not trivial
    assert l1[1]['l_g_pix'] != l1[20]['l_g_pix']


def test_missing_dataset_folder_message(tmp_path, tiny_data):
    out = train(tmp_path, tiny_data, f'datasets:train:dataroot_gt={tmp_path / "nope"}')
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip() == f'error: datasets.train.dataroot_gt: folder does not exist: {tmp_path / "nope"}'


def test_checkpoint_with_mismatched_keys_lists_them(tmp_path, tiny_data):
    bad = tmp_path / 'bad.pth'
    torch.save({'params': {'conv_first.weight': torch.zeros(8, 3, 3, 3), 'extra.weight': torch.zeros(1)}}, bad)
    out = train(tmp_path, tiny_data, f'path:pretrain_network_g={bad}')
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert str(bad) in out.stderr
    assert 'missing' in out.stderr and 'conv_first.bias' in out.stderr
    assert 'unexpected' in out.stderr and 'extra.weight' in out.stderr


def test_auto_resume_without_states_starts_fresh(tmp_path, tiny_data):
    out = train(tmp_path, tiny_data, 'train:total_iter=2', 'val:val_freq=1000', '--auto_resume')
    assert out.returncode == 0, out.stderr
    assert 'Resumed' not in out.stdout
    shutil.rmtree(tmp_path / 'experiments')


def test_corrupt_image_in_worker_is_named_without_traceback(tmp_path, tiny_data):
    data = tmp_path / 'data'
    shutil.copytree(tiny_data, data)
    bad = data / 'HR' / '0003.png'
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    out = train(tmp_path, str(data), 'datasets:train:num_worker_per_gpu=1', 'train:total_iter=4')
    assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr
    assert out.stderr.startswith('error: ') and str(bad) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_gt_lq_size_mismatch_is_named(tmp_path, tiny_data):
    import cv2
    import numpy as np

    data = tmp_path / 'data'
    shutil.copytree(tiny_data, data)
    cv2.imwrite(str(data / 'LR' / '0002.png'), np.zeros((10, 12, 3), np.uint8))
    out = train(tmp_path, str(data), 'train:total_iter=8')
    assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr
    msg = out.stderr.strip()
    assert msg.startswith('error: ') and str(data / 'HR' / '0002.png') in msg and str(data / 'LR' / '0002.png') in msg
    assert 'is 48x48 (HxW) but LQ' in msg and 'is 10x12 at scale 4: expected GT 40x48' in msg


def test_losses_do_not_depend_on_worker_count(tmp_path, tiny_data):
    """Augmentations are seeded per sample, so 0 or 2 loader workers give the very same training run."""
    runs = {}
    for workers in (0, 2):
        d = tmp_path / f'w{workers}'
        d.mkdir()
        out = train(d, tiny_data, 'train:total_iter=6', 'val:val_freq=1000',
                    f'datasets:train:num_worker_per_gpu={workers}')
        assert out.returncode == 0, out.stderr
        runs[workers] = read_losses(d / 'experiments' / 'tiny')
    assert runs[0] == runs[2]
