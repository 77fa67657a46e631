"""Experiment folders: nothing moved before validation, one writer per folder, resume that repairs itself,
a full disk reported in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import (REPO, TINY_GAN_LDL, cli_env, cli_main, data_overrides, read_losses, run_script,
                      tree_snapshot, user_error_in_process)
from desra.engine.checkpoint import list_training_states
from desra.utils.lock import FolderLock


def train_args(data_root, *extra, name='tiny'):
    return ['-opt', TINY_GAN_LDL, '--force_yml', f'name={name}', *data_overrides(data_root), 'val:val_freq=1000',
            *extra]


def train_error(cwd, data_root, *extra, monkeypatch):
    """The one-line user error of a train.py run, run in this process."""
    return user_error_in_process(cli_main('train.py'), train_args(data_root, *extra), cwd, monkeypatch)


def train(cwd, data_root, *extra, name='tiny', extra_pythonpath=None, env=None):
    args = train_args(data_root, *extra, name=name)
    if env is None:
        return run_script('train.py', args, cwd, extra_pythonpath)
    return subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tiny_data):
    """A 15-iteration run (states 5, 10, 15) to damage, and an uninterrupted 20-iteration reference."""
    base = tmp_path_factory.mktemp('base')
    out = train(base, tiny_data, 'train:total_iter=15')
    assert out.returncode == 0, out.stderr
    ref = tmp_path_factory.mktemp('ref')
    out = train(ref, tiny_data, 'train:total_iter=20')
    assert out.returncode == 0, out.stderr
    return {'base': base, 'ref_losses': read_losses(ref / 'experiments' / 'tiny'), 'data': tiny_data}


def _copy_base(runs, tmp_path):
    shutil.copytree(runs['base'], tmp_path / 'run')
    return tmp_path / 'run', tmp_path / 'run' / 'experiments' / 'tiny'


def _truncate(path, keep=100):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:keep])


def _resume_and_compare(runs, cwd, exp, expect_from):
    out = train(cwd, runs['data'], 'train:total_iter=20', '--auto_resume')
    assert out.returncode == 0, out.stderr
    assert f'iteration {expect_from}' in out.stdout and 'Resumed from' in out.stdout
    losses = read_losses(exp)
    for it in range(expect_from + 1, 21):  # bitwise equal to the uninterrupted run from that state on
        assert losses[it] == runs['ref_losses'][it], it
    return out


def test_truncated_newest_state_falls_back(runs, tmp_path):
    cwd, exp = _copy_base(runs, tmp_path)
    _truncate(exp / 'training_states' / '15.state')
    # leftovers of killed writes, and a half-written last line of losses.jsonl
    (exp / 'models' / '.net_g_20.pth.abcd1234.tmp').write_bytes(b'partial')
    with open(exp / 'losses.jsonl', 'a') as f:
        f.write('{"iter": 16, "l_g_pix": 0.12')
    out = _resume_and_compare(runs, cwd, exp, 10)
    assert '--auto_resume: skipped a damaged training state: 15.state cannot be read' in out.stdout
    assert not (exp / 'models' / '.net_g_20.pth.abcd1234.tmp').exists()
    assert 'Removed 1 temporary file(s) left by interrupted writes' in out.stdout
    for line in open(exp / 'losses.jsonl'):
        json.loads(line)  # every line is whole again


def test_truncated_newest_network_falls_back(runs, tmp_path):
    cwd, exp = _copy_base(runs, tmp_path)
    _truncate(exp / 'models' / 'net_g_15.pth', keep=5000)
    out = _resume_and_compare(runs, cwd, exp, 10)
    assert 'net_g_15.pth (saved with 15.state) is truncated or corrupt: 5,000 of' in out.stdout


def test_missing_newest_network_falls_back(runs, tmp_path):
    cwd, exp = _copy_base(runs, tmp_path)
    os.remove(exp / 'models' / 'net_d_15.pth')
    out = _resume_and_compare(runs, cwd, exp, 10)
    assert 'net_d_15.pth (saved with 15.state) is missing' in out.stdout


def test_swapped_network_is_refused_naming_the_file(runs, tmp_path, monkeypatch):
    cwd, exp = _copy_base(runs, tmp_path)
    shutil.copy(exp / 'models' / 'net_g_10.pth', exp / 'models' / 'net_g_15.pth')
    before = tree_snapshot(cwd)
    msg = train_error(cwd, runs['data'], 'train:total_iter=20', '--auto_resume', monkeypatch=monkeypatch)
    p, state = exp / 'models' / 'net_g_15.pth', exp / 'training_states' / '15.state'
    assert msg == (f"resume: {p} is not the file saved with {state}: it is a complete checkpoint but "
                   f"its SHA-256 differs from the one recorded at iteration 15 (it was replaced afterwards). "
                   f"Put the original file back, or delete {state} to resume from an earlier state")
    assert tree_snapshot(cwd) == before


def test_state_records_network_hashes(runs):
    import hashlib

    exp = runs['base'] / 'experiments' / 'tiny'
    state = torch.load(exp / 'training_states' / '15.state', weights_only=True)
    assert sorted(state['files']) == ['net_d_15.pth', 'net_g_15.pth']
    for name, info in state['files'].items():
        data = open(exp / 'models' / name, 'rb').read()
        assert info == {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
    # the option file is kept beside the run, headed by the command
    copy = open(exp / 'gan_ldl.yml').read()
    assert copy.startswith('# GENERATE TIME:') and 'name: tiny_gan_ldl' in copy


@pytest.mark.parametrize('override, message_start', [
    ('network_g:type=RRDBNett', "network_g.type: unknown arch type 'RRDBNett'. Did you mean 'RRDBNet'?"),
    ('datasets:train:dataroot_gt=/no/such/folder', 'datasets.train.dataroot_gt: folder does not exist: '
                                                   '/no/such/folder'),
    ('path:pretrain_network_g=/no/such.pth', "path.pretrain_network_g: checkpoint '/no/such.pth' does not "
                                             "exist or is not a file"),
])
def test_bad_input_leaves_an_existing_experiment_untouched(runs, tmp_path, override, message_start, monkeypatch):
    cwd, exp = _copy_base(runs, tmp_path)
    before = tree_snapshot(cwd)
    msg = train_error(cwd, runs['data'], 'train:total_iter=20', override, monkeypatch=monkeypatch)
    assert msg.startswith(message_start) and '\n' not in msg, msg
    assert tree_snapshot(cwd) == before  # no _archived_ folder, no new log file
    if override.startswith('network_g'):  # the following --auto_resume still continues from iteration 15
        out = train(cwd, runs['data'], 'train:total_iter=16', '--auto_resume')
        assert out.returncode == 0 and 'iteration 15' in out.stdout, out.stderr


def test_second_run_on_a_held_folder_refuses(runs, tmp_path):
    cwd, exp = _copy_base(runs, tmp_path)
    before = tree_snapshot(cwd)
    with FolderLock(str(exp), 'experiment folder'):  # this test process is the "first run"
        out = train(cwd, runs['data'], 'train:total_iter=20')
        lock_file = exp / '.lock'
        info = json.load(open(lock_file))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith(f'error: experiment folder {exp} is in use by pid {os.getpid()} on ')
    assert out.stderr.rstrip().endswith(f'delete {lock_file} and start again') and info['pid'] == os.getpid()
    assert tree_snapshot(cwd) == before  # nothing archived, nothing mixed in
    assert not lock_file.exists()  # released


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    folder = tmp_path / 'exp'
    code = textwrap.dedent(f'''
        import os, signal
        from desra.utils.lock import FolderLock
        FolderLock({str(folder)!r}).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    ''')
    p = subprocess.run([sys.executable, '-c', code], env=cli_env(), capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and (folder / '.lock').exists()  # a stale lock file stays behind
    lock = FolderLock(str(folder))
    lock.check()
    with lock:
        assert json.load(open(folder / '.lock'))['pid'] == os.getpid()
    assert not (folder / '.lock').exists()


DISK_FULL = textwrap.dedent('''
    """Test plugin (import_modules): the disk is full when net_g_4.pth is written."""
    import errno, os
    import desra.atomic as atomic

    _orig = atomic._write_file

    def _write_file(fd, data):
        if '.net_g_4.pth.' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return _orig(fd, data)

    atomic._write_file = _write_file
''')


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc to name the file being written')
def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_data):
    plugin = tmp_path / 'plugin'
    plugin.mkdir()
    (plugin / 'disk_full.py').write_text(DISK_FULL)
    out = train(tmp_path, tiny_data, 'train:total_iter=5', 'logger:save_checkpoint_freq=2',
                'import_modules=[disk_full]', extra_pythonpath=str(plugin))
    exp = tmp_path / 'experiments' / 'tiny'
    target = exp / 'models' / 'net_g_4.pth'
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: cannot write {target}: no space left on the device (')
    assert ' KiB needed, ' in lines[0] and lines[0].endswith('earlier files are intact. Free some space and run the '
                                                             'command again')
    assert sorted(os.listdir(exp / 'models')) == ['net_d_2.pth', 'net_g_2.pth']  # no partial or temporary file
    assert list_training_states(str(exp / 'training_states')) == [2]
    out = train(tmp_path, tiny_data, 'train:total_iter=5', 'logger:save_checkpoint_freq=2', '--auto_resume')
    assert out.returncode == 0 and 'iteration 2' in out.stdout, out.stderr


def test_first_and_last_iteration_are_logged_whatever_print_freq(tmp_path, tiny_data):
    out = train(tmp_path, tiny_data, 'train:total_iter=3', 'logger:print_freq=100', 'logger:save_checkpoint_freq=100')
    assert out.returncode == 0, out.stderr
    assert sorted(read_losses(tmp_path / 'experiments' / 'tiny')) == [1, 3]
    assert 'iter:       1,' in out.stdout and 'iter:       3,' in out.stdout
    assert 'tiny: 3/3 it' in out.stdout  # the progress line (log mode off a terminal)
