"""Shared fixtures: a tiny real-PNG paired dataset and helpers to run the CLIs."""
import json
import os
import textwrap
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
TINY_GAN_LDL = os.path.join(REPO, 'options', 'tiny', 'gan_ldl.yml')


def make_paired_folder(root, n=8, lq_size=12, scale=4, seed=0):
    """``n`` smooth random GT images (lq_size*scale square) and their x``scale`` area-downsampled LQ."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'HR'), exist_ok=True)
    os.makedirs(os.path.join(root, 'LR'), exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 256, (lq_size, lq_size, 3)).astype(np.uint8)
        hr = cv2.resize(base, (lq_size * scale, lq_size * scale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(root, 'HR', f'{i:04d}.png'), hr)
        cv2.imwrite(os.path.join(root, 'LR', f'{i:04d}.png'),
                    cv2.resize(hr, (lq_size, lq_size), interpolation=cv2.INTER_AREA))
    return root


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    return make_paired_folder(str(tmp_path_factory.mktemp('tiny_data')))


def data_overrides(data_root):
    hr, lr = os.path.join(data_root, 'HR'), os.path.join(data_root, 'LR')
    return [f'datasets:train:dataroot_gt={hr}', f'datasets:train:dataroot_lq={lr}',
            f'datasets:val:dataroot_gt={hr}', f'datasets:val:dataroot_lq={lr}']


def cli_env(extra_pythonpath=None):
    paths = [REPO] + ([extra_pythonpath] if extra_pythonpath else [])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(paths), 'OMP_NUM_THREADS': '1'}
    return env


def run_script(script, args, cwd, extra_pythonpath=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env(extra_pythonpath))


def tree_snapshot(root):
    """{relative path: (is_dir, size, mtime_ns)} of everything under ``root`` (to assert nothing changed)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            snap[os.path.relpath(p, root)] = (os.path.isdir(p), st.st_size if not os.path.isdir(p) else 0,
                                              st.st_mtime_ns if not os.path.isdir(p) else 0)
    return snap


def user_error_in_process(script_main, argv, cwd, monkeypatch):
    """Run a CLI's ``main(argv)`` in this process (no interpreter start-up, torch already loaded); returns the
    one-line message of the :class:`~desra.errors.UserError` it raises (the CLI prints ``error: <message>``)."""
    from desra.cli import user_message
    from desra.errors import UserError

    monkeypatch.chdir(cwd)
    try:
        script_main(argv)
    except UserError as e:
        return user_message(e)
    raise AssertionError(f'{script_main.__module__}.main({argv}) raised no user error')


def cli_main(script):
    """The ``main`` function of one of the repository's command-line scripts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f'cli_{os.path.basename(script)[:-3]}', os.path.join(REPO, script))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def write_opt(path, opt):
    """Write an option dict as YAML to ``path``; returns the path as a string."""
    import yaml

    path.write_text(yaml.safe_dump(opt))
    return str(path)


def read_losses(exp_dir):
    """iteration -> the LAST logged loss dict for it (a resumed run re-logs iterations lost in the crash)."""
    out = {}
    with open(os.path.join(exp_dir, 'losses.jsonl')) as f:
        for line in f:
            rec = json.loads(line)
            out[rec.pop('iter')] = rec
    return out


#: Test plugin (``import_modules: [killer_plugin]``): SIGKILL the process right after iteration
#: ``$DESRA_TEST_KILL_AT`` is logged (never when the variable is unset or 0).
KILLER_PLUGIN = textwrap.dedent('''
    import os, signal
    import desra.engine.trainer as trainer

    KILL_AT = int(os.environ.get('DESRA_TEST_KILL_AT', '0'))
    _orig = trainer.MessageLogger.__call__

    def _call(self, log_vars):
        it = log_vars['iter']
        _orig(self, log_vars)
        if it == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.MessageLogger.__call__ = _call
''')
