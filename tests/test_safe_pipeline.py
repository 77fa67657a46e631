"""Reruns of the DeSRA loop and of make_pseudo_gt.py: stages keyed by their settings, a killed fine-tune that
continues, reports that state what made them, splits that never overlap."""
import hashlib
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import torch
import yaml

from conftest import KILLER_PLUGIN, REPO, cli_env, run_script, tree_snapshot
from test_pseudo_gt import _make_detection_root, make_pseudo_gt  # noqa: F401  (the script module)

TINY_NET = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}

def _ckpt(path, seed):
    from desra.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(seed)
    torch.save({'params_ema': RRDBNet(3, 3, 4, num_feat=8, num_block=1, num_grow_ch=4).state_dict()}, path)


def _loop_opt(tmp_path, total_iter):
    return {'name': 'loop', 'scale': 4, 'seed': 0,
            'data': {'lr': str(tmp_path / 'LR'), 'train_count': 2},
            'mse_model': {'network': TINY_NET, 'path': str(tmp_path / 'mse.pth')},
            'gan_model': {'network': TINY_NET, 'path': str(tmp_path / 'gan.pth')},
            'segmenter': {'type': 'none'}, 'class_weights': None,
            'detector': {'type': 'desra', 'min_area': 0.002},
            'finetune': {'options': os.path.join(REPO, 'options', 'finetune_desra.yml'),
                         'force': {'network_d': {'num_feat': 8}, 'path': {'pretrain_network_d': None},
                                   'import_modules': ['killer_plugin'],
                                   'datasets': {'train': {'gt_size': 32, 'batch_size_per_gpu': 2,
                                                          'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 1}},
                                   'train': {'total_iter': total_iter, 'perceptual_opt': None},
                                   'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'save_checkpoint_iters': [],
                                              'use_tb_logger': False}}},
            'output': {'root': str(tmp_path / 'report')}}


def _run_loop(tmp_path, total_iter, kill_at=None):
    path = tmp_path / f'loop_{total_iter}.yml'
    path.write_text(yaml.safe_dump(_loop_opt(tmp_path, total_iter)))
    env = cli_env(str(tmp_path / 'plugin'))
    env['DESRA_TEST_KILL_AT'] = str(kill_at or 0)
    return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'desra_pipeline.py'), '-opt', str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def _losses(exp):
    return [json.loads(line) for line in open(exp / 'losses.jsonl')]


def test_killed_finetune_resumes_and_a_new_total_iter_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'LR').mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / 'LR' / f'im{i}.png'), rng.integers(0, 256, (16, 16, 3)).astype(np.uint8))
    _ckpt(tmp_path / 'mse.pth', 0)
    _ckpt(tmp_path / 'gan.pth', 1)
    (tmp_path / 'plugin').mkdir()
    (tmp_path / 'plugin' / 'killer_plugin.py').write_text(KILLER_PLUGIN)
    root, exp = tmp_path / 'report', tmp_path / 'report' / 'finetune'

    # 1. killed during the fine-tune, after the state of iteration 2 was saved
    killed = _run_loop(tmp_path, 4, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r['iter'] for r in _losses(exp)] == [1, 2, 3]
    assert json.load(open(root / 'stages.json'))['finetune']['status'] == 'running'
    detected = {f: os.path.getmtime(root / 'detect_before' / 'masks' / f) for f in os.listdir(root / 'detect_before'
                                                                                                    / 'masks')}

    # 2. the same command again: detection and pseudo-GT reused, the fine-tune continues from iteration 2
    resumed = _run_loop(tmp_path, 4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'All 4 image(s) are up to date' in resumed.stdout
    assert 'pseudo-GT is up to date' in resumed.stdout
    assert '(continuing the earlier run: same options and data)' in resumed.stdout
    assert 'Resumed from' in resumed.stdout and 'iteration 2' in resumed.stdout
    assert [r['iter'] for r in _losses(exp)] == [1, 2, 3, 3, 4]  # continued: iteration 1 was not trained again
    assert detected == {f: os.path.getmtime(root / 'detect_before' / 'masks' / f) for f in detected}
    assert json.load(open(root / 'summary.json'))['summary']['iterations'] == 4

    # 3. another total_iter: the fine-tune starts over, detect_after follows the new checkpoint, the report says so
    again = _run_loop(tmp_path, 5)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'continuing the earlier run' not in again.stdout
    assert [r['iter'] for r in _losses(exp)] == [1, 2, 3, 4, 5]
    archived = [n for n in os.listdir(root) if n.startswith('finetune_archived_')]
    assert len(archived) == 1  # the earlier fine-tune is kept aside, as BasicSR does
    assert [r['iter'] for r in _losses(root / archived[0])] == [1, 2, 3, 3, 4]
    ckpt = exp / 'models' / 'net_g_5.pth'
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    split = json.load(open(root / 'pseudo_gt' / 'split.json'))
    for n in split['val']:
        rec = json.load(open(root / 'detect_after' / 'records' / f'{n}.json'))
        assert rec['settings']['gan_model']['weights']['sha256'] == sha
    report = json.load(open(root / 'summary.json'))
    assert report['summary']['iterations'] == 5 and report['summary']['finetuned_checkpoint'] == str(ckpt)
    assert report['settings']['finetune']['checkpoint_sha256'] == sha
    table = open(root / 'table3.md').read()
    assert 'Fine-tuned for 5 iterations' in table and '## Built from' in table
    assert f'(EMA, iteration 5, SHA-256 {sha[:12]})' in table
    assert '[stage 1/5]' in again.stdout and '[stage 5/5]' in again.stdout


def test_second_pipeline_on_a_held_report_root_refuses(tmp_path):
    from desra.utils.lock import FolderLock

    (tmp_path / 'LR').mkdir()
    cv2.imwrite(str(tmp_path / 'LR' / 'a.png'), np.zeros((16, 16, 3), np.uint8))
    _ckpt(tmp_path / 'mse.pth', 0)
    _ckpt(tmp_path / 'gan.pth', 1)
    (tmp_path / 'plugin').mkdir()
    (tmp_path / 'plugin' / 'killer_plugin.py').write_text(KILLER_PLUGIN)
    with FolderLock(str(tmp_path / 'report'), 'report root'):
        out = _run_loop(tmp_path, 2)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: report root {tmp_path / 'report'} is in use by pid {os.getpid()} on ")
    assert os.listdir(tmp_path / 'report') == []


def test_make_pseudo_gt_rerun_with_another_split_never_overlaps(tmp_path):
    root, _ = _make_detection_root(tmp_path)
    out = tmp_path / 'ft'
    first = make_pseudo_gt.main(['--detections', str(root), '--out', str(out), '--train', '2', '--seed', '0'])
    second = make_pseudo_gt.main(['--detections', str(root), '--out', str(out), '--train', '4', '--seed', '5'])
    assert set(first['train']) != set(second['train'])
    for part, other in (('train', 'val'), ('val', 'train')):
        on_disk = {os.path.splitext(os.path.relpath(os.path.join(d, f), out / part / 'GT'))[0]
                   for d, _, fs in os.walk(out / part / 'GT') for f in fs}
        assert on_disk == set(second[part])
        assert not on_disk & set(second[other])
    assert not (out / '.pseudo_gt_writing.json').exists()
    assert sorted(json.load(open(out / 'split.json'))['files']) == sorted(
        f for f in second['files'])
    # a folder holding files of somebody else is refused, and nothing in it changes
    (out / 'train' / 'GT' / 'mine.png').write_bytes(b'user file')
    before = tree_snapshot(out)
    res = run_script('scripts/make_pseudo_gt.py', ['--detections', str(root), '--out', str(tmp_path / 'ft3'),
                                                   '--train', '2'], tmp_path)
    assert res.returncode == 0 and 'pseudo-GT: 6/6 img (' in res.stdout, res.stderr  # progress off a terminal
    res = run_script('scripts/make_pseudo_gt.py', ['--detections', str(root), '--out', str(out), '--train', '2'],
                     tmp_path)
    assert res.returncode == 2
    assert res.stderr == (f'error: --out: {out} holds 1 file(s) that no earlier make_pseudo_gt run wrote (e.g. '
                          f'train/GT/mine.png); choose an empty folder or move them away (nothing was changed)\n')
    assert tree_snapshot(out) == before


def test_make_pseudo_gt_after_an_interrupted_run_removes_its_files(tmp_path):
    root, _ = _make_detection_root(tmp_path)
    out = tmp_path / 'ft'
    (out / 'train' / 'GT').mkdir(parents=True)
    (out / 'train' / 'GT' / 'a0.png').write_bytes(b'half of an earlier run')
    (out / '.pseudo_gt_writing.json').write_text(json.dumps({'files': ['train/GT/a0.png', 'split.json']}))
    info = make_pseudo_gt.main(['--detections', str(root), '--out', str(out), '--train', '3', '--seed', '1'])
    assert not (out / '.pseudo_gt_writing.json').exists()
    present = {os.path.relpath(os.path.join(d, f), out).replace(os.sep, '/') for d, _, fs in os.walk(out) for f in fs}
    assert present == set(info['files'])
